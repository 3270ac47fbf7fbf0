import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.windows import Window
from scipy import ndimage

from changedet import io
from changedet.errors import InputError, OutputError, OutputExistsError, RasterReadError, ROIError
from changedet.grid import Grid
from tests.conftest import UTM, utm_transform, write_tif


def test_write_text_failing_half_way_leaves_nothing(tmp_path):
    out = tmp_path / "out.geojson"

    def chunks():
        yield '{"type": "FeatureCollection", "features": ['
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        io.write_text(out, chunks())
    assert list(tmp_path.iterdir()) == []


def test_write_text_failing_half_way_keeps_the_old_file(tmp_path):
    out = tmp_path / "out.geojson"
    out.write_text("old")

    def chunks():
        yield "new, partial"
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        io.write_text(out, chunks(), overwrite=True)
    assert out.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.geojson"]


def test_raster_write_failure_leaves_nothing(tmp_path, monkeypatch):
    out = tmp_path / "mask.tif"
    grid = Grid(utm_transform(), UTM, 64, 64)

    def broken_copy(*args, **kwargs):
        with open(args[1], "wb") as f:
            f.write(b"II*\x00partial")
        raise rasterio.errors.RasterioIOError("write failed")

    monkeypatch.setattr(rasterio.shutil, "copy", broken_copy)
    with pytest.raises(OutputError, match="mask.tif"):
        io.write_class_raster(np.zeros((64, 64), np.uint8), grid, out)
    assert list(tmp_path.iterdir()) == []


def test_class_raster_round_trip(tmp_path):
    grid = Grid(utm_transform(), UTM, 96, 80)
    classes = np.zeros(grid.shape, np.uint8)
    classes[10:20, 30:40] = 1
    classes[:, :5] = 255
    io.write_class_raster(classes, grid, tmp_path / "c.tif")
    with rasterio.open(tmp_path / "c.tif") as ds:
        np.testing.assert_array_equal(ds.read(1), classes)
        assert ds.transform == grid.transform and ds.crs == UTM and ds.nodata == 255
        assert "CLASSES" in ds.tags()


def test_class_overview_keeps_change_visible():
    c = np.array([[0, 0, 255, 255, 2, 1, 0, 3, 0, 0],
                  [0, 1, 255, 255, 2, 1, 3, 2, 0, 255]], np.uint8)
    # one appeared pixel among no change; all nodata; a tie between two
    # classes (the first wins); changed most often; no change beside nodata.
    np.testing.assert_array_equal(io.class_overview(c), [[1, 255, 1, 3, 0]])
    assert io.class_overview(np.zeros((4, 6), np.uint8)).shape == (2, 3)


def test_class_raster_overviews_are_made_level_from_level(tmp_path):
    # Odd sides: levels halving (rounded up: odd edges padded as nodata)
    # until both sides are 512 or less, each the class_overview of the one
    # before.
    grid = Grid(utm_transform(), UTM, 1101, 2100)
    rng = np.random.default_rng(3)
    classes = np.zeros(grid.shape, np.uint8)
    for r, c in rng.integers(0, 1050, (40, 2)):
        classes[r:r + rng.integers(1, 30), c:c + rng.integers(1, 30)] = rng.integers(1, 4)
    classes[:200, :90] = 255
    io.write_class_raster(classes, grid, tmp_path / "c.tif")
    with rasterio.open(tmp_path / "c.tif") as ds:
        assert ds.overviews(1) == [2, 4, 8]  # 1050 x 551, 525 x 276, 263 x 138
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        np.testing.assert_array_equal(ds.read(1), classes)
    level = classes
    for i in range(3):
        padded = np.pad(level, ((0, level.shape[0] % 2), (0, level.shape[1] % 2)),
                        constant_values=255)
        level = io.class_overview(padded)
        with rasterio.open(tmp_path / "c.tif", OVERVIEW_LEVEL=i) as ov:
            np.testing.assert_array_equal(ov.read(1), level)
    # Every structure still shows at the coarsest level.
    assert (level == 0).sum() < level.size and {1, 2, 3} <= set(np.unique(level).tolist())
    assert list(tmp_path.iterdir()) == [tmp_path / "c.tif"]


