import numpy as np
import pytest

from changedet.radiometry import (
    HistogramFit,
    apply_normalisation,
    fit_irmad,
    fit_normalisation,
    irmad,
    orthogonal_regression,
    robust_orthogonal_regression,
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


def test_robust_regression_ignores_a_consistent_cluster_of_change():
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.uniform(10, 200, 6000), rng.uniform(20, 40, 3000)])
    y = 0.9 * x + 15 + rng.normal(0, 1, x.size)
    y[6000:] = 1.8 * x[6000:] + 40          # a field that changed consistently
    slope, icpt, inliers = robust_orthogonal_regression(x, y)
    assert slope == pytest.approx(0.9, abs=0.01) and icpt == pytest.approx(15, abs=1)
    assert inliers[:6000].mean() > 0.95 and inliers[6000:].mean() < 0.05


def _regression_cases():
    # Lines with outliers, one material holding half the points, integer
    # values (ties among the residuals), odd and even point counts.
    rng = np.random.default_rng(11)
    for k in range(12):
        n = int(rng.integers(7, 30000))
        x = rng.uniform(0, 100, n)
        y = rng.uniform(0.5, 2) * x + 12 + rng.normal(0, rng.uniform(0.05, 3), n)
        changed = int(n * rng.uniform(0, 0.6))
        y[:changed] = rng.uniform(0, 100, changed)
        if k % 3 == 0:
            x, y = np.round(x / 8), np.round(y / 8)
        if k % 4 == 1:
            x[:n // 2], y[:n // 2] = 5.0, 7.0
        yield x, y


@pytest.mark.parametrize("rough_points, rough_lines", [(2000, 16), (5, 1), (40, 3)])
def test_robust_regression_finds_the_line_every_median_would(monkeypatch, rough_points,
                                                            rough_lines):
    # The least-median search finds the exact median of a few lines only;
    # its answer must be the one that finding every line's median gives,
    # bit for bit, even when the rough ranking (few points) misleads it.
    from changedet import radiometry

    cases = list(_regression_cases())
    monkeypatch.setattr(radiometry, "_ROUGH_POINTS", 10 ** 9)
    monkeypatch.setattr(radiometry, "_ROUGH_LINES", 10 ** 9)   # every median, exactly
    want = [robust_orthogonal_regression(x, y, max_points=max_points)
            for x, y in cases for max_points in (20000, 1001)]
    monkeypatch.setattr(radiometry, "_ROUGH_POINTS", rough_points)
    monkeypatch.setattr(radiometry, "_ROUGH_LINES", rough_lines)
    got = [robust_orthogonal_regression(x, y, max_points=max_points)
           for x, y in cases for max_points in (20000, 1001)]
    for (s0, i0, in0), (s1, i1, in1) in zip(want, got, strict=True):
        assert (s0, i0) == (s1, i1)
        np.testing.assert_array_equal(in0, in1)


def test_gain_is_found_when_one_material_covers_most_of_the_scene():
    # 85 % paving with its texture, a few roofs and roads: plain LMedS would
    # accept any line through the paving.
    rng = np.random.default_rng(4)
    b = np.full((2, 200, 200), 120, np.float32)
    b *= 1 + 0.04 * rng.standard_normal((200, 200)).astype(np.float32)
    b[:, :, 100:112] = 30                   # a road
    b[:, 20:40, 20:40] = 220                # roofs
    b[:, 150:170, 30:60] = 70
    b += rng.normal(0, 2, b.shape).astype(np.float32)
    a = b * np.array([0.7, 1.3], np.float32)[:, None, None] + 12
    a += rng.normal(0, 2, a.shape).astype(np.float32)
    fit = fit_irmad(b, a, np.zeros((200, 200), bool))
    np.testing.assert_allclose(fit.gain, [1 / 0.7, 1 / 1.3], rtol=0.03)


def test_no_invariant_pixels_falls_back_to_matching_spreads():
    rng = np.random.default_rng(5)
    b = rng.gamma(3, 30, (3, 64, 64)).astype(np.float32)
    a = rng.gamma(3, 30, (3, 64, 64)).astype(np.float32)   # unrelated dates
    fit = fit_irmad(b, a, np.zeros((64, 64), bool))
    assert fit.method == "linear" and "reason" in fit.details


def test_histogram_matching_undoes_a_monotone_change():
    rng = np.random.default_rng(6)
    b = rng.gamma(4, 20, (3, 80, 80)).astype(np.float32)
    a = (np.sqrt(b) * 12 + 5).astype(np.float32)
    inv = np.zeros((80, 80), bool)
    fit = fit_normalisation(b, a, inv, method="histogram")
    assert isinstance(fit, HistogramFit) and fit.to_dict()["method"] == "histogram"
    out = apply_normalisation(a, fit)
    assert np.percentile(np.abs(out - b), 99) < 2


@pytest.mark.parametrize("h", [1, 64, 130])
def test_linear_fit_is_applied_exactly_in_place_or_not(h):
    from changedet.radiometry import RadiometricFit

    rng = np.random.default_rng(h)
    a = rng.normal(500, 50, (3, h, 7)).astype(np.float32)
    fit = RadiometricFit((1.1, 0.9, 1.3), (5.0, -2.0, 0.5), "linear")
    expected = a * np.array(fit.gain, np.float32)[:, None, None] \
        + np.array(fit.offset, np.float32)[:, None, None]
    np.testing.assert_array_equal(apply_normalisation(a, fit), expected)
    np.testing.assert_array_equal(apply_normalisation(a, fit, out=a), expected)
    np.testing.assert_array_equal(a, expected)


def test_a_band_the_dates_do_not_share_gets_its_spreads_matched():
    # Bands 1 and 3 are one scene under a known gain; band 2 is another
    # texture at each date (crops at another stage everywhere). Its
    # orthogonal line would point anywhere (NAIP's red gave -48): its gain
    # is the ratio of the spreads instead, and the metadata says so.
    from scipy import ndimage
    rng = np.random.default_rng(5)

    def texture():
        t = ndimage.gaussian_filter(rng.normal(0, 1, (128, 128)), 2)
        return (t / t.std()).astype(np.float32)

    scene = 100 + 25 * np.stack([texture(), texture()])
    b = np.stack([scene[0], 80 + 12 * texture(), scene[1]])
    a = np.stack([0.8 * scene[0] + 10, 60 + 30 * texture(), 1.25 * scene[1] - 5])
    b += rng.normal(0, 0.5, b.shape).astype(np.float32)
    a += rng.normal(0, 0.5, a.shape).astype(np.float32)
    fit = fit_irmad(b, a, np.zeros((128, 128), bool))
    assert fit.method == "irmad" and fit.details["spreads_matched"] == [2]
    np.testing.assert_allclose(fit.gain, [1 / 0.8, 12 / 30, 1 / 1.25], rtol=0.1)
    assert fit.offset[1] == pytest.approx(80 - fit.gain[1] * 60, abs=3)


@pytest.mark.parametrize("scale", [4.0, 1 / 256, 100.0])
def test_robust_regression_does_not_depend_on_the_units_of_x(scale):
    # The after image in other units (another bit depth, reflectance, a
    # scale factor): the plausible-gain filter refused every line (a gain of
    # 0.009), and the fit fell back to plain least squares on everything.
    rng = np.random.default_rng(3)
    x = rng.uniform(10, 200, 9000)
    y = 0.9 * x + 15 + rng.normal(0, 1, x.size)
    y[6000:] = rng.uniform(20, 200, 3000)        # a third changed, any which way
    slope, icpt, inliers = robust_orthogonal_regression(x, y)
    assert slope == pytest.approx(0.9, abs=0.01) and icpt == pytest.approx(15, abs=1)
    s2, i2, in2 = robust_orthogonal_regression(x * scale, y)
    if scale in (4.0, 1 / 256):
        # A bit depth apart: exactly the fit in shared units.
        assert (s2 * scale, i2) == (slope, icpt)
        np.testing.assert_array_equal(in2, inliers)
    else:
        assert s2 * scale == pytest.approx(0.9, abs=0.01) and i2 == pytest.approx(15, abs=1)
        assert in2[:6000].mean() > 0.95 and in2[6000:].mean() < 0.2


def test_after_image_in_other_units_gives_the_same_changes(tmp_path):
    # The sample pair with the after image stored as 16 bits (x 4) and as
    # reflectance in 0-1 (/ 255): the same polygons as the 8-bit original.
    import rasterio

    import changedet
    from tests.conftest import SAMPLE

    before, after = SAMPLE / "square_before.tif", SAMPLE / "square_after.tif"
    with rasterio.open(after) as src:
        profile, data = src.profile, src.read()
    variants = {"x4.tif": (data.astype(np.uint16) * 4, "uint16"),
                "refl.tif": (data.astype(np.float32) / 255, "float32")}
    base = changedet.detect(before, after)
    for name, (values, dtype) in variants.items():
        with rasterio.open(tmp_path / name, "w", **{**profile, "dtype": dtype}) as dst:
            dst.write(values)
        r = changedet.detect(before, tmp_path / name)
        assert sorted(p["change"] for p in r.properties) == sorted(
            p["change"] for p in base.properties), name
        assert sorted(p["pixels"] for p in r.properties) == pytest.approx(
            sorted(p["pixels"] for p in base.properties), rel=0.02), name
