import json

import numpy as np
import pytest
from affine import Affine
from scipy import ndimage

from changedet import coreg
from changedet.coreg import (
    Alignment,
    ArrayReader,
    Shift,
    apply_alignment,
    estimate_alignment,
    estimate_shift,
    fit_affine,
    matching_image,
)
from changedet.grid import Grid
from changedet.synthetic import Sensor, Sun, quantise, random_pair
from tests.conftest import utm_transform


def shifted_pair(dx, dy, *, bands=3, dtype="uint8", seed=3, gain=1.0, offset=0.0,
                 shape=(256, 256), n_appeared=0, **sensor):
    """The same static scene twice, the second displaced by (dx, dy) pixels."""
    p = random_pair(shape, bands=bands, seed=seed, n_static=8 * (shape[0] * shape[1]) // 65536,
                    n_appeared=n_appeared, n_disappeared=0, heights_m=(4, 10), sun_before=Sun(),
                    sun_after=Sun(), sensor_after=Sensor(shift=(dx, dy), gain=(gain,) * 4,
                                                         offset=(offset,) * 4, **sensor),
                    dtype="float32")
    return quantise(p.before, dtype), quantise(p.after, dtype)


def tile_rmse(fitted: Affine, truth: Affine, shape) -> float:
    """RMS distance between two alignments' displacements over every pixel."""
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]] + 0.5
    fx, fy = Alignment(pixel_transform=fitted).displacement(cols, rows)
    tx, ty = Alignment(pixel_transform=truth).displacement(cols, rows)
    return float(np.sqrt(np.mean((fx - tx) ** 2 + (fy - ty) ** 2)))


def affine_truth(shape, rotation=0.3, scale=1.001, shift=(3.3, -1.7)) -> Affine:
    """Where before-grid content sits in the after image: rotated and scaled about the centre."""
    h, w = shape
    return (Affine.translation(*shift) @ Affine.translation(w / 2, h / 2)
            @ Affine.rotation(rotation) @ Affine.scale(scale) @ Affine.translation(-w / 2, -h / 2))


# -- global ----------------------------------------------------------------------

@pytest.mark.parametrize("dx, dy", [(0.0, 0.0), (3.4, -2.7), (-7.25, 4.5), (0.3, 0.6),
                                    (-12.8, -9.1), (0.05, -0.45)])
def test_known_shift_comes_back(dx, dy):
    b, a = shifted_pair(dx, dy, dtype="float32")
    s = estimate_shift(b, a)
    assert s.reliable
    assert s.x == pytest.approx(dx, abs=0.05)
    assert s.y == pytest.approx(dy, abs=0.05)


@pytest.mark.parametrize("dx, dy", [(41.3, -22.6), (-63.4, 60.2)])
def test_large_shifts_up_to_a_quarter_of_the_width(dx, dy):
    b, a = shifted_pair(dx, dy, dtype="float32")
    s = estimate_shift(b, a)
    assert s.reliable
    assert (s.x, s.y) == pytest.approx((dx, dy), abs=0.05)


@pytest.mark.parametrize("ox, oy", [(300, -200), (-1100, 1050)])
def test_large_shift_on_a_large_overlap(ox, oy, monkeypatch):
    # The coarse search looks at the overlap's central 2048 px first; a shift
    # beyond what that region can tell (it aliases one over 1024 px) is
    # found on the whole overlap.
    m, n = 1100, 2600
    tex = ndimage.gaussian_filter(np.random.default_rng(5).random((n + 2 * m,) * 2,
                                                                   np.float32), 3)
    b = tex[m:m + n, m:m + n]
    a = tex[m + oy:m + oy + n, m + ox:m + ox + n]
    searched = []
    coarse_in = coreg._coarse_in
    monkeypatch.setattr(coreg, "_coarse_in", lambda rb, ra, region, psr: searched.append(
        int(region.width)) or coarse_in(rb, ra, region, psr))
    s = estimate_shift(b, a)
    assert s.reliable
    assert (s.x, s.y) == pytest.approx((-ox, -oy), abs=0.05)
    assert searched == ([2048] if abs(ox) < 512 else [2048, n])


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
@pytest.mark.parametrize("bands", [1, 3, 4])
def test_dtypes_and_bands(dtype, bands):
    b, a = shifted_pair(1.6, -0.4, bands=bands, dtype=dtype)
    s = estimate_shift(b, a)
    assert (s.x, s.y) == pytest.approx((1.6, -0.4), abs=0.05)