def test_failure_while_making_overviews_leaves_nothing(tmp_path, monkeypatch):
    grid = Grid(utm_transform(), UTM, 1200, 1100)      # two levels
    real, calls = io._reduce_level, []

    def second_fails(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 2:
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(io, "_reduce_level", second_fails)
    with pytest.raises(OutputError, match="c.tif"):
        io.write_class_raster(np.ones(grid.shape, np.uint8), grid, tmp_path / "c.tif")
    assert len(calls) == 2 and list(tmp_path.iterdir()) == []


def test_reduce_needs_a_sparse_single_band_raster(tmp_path):
    grid = Grid(utm_transform(), UTM, 64, 64)
    for kwargs in ({}, {"sparse": True, "count": 2}):
        with pytest.raises(ValueError, match="sparse raster only"):
            io.RasterBlockWriter(tmp_path / "c.tif", grid, dtype="uint8", nodata=255,
                                 reduce=io.class_overview, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_outputs_are_deterministic(tmp_path):
    grid = Grid(utm_transform(), UTM, 64, 64)
    classes = (np.arange(64 * 64).reshape(64, 64) % 4).astype(np.uint8)
    io.write_class_raster(classes, grid, tmp_path / "a.tif")
    io.write_class_raster(classes, grid, tmp_path / "b.tif")
    assert (tmp_path / "a.tif").read_bytes() == (tmp_path / "b.tif").read_bytes()


@pytest.mark.parametrize("case", ["exists", "is_input", "folder_missing", "is_dir"])
def test_check_output_path(tmp_path, case):
    src = write_tif(tmp_path / "in.tif", np.zeros((1, 16, 16), np.uint8))
    target = {
        "exists": tmp_path / "in.tif",
        "is_input": tmp_path / "in.tif",
        "folder_missing": tmp_path / "nope" / "out.geojson",
        "is_dir": tmp_path,
    }[case]
    inputs = [src] if case == "is_input" else []
    overwrite = case == "is_input"
    with pytest.raises(OutputError) as err:
        io.check_output_path(target, overwrite=overwrite, inputs=inputs)
    assert str(target.name) in str(err.value) or str(target) in str(err.value)
    if case == "exists":
        assert isinstance(err.value, OutputExistsError) and isinstance(err.value, FileExistsError)


def test_unwritable_folder(tmp_path, monkeypatch):
    # Permission bits do not stop root (CI runs as root), so ask os.access
    # to answer as it would for an ordinary user.
    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(ro)
                        else real_access(p, mode))
    with pytest.raises(OutputError, match="not writable"):
        io.check_output_path(ro / "out.geojson")


def test_missing_and_unreadable_inputs(tmp_path):
    with pytest.raises(RasterReadError, match="no such file"):
        with io.open_raster(tmp_path / "missing.tif"):
            pass
    junk = tmp_path / "junk.tif"
    junk.write_text("not a raster")
    with pytest.raises(RasterReadError, match="cannot be read as a raster"):
        with io.open_raster(junk):
            pass


def test_read_warped_marks_outside_and_nodata_invalid(tmp_path):
    data = np.full((2, 64, 64), 100, np.uint16)
    data[:, :8, :8] = 0
    src = write_tif(tmp_path / "s.tif", data, nodata=0)
    # A destination grid sticking out 16 px left of the source.
    grid = Grid(utm_transform() @ Affine.translation(-16, 0), UTM, 64, 64)
    with rasterio.open(src) as ds:
        out, invalid = io.read_warped(ds, grid)
    assert out.dtype == np.float32 and out.shape == (2, 64, 64)
    assert invalid[:, :16].all()
    assert invalid[:8, 16:24].all()
    assert not invalid[20:, 30:].any()
    np.testing.assert_allclose(out[:, 20:, 30:], 100)
    assert (out[:, invalid] == 0).all()


def test_read_warped_offset_moves_content(tmp_path):
    data = np.zeros((1, 64, 64), np.float32)
    data[0, 30, 40] = 1.0
    src = write_tif(tmp_path / "s.tif", data)
    grid = Grid(utm_transform(), UTM, 64, 64)
    with rasterio.open(src) as ds:
        out, _ = io.read_warped(ds, grid, offset_px=(3.0, -2.0))
    # Content displaced by (+3, -2) is brought back by (-3, +2).
    assert np.unravel_index(np.argmax(out[0]), (64, 64)) == (32, 37)


def test_nan_in_float_rasters_is_invalid(tmp_path):
    data = np.ones((1, 32, 32), np.float32)
    data[0, 5:10, 5:10] = np.nan
    data[0, 20, 20] = np.inf
    src = write_tif(tmp_path / "f.tif", data)
    with rasterio.open(src) as ds:
        d, inv = io.read_window(ds, rasterio.windows.Window(0, 0, 32, 32))
        dw, invw = io.read_warped(ds, Grid(utm_transform(), UTM, 32, 32))
    assert inv[5:10, 5:10].all() and inv[20, 20] and inv.sum() == 26
    assert invw[5:10, 5:10].all() and np.isfinite(dw).all()


def test_genuine_alpha_band_is_a_mask_not_data(tmp_path):
    rgba = np.full((4, 32, 32), 120, np.uint8)
    rgba[3] = 255
    rgba[3, :, :8] = 0
    path = tmp_path / "rgba.tif"
    with rasterio.open(path, "w", driver="GTiff", width=32, height=32, count=4, dtype="uint8",
                       crs=UTM, transform=utm_transform()) as ds:
        ds.write(rgba)
    with rasterio.open(path) as ds:
        info = io.image_info(ds)
        assert info.bands == (1, 2, 3) and info.alpha == 4
        d, inv = io.read_window(ds, rasterio.windows.Window(0, 0, 32, 32))
        dw, invw = io.read_warped(ds, info.grid)
    assert d.shape[0] == 3 and inv[:, :8].all() and not inv[:, 8:].any()
    assert dw.shape[0] == 3 and invw[:, :7].all() and not invw[:, 9:].any()


def test_alpha_flag_on_a_data_band_is_a_clear_error(tmp_path):
    data = (np.random.default_rng(0).random((4, 32, 32)) * 250).astype(np.uint8)
    path = tmp_path / "rgbn.tif"
    with rasterio.open(path, "w", driver="GTiff", width=32, height=32, count=4, dtype="uint8",
                       crs=UTM, transform=utm_transform()) as ds:
        ds.write(data)  # rasterio's default flags band 4 as alpha
    with rasterio.open(path) as ds, pytest.raises(InputError, match="gdal_translate"):
        io.image_info(ds)


def test_raster_input_with_mask(tmp_path):
    m = np.zeros((16, 16), bool)
    m[:4] = True
    r = io.Raster(np.ones((2, 16, 16), np.uint8), utm_transform(), "EPSG:32651", mask=m)
    with io.open_raster(r) as ds:
        _, inv = io.read_window(ds, rasterio.windows.Window(0, 0, 16, 16))
    np.testing.assert_array_equal(inv, m)


@pytest.mark.parametrize("bad", [np.ones((2, 2, 2, 2)), np.ones(5), np.ones((3, 4), complex)])
def test_raster_input_with_bad_array(bad):
    with pytest.raises(InputError):
        with io.open_raster(io.Raster(bad, utm_transform(), UTM)):
            pass


def test_read_roi_variants(tmp_path):
    poly = {"type": "Polygon", "coordinates": [[[125.75, 39.01], [125.76, 39.01],
                                                [125.76, 39.02], [125.75, 39.01]]]}
    for i, obj in enumerate([poly, {"type": "Feature", "geometry": poly, "properties": {}},
                             {"type": "FeatureCollection", "features": [
                                 {"type": "Feature", "geometry": poly, "properties": {}}]}]):
        p = tmp_path / f"roi{i}.geojson"
        p.write_text(json.dumps(obj))
        geom, crs = io.read_roi(p)
        assert geom["type"] == "Polygon" and crs.to_epsg() == 4326


@pytest.mark.parametrize("text, message", [
    ("{not json", "not a readable GeoJSON"),
    ('{"type": "Point", "coordinates": [1, 2]}', "no polygon"),
    ('{"type": "Polygon", "coordinates": "x"}', "malformed"),
    ('{"type": "Polygon", "coordinates": [[[125.751, 39.0195], [125.753, 39.0195], '
     '[125.751, 39.0195], [125.751, 39.0195]]]}', "bad.geojson: must be a polygon, not LineString"),
    ('[1, 2, 3]', "not a GeoJSON object"),
    ('{"type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": '
     '"EPSG:999999"}}, "features": []}', "unrecognised crs"),
])
def test_read_roi_errors(tmp_path, text, message):
    p = tmp_path / "bad.geojson"
    p.write_text(text)
    with pytest.raises(ROIError, match=message):
        io.read_roi(p)
    with pytest.raises(ROIError, match="no such file"):
        io.read_roi(tmp_path / "missing.geojson")


def test_dumps_geojson_streams_members_first():
    chunks = list(io.dumps_geojson({"type": "FeatureCollection", "bbox": [0, 0, 1, 1],
                                    "features": [{"a": 1}, {"b": 2}]}))
    text = "".join(chunks)
    assert json.loads(text)["features"] == [{"a": 1}, {"b": 2}]
    assert text.index('"bbox"') < text.index('"features"')
    assert len(chunks) == 4


def test_read_warped_pixel_transform_rotates(tmp_path):
    # A bright dot at (col 40, row 20); with a pixel transform that rotates
    # by 90 degrees about (32, 32), output (col, row) samples grid location
    # (64 - row, col), so the dot lands at col 20, row 24.
    data = np.zeros((1, 64, 64), np.float32)
    data[0, 20, 40] = 1.0
    src = write_tif(tmp_path / "s.tif", data)
    grid = Grid(utm_transform(), UTM, 64, 64)
    rot = Affine.translation(32, 32) @ Affine.rotation(90) @ Affine.translation(-32, -32)
    with rasterio.open(src) as ds:
        out, invalid = io.read_warped(ds, grid, pixel_transform=rot)
    row, col = np.unravel_index(np.argmax(out[0]), (64, 64))
    assert rot @ (col + 0.5, row + 0.5) == pytest.approx((40.5, 20.5), abs=1)
    assert not invalid[10:50, 10:50].any()


def test_four_band_byte_array_is_four_data_bands():
    r = io.Raster(np.ones((4, 16, 16), np.uint8), utm_transform(), "EPSG:32651")
    with io.open_raster(r) as ds:
        info = io.image_info(ds)
    assert info.bands == (1, 2, 3, 4) and info.alpha is None


@pytest.mark.parametrize("window, shape", [((0, 0, 400, 320), (50, 40)),
                                            ((7, 3, 390, 310), (48, 38))])
def test_decimated_read_in_pieces_equals_one_gdal_read(tmp_path, monkeypatch, window, shape):
    # Pieces keep tiles cached across bands; the values must not change
    # (beyond rounding).
    from rasterio.enums import Resampling
    from rasterio.windows import Window

    rng = np.random.default_rng(5)
    data = rng.integers(0, 4000, (4, 320, 400)).astype("uint16")
    path = tmp_path / "pix.tif"
    with rasterio.open(path, "w", driver="GTiff", width=400, height=320, count=4,
                       dtype="uint16", crs=UTM, transform=utm_transform(), tiled=True,
                       blockxsize=64, blockysize=64, interleave="pixel") as ds:
        ds.write(data)
    monkeypatch.setattr(io, "DECIMATE_PIECE_PX", 96)   # many pieces
    win = Window(*window)
    with rasterio.open(path) as ds:
        got, invalid = io.read_window(ds, win, out_shape=shape)
        want = ds.read(window=win, out_shape=(4, *shape), out_dtype="float32",
                       resampling=Resampling.average)
    assert got.shape == (4, *shape) and not invalid.any()
    # GDAL averages integer data in its own type: pieces may round a tie
    # the other way, nothing more.
    np.testing.assert_allclose(got, want, atol=1.0)
    assert np.mean(got != want) < 0.01


def test_geojson_writer_publishes_on_close_and_leaves_nothing_on_abort(tmp_path):
    feature = {"type": "Feature", "geometry": None, "properties": {}}
    w = io.GeoJSONWriter(tmp_path / "a.geojson", {"changedet": {}})
    w.write(feature, [0, 0, 1, 1])
    w.abort()
    assert list(tmp_path.iterdir()) == []          # no partial file, no temporary
    w = io.GeoJSONWriter(tmp_path / "a.geojson", {"changedet": {}})
    w.write(feature, [0, 0, 1, 1])
    w.close()
    assert json.loads((tmp_path / "a.geojson").read_text())["bbox"] == [0, 0, 1, 1]
    w = io.GeoJSONWriter(tmp_path / "b.geojson", {})
    (tmp_path / "b.geojson").write_text("someone else's")
    with pytest.raises(OutputExistsError, match="appeared while changedet was running"):
        w.close()
    assert (tmp_path / "b.geojson").read_text() == "someone else's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.geojson", "b.geojson"]


