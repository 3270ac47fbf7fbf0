import json
import os

import numpy as np
import pytest
import rasterio
from affine import Affine

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