def test_sign_convention_matches_the_documented_corner_example():
    # A bright square's corner at col 100, row 50 in before sits at col 103,
    # row 47 in after: the shift is (+3, -3).
    b = np.zeros((200, 200), np.float32)
    b[50:90, 100:150] = 1
    b = ndimage.gaussian_filter(b, 1) + ndimage.gaussian_filter(
        np.random.default_rng(0).random((200, 200)), 3).astype(np.float32)
    a = np.roll(b, (-3, 3), axis=(0, 1))
    s = estimate_shift(b, a)
    assert (s.x, s.y) == pytest.approx((3, -3), abs=0.05)


def test_gain_and_offset_do_not_move_the_answer():
    b, a = shifted_pair(2.2, 1.1, dtype="float32")
    s0 = estimate_shift(b, a)
    _, a2 = shifted_pair(2.2, 1.1, dtype="float32", gain=1.4, offset=0.1)
    s1 = estimate_shift(b, a2)
    assert abs(s1.x - s0.x) < 0.1 and abs(s1.y - s0.y) < 0.1


def test_haze_blur_noise_and_new_buildings_do_not_move_the_answer():
    b, a = shifted_pair(-2.35, 1.8, dtype="uint16", shape=(384, 384))
    _, a2 = shifted_pair(-2.35, 1.8, dtype="uint16", shape=(384, 384), n_appeared=4,
                         haze=0.15, blur=1.1, noise=0.02, gain=0.8, offset=0.05)
    s0, s1 = estimate_shift(b, a), estimate_shift(b, a2)
    assert s1.reliable
    assert abs(s1.x - s0.x) < 0.1 and abs(s1.y - s0.y) < 0.1
    assert (s1.x, s1.y) == pytest.approx((-2.35, 1.8), abs=0.1)


def test_a_cloud_over_one_window_does_not_drag_the_consensus():
    b, a = shifted_pair(1.25, -3.5, dtype="float32", shape=(384, 384))
    clouded = a.copy()
    yy, xx = np.mgrid[0:384, 0:384]
    # A bright, soft-edged cloud over the upper-left window, in after only.
    cloud = np.clip(1.5 - np.hypot(yy - 70, xx - 70) / 50, 0, 1).astype(np.float32)
    clouded = clouded * (1 - cloud) + 0.9 * cloud
    s = estimate_shift(b, clouded)
    assert s.reliable and s.windows == 9
    assert (s.x, s.y) == pytest.approx((1.25, -3.5), abs=0.05)


@pytest.mark.parametrize("kind", ["noise", "constant"])
@pytest.mark.parametrize("mode", ["global", "local"])
def test_featureless_pairs_are_unreliable(kind, mode):
    rng = np.random.default_rng(1)
    if kind == "noise":
        b, a = rng.random((256, 256)), rng.random((256, 256))
    else:
        b = a = np.full((256, 256), 7.0)
    al = estimate_alignment(b, a, mode=mode)
    assert not al.reliable
    assert al.reliability < 0.2
    assert al.note  # and it says why


def test_noise_is_unreliable_even_when_smoothed_like_texture():
    rng = np.random.default_rng(5)
    b = ndimage.gaussian_filter(rng.random((256, 256)), 2)
    a = ndimage.gaussian_filter(rng.random((256, 256)), 2)  # unrelated texture
    assert not estimate_shift(b, a).reliable


def test_too_little_overlap_is_refused_with_a_reason():
    rng = np.random.default_rng(0)
    img = ndimage.gaussian_filter(rng.random((24, 24)), 1)
    al = estimate_alignment(img, img)
    assert not al.reliable
    assert "share only" in al.note


def test_invalid_pixels_are_ignored():
    b, a = shifted_pair(1.5, 2.0, dtype="float32")
    inv = np.zeros(b.shape[1:], bool)
    inv[:, :60] = True
    a = a.copy()
    a[:, inv] = 1000.0  # garbage under the mask must not matter
    s = estimate_shift(b, a, invalid_after=inv)
    assert (s.x, s.y) == pytest.approx((1.5, 2.0), abs=0.1)


def test_shift_in_map_units_is_east_north():
    g = Grid(utm_transform(0.5), None, 10, 10)
    assert Shift(x=2.0, y=-4.0).to_map(g) == (1.0, 2.0)


def test_matching_image_ignores_gain_and_offset():
    rng = np.random.default_rng(0)
    img = ndimage.gaussian_filter(rng.random((3, 64, 64)), (0, 2, 2)).astype(np.float32)
    np.testing.assert_allclose(matching_image(img), matching_image(img * 3 + 5), atol=1e-4)


def test_inputs_are_not_modified():
    b, a = shifted_pair(1.0, 1.0, dtype="uint16")
    b0, a0 = b.copy(), a.copy()
    estimate_alignment(b, a, mode="local")
    np.testing.assert_array_equal(b, b0)
    np.testing.assert_array_equal(a, a0)