# -- TileReader and read_aligned ------------------------------------------------

#: Windows of the 300 x 260 tiled test image (64 px tiles): inside one tile,
#: across tile seams, on the right and bottom edges, one pixel, one full row.
TILE_WINDOWS = [Window(0, 0, 300, 260), Window(10, 20, 40, 30), Window(60, 60, 10, 10),
                Window(100, 50, 130, 90), Window(250, 200, 50, 60), Window(299, 259, 1, 1),
                Window(0, 128, 300, 1)]


def _smooth_bands(height=260, width=300):
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    base = 1000 + 400 * np.sin(xx / 9.0) * np.cos(yy / 11.0) + 2 * xx + yy
    return np.stack([base, base * 0.5 + 100, base[::-1] * 0.8]).astype(np.uint16)


def _tiled(tmp_path, *, nodata=True, one_band=False, name="tiled.tif"):
    data = _smooth_bands()
    if nodata:
        data[:, 100:104, 150:155] = 0      # across no seam
        data[:, 60:70, 120:135] = 0        # across a tile corner (64, 128)
        data[:, 259, 299] = 0              # the last pixel
    if one_band:
        data[1, 200, 40] = 0               # nodata in one band only
    return write_tif(tmp_path / name, data, nodata=0 if nodata or one_band else None, tiled=True,
                     blockxsize=64, blockysize=64)


