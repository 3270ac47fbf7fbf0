import numpy as np
import pytest
from scipy import ndimage, stats

from changedet.scores import NoiseModel, fit_noise, score_cva


def _noise_pair(shape=(3, 256, 256), sigma=2.0, seed=0):
    rng = np.random.default_rng(seed)
    texture = ndimage.gaussian_filter(rng.normal(100, 20, shape), (0, 1.5, 1.5))
    b = (texture + rng.normal(0, sigma, shape)).astype(np.float32)
    a = (texture + rng.normal(0, sigma, shape)).astype(np.float32)
    return b, a


def test_noise_model_recovers_noise_despite_change():
    b, a = _noise_pair(sigma=2.0)
    a[:, 50:120, 60:140] += 60  # 8 % of the image changed
    nm = fit_noise(b, a, np.zeros(b.shape[1:], bool))
    # The difference of two N(0, 2^2) images has standard deviation 2*sqrt(2).
    np.testing.assert_allclose(np.sqrt(np.diag(nm.cov)), 2 * np.sqrt(2), rtol=0.05)
    assert 0.8 < nm.inlier_fraction < 0.95


def test_cva_score_is_chi_distributed_without_change():
    b, a = _noise_pair()
    nm = fit_noise(b, a, np.zeros(b.shape[1:], bool))
    s = score_cva(b, a, nm, tolerance=0)
    # Squared scores follow chi-square with 3 degrees of freedom.
    assert np.median(s ** 2) == pytest.approx(stats.chi2.median(3), rel=0.05)


def test_cva_finds_a_change_and_ignores_gain_after_normalisation():
    b, a = _noise_pair()
    a[:, 100:130, 100:130] += 50
    nm = fit_noise(b, a, np.zeros(b.shape[1:], bool))
    s = score_cva(b, a, nm)
    assert s[105:125, 105:125].min() > 10
    assert np.median(s) < 2


def test_tolerance_ignores_an_edge_moved_by_a_pixel_but_not_a_new_object():
    b = np.zeros((3, 64, 64), np.float32)
    b[:, :, :30] = 100                 # an edge at column 30
    a = np.zeros_like(b)
    a[:, :, :31] = 100                 # the edge moved by one pixel
    a[:, 40:44, 40:44] = 100           # and a 4 x 4 px object appeared
    nm = NoiseModel((0.0,) * 3, tuple(tuple(4.0 * (i == j) for j in range(3))
                                      for i in range(3)))
    plain = score_cva(b, a, nm, tolerance=0)
    tolerant = score_cva(b, a, nm, tolerance=1)
    assert plain[:, 30].min() > 50
    assert tolerant[:, 30].max() == 0
    assert tolerant[40:44, 40:44].min() == pytest.approx(plain[40:44, 40:44].min())


def test_score_shape_and_dtype():
    b, a = _noise_pair((4, 32, 48))
    nm = fit_noise(b, a, np.zeros((32, 48), bool))
    s = score_cva(b, a, nm)
    assert s.shape == (32, 48) and s.dtype == np.float32


def test_mismatched_inputs_raise():
    b, a = _noise_pair((3, 16, 16))
    nm = fit_noise(b, a, np.zeros((16, 16), bool))
    with pytest.raises(ValueError, match="shapes differ"):
        score_cva(b, a[:, :8], nm)
    with pytest.raises(ValueError, match="bands"):
        score_cva(b[:2], a[:2], nm)
