import warnings

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.warp import calculate_default_transform, reproject, transform_geom
from shapely.geometry import box, mapping, shape

import changedet
from changedet.errors import BandMismatchError, NoOverlapError, ROIError
from changedet.pipeline import PROPERTY_KEYS
from tests.conftest import (
    UTM,
    flat_pair,
    lawn_pair,
    pixel_polygons_to_map,
    utm_transform,
    write_tif,
)


def match_truth(result, pair, transform=None):
    """For each true structure: (best IoU, area ratio, class) of the best polygon.

    Geometries are compared on the before grid's CRS.
    """
    t = transform or utm_transform()
    truth = ([(g, "appeared") for g in pixel_polygons_to_map(pair.appeared, t)]
             + [(g, "disappeared") for g in pixel_polygons_to_map(pair.disappeared, t)])
    out = []
    for g, cls in truth:
        best = (0.0, 0.0, None)
        for q, props in zip(result.geometries, result.properties, strict=True):
            iou = g.intersection(q).area / g.union(q).area
            if iou > best[0]:
                best = (iou, q.area / g.area, props["change"], cls)
        out.append(best if best[2] else (0.0, 0.0, None, cls))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_inserted_structures_come_back_in_place_with_area_and_class(pair_files, seed):
    b, a, pair = pair_files(seed)
    result = changedet.detect(b, a)
    assert len(pair.appeared) + len(pair.disappeared) == 3
    matches = match_truth(result, pair)
    for iou, area_ratio, found, expected in matches:
        assert iou >= 0.8, matches
        assert area_ratio == pytest.approx(1.0, abs=0.15), matches
        assert found == expected, matches
    assert len(result) == len(matches), "a polygon that is not a true change"


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_radiometry_noise_and_shift_alone_give_no_polygons(pair_files, seed):
    b, a, _ = pair_files(seed, n_appeared=0, n_disappeared=0)
    result = changedet.detect(b, a)
    assert len(result) == 0
    assert result.to_geojson()["features"] == []
    assert set(np.unique(result.classes)) <= {0, 255}


def test_shift_removed_is_recorded(pair_files):
    b, a, pair = pair_files(0)
    result = changedet.detect(b, a)
    assert result.shift.reliable
    assert (result.shift.x, result.shift.y) == pytest.approx(pair.shift, abs=0.25)
    meta = result.metadata["coregistration"]
    assert meta["applied"] is True
    assert meta["shift_px"]["x"] == pytest.approx(result.shift.x, abs=1e-3)


def _reproject_file(src_path, dst_path, dst_crs, res_factor=1.0):
    with rasterio.open(src_path) as src:
        transform, width, height = calculate_default_transform(
            src.crs, dst_crs, src.width, src.height, *src.bounds)
        if res_factor != 1.0:
            from affine import Affine

            transform = transform @ Affine.scale(res_factor)
            width, height = int(width / res_factor) + 1, int(height / res_factor) + 1
        data = np.zeros((src.count, height, width), np.float32)
        reproject(rasterio.band(src, list(range(1, src.count + 1))), data,
                  dst_transform=transform, dst_crs=dst_crs, resampling=Resampling.cubic,
                  dst_nodata=0)
        profile = src.profile | dict(crs=dst_crs, transform=transform, width=width,
                                     height=height, dtype="float32", nodata=0,
                                     tiled=False)
        profile.pop("blockxsize", None)
        profile.pop("blockysize", None)
    with rasterio.open(dst_path, "w", **profile) as dst:
        dst.write(data)
    return dst_path


@pytest.mark.parametrize("crs, factor", [("EPSG:4326", 1.0), ("EPSG:3857", 0.8),
                                         ("EPSG:32652", 1.25)])
def test_after_in_another_crs_and_pixel_size_finds_the_same(pair_files, tmp_path, crs, factor):
    b, a, pair = pair_files(1)
    a2 = _reproject_file(a, tmp_path / "after_other.tif", CRS.from_user_input(crs), factor)
    ref = changedet.detect(b, a)
    other = changedet.detect(b, a2)
    assert other.grid.crs == UTM
    matches = match_truth(other, pair)
    for iou, _area_ratio, found, expected in matches:
        assert iou >= 0.7, matches
        assert found == expected, matches
    assert len(other) == len(ref)


@pytest.mark.parametrize("crs, factor", [("EPSG:4326", 1.0), ("EPSG:3857", 0.8)])
def test_after_in_another_crs_gives_the_same_result_in_any_blocks(pair_files, tmp_path,
                                                                    crs, factor):
    # Each block warps its own window of the after image: exact
    # transformation and a fixed kernel scale make the values, so the
    # result, independent of the windows.
    b, a, _ = pair_files(3)
    a2 = _reproject_file(a, tmp_path / "after_other.tif", CRS.from_user_input(crs), factor)
    one = changedet.detect(b, a2, block_size=4096)
    small = changedet.detect(b, a2, block_size=96, threads=2)
    assert len(one) >= 1
    np.testing.assert_allclose(small.score, one.score, atol=1e-3)   # was off by up to 2.3
    np.testing.assert_array_equal(small.classes, one.classes)
    assert [g.wkb for g in small.geometries] == [g.wkb for g in one.geometries]