@pytest.mark.parametrize("window", TILE_WINDOWS, ids=str)
def test_tile_reader_reads_as_read_window(tmp_path, window):
    path = _tiled(tmp_path, one_band=True)
    with io.TileReader(str(path)) as r, rasterio.open(path) as ds:
        data, invalid = r.read(window)
        want, want_invalid = io.read_window(ds, window)
    assert r.cached and r.tile_shape == (64, 64)
    assert data.dtype == np.float32 and data.shape == want.shape
    np.testing.assert_array_equal(data, want)
    np.testing.assert_array_equal(invalid, want_invalid)


def test_tile_reader_native_keeps_16_bit_integers_and_floats_stay_float32(tmp_path):
    path = _tiled(tmp_path, one_band=True)
    window = Window(50, 40, 150, 100)                  # across tile seams
    with io.TileReader(str(path)) as r:
        assert r.exact_dtype == np.uint16
        native, inv = r.read(window, native=True)
        data, inv2 = r.read(window)
    assert native.dtype == np.uint16 and data.dtype == np.float32
    np.testing.assert_array_equal(native, data)        # nodata zeroed in both
    np.testing.assert_array_equal(inv, inv2)
    floats = write_tif(tmp_path / "f.tif", _smooth_bands().astype(np.float32), tiled=True,
                       blockxsize=64, blockysize=64)
    with io.TileReader(str(floats)) as r:
        assert r.exact_dtype is None and r.read(window, native=True)[0].dtype == np.float32


def test_tile_reader_nodata_pixels_are_invalid_and_zero(tmp_path):
    path = _tiled(tmp_path, one_band=True)
    with io.TileReader(str(path)) as r:
        data, invalid = r.read(Window(0, 0, 300, 260))
    assert invalid[100:104, 150:155].all() and invalid[60:70, 120:135].all()
    assert invalid[200, 40] and invalid[259, 299]
    assert invalid.sum() == 4 * 5 + 10 * 15 + 2
    assert (data[:, invalid] == 0).all() and (data[:, ~invalid] > 0).all()


def test_tile_reader_decodes_each_tile_once(tmp_path):
    path = _tiled(tmp_path)
    with io.TileReader(str(path)) as r:
        first = [r.read(w) for w in TILE_WINDOWS]
        assert r.decoded == 5 * 5          # every tile of 300 x 260 in 64 px tiles
        second = [r.read(w) for w in TILE_WINDOWS]
        assert r.decoded == 25
    for (a, ia), (b, ib) in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(ia, ib)


def test_tile_reader_adopts_another_readers_tiles_until_first_read(tmp_path):
    # The estimation's decoded tiles go to the blocks' reader: read from
    # there (not decoded again), kept whatever the cache's size until then,
    # and the cache's own room the same before and after.
    path = _tiled(tmp_path)
    win = Window(10, 20, 100, 50)              # 2 x 2 tiles of 64 px
    with io.TileReader(str(path)) as first:
        want = first.read(win)
        tiles = first.decoded_tiles()
    assert len(tiles) == 4
    with io.TileReader(str(path), max_bytes=1) as r:     # room for no tile
        r.adopt(tiles)
        r.read(Window(200, 200, 60, 40))                 # two other tiles come and go
        assert set(tiles) <= set(r._tiles)               # the adopted ones stay
        got = r.read(win)
        assert r.decoded == 2                            # not the adopted four
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
        assert r.max_bytes == 1 and not r._pinned and not r._leases
        r.read(Window(200, 200, 60, 40))
        assert not set(tiles) & set(r._tiles)            # read once, then cached as any
    with io.TileReader(str(path), max_bytes=1) as r:
        r.adopt(tiles)
        r.clear()                                        # unread: dropped too
        assert not r._tiles and r.max_bytes == 1 and r._bytes == 0
        r.adopt({(0, 0): (np.zeros((3, 5, 5), np.uint16), None)})   # not this raster's
        assert not r._tiles


def test_tile_reader_clear_drops_the_tiles_and_keeps_reading(tmp_path):
    path = _tiled(tmp_path)
    win = Window(10, 20, 100, 50)              # 2 x 2 tiles
    with io.TileReader(str(path)) as r:
        before = r.read(win)
        assert r.decoded == 4 and r._bytes > 0
        r.clear()
        assert r._bytes == 0 and not r._tiles
        after = r.read(win)                      # the same handle, decoded again
        assert r.decoded == 8
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])


def test_tile_reader_small_cache_stays_bounded(tmp_path):
    path = _tiled(tmp_path)
    tile_bytes = 3 * 64 * 64 * 2 + 64 * 64      # uint16 bands and the invalid mask
    with io.TileReader(str(path), max_bytes=3 * tile_bytes) as r, rasterio.open(path) as ds:
        for w in TILE_WINDOWS:
            data, invalid = r.read(w)
            assert r._bytes <= r.max_bytes
            want, want_invalid = io.read_window(ds, w)
            np.testing.assert_array_equal(data, want)
            np.testing.assert_array_equal(invalid, want_invalid)
        once = r.decoded
        for w in TILE_WINDOWS:
            r.read(w)
        assert r.decoded > once        # evicted tiles are decoded again


def test_tile_reader_bound_in_pixels(tmp_path):
    path = _tiled(tmp_path)
    with io.TileReader(str(path), max_pixels=3 * 64 * 64) as r:
        assert r.pixel_bytes == 3 * 2 + 1 and r.max_bytes == 3 * 64 * 64 * 7
        for w in TILE_WINDOWS:
            r.read(w)
            assert r._bytes <= r.max_bytes


def test_tile_reader_without_cache_keeps_one_tile(tmp_path):
    path = _tiled(tmp_path)
    with io.TileReader(str(path), max_bytes=0) as r:
        r.read(Window(0, 0, 300, 260))
        assert r.decoded == 25 and len(r._tiles) == 1
        r.read(Window(0, 0, 300, 260))
        assert r.decoded > 25