@pytest.mark.parametrize("kwargs", [{"mode": "sideways"}, {"window": 4}])
def test_bad_options_raise_value_error(kwargs):
    b = np.zeros((64, 64))
    with pytest.raises(ValueError, match="mode must be one of|window must be"):
        estimate_alignment(b, b, **kwargs)


def test_shapes_must_match():
    with pytest.raises(ValueError, match="differ in shape"):
        estimate_alignment(np.zeros((64, 64)), np.zeros((64, 65)))


# -- local -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def affine_pair():
    p = random_pair((512, 512), bands=3, seed=0, n_static=14, n_appeared=3, n_disappeared=2,
                    sizes_m=(8, 30), heights_m=(3, 10),
                    sensor_after=Sensor(gain=(1.2, 1.1, 0.9, 1), offset=(0.05, 0.03, 0.02, 0),
                                        haze=0.1, blur=0.9, noise=0.01), dtype="float32")
    truth = affine_truth((512, 512))
    # after(q) = scene(truth^-1 q): resample the scene by the inverse.
    after, _ = apply_alignment(p.after, Alignment(pixel_transform=~truth))
    return p.before, after, truth


def test_local_mode_recovers_rotation_scale_and_shift(affine_pair):
    before, after, truth = affine_pair
    al = estimate_alignment(before, after, mode="local")
    assert al.reliable and al.model == "affine"
    assert tile_rmse(al.pixel_transform, truth, before.shape[1:]) <= 0.1
    assert al.to_dict()["rotation_deg"] == pytest.approx(0.3, abs=0.01)
    assert al.tie_points.inlier.sum() >= 0.8 * len(al.tie_points)
    # A single translation cannot do this well: the rotation moves corners by > 1 px.
    g = estimate_alignment(before, after, mode="global")
    assert tile_rmse(g.pixel_transform, truth, before.shape[1:]) > 0.8


def test_local_mode_starts_from_an_affine_when_no_single_shift_fits():
    # Rotated enough that the global windows disagree by more than a pixel:
    # global mode must say so and point to local mode; local must not give up.
    p = random_pair((768, 768), bands=3, seed=3, n_static=30, n_appeared=4, n_disappeared=3,
                    sizes_m=(8, 30), heights_m=(3, 10), dtype="float32")
    truth = affine_truth((768, 768), rotation=0.6, shift=(-4.2, 2.9))
    after, _ = apply_alignment(p.after, Alignment(pixel_transform=~truth))
    g = estimate_alignment(p.before, after, mode="global")
    assert not g.reliable and "local" in g.note
    al = estimate_alignment(p.before, after, mode="local")
    assert al.reliable and al.model == "affine"
    assert tile_rmse(al.pixel_transform, truth, (768, 768)) <= 0.1
    assert al.to_dict()["rotation_deg"] == pytest.approx(0.6, abs=0.01)


def test_local_mode_on_a_pure_shift_fits_a_near_identity_affine():
    b, a = shifted_pair(2.6, -1.15, dtype="float32", shape=(384, 384))
    al = estimate_alignment(b, a, mode="local")
    assert al.reliable
    assert tile_rmse(al.pixel_transform, Affine.translation(2.6, -1.15), (384, 384)) < 0.05


def test_for_window_is_the_alignment_seen_from_a_block():
    m = affine_truth((512, 512))
    al = Alignment(pixel_transform=m)
    local = al.for_window(100, 40)
    p = np.array([7.5, 3.25])
    q_local = np.array(local @ tuple(p))
    q_global = np.array(m @ tuple(p + [100, 40]))
    np.testing.assert_allclose(q_local + [100, 40], q_global)


def test_apply_alignment_undoes_a_known_shift():
    b, a = shifted_pair(3.0, -2.0, dtype="float32")
    out, inv = apply_alignment(a, Alignment(pixel_transform=Affine.translation(3.0, -2.0)))
    inner = (slice(None), slice(16, -16), slice(16, -16))
    assert not inv[16:-16, 16:-16].any()
    assert np.abs(out[inner] - b[inner]).mean() < 0.5 * np.abs(a[inner] - b[inner]).mean()


