import dataclasses

import numpy as np
import pytest
from scipy import ndimage, stats

from changedet.radiometry import apply_normalisation, fit_normalisation
from changedet.scores import (
    SCORE_METHODS,
    CVAParams,
    NoiseModel,
    ShadowModel,
    VegetationGate,
    change_direction,
    default_vegetation_gate,
    fit_cva,
    fit_noise,
    fit_score,
    fit_shadow,
    score_change,
    score_cva,
    vegetation_at,
    vegetation_gate_for,
    vegetation_mask,
)
from changedet.thresholds import apply_threshold, threshold_chi2
from tests.conftest import lawn_pair


def _noise_pair(shape=(3, 256, 256), sigma=2.0, seed=0):
    rng = np.random.default_rng(seed)
    texture = ndimage.gaussian_filter(rng.normal(100, 20, shape), (0, 1.5, 1.5))
    b = (texture + rng.normal(0, sigma, shape)).astype(np.float32)
    a = (texture + rng.normal(0, sigma, shape)).astype(np.float32)
    return b, a


def _scene(seed=0, shape=(160, 160)):
    """A textured scene with surfaces of several brightnesses, and noise."""
    rng = np.random.default_rng(seed)
    h, w = shape
    base = np.empty((3, h, w), np.float32)
    base[:] = np.array([110, 105, 95], np.float32)[:, None, None]
    base[:, :, : w // 3] *= 0.4           # a dark surface (asphalt)
    base[:, : h // 3, w // 2:] *= 1.6     # a bright one (roofs)
    tex = ndimage.gaussian_filter(rng.normal(0, 1, (h, w)), 1.5).astype(np.float32)
    base *= 1 + 0.15 * tex / tex.std()
    b = base + rng.normal(0, 2, base.shape).astype(np.float32)
    a = base + rng.normal(0, 2, base.shape).astype(np.float32)
    return b, a


def _changed(a):
    a = a.copy()
    a[:, 100:130, 60:90] = np.array([200, 60, 50], np.float32)[:, None, None]  # a red roof
    return a


def test_noise_model_recovers_noise_despite_change():
    b, a = _noise_pair(sigma=2.0)
    a[:, 50:120, 60:140] += 60  # 8 % of the image changed
    nm = fit_noise(b, a, np.zeros(b.shape[1:], bool))
    # The difference of two N(0, 2^2) images has standard deviation 2*sqrt(2).
    np.testing.assert_allclose(np.sqrt(np.diag(nm.cov)), 2 * np.sqrt(2), rtol=0.05)
    assert 0.4 < nm.inlier_fraction < 0.6   # the most alike half


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


@pytest.mark.parametrize("method", SCORE_METHODS)
def test_each_method_finds_a_new_roof(method):
    b, a = _scene(1)
    a = _changed(a)
    inv = np.zeros(b.shape[1:], bool)
    params = fit_score(method, b, a, inv, tolerance=1)
    s = score_change(b, a, params)
    assert s.shape == b.shape[1:] and s.dtype == np.float32
    mask = apply_threshold(s, threshold_chi2(params.dof), inv)
    roof = np.zeros_like(mask)
    roof[100:130, 60:90] = True
    assert mask[roof].mean() > 0.6, method
    # Nothing beyond the roof and the window the score looks through.
    near = ndimage.binary_dilation(roof, iterations=2 + params.radius)
    assert mask[~near].mean() < 0.002, method


@pytest.mark.parametrize("method", SCORE_METHODS)
def test_each_method_ignores_a_gain_and_offset(method):
    b, a = _scene(2)
    a = a * np.array([1.3, 0.8, 1.1], np.float32)[:, None, None] + np.array(
        [5, -10, 20], np.float32)[:, None, None]
    inv = np.zeros(b.shape[1:], bool)
    a = apply_normalisation(a, fit_normalisation(b, a, inv))
    params = fit_score(method, b, a, inv)
    s = score_change(b, a, params)
    assert not apply_threshold(s, threshold_chi2(params.dof), inv).any(), method


def test_scores_state_their_context_and_units():
    b, a = _scene(3, shape=(64, 64))
    inv = np.zeros(b.shape[1:], bool)
    for method in SCORE_METHODS:
        p = fit_score(method, b, a, inv, tolerance=2)
        assert p.dof in (1, 3)
        assert p.radius >= (2 if method != "structure" else 1)
        d = p.to_dict()
        assert d["method"] == method


def test_unknown_method_lists_the_choices():
    b, a = _scene(3, shape=(32, 32))
    with pytest.raises(ValueError, match="logratio"):
        fit_score("magic", b, a, np.zeros((32, 32), bool))
    with pytest.raises(TypeError):
        score_change(b, a, object())


def _noisy(rng, *images, sd=1.5):
    return tuple(im + rng.normal(0, sd, im.shape).astype(np.float32) for im in images)


def _shaded_pair(seed=0, ratio=(0.3, 0.32, 0.42)):
    """Paving with objects whose shadows move: after shades other places."""
    rng = np.random.default_rng(seed)
    h, w = 200, 200
    base = np.empty((3, h, w), np.float32)
    base[:] = np.array([150, 140, 130], np.float32)[:, None, None]
    tex = ndimage.gaussian_filter(rng.normal(0, 1, (h, w)), 1.5).astype(np.float32)
    base *= 1 + 0.1 * tex / tex.std()
    base[:, :, 180:] = 8                  # a very dark strip: the dark level
    k = np.asarray(ratio, np.float32)[:, None]
    b, a = base.copy(), base.copy()
    for i in range(6):
        r0, c0 = 20 + 30 * i, 20 + 25 * (i % 3)
        b[:, r0:r0 + 8, c0:c0 + 14] *= k[:, :, None]         # shadows before
        a[:, r0:r0 + 8, c0 + 40:c0 + 54] *= k[:, :, None]    # moved after
    return _noisy(rng, b, a)


def test_shadow_model_finds_the_shade_ratio_and_explains_moving_shadows():
    b, a = _shaded_pair()
    inv = np.zeros(b.shape[1:], bool)
    noise = fit_noise(b, a, inv)
    shadow = fit_shadow(b, a, inv, noise)
    assert shadow is not None
    np.testing.assert_allclose(shadow.ratio, (0.3, 0.32, 0.42), atol=0.05)
    plain = score_cva(b, a, CVAParams(noise))
    explained = score_cva(b, a, CVAParams(noise, shadow=shadow))
    t = threshold_chi2(3)
    assert apply_threshold(plain, t).sum() > 500
    # Only the blurred rims of the shadows may remain, not the shadows.
    assert apply_threshold(explained, t).sum() < 0.1 * apply_threshold(plain, t).sum()


def test_a_new_dark_roof_is_not_taken_for_a_shadow():
    b, a = _shaded_pair()
    a[:, 150:180, 120:160] = np.array([40, 70, 45], np.float32)[:, None, None]
    inv = np.zeros(b.shape[1:], bool)
    p = fit_cva(b, a, inv)
    s = score_cva(b, a, p)
    assert apply_threshold(s, threshold_chi2(3))[152:178, 122:158].mean() > 0.9


def test_no_shadow_model_from_one_dark_object():
    b, a = _scene(4)
    a[:, 40:90, 40:90] *= 0.3          # one large dark object, not shadows
    inv = np.zeros(b.shape[1:], bool)
    assert fit_shadow(b, a, inv, fit_noise(b, a, inv)) is None


def test_vegetation_gate_ignores_the_season_but_not_a_roof_on_grass():
    b, a = lawn_pair()
    inv = np.zeros(b.shape[1:], bool)
    gate = default_vegetation_gate(4)
    assert vegetation_mask(b, gate)[30:100, 30:100].all()
    assert vegetation_mask(a, gate)[30:55, 30:100].all()
    assert not vegetation_mask(b, gate)[:15].any()
    ungated = fit_cva(b, a, inv, vegetation=None)
    gated = fit_cva(b, a, inv)
    assert gated.vegetation == gate
    t = threshold_chi2(4)
    m0 = apply_threshold(score_cva(b, a, ungated), t)
    m1 = apply_threshold(score_cva(b, a, gated), t)
    lawn = np.zeros(m0.shape, bool)
    lawn[25:105, 25:105] = True
    lawn[55:95, 55:95] = False
    assert m0[lawn].mean() > 0.5               # the season is change for plain CVA
    assert m1[lawn].mean() < 0.01              # not with the gate
    assert m1[63:87, 63:87].mean() > 0.9       # the roof still is


@pytest.mark.parametrize("dark", [None, (30.0, 20.0, 10.0, 5.0)])
@pytest.mark.parametrize("whole", [False, True], ids=["neighbourhoods", "bounding-box"])
def test_vegetation_at_some_pixels_is_the_mask_there(dark, whole, monkeypatch):
    # Every pixel, the edges included (where the smoothing repeats the
    # edge), by each of the two ways vegetation_at has.
    import changedet.scores as scores

    monkeypatch.setattr(scores, "_DENSE_NDVI_RATIO", 1e12 if whole else 0.0)
    b, a = lawn_pair(seed=3)
    gate = default_vegetation_gate(4, None if dark is None else np.array(dark))
    for data in (b, a, b[:, 7:50, 90:]):
        mask = vegetation_mask(data, gate)
        rows, cols = np.indices(mask.shape).reshape(2, -1)
        assert 0.05 < mask.mean() < 0.95
        assert np.array_equal(vegetation_at(data, gate, rows, cols), mask.ravel())
    rows, cols = np.array([0, 159, 30, 64]), np.array([159, 0, 30, 70])
    assert np.array_equal(vegetation_at(b, gate, rows, cols), vegetation_mask(b, gate)[rows, cols])
    # Clusters whose box lies inside the image, or reaches one edge or a
    # corner (the box then repeats that edge only).
    mask = vegetation_mask(b, gate)
    for r0, c0 in [(40, 50), (0, 70), (150, 155), (1, 2)]:
        rows, cols = (v.ravel() for v in np.indices((9, 5)) + np.array([[[r0]], [[c0]]]))
        keep = (rows < 160) & (cols < 160)
        rows, cols = rows[keep], cols[keep]
        assert np.array_equal(vegetation_at(b, gate, rows, cols), mask[rows, cols])


def test_vegetation_at_both_ways_agree_at_the_threshold(monkeypatch):
    # Blocks see a pixel with more or fewer candidates around it, so take
    # one way or the other: at a threshold on the very values they smooth
    # to, both must still say the same.
    import changedet.scores as scores

    rng = np.random.default_rng(11)
    data = rng.gamma(3, 10, (4, 90, 110)).astype(np.float32)
    rows, cols = np.indices((90, 110)).reshape(2, -1)
    gate = VegetationGate(red=0, nir=3)
    pad = np.pad(scores._ndvi(data[0], data[3]), 3, mode="edge")
    down = scores._smooth(lambda i: pad[3 + i:93 + i])
    smoothed = scores._smooth(lambda j: down[:, 3 + j:113 + j])
    for value in np.quantile(smoothed, [0.1, 0.5, 0.9]):
        at = dataclasses.replace(gate, ndvi_min=float(value))
        monkeypatch.setattr(scores, "_DENSE_NDVI_RATIO", 0.0)
        one = vegetation_at(data, at, rows, cols)
        monkeypatch.setattr(scores, "_DENSE_NDVI_RATIO", 1e12)
        other = vegetation_at(data, at, rows, cols)
        assert np.array_equal(one, other)
        assert 0 < one.mean() < 1


def test_vegetation_gate_zeroes_candidates_vegetated_at_both_dates_only():
    b, a = lawn_pair(seed=4)
    a[:, 20:50] = b[:, 20:50] + np.random.default_rng(5).normal(0, 1, (4, 30, 160))  # kept green
    gated = fit_cva(b, a, np.zeros(b.shape[1:], bool))
    plain = score_cva(b, a, dataclasses.replace(gated, vegetation=None))
    score = score_cva(b, a, gated)
    both = vegetation_mask(b, gated.vegetation) & vegetation_mask(a, gated.vegetation)
    # score_cva's candidates: a plain whitened distance beyond the 1 % tail.
    bare = score_cva(b, a, dataclasses.replace(gated, vegetation=None, shadow=None), tolerance=0)
    candidates = bare > np.sqrt(stats.chi2.isf(0.01, 4))
    assert (both & candidates).sum() > 500 and (both & ~candidates).sum() > 500
    assert np.all(score[both & candidates] == 0)
    assert np.array_equal(score[~(both & candidates)], plain[~(both & candidates)])


def test_vegetation_gate_follows_red_and_nir_of_a_four_band_image():
    assert vegetation_gate_for(4, None) == default_vegetation_gate(4)
    g = vegetation_gate_for(4, [1, 1, 4])             # a band listed twice: its first place
    assert (g.red, g.nir, g.green, g.blue) == (0, 2, None, None)
    assert vegetation_gate_for(4, [2, 3, 4, 3]) is None   # no red: no gate (had red = band 2)
    assert vegetation_gate_for(4, [4]) is None
    # Other images, or two that differ: four picked bands are R, G, B, NIR.
    assert vegetation_gate_for(8, [5, 3, 2, 7]) == default_vegetation_gate(4)
    assert vegetation_gate_for(None, [1, 2, 3, 4]) == default_vegetation_gate(4)
    assert vegetation_gate_for(8, [5, 3, 2]) is None


def test_vegetation_mask_needs_more_green_than_blue():
    blue_paint = np.array([25, 50, 97, 61], np.float32).reshape(4, 1, 1)
    g = VegetationGate(red=0, nir=3, green=1, blue=2)
    assert not vegetation_mask(blue_paint, g)[0, 0]
    assert vegetation_mask(blue_paint, VegetationGate(red=0, nir=3))[0, 0]


def test_change_direction_is_an_angle():
    b, a = _noise_pair((3, 16, 16))
    a[0, :8] += 100
    d = change_direction(b, a, NoiseModel((0.0,) * 3, ((1, 0, 0), (0, 1, 0), (0, 0, 1))))
    assert d.shape == (16, 16) and d.dtype == np.float32
    assert np.abs(d[:8]).max() < 0.2


def test_mismatched_inputs_raise():
    b, a = _noise_pair((3, 16, 16))
    nm = fit_noise(b, a, np.zeros((16, 16), bool))
    with pytest.raises(ValueError, match="shapes differ"):
        score_cva(b, a[:, :8], nm)
    with pytest.raises(ValueError, match="bands"):
        score_cva(b[:2], a[:2], nm)


def test_shadow_model_metadata():
    s = ShadowModel((1.0, 2.0), (0.3, 0.4), 10)
    assert s.to_dict() == {"dark": [1.0, 2.0], "ratio": [0.3, 0.4], "support": 10}


@pytest.mark.parametrize("method", SCORE_METHODS)
def test_scoring_in_strips_equals_scoring_whole(method):
    # A tall block is scored strip by strip with the score's reach as margin:
    # the result must be the very same array (shadows make the reach 30 px).
    from changedet import synthetic

    pair = synthetic.random_pair((700, 300), bands=4, seed=3, n_appeared=6,
                                 heights_m=(3.0, 9.0), dtype="uint16",
                                 sun_after=synthetic.Sun(azimuth=200, elevation=35))
    b, a = np.asarray(pair.before, np.float32), np.asarray(pair.after, np.float32)
    params = fit_score(method, b, a, np.zeros(b.shape[1:], bool), tolerance=2)
    whole = score_change(b, a, params, strip_rows=0)
    assert whole.max() > 5           # the scene holds change to score
    for rows in (7, 64, 100):
        np.testing.assert_array_equal(score_change(b, a, params, strip_rows=rows), whole)


@pytest.mark.parametrize("method", ["cva", "logratio", "irmad"])
def test_vegetation_gated_in_strips_equals_gated_whole(method):
    # Strips hand their candidates to one vegetation gate for the whole:
    # a lawn that changed with the season, and a roof on it, scored in
    # strips, must give the very same array as scored whole.
    b, a = (np.concatenate([x, x[:, ::-1]], axis=1) for x in lawn_pair(seed=6))  # 320 rows
    params = fit_score(method, b, a, np.zeros(b.shape[1:], bool), tolerance=2)
    whole = score_change(b, a, params, strip_rows=0)
    ungated = score_change(b, a, dataclasses.replace(params, vegetation=None), strip_rows=0)
    assert params.vegetation is not None and (whole < ungated).sum() > 50   # the gate acts
    for rows in (7, 50, 100):
        np.testing.assert_array_equal(score_change(b, a, params, strip_rows=rows), whole)


@pytest.mark.parametrize("method", ["cva", "logratio", "irmad"])
def test_exact_above_changes_no_score_that_can_be_change(method):
    # With the lowest threshold given, pixels whose plain score cannot reach
    # it skip the nuisance search: every score above it, and which pixels
    # lie above it, must be exactly as without; the others keep their plain
    # score, which is never below what the search would have given.
    from changedet import synthetic

    pair = synthetic.random_pair((400, 300), bands=4, seed=5, n_appeared=6,
                                 heights_m=(3.0, 9.0), dtype="uint16", n_vehicles=20,
                                 sun_after=synthetic.Sun(azimuth=200, elevation=35))
    b, a = np.asarray(pair.before, np.float32), np.asarray(pair.after, np.float32)
    params = fit_score(method, b, a, np.zeros(b.shape[1:], bool), tolerance=2)
    low = threshold_chi2(params.dof).low
    full = score_change(b, a, params)
    fast = score_change(b, a, params, exact_above=low)
    np.testing.assert_array_equal(fast > low, full > low)
    np.testing.assert_array_equal(fast[full > low], full[full > low])
    skipped = fast != full
    # The search did lower scores below the threshold: some were skipped.
    assert skipped.sum() > 5
    assert np.all(fast[skipped] <= low) and np.all(fast[skipped] > full[skipped])


def test_structure_uses_each_bands_own_dark_level_and_floor():
    # The score sums the bands' statistics: listing the bands in another
    # order (with their parameters) must not change it. It did when every
    # band was log-transformed with the first band's dark level and floor.
    from dataclasses import replace

    from changedet.scores import fit_structure, score_structure

    b, a = _noise_pair(shape=(2, 128, 128))
    b[1] += 5000
    a[1] += 5000
    a[1, 40:80, 40:80] += 60         # a change seen in the bright band only
    params = fit_structure(b, a, np.zeros((128, 128), bool), vegetation=None)
    log = params.log
    swapped = replace(params, log=replace(
        log, dark=log.dark[::-1], floor=log.floor[::-1], sigma=log.sigma[::-1]))
    score = score_structure(b, a, params)
    np.testing.assert_allclose(score_structure(b[::-1], a[::-1], swapped), score,
                               rtol=1e-5, atol=1e-5)
    assert score[38:82, 38:82].max() > threshold_chi2(1).high   # its outline is found


@pytest.mark.parametrize("radius", [1, 2, 3])
def test_tolerant_distance_is_the_nearest_match_both_ways(radius):
    from changedet.scores import _tolerant_distance

    rng = np.random.default_rng(radius)
    wa, wb = rng.normal(0, 1, (2, 3, 9, 11)).astype(np.float32)
    rows, cols = np.nonzero(rng.random((9, 11)) < 0.5)
    got = _tolerant_distance(wa, wb, rows, cols, radius)
    for k, (r, c) in enumerate(zip(rows, cols, strict=True)):
        ab = ba = np.inf
        for dy in range(-radius, radius + 1):
            for dx in range(-radius, radius + 1):
                if dx * dx + dy * dy <= radius * radius + radius:
                    rr, cc = min(max(r + dy, 0), 8), min(max(c + dx, 0), 10)
                    ab = min(ab, float(((wa[:, r, c] - wb[:, rr, cc]) ** 2).sum()))
                    ba = min(ba, float(((wb[:, r, c] - wa[:, rr, cc]) ** 2).sum()))
        assert got[k] == pytest.approx(np.sqrt(max(ab, ba)), rel=1e-5)


@pytest.mark.parametrize("radius", [1, 2, 3])
def test_dense_tolerant_search_is_the_candidate_search_bit_for_bit(radius):
    # A flood makes most of a strip candidates: every offset is then
    # compared over the whole strip, with the same values to the bit
    # (edges included, where the search by candidate clips its indices).
    from changedet.scores import _tolerant_distance, _tolerant_distance_dense

    rng = np.random.default_rng(radius)
    wa, wb = rng.normal(0, 1, (2, 4, 23, 31)).astype(np.float32)
    rows, cols = (v.ravel() for v in np.mgrid[0:23, 0:31])
    dense = _tolerant_distance_dense(wa, wb, radius)
    np.testing.assert_array_equal(dense[rows, cols], _tolerant_distance(wa, wb, rows, cols, radius))


def test_a_strip_mostly_candidates_is_searched_densely(monkeypatch):
    import changedet.scores as scores

    rng = np.random.default_rng(0)
    b = rng.normal(0, 1, (3, 40, 50)).astype(np.float32)
    a = b + rng.normal(0, 1, (3, 40, 50)).astype(np.float32)
    a[:, :30] += 5                                    # 60 % of the pixels changed
    nm = NoiseModel((0.0,) * 3, ((0.01, 0, 0), (0, 0.01, 0), (0, 0, 0.01)))
    calls = []
    real = scores._tolerant_distance_dense
    monkeypatch.setattr(scores, "_tolerant_distance_dense",
                        lambda *args: calls.append(1) or real(*args))
    dense = score_cva(b, a, nm, tolerance=2)
    monkeypatch.setattr(scores, "_DENSE_SHARE", 1.0)  # never dense
    sparse = score_cva(b, a, nm, tolerance=2)
    assert calls == [1]
    np.testing.assert_array_equal(dense, sparse)