def test_tile_reader_threads_match_serial_reads(tmp_path):
    path = _tiled(tmp_path)
    windows = TILE_WINDOWS * 4
    with io.TileReader(str(path)) as r:
        serial = [r.read(w) for w in windows]
    with io.TileReader(str(path)) as r, ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(r.read, windows))
        handles = len(r._handles)
        decoded = r.decoded
    for (a, ia), (b, ib) in zip(serial, threaded, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(ia, ib)
    # Threads waiting for a tile another is decoding share its decode.
    assert decoded == 25
    assert 1 <= handles <= 5


def test_tile_reader_reads_other_tiles_while_another_thread_decodes_one(tmp_path):
    # Two threads on neighbouring blocks share the tiles under their halos:
    # a thread that needs a tile the other is decoding takes its other tiles
    # first, instead of waiting (on the 8192 px benchmark pair, 0.2 s idle).
    path = _tiled(tmp_path)
    gate, held = threading.Event(), threading.Event()
    with io.TileReader(str(path)) as r, ThreadPoolExecutor(2) as pool:
        real = r._decode

        def decode(win, out=None):
            if (int(win.row_off), int(win.col_off)) == (0, 0):
                held.set()
                gate.wait(10)
            return real(win, out)

        r._decode = decode
        first = pool.submit(r.read, Window(0, 0, 64, 64))       # tile (0, 0), held
        assert held.wait(10)
        second = pool.submit(r.read, Window(10, 10, 100, 100))   # (0, 0) and three more
        deadline = time.monotonic() + 10
        while r.decoded < 3 and time.monotonic() < deadline:
            time.sleep(0.005)
        others = r.decoded
        gate.set()
        (a, _), (b, _) = first.result(), second.result()
        with rasterio.open(path) as ds:
            want, _ = io.read_window(ds, Window(10, 10, 100, 100))
    assert others == 3
    np.testing.assert_array_equal(b, want)
    np.testing.assert_array_equal(b[:, :54, :54], a[:, 10:, 10:])


def test_tile_reader_reuses_evicted_tiles_safely_across_threads(tmp_path):
    # A small cache evicts all the time and decodes new tiles into the
    # memory of evicted ones: no thread may see a tile overwritten while it
    # copies from it, and the memory is indeed reused.
    path = _tiled(tmp_path)
    tile_bytes = 3 * 64 * 64 * 2
    windows = TILE_WINDOWS * 6
    with rasterio.open(path) as ds:
        want = [io.read_window(ds, w) for w in windows]
    with io.TileReader(str(path), max_bytes=2 * tile_bytes) as r, ThreadPoolExecutor(4) as pool:
        spares = set()
        real = r._decode

        def decode(window, out=None):
            if out is not None:
                spares.add(id(out))
            return real(window, out)

        r._decode = decode
        got = list(pool.map(r.read, windows))
        assert r.decoded > 4 * 25 and len(spares) >= 1
        assert not r._leases
    for (a, ia), (b, ib) in zip(want, got, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(ia, ib)


def test_scratch_reuses_one_array_per_name_and_thread():
    s = io.Scratch()
    a = s.array("x", (2, 3), np.float32)
    b = s.array("x", (1, 2), np.float32)      # smaller: a view of the same memory
    assert b.base is a.base and b.shape == (1, 2)
    c = s.array("x", (4, 4), np.float32)      # larger: new memory
    assert c.base is not a.base and s.array("y", (2, 3), np.float32).base is not c.base
    with ThreadPoolExecutor(1) as pool:
        other = pool.submit(s.array, "x", (4, 4), np.float32).result()
    assert other.base is not c.base


@pytest.mark.parametrize("window", [Window(-1, 0, 10, 10), Window(0, -1, 10, 10),
                                    Window(295, 0, 10, 10), Window(0, 255, 10, 10),
                                    Window(400, 300, 5, 5)], ids=str)
def test_tile_reader_window_outside_raises(tmp_path, window):
    with io.TileReader(str(_tiled(tmp_path))) as r, pytest.raises(ValueError, match="not within"):
        r.read(window)


@pytest.mark.parametrize("window, pad", [
    (Window(-3, -2, 20, 15), ((2, 0), (3, 0))),          # past the top-left corner
    (Window(290, 250, 15, 14), ((0, 4), (0, 5))),        # past the bottom-right corner
    (Window(-4, -1, 309, 263), ((1, 2), (4, 5))),        # past every edge
    (Window(10, -5, 30, 10), ((5, 0), (0, 0))),          # past the top only
])
def test_read_padded_repeats_the_edge_pixels(tmp_path, window, pad):
    path = _tiled(tmp_path)
    with io.TileReader(str(path)) as r:
        data, invalid = r.read_padded(window)
        (top, bottom), (left, right) = pad
        inner = Window(window.col_off + left, window.row_off + top,
                       window.width - left - right, window.height - top - bottom)
        want, want_invalid = r.read(inner)
    assert data.shape == (3, window.height, window.width)
    np.testing.assert_array_equal(data, np.pad(want, ((0, 0),) + pad, mode="edge"))
    np.testing.assert_array_equal(invalid, np.pad(want_invalid, pad, mode="edge"))


def test_read_padded_inside_is_a_plain_read(tmp_path):
    with io.TileReader(str(_tiled(tmp_path))) as r:
        a, ia = r.read_padded(Window(100, 50, 130, 90))
        b, ib = r.read(Window(100, 50, 130, 90))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ia, ib)


@pytest.mark.parametrize("window", [Window(-20, -20, 10, 10), Window(300, 0, 5, 5),
                                    Window(0, 260, 7, 3), Window(-9, 100, 9, 4)], ids=str)
def test_read_padded_wholly_outside_is_all_invalid(tmp_path, window):
    with io.TileReader(str(_tiled(tmp_path, nodata=False))) as r:
        data, invalid = r.read_padded(window)
    assert data.shape == (3, window.height, window.width) and data.dtype == np.float32
    assert invalid.shape == (window.height, window.width) and invalid.all()
    assert (data == 0).all()


def test_wide_striped_file_is_read_uncached(tmp_path):
    rng = np.random.default_rng(3)
    data = rng.integers(1, 250, (2, 12, 2100)).astype(np.uint8)
    data[:, 5, 2000:2010] = 0
    path = write_tif(tmp_path / "strips.tif", data, nodata=0, tiled=False)
    with io.TileReader(str(path)) as r, rasterio.open(path) as ds:
        assert ds.block_shapes[0][1] == 2100
        assert r.cached is False
        for w in [Window(0, 0, 2100, 12), Window(1990, 3, 110, 9), Window(5, 0, 1, 1)]:
            got, got_invalid = r.read(w)
            want, want_invalid = io.read_window(ds, w)
            np.testing.assert_array_equal(got, want)
            np.testing.assert_array_equal(got_invalid, want_invalid)
        assert r.decoded == 0 and not r._tiles
        got, got_invalid = r.read(Window(0, 0, 2100, 12))
    assert got_invalid.sum() == 10 and got_invalid[5, 2000:2010].all()
    np.testing.assert_array_equal(got[:, ~got_invalid], data[:, ~got_invalid])


def test_narrow_striped_file_is_cached_by_strip(tmp_path):
    data = _smooth_bands()
    data[:, 100:104, 150:155] = 0
    path = write_tif(tmp_path / "strips.tif", data, nodata=0, tiled=False)
    with io.TileReader(str(path)) as r, rasterio.open(path) as ds:
        assert r.cached and r.tile_shape[1] == 300 and r.tile_shape[0] < 260
        for w in TILE_WINDOWS:
            got, got_invalid = r.read(w)
            want, want_invalid = io.read_window(ds, w)
            np.testing.assert_array_equal(got, want)
            np.testing.assert_array_equal(got_invalid, want_invalid)


def test_tile_reader_float_nan_is_invalid_and_zero(tmp_path):
    data = np.linspace(-1, 1, 2 * 96 * 80, dtype=np.float32).reshape(2, 96, 80)
    data[0, 10:20, 30:40] = np.nan
    data[1, 70, 5] = np.nan
    data[0, 90, 79] = np.inf
    path = write_tif(tmp_path / "f.tif", data, tiled=True, blockxsize=32, blockysize=32)
    with io.TileReader(str(path)) as r, rasterio.open(path) as ds:
        got, invalid = r.read(Window(0, 0, 80, 96))
        want, want_invalid = io.read_window(ds, Window(0, 0, 80, 96))
    np.testing.assert_array_equal(invalid, ~np.isfinite(data).all(axis=0))
    assert invalid.sum() == 100 + 1 + 1
    assert np.isfinite(got).all() and (got[:, invalid] == 0).all()
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(invalid, want_invalid)


def _interior(invalid, margin):
    # Pixels at least `margin` px from the grid's edges and from `invalid`.
    near = ndimage.binary_dilation(invalid, np.ones((3, 3), bool), iterations=margin,
                                   border_value=1)
    return ~near


@pytest.mark.parametrize("window", [Window(0, 0, 300, 260), Window(40, 30, 100, 80),
                                    Window(100, 40, 90, 70)], ids=str)
def test_read_aligned_matches_gdal_cubic(tmp_path, window):
    path = _tiled(tmp_path)
    pt = Affine.translation(1.3, -0.6)
    with io.TileReader(str(path)) as r, rasterio.open(path) as ds:
        grid = r.grid.window_grid(window)
        got, invalid = io.read_aligned(r, grid, pixel_transform=pt)
        want, want_invalid = io.read_warped(ds, grid, pixel_transform=pt)
    assert got.shape == want.shape and got.dtype == np.float32
    span = float(np.ptp(want[:, ~want_invalid]))
    inside = _interior(invalid | want_invalid, 3)
    assert inside.sum() > 0.5 * inside.size
    np.testing.assert_allclose(got[:, inside], want[:, inside], rtol=0, atol=1e-3 * span)
    # A pixel is invalid where any of its 16 source pixels is, GDAL's where
    # the nearest is: read_aligned's mask holds GDAL's and is at most 2 px wider.
    assert not (want_invalid & ~invalid).any() and (invalid & ~want_invalid).any()
    assert not ((invalid != want_invalid) & _interior(want_invalid, 2)).any()
    assert (got[:, invalid] == 0).all()


@pytest.mark.parametrize("window, shift, rows, cols, gdal_rows, gdal_cols", [
    # Sample row r + row_off + 0.3 < 0 for r < 4.7 (GDAL: < -0.5 for r < 4.2);
    # column c - 10 + 0.4 < 0 for c < 9.6 (GDAL: c < 9.1).
    (Window(-10, -5, 60, 40), (0.4, 0.3), slice(0, 5), slice(0, 10), slice(0, 5), slice(0, 10)),
    # Row r + 200 + 0.2 > 259 from r = 59 (GDAL: >= 259.5 from r = 60); column
    # c + 250 + 0.3 > 299 from c = 49 (GDAL: >= 299.5 from c = 50).
    (Window(250, 200, 60, 70), (0.3, 0.2), slice(59, 70), slice(49, 60),
     slice(60, 70), slice(50, 60)),
    # Row r - 5 - 0.6 < 0 for r < 5.6 (GDAL: r < 5.1); column c - 10 - 0.4 < 0
    # for c < 10.4 (GDAL: c < 9.9).
    (Window(-10, -5, 60, 40), (-0.4, -0.6), slice(0, 6), slice(0, 11), slice(0, 6),
     slice(0, 10)),
], ids=str)
def test_read_aligned_outside_the_source_is_invalid(tmp_path, window, shift, rows, cols,
                                                   gdal_rows, gdal_cols):
    # Invalid beyond the first and last pixel centres: GDAL's footprint, to
    # the source's edge, and the half pixel where the kernel would
    # extrapolate from the edge pixel repeated.
    path = _tiled(tmp_path, nodata=False)
    pt = Affine.translation(*shift)
    with io.TileReader(str(path)) as r, rasterio.open(path) as ds:
        grid = r.grid.window_grid(window)
        got, invalid = io.read_aligned(r, grid, pixel_transform=pt)
        _, want_invalid = io.read_warped(ds, grid, pixel_transform=pt)
    expected = np.zeros(grid.shape, bool)
    expected[rows, :] = True
    expected[:, cols] = True
    np.testing.assert_array_equal(invalid, expected)
    gdal = np.zeros(grid.shape, bool)
    gdal[gdal_rows, :] = True
    gdal[:, gdal_cols] = True
    np.testing.assert_array_equal(want_invalid, gdal)    # GDAL's footprint
    assert (got[:, invalid] == 0).all() and (got[:, ~invalid] > 0).all()


def test_read_aligned_does_not_extrapolate_past_the_edge(tmp_path):
    # A ramp that turns at the source's last column: the cubic kernel,
    # sampling beyond it, would have repeated the edge pixel instead.
    data = np.tile(np.arange(1, 41, dtype=np.float32) ** 2, (3, 30, 1))
    path = write_tif(tmp_path / "ramp.tif", data, tiled=True, blockxsize=16, blockysize=16)
    with io.TileReader(str(path)) as r:
        got, invalid = io.read_aligned(r, r.grid, pixel_transform=Affine.translation(0.4, 0))
    # Column 39 samples 39.4, past the last centre (39): invalid, though
    # within the source; column 38 samples 38.4, between two centres, and
    # weighs the repeated pixel by 0.048 only. (The kernel reproduces a
    # quadratic exactly where it needs no repeated pixel.)
    assert invalid[:, 39].all() and not invalid[:, :39].any()
    np.testing.assert_allclose(got[0, 5, 30:38], (np.arange(30, 38) + 1.4) ** 2, rtol=1e-6)
    np.testing.assert_allclose(got[0, 5, 38], 39.4 ** 2, rtol=5e-3)


@pytest.mark.parametrize("pt", [Affine.translation(1.3, -0.6), Affine.translation(3, -2),
                                Affine.rotation(2.0) @ Affine.translation(1.3, -0.6)],
                         ids=["cubic", "integer", "warped"])
def test_read_aligned_gain_and_offset_are_those_applied_after(tmp_path, pt):
    # Applied strip by strip as the after image is resampled: the bits of
    # apply_normalisation on the result, nodata and pixels outside the
    # source (here the window's first rows and columns) included.
    from changedet.radiometry import RadiometricFit, apply_normalisation

    path = _tiled(tmp_path)
    fit = RadiometricFit((1.7, -0.4, 0.93), (12.5, 300.25, -7.0), "linear")
    with io.TileReader(str(path)) as r:
        for window in (Window(-10, -5, 120, 300), Window(100, 40, 90, 70)):
            grid = r.grid.window_grid(window)
            plain, plain_inv = io.read_aligned(r, grid, pixel_transform=pt)
            want = apply_normalisation(plain, fit)
            got, invalid = io.read_aligned(r, grid, pixel_transform=pt,
                                           linear=(fit.gain, fit.offset))
            np.testing.assert_array_equal(invalid, plain_inv)
            np.testing.assert_array_equal(got, want)
            assert invalid.any() and not invalid.all()


def test_read_aligned_integer_offset_is_a_plain_read(tmp_path):
    path = _tiled(tmp_path)
    with io.TileReader(str(path)) as r:
        grid = r.grid.window_grid(Window(140, 90, 40, 30))
        got, invalid = io.read_aligned(r, grid, pixel_transform=Affine.translation(3, -2))
        want, want_invalid = r.read(Window(143, 88, 40, 30))
    assert want_invalid.sum() == 4 * 5              # the nodata patch, not grown
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(invalid, want_invalid)


def test_read_aligned_near_integer_offset_is_a_plain_read(tmp_path):
    # A 0.6 m grid whose origin is not a multiple of the pixel: the window's
    # row offset comes back from the transforms as 7.000000000931323.
    data = np.full((1, 64, 64), 7, np.uint16)
    data[0, 30, 30] = 0
    transform = Affine(0.6, 0, 738180.3, 0, -0.6, 4322620.9)
    path = write_tif(tmp_path / "p.tif", data, nodata=0, transform=transform)
    with io.TileReader(str(path)) as r:
        got, invalid = io.read_aligned(r, r.grid.window_grid(Window(5, 7, 40, 30)))
        want, want_invalid = r.read(Window(5, 7, 40, 30))
    np.testing.assert_array_equal(invalid, want_invalid)
    np.testing.assert_array_equal(got, want)


def test_read_aligned_in_another_crs_is_the_gdal_warp(tmp_path):
    from rasterio.warp import calculate_default_transform

    path = _tiled(tmp_path)
    with io.TileReader(str(path)) as r, rasterio.open(path) as ds:
        transform, width, height = calculate_default_transform(
            ds.crs, "EPSG:3857", ds.width, ds.height, *ds.bounds)
        grid = Grid(transform, rasterio.crs.CRS.from_epsg(3857), width, height)
        got, invalid = io.read_aligned(r, grid)
        want, want_invalid = io.read_warped(ds, grid)
    assert invalid.any() and not invalid.all()
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(invalid, want_invalid)


@pytest.mark.parametrize("crs, zoom", [("EPSG:3857", 1.0), ("EPSG:4326", 1.0),
                                       ("EPSG:3857", 0.45), ("EPSG:3857", 2.5)])
def test_read_warped_in_another_crs_is_the_same_in_any_window(tmp_path, crs, zoom):
    # Blocks warp their own windows: the values must not depend on them.
    # GDAL's defaults interpolate the transformation over chunks and measure
    # the kernel's scale on each, which moved values by up to ~0.4 grey
    # levels between a window and the whole; also when the destination's
    # pixels are larger (zoom < 1, the kernel widened) or smaller.
    from rasterio.warp import calculate_default_transform

    path = _tiled(tmp_path)
    with rasterio.open(path) as ds:
        transform, width, height = calculate_default_transform(
            ds.crs, crs, ds.width, ds.height, *ds.bounds)
        transform = transform @ Affine.scale(1 / zoom)
        grid = Grid(transform, rasterio.crs.CRS.from_user_input(crs),
                    int(width * zoom), int(height * zoom))
        whole, whole_inv = io.read_warped(ds, grid)
        win = Window(int(grid.width * 0.3), int(grid.height * 0.2),
                     int(grid.width * 0.4), int(grid.height * 0.5))
        part, part_inv = io.read_warped(ds, grid.window_grid(win))
    inner = (slice(None),) + win.toslices()
    assert np.ptp(whole) > 100
    np.testing.assert_allclose(part, whole[inner], atol=1e-3)
    np.testing.assert_array_equal(part_inv, whole_inv[win.toslices()])


@pytest.mark.parametrize("angle, size", [(90, (0.2, 0.5)), (45, (0.15, 0.45)), (0, (0.3, 0.3))])
def test_read_warped_rotated_source_is_the_same_in_any_window(tmp_path, angle, size):
    # A rotated source with oblong pixels: the kernel's scale is per source
    # column and row, and no window may clip its (widened) reach.
    rng = np.random.default_rng(2)
    n = 160
    data = ndimage.gaussian_filter(rng.normal(100, 40, (n, n)), 1.5).astype(np.float32)
    transform = (Affine.translation(500020.0, 4500020.0) @ Affine.rotation(angle)
                 @ Affine.scale(size[0], -size[1]) @ Affine.translation(-n / 2, -n / 2))
    path = tmp_path / "rotated.tif"
    with rasterio.open(path, "w", driver="GTiff", width=n, height=n, count=1, dtype="float32",
                       crs="EPSG:32633", transform=transform) as ds:
        ds.write(data, 1)
    grid = Grid(Affine(0.5, 0, 500000.0, 0, -0.5, 4500040.0), rasterio.crs.CRS.from_epsg(32633),
                80, 80)
    with rasterio.open(path) as ds:
        whole, whole_inv = io.read_warped(ds, grid)
        assert (~whole_inv).mean() > 0.3
        for win in (Window(30, 35, 30, 20), Window(0, 0, 7, 80), Window(41, 50, 3, 3)):
            part, part_inv = io.read_warped(ds, grid.window_grid(win))
            np.testing.assert_array_equal(part_inv, whole_inv[win.toslices()])
            np.testing.assert_allclose(part[:, ~part_inv], whole[(slice(None),) + win.toslices()]
                                       [:, ~part_inv], atol=1e-3)


def test_read_aligned_other_kernels_are_the_gdal_warp(tmp_path):
    path = _tiled(tmp_path)
    pt = Affine.translation(1.3, -0.6)
    with io.TileReader(str(path)) as r, rasterio.open(path) as ds:
        grid = r.grid.window_grid(Window(40, 30, 100, 80))
        got, invalid = io.read_aligned(r, grid, pixel_transform=pt,
                                       resampling=Resampling.bilinear)
        want, want_invalid = io.read_warped(ds, grid, pixel_transform=pt,
                                            resampling=Resampling.bilinear)
        cubic, _ = io.read_aligned(r, grid, pixel_transform=pt)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(invalid, want_invalid)
    assert np.abs(got - cubic).max() > 0.01


def test_read_aligned_nodata_in_one_band_invalidates_the_samples_it_dominates(tmp_path):
    from changedet.resample import MAX_INVALID_WEIGHT, cubic_weights

    path = _tiled(tmp_path, nodata=False, one_band=True)
    with io.TileReader(str(path)) as r:
        grid = r.grid.window_grid(Window(20, 180, 40, 40))
        got, invalid = io.read_aligned(r, grid, pixel_transform=Affine.translation(1.3, -0.6))
    # Source (200, 40), nodata in one band, is in the support of outputs
    # whose floor(row + 179.4) is 198 to 201 (rows 19 to 22) and
    # floor(col + 21.3) 38 to 41 (cols 17 to 20); those where it carries
    # more than MAX_INVALID_WEIGHT of the kernel are invalid in all bands.
    wy = np.abs(cubic_weights(0.4))[[3, 2, 1, 0]]      # rows 19..22: taps 3..0
    wx = np.abs(cubic_weights(0.3))[[3, 2, 1, 0]]      # cols 17..20
    expected = np.zeros(grid.shape, bool)
    expected[19:23, 17:21] = np.outer(wy, wx) > MAX_INVALID_WEIGHT
    assert 1 <= expected.sum() < 16
    np.testing.assert_array_equal(invalid, expected)
    assert (got[:, invalid] == 0).all() and (got[:, ~invalid] > 0).all()


@pytest.mark.xfail(strict=True, reason="GDAL's warp leaves a pixel valid unless every band "
                   "is nodata, and blends the nodata value into the others")
def test_read_warped_nodata_in_one_band_is_invalid(tmp_path):
    path = _tiled(tmp_path, nodata=False, one_band=True)
    with rasterio.open(path) as ds:
        _, window_invalid = io.read_window(ds, Window(0, 0, 300, 260))
        _, invalid = io.read_warped(ds, io.image_info(ds).grid)
    assert window_invalid[200, 40]
    assert invalid[200, 40]


def test_long_output_names_work_and_too_long_ones_are_output_errors(tmp_path):
    # The temporary beside an output was named after all of it: a legal name
    # of 250 bytes made an illegal temporary (an internal error).
    from changedet.errors import OutputError

    long = tmp_path / ("x" * 246 + ".geojson")
    io.write_text(long, ["{}"])
    assert long.read_text() == "{}" and sorted(tmp_path.iterdir()) == [long]
    wide = tmp_path / ("\U0001F30D" * 60 + ".json")      # 248 bytes in 64 characters
    io.write_text(wide, ["{}"])
    assert wide.read_text() == "{}"
    with pytest.raises(OutputError, match="longer than 255 bytes"):
        io.check_output_path(tmp_path / ("y" * 256 + ".geojson"))


def test_a_bare_array_input_says_to_wrap_it():
    import changedet

    a = np.zeros((3, 64, 64), np.uint8)
    with pytest.raises(changedet.InputError, match=r"not ndarray \(wrap an array with its "
                                                   r"georeferencing: changedet.Raster"):
        changedet.detect(a, a)