def test_fit_affine_rejects_gross_outliers():
    rng = np.random.default_rng(2)
    col, row = rng.uniform(0, 1000, 200), rng.uniform(0, 1000, 200)
    truth = affine_truth((1000, 1000))
    q = np.array([truth @ (c, r) for c, r in zip(col, row, strict=True)])
    dx, dy = q[:, 0] - col, q[:, 1] - row
    bad = rng.random(200) < 0.25
    dx[bad] += rng.uniform(-20, 20, bad.sum())
    dy[bad] += rng.uniform(-20, 20, bad.sum())
    fitted, inlier, _ = fit_affine(col, row, dx, dy)
    assert tile_rmse(fitted, truth, (1000, 1000)) < 1e-6
    assert not inlier[bad].any() and inlier[~bad].all()


def test_array_reader_decimates_by_valid_mean():
    data = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    inv = np.zeros((4, 4), bool)
    inv[0, 0] = True
    from rasterio.windows import Window

    out, low = ArrayReader(data, inv).read(Window(0, 0, 4, 4), factor=2)
    assert out[0, 0, 0] == pytest.approx((1 + 4 + 5) / 3)
    assert out[0, 1, 1] == pytest.approx((10 + 11 + 14 + 15) / 4)
    assert not low.any()


def test_alignment_to_dict_is_plain_json(affine_pair):
    before, after, _ = affine_pair
    d = estimate_alignment(before, after, mode="local").to_dict(
        Grid(utm_transform(0.5), None, 512, 512))
    text = json.dumps(d, allow_nan=False)
    assert {"mode", "model", "shift_px", "reliability", "reliable", "rmse_px"} <= set(d)
    assert json.loads(text)["model"] == "affine"


def test_a_minority_of_agreeing_windows_beats_a_majority_of_noise():
    # A small scene with every nuisance: most of the nine windows lock onto
    # shadows, new buildings or texture and disagree wildly; three agree on
    # the true shift. The median and its spread would be dragged off by
    # several pixels; the densest cluster is not.
    from changedet.coreg import estimate_alignment
    from changedet.synthetic import scenario_pair

    p = scenario_pair("all", seed=6, shape=(192, 192), bands=4)
    al = estimate_alignment(p.before.astype(np.float32), p.after.astype(np.float32))
    assert al.reliable
    assert (al.shift.x, al.shift.y) == pytest.approx(p.shift, abs=0.3)


@pytest.mark.parametrize("n", [1, 2, 3, 16, 17, 255, 512, 2048])
def test_tukey_window_is_scipys(n):
    from scipy.signal.windows import tukey

    np.testing.assert_allclose(coreg._tukey(n), tukey(n, 0.25), atol=1e-7)


def _tiles_of(v, size, tile, phase):
    # The tiles a window [v, v + size) meets, and its distance from their edges.
    first, last = (v - phase) // tile, (v + size - 1 - phase) // tile
    return last - first + 1, (v - phase) % tile, (first + (last - first + 1)) * tile + phase - (
        v + size)


@pytest.mark.parametrize("tiles, span_tiles", [((512, 512, 0, 0), 1), ((512, 512, 412, 412), 1),
                                              ((256, 256, 0, 0), 2), ((256, 512, 100, 0), 2)])
def test_global_windows_are_moved_inside_the_files_tiles(tiles, span_tiles):
    # A 512 px window anywhere on 512 px tiles meets four: both images then
    # decode four tiles for one's worth of pixels.
    cs = np.array([0, 3840, 7680])
    rs = np.array([0, 3840, 7679])
    size, new_cs, new_rs = coreg._inside_tiles(512, cs, rs, (0, 8192, 0, 8191), tiles)
    assert size == 448
    th, tw, row0, col0 = tiles
    for values, tile, phase in ((new_cs, tw, col0), (new_rs, th, row0)):
        assert len(set(values)) == 3
        for v in values:
            count, before, after = _tiles_of(int(v), size, tile, phase)
            assert count == -(-448 // tile) and before >= 32 and after >= 32
    # Each window stays near where the lattice put it.
    assert np.abs(new_cs - cs).max() <= 512 and np.abs(new_rs - rs).max() <= 512


def test_global_windows_stay_put_where_tiles_cannot_hold_them_apart():
    cs = np.array([0, 256, 512])
    # Two windows would share a 512 px tile of a 1024 px overlap.
    assert coreg._inside_tiles(512, cs, cs, (0, 1024, 0, 1024), (512, 512, 0, 0)) == (512, cs, cs)
    # 1024 px tiles hold a 512 px window anywhere in their middle, and 100 px
    # tiles would shrink it below 7/8 (400 + 64 > 448): left alone.
    size, _, _ = coreg._inside_tiles(512, cs * 8, cs * 8, (0, 8192, 0, 8192), (1024, 1024, 0, 0))
    assert size == 512
    assert coreg._inside_tiles(512, cs * 8, cs * 8, (0, 8192, 0, 8192),
                               (100, 100, 0, 0))[0] == 512