def test_inputs_as_paths_datasets_and_arrays_agree(pair_files):
    b, a, pair = pair_files(2)
    r_path = changedet.detect(b, a)
    with rasterio.open(b) as bds, rasterio.open(a) as ads:
        r_ds = changedet.detect(bds, ads)
        assert not bds.closed  # a dataset we were given stays open
    r_arr = changedet.detect(changedet.Raster(pair.before, utm_transform(), "EPSG:32651"),
                             changedet.Raster(pair.after, utm_transform(), UTM))
    for r in (r_ds, r_arr):
        np.testing.assert_array_equal(r.classes, r_path.classes)
        assert r.properties == r_path.properties


def test_nodata_in_either_date_is_never_change(tmp_path):
    from scipy import ndimage

    pair = flat_pair(0)
    after = pair.after.copy()
    # Blank the after image around where structures appeared (with a margin
    # for the shift between the dates): there is no evidence there, so
    # there must be no change there.
    appeared = pair.truth == 1
    after[:, ndimage.binary_dilation(appeared, iterations=6)] = 0
    b = write_tif(tmp_path / "b.tif", pair.before)
    a = write_tif(tmp_path / "a.tif", after, nodata=0)
    r = changedet.detect(b, a)
    assert (r.classes[ndimage.binary_dilation(appeared, iterations=2)] == 255).all()
    assert not (r.classes == 1).any()
    # The removed building is still found.
    assert any(p["change"] == "disappeared" for p in r.properties)


def test_mask_band_is_honoured(tmp_path):
    pair = flat_pair(0)
    m = np.zeros(pair.truth.shape, bool)
    m[pair.truth > 0] = True
    b = write_tif(tmp_path / "b.tif", pair.before, mask=m)
    a = write_tif(tmp_path / "a.tif", pair.after)
    r = changedet.detect(b, a)
    assert len(r) == 0
    assert (r.classes[m] == 255).all()


def test_partial_overlap_works_on_the_overlap_only(tmp_path):
    pair = flat_pair(0, shape=(256, 256))
    b = write_tif(tmp_path / "b.tif", pair.before)
    # The after tile covers only the right 3/4 of the before tile.
    t = utm_transform()
    from affine import Affine

    a = write_tif(tmp_path / "a.tif", pair.after[:, :, 64:],
                  transform=t @ Affine.translation(64, 0))
    r = changedet.detect(b, a)
    assert r.grid.width == 192 and r.grid.height == 256
    assert r.grid.transform.c == pytest.approx(t.c + 64 * 0.5)


def test_no_overlap_is_an_error(tmp_path):
    pair = flat_pair(0, n_appeared=0, n_disappeared=0, shape=(64, 64))
    b = write_tif(tmp_path / "b.tif", pair.before)
    a = write_tif(tmp_path / "a.tif", pair.after,
                  transform=utm_transform(origin=(900000.0, 4322620.0)))
    with pytest.raises(NoOverlapError, match="do not overlap"):
        changedet.detect(b, a)


def test_roi_limits_what_is_processed_and_reported(pair_files):
    b, a, pair = pair_files(0)
    t = utm_transform()
    target = pixel_polygons_to_map(pair.appeared, t)[0]
    roi = transform_geom(UTM, "EPSG:4326", mapping(target.buffer(6)))
    r = changedet.detect(b, a, roi=roi)
    assert len(r) == 1
    assert r.geometries[0].intersects(target)
    assert r.grid.width < 256 and r.grid.height < 256
    # bbox of the same area does the same.
    w, s, e, n = shape(roi).bounds
    r2 = changedet.detect(b, a, bbox=(w, s, e, n))
    assert len(r2) == 1


def test_roi_outside_the_images_is_an_error(pair_files):
    b, a, _ = pair_files(0)
    with pytest.raises(ROIError):
        changedet.detect(b, a, bbox=(10.0, 10.0, 10.001, 10.001))


