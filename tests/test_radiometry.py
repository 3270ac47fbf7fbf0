import numpy as np
import pytest

from changedet.radiometry import (
    apply_normalisation,
    fit_irmad,
    fit_normalisation,
    irmad,
    orthogonal_regression,
    sample_valid,
)
from tests.conftest import flat_pair


def _gains(pair_kw):
    """True inverse map of the synthetic sensor: after -> before, per band."""
    from tests.conftest import NUISANCE_AFTER as s

    air = s.airlight
    gains = [1 / (s.gain[b] * (1 - s.haze)) for b in range(3)]
    offsets = [-255 * (s.gain[b] * s.haze * air[b] + s.offset[b]) * gains[b] for b in range(3)]
    return np.array(gains), np.array(offsets)


@pytest.mark.parametrize("seed, n_appeared", [(0, 0), (1, 3), (2, 3)])
def test_irmad_recovers_a_known_linear_change(seed, n_appeared):
    pair = flat_pair(seed, n_appeared=n_appeared, n_disappeared=1 if n_appeared else 0)
    inv = np.zeros(pair.truth.shape, bool)
    fit = fit_irmad(pair.before.astype(np.float32), pair.after.astype(np.float32), inv)
    g, o = _gains({})
    np.testing.assert_allclose(fit.gain, g, rtol=0.03)
    assert fit.details["converged"]


def test_irmad_weights_converge_and_flag_change():
    pair = flat_pair(1, n_appeared=3, n_disappeared=1)
    inv = np.zeros(pair.truth.shape, bool)
    b = sample_valid(pair.before.astype(np.float32), inv, max_samples=10**9)
    a = sample_valid(pair.after.astype(np.float32), inv, max_samples=10**9)
    res = irmad(b, a)
    assert res.converged and res.iterations < 30
    p = res.no_change_probability(b, a)
    changed = pair.truth.ravel() > 0
    # Changed pixels are very unlikely to be "no change"; most others are not.
    assert np.median(p[changed]) < 1e-3
    assert np.median(p[~changed]) > 0.3
    assert np.all(np.diff(res.rho) >= 0) and res.rho[-1] > 0.9


def test_irmad_is_invariant_to_a_linear_change_of_either_image():
    pair = flat_pair(2, n_appeared=2)
    inv = np.zeros(pair.truth.shape, bool)
    b = sample_valid(pair.before.astype(np.float32), inv)
    a = sample_valid(pair.after.astype(np.float32), inv)
    p1 = irmad(b, a).no_change_probability(b, a)
    a2 = a * np.array([[2.0], [0.5], [1.3]]) + 40
    p2 = irmad(b, a2).no_change_probability(b, a2)
    np.testing.assert_allclose(p1, p2, atol=1e-4)


def test_orthogonal_regression_known_line():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 100, 5000)
    y = 0.8 * x + 12
    slope, icpt = orthogonal_regression(x + rng.normal(0, 0.5, x.size),
                                        y + rng.normal(0, 0.5, x.size))
    assert slope == pytest.approx(0.8, abs=0.01) and icpt == pytest.approx(12, abs=0.5)


def test_apply_does_not_modify_input():
    a = np.ones((2, 4, 4), np.float32)
    fit = fit_normalisation(a, a, np.zeros((4, 4), bool), method="none")
    out = apply_normalisation(a, fit)
    assert out is not a and np.array_equal(out, a)


def test_constant_band_does_not_break_the_fit():
    rng = np.random.default_rng(0)
    b = rng.gamma(3, 20, (3, 64, 64)).astype(np.float32)
    b[1] = 7.0
    a = b * 1.1 + 3
    fit = fit_irmad(b, a, np.zeros((64, 64), bool))
    assert np.all(np.isfinite(fit.gain))
    assert fit.gain[0] == pytest.approx(1 / 1.1, rel=0.01)


def test_unknown_method_lists_the_choices():
    a = np.ones((1, 4, 4), np.float32)
    with pytest.raises(ValueError, match="irmad"):
        fit_normalisation(a, a, np.zeros((4, 4), bool), method="magic")