def test_band_mismatch_needs_bands(tmp_path):
    p3 = flat_pair(0, bands=3)
    p4 = flat_pair(0, bands=4)
    b = write_tif(tmp_path / "b.tif", p3.before)
    a = write_tif(tmp_path / "a.tif", p4.after)
    with pytest.raises(BandMismatchError, match="--bands"):
        changedet.detect(b, a)
    r = changedet.detect(b, a, bands=[1, 2, 3])
    assert r.metadata["options"]["bands"] == [1, 2, 3]
    assert len(r) == 3


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
@pytest.mark.parametrize("bands", [1, 3, 4])
def test_dtypes_and_band_counts(tmp_path, dtype, bands):
    pair = flat_pair(4, bands=bands, dtype=dtype, n_appeared=1, n_disappeared=0)
    b = write_tif(tmp_path / "b.tif", pair.before)
    a = write_tif(tmp_path / "a.tif", pair.after)
    r = changedet.detect(b, a)
    (iou, _, found, _), = match_truth(r, pair)
    assert iou >= 0.8 and found == "appeared"


def test_properties_are_complete_and_plain(pair_files):
    b, a, _ = pair_files(0)
    r = changedet.detect(b, a)
    for p in r.properties:
        assert tuple(p) == PROPERTY_KEYS
        assert p["change"] in ("appeared", "disappeared", "changed")
        assert isinstance(p["area_m2"], float) and p["area_m2"] >= 30
        assert isinstance(p["pixels"], int)
        assert p["area_m2"] == pytest.approx(p["pixels"] * 0.25)
        assert p["score_max"] >= p["score_mean"] > 0


def test_min_area_drops_smaller_changes(pair_files):
    b, a, _ = pair_files(0)
    r = changedet.detect(b, a)
    smallest = min(p["area_m2"] for p in r.properties)
    r2 = changedet.detect(b, a, min_area=smallest + 1)
    assert len(r2) == len(r) - 1


def test_coreg_none_records_no_shift(pair_files):
    b, a, _ = pair_files(0, n_appeared=0, n_disappeared=0)
    r = changedet.detect(b, a, coreg="none")
    assert r.metadata["coregistration"]["applied"] is False
    assert r.shift.x == 0 and r.shift.y == 0


def test_unreliable_shift_warns_and_is_not_applied(tmp_path):
    rng = np.random.default_rng(0)
    b = write_tif(tmp_path / "b.tif", (rng.random((3, 128, 128)) * 255).astype("uint8"))
    a = write_tif(tmp_path / "a.tif", (rng.random((3, 128, 128)) * 255).astype("uint8"))
    with pytest.warns(changedet.UnreliableShiftWarning, match="no reliable shift"):
        r = changedet.detect(b, a)
    assert r.metadata["coregistration"]["applied"] is False


@pytest.mark.parametrize("option, value", [("coreg", "local-ish"), ("normalise", "magic"),
                                           ("method", "deep"), ("threshold", "max"),
                                           ("min_area", -1)])
def test_bad_options_list_what_is_allowed(pair_files, option, value):
    b, a, _ = pair_files(0)
    with pytest.raises(ValueError):
        changedet.detect(b, a, **{option: value})


def test_inputs_are_not_modified(pair_files):
    b, a, _ = pair_files(0)
    before_bytes, after_bytes = b.read_bytes(), a.read_bytes()
    with warnings.catch_warnings():
        changedet.detect(b, a).to_geojson()
    assert b.read_bytes() == before_bytes and a.read_bytes() == after_bytes


def test_local_coregistration_removes_rotation_and_scale_blockwise(tmp_path):
    import math as _m

    from scipy import ndimage

    from changedet.synthetic import Sensor

    p = flat_pair(2, shape=(384, 384), n_appeared=2, n_disappeared=1,
                  sensor_after=Sensor(noise=0.008))
    # The after image rotated by 0.3 degrees and scaled by 1.001 about its
    # centre, and shifted: content moves by up to ~1.5 px at the corners.
    th, s = _m.radians(0.3), 1.001
    m = np.array([[_m.cos(th), -_m.sin(th)], [_m.sin(th), _m.cos(th)]]) / s
    c = np.array([191.5, 191.5])
    offset = c - m @ c + np.array([0.7, -0.4])
    after = np.stack([ndimage.affine_transform(band.astype(np.float32), m, offset, order=3,
                                               mode="nearest") for band in p.after])
    b = write_tif(tmp_path / "b.tif", p.before)
    a = write_tif(tmp_path / "a.tif", np.clip(after, 0, 255).astype(np.uint8))
    r = changedet.detect(b, a, coreg="local")
    meta = r.metadata["coregistration"]
    assert meta["model"] == "affine" and meta["applied"] is True
    assert abs(meta["rotation_deg"]) == pytest.approx(0.3, abs=0.03)
    matches = match_truth(r, p)
    assert all(iou >= 0.75 and found == expected for iou, _, found, expected in matches)
    assert len(r) == 3
    small = changedet.detect(b, a, coreg="local", block_size=128)
    np.testing.assert_array_equal(small.classes, r.classes)


def test_diff_can_only_collect_the_polygons(pair_files, tmp_path):
    b, a, _ = pair_files(0)
    written = changedet.diff(b, a, tmp_path / "c.geojson", collect=True)
    collected = changedet.diff(b, a, collect=True)   # no GeoJSON made
    assert collected.count == written.count == len(collected.geometries) > 0
    assert [g.wkb for g in collected.geometries] == [g.wkb for g in written.geometries]
    assert collected.properties == written.properties
    assert (collected.valid_pixels, collected.changed_pixels) == \
        (written.valid_pixels, written.changed_pixels)
    assert 0 < collected.changed_pixels < collected.valid_pixels
    assert not list(tmp_path.glob("*.part"))
    with pytest.raises(ValueError, match="output path or a stream"):
        changedet.diff(b, a)


def _lawn_files(tmp_path):
    b, a = (np.clip(im, 1, 255).astype(np.uint8) for im in lawn_pair())
    return write_tif(tmp_path / "b.tif", b), write_tif(tmp_path / "a.tif", a)


@pytest.mark.parametrize("bands", [None, [1, 2, 4], [4, 1, 2, 3]])
def test_the_season_on_a_lawn_is_no_change_whichever_bands_hold_red_and_nir(tmp_path, bands):
    # The vegetation gate follows red (band 1) and NIR (band 4) of a
    # four-band image wherever --bands puts them: it had read the stack
    # itself as R, G, B, NIR, so bands 1,2,4 had no gate and 4,1,2,3 took
    # NIR for red, and the dried lawn was change.
    b, a = _lawn_files(tmp_path)
    r = changedet.detect(b, a, bands=bands, coreg="none")
    veg = r.metadata["score"]["vegetation"]
    order = bands or [1, 2, 3, 4]
    assert veg is not None and (order[veg["red"]], order[veg["nir"]]) == (1, 4)
    roof, = pixel_polygons_to_map([box(60, 60, 90, 90)], utm_transform())
    assert len(r.geometries) == 1                  # the roof, not the lawn
    assert r.geometries[0].intersection(roof).area / r.geometries[0].union(roof).area > 0.8


def test_stacks_without_red_and_nir_get_no_vegetation_gate(tmp_path):
    b, a = _lawn_files(tmp_path)
    r = changedet.detect(b, a, bands=[4, 3, 2], coreg="none")
    assert r.metadata["score"]["vegetation"] is None


@pytest.mark.parametrize("orientation", ["south-up", "mirrored", "rotated 90"])
def test_a_grid_in_any_orientation_gives_the_same_polygons(tmp_path, orientation):
    # The same map content stored south-up (rows run north), mirrored
    # (columns run west) or with rows and columns swapped: rasterio's
    # from_bounds refused the first two and divided by zero on the third.
    p = flat_pair(2, shape=(160, 160), n_appeared=2, n_disappeared=1)
    t = utm_transform()
    h, w = p.before.shape[1:]
    if orientation == "south-up":
        flip, t2 = (lambda a: a[:, ::-1, :]), t @ Affine.translation(0, h) @ Affine.scale(1, -1)
    elif orientation == "mirrored":
        flip, t2 = (lambda a: a[:, :, ::-1]), t @ Affine.translation(w, 0) @ Affine.scale(-1, 1)
    else:
        flip, t2 = (lambda a: a.transpose(0, 2, 1)), t @ Affine(0, 1, 0, 1, 0, 0)
    runs = []
    for name, tr, f in (("n", t, lambda a: a), ("o", t2, flip)):
        b = write_tif(tmp_path / f"{name}_b.tif", np.ascontiguousarray(f(p.before)),
                      transform=tr)
        a = write_tif(tmp_path / f"{name}_a.tif", np.ascontiguousarray(f(p.after)),
                      transform=tr)
        runs.append(changedet.detect(b, a))
    north, other = runs
    assert len(north.geometries) >= 2 and len(other.geometries) == len(north.geometries)
    for g, props in zip(north.geometries, north.properties, strict=True):
        match = [(o, q) for o, q in zip(other.geometries, other.properties, strict=True)
                 if shape(o).intersects(shape(g))]
        assert len(match) == 1
        o, q = match[0]
        assert q["change"] == props["change"]
        assert shape(o).intersection(shape(g)).area / shape(g).union(shape(o)).area > 0.95
        assert q["area_m2"] == pytest.approx(props["area_m2"], rel=0.05)


def test_date_order_warning_and_its_switch(tmp_path):
    # The sample pair swapped: diff warns; a caller that orders its dates
    # itself (series) turns the check off, without touching warning filters.
    from tests.conftest import SAMPLE

    before, after = SAMPLE / "square_before.tif", SAMPLE / "square_after.tif"
    with pytest.warns(changedet.DateOrderWarning, match="are BEFORE and AFTER swapped"):
        changedet.diff(after, before, collect=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", changedet.DateOrderWarning)
        s = changedet.diff(after, before, collect=True, check_dates=False)
    assert s.counts["disappeared"] > s.counts["appeared"]
