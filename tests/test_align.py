import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from rasterio.crs import CRS
from rasterio.warp import Resampling, calculate_default_transform, reproject
from shapely.geometry import box, shape

import changedet
from changedet.align import coregister
from changedet.cli import main
from changedet.errors import CoregistrationError
from changedet.synthetic import Sensor, Sun, random_pair
from tests.conftest import UTM, utm_transform, write_tif

SHIFT = (3.4, -2.7)


def static_pair(shift=SHIFT, *, shape=(320, 320), seed=4, bands=3, dtype="uint8", **sensor):
    """A scene without change, the after image displaced by `shift` (and `sensor` nuisances)."""
    return random_pair(shape, bands=bands, seed=seed, n_static=12, n_appeared=0,
                       n_disappeared=0, heights_m=(3, 8), sun_before=Sun(), sun_after=Sun(),
                       sensor_before=Sensor(noise=0.004),
                       sensor_after=Sensor(shift=shift, noise=0.004, **sensor), dtype=dtype)


@pytest.fixture
def files(tmp_path):
    p = static_pair()
    return (write_tif(tmp_path / "before.tif", p.before),
            write_tif(tmp_path / "after.tif", p.after), p)


def test_global_shift_in_pixels_and_metres(files):
    b, a, _ = files
    r = coregister(b, a)
    assert r.reliable
    assert (r.shift.x, r.shift.y) == pytest.approx(SHIFT, abs=0.05)
    d = r.to_dict()
    # 0.5 m pixels, north up: x east = +0.5 x, y north = -0.5 y.
    assert d["shift_m"]["x"] == pytest.approx(0.5 * SHIFT[0], abs=0.03)
    assert d["shift_m"]["y"] == pytest.approx(-0.5 * SHIFT[1], abs=0.03)
    assert d["matched_on"].endswith("bands 1, 2, 3")


def test_global_windows_lie_inside_the_files_tiles(tmp_path, monkeypatch):
    # A window across tile seams decodes every tile it meets: the global
    # windows go inside tiles (here 128 px tiles, 4 x 4 to a window), and
    # the shift is found as well as before.
    from scipy import ndimage

    import changedet.coreg as coreg

    # A smooth texture, and the same moved by SHIFT (an exact Fourier shift).
    base = ndimage.gaussian_filter(np.random.default_rng(0).random((1024, 1024)), 3,
                                   mode="wrap")
    ky, kx = np.fft.fftfreq(1024)[:, None], np.fft.fftfreq(1024)[None, :]
    moved = np.fft.ifft2(np.fft.fft2(base) * np.exp(-2j * np.pi * (kx * SHIFT[0]
                                                                   + ky * SHIFT[1]))).real
    b, a = (write_tif(tmp_path / name, ((v - base.mean()) / base.std() * 3000 + 30000
                                        ).astype(np.uint16), blockxsize=128, blockysize=128)
            for name, v in (("before.tif", base), ("after.tif", moved)))
    seen = []
    real = coreg._match

    def spy(before, after, cols, rows, offsets, size, min_psr):
        seen.append((cols, rows, size))
        return real(before, after, cols, rows, offsets, size, min_psr)

    monkeypatch.setattr(coreg, "_match", spy)
    r = coregister(b, a)
    assert r.reliable
    assert (r.shift.x, r.shift.y) == pytest.approx(SHIFT, abs=0.05)
    (cols, rows, size), = seen
    assert size == 448 and cols.size == 9
    assert set(cols % 128) == {32} and set(rows % 128) == {32}
    assert len(set(cols)) == len(set(rows)) == 3


def test_after_in_another_crs_is_matched_on_the_before_grid(files, tmp_path):
    b, a, p = files
    # The same after image reprojected to lon/lat: its content does not move.
    with rasterio.open(a) as src:
        dst_t, w, h = calculate_default_transform(src.crs, "EPSG:4326", src.width, src.height,
                                                  *src.bounds)
        out = np.zeros((src.count, h, w), np.float32)
        reproject(src.read().astype(np.float32), out, src_transform=src.transform,
                  src_crs=src.crs, dst_transform=dst_t, dst_crs="EPSG:4326",
                  resampling=Resampling.cubic)
    a4326 = write_tif(tmp_path / "after_4326.tif", out, transform=dst_t,
                      crs=CRS.from_epsg(4326))
    r = coregister(b, a4326)
    assert (r.shift.x, r.shift.y) == pytest.approx(SHIFT, abs=0.1)


def test_written_aligned_image_matches_before(files, tmp_path):
    b, a, p = files
    out = tmp_path / "aligned.tif"
    r = coregister(b, a, mode="local")
    r.write_aligned(out)
    with rasterio.open(out) as ds, rasterio.open(b) as ref:
        assert ds.crs == ref.crs and ds.transform == r.grid.transform
        assert ds.dtypes == ref.dtypes and ds.count == 3
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert json.loads(ds.tags()["CHANGEDET_COREGISTRATION"])["model"] == "affine"
        aligned = ds.read().astype(float)
        valid = ds.read_masks(1) > 0
    # Content that left the frame is invalid, the rest is there.
    assert 0.9 < valid.mean() < 1
    before, after = p.before.astype(float), p.after.astype(float)
    err_aligned = np.abs(aligned - before)[:, valid].mean()
    err_raw = np.abs(after - before)[:, valid].mean()
    assert err_aligned < 0.4 * err_raw
    # The array the result holds is the same resampling.
    assert np.abs(r.aligned - aligned).max() <= 0.5 + 1e-6
    np.testing.assert_array_equal(r.invalid, ~valid)


def test_existing_output_is_refused(files, tmp_path):
    b, a, _ = files
    out = tmp_path / "aligned.tif"
    out.write_text("keep")
    r = coregister(b, a)
    with pytest.raises(changedet.OutputExistsError):
        r.write_aligned(out)
    assert out.read_text() == "keep"


def test_tie_points_are_rfc7946_points(files):
    b, a, _ = files
    r = coregister(b, a, mode="local")
    fc = r.tie_points_geojson()
    json.dumps(fc, allow_nan=False)
    assert fc["type"] == "FeatureCollection" and "crs" not in fc
    assert len(fc["features"]) == len(r.alignment.tie_points) >= 9
    with rasterio.open(b) as ds:
        from rasterio.warp import transform_bounds

        footprint = box(*transform_bounds(ds.crs, "EPSG:4326", *ds.bounds))
    keys = None
    for i, f in enumerate(fc["features"], start=1):
        assert f["id"] == i and f["geometry"]["type"] == "Point"
        assert footprint.contains(shape(f["geometry"]))
        keys = keys or list(f["properties"])
        assert list(f["properties"]) == keys
        assert all(isinstance(v, (int, float, bool)) for v in f["properties"].values())
    assert {"dx", "dy", "reliability", "inlier"} <= set(keys)
    inl = [f["properties"] for f in fc["features"] if f["properties"]["inlier"]]
    assert np.median([q["dx"] for q in inl]) == pytest.approx(SHIFT[0], abs=0.1)
    w, s, e, n = fc["bbox"]
    assert w < e and s < n


@pytest.mark.parametrize("bands", [None, [2]])
def test_in_memory_rasters_and_band_choice(bands):
    p = static_pair(shift=(-1.5, 2.25))
    r = coregister(changedet.Raster(p.before, utm_transform(), UTM, name="b"),
                   changedet.Raster(p.after, utm_transform(), UTM, name="a"), bands=bands)
    assert (r.shift.x, r.shift.y) == pytest.approx((-1.5, 2.25), abs=0.05)
    assert r.to_dict()["matched_on"].endswith("bands 2" if bands else "bands 1, 2, 3")
    assert r.aligned.shape == (1 if bands else 3, 320, 320)


def test_featureless_images_raise_or_are_flagged(tmp_path):
    rng = np.random.default_rng(0)
    b = write_tif(tmp_path / "b.tif", (rng.random((3, 256, 256)) * 255).astype(np.uint8))
    a = write_tif(tmp_path / "a.tif", (rng.random((3, 256, 256)) * 255).astype(np.uint8))
    with pytest.raises(CoregistrationError, match="no reliable co-registration"):
        coregister(b, a)
    r = coregister(b, a, strict=False)
    assert not r.reliable and r.pixel_transform() == rasterio.Affine.identity()


def test_mode_is_checked():
    with pytest.raises(ValueError, match="mode must be one of"):
        coregister("a.tif", "b.tif", mode="none")


def test_detect_accepts_local_coreg(tmp_path):
    p = static_pair(shape=(256, 256))
    b = write_tif(tmp_path / "b.tif", p.before)
    a = write_tif(tmp_path / "a.tif", p.after)
    result = changedet.detect(b, a, coreg="local")
    meta = result.metadata["coregistration"]
    assert meta["mode"] == "local" and meta["applied"] is True
    assert meta["model"] in ("affine", "translation")
    assert (meta["shift_px"]["x"], meta["shift_px"]["y"]) == pytest.approx(SHIFT, abs=0.1)
    assert len(result) == 0  # a displaced scene without change has no change


# -- command line ----------------------------------------------------------------

@pytest.fixture
def runner():
    return CliRunner()


def test_cli_json_keys_and_sign(runner, files):
    b, a, _ = files
    r = runner.invoke(main, ["coregister", str(b), str(a), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert {"shift_px", "shift_m", "reliability"} <= set(d)
    assert d["shift_px"]["x"] == pytest.approx(3.4, abs=0.05)
    assert d["shift_px"]["y"] == pytest.approx(-2.7, abs=0.05)
    assert d["shift_m"]["x"] > 0 and d["shift_m"]["y"] > 0  # right = east, up = north
    assert r.stderr == ""


def test_cli_writes_aligned_and_tie_points_and_a_summary(runner, files, tmp_path):
    b, a, p = files
    out, tp = tmp_path / "al.tif", tmp_path / "tp.geojson"
    r = runner.invoke(main, ["coregister", str(b), str(a), "--local", "-o", str(out),
                             "--tie-points", str(tp)])
    assert r.exit_code == 0, r.output
    assert r.stdout == ""
    line = r.stderr.strip()
    assert line.count("\n") == 0 and line.startswith("shift +3.") and "affine" in line
    with rasterio.open(out) as ds:
        aligned = ds.read().astype(float)
        valid = ds.read_masks(1) > 0
    assert np.abs(aligned - p.before)[:, valid].mean() < 0.4 * np.abs(
        p.after.astype(float) - p.before)[:, valid].mean()
    assert json.loads(tp.read_text())["type"] == "FeatureCollection"


def test_cli_unreliable_is_exit_1_with_one_line(runner, tmp_path):
    flat = np.full((3, 128, 128), 90, np.uint8)
    b = write_tif(tmp_path / "b.tif", flat)
    a = write_tif(tmp_path / "a.tif", flat)
    r = runner.invoke(main, ["coregister", str(b), str(a)])
    assert r.exit_code == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "no reliable co-registration" in lines[0]


@pytest.mark.parametrize("args", [["coregister"], ["coregister", "a.tif"],
                                  ["coregister", "a.tif", "b.tif", "--bands", "x"],
                                  ["coregister", "a.tif", "b.tif", "--global"]])
def test_cli_usage_errors_exit_2(runner, args):
    assert runner.invoke(main, args).exit_code == 2


def test_cli_help_has_examples(runner):
    r = runner.invoke(main, ["coregister", "--help"])
    assert r.exit_code == 0 and "$ changedet coregister before.tif after.tif --json" in r.output


# -- real data -------------------------------------------------------------------

def _joplin(shared_data: Path):
    """One pre tile (EPSG:26915) and the post tiles (EPSG:4326) merged in memory over it."""
    from rasterio.merge import merge
    from rasterio.warp import transform_bounds

    root = shared_data / "joplin" / "input"
    pre = root / "pre" / "tile_337-9136.tif"
    with rasterio.open(pre) as ds:
        bounds = transform_bounds(ds.crs, "EPSG:4326", *ds.bounds)
    posts = [rasterio.open(f) for f in sorted((root / "post").glob("*.tif"))]
    try:
        data, transform = merge(posts, bounds=bounds)
        crs = posts[0].crs
    finally:
        for ds in posts:
            ds.close()
    return pre, changedet.Raster(data, transform, crs, nodata=0, name="joplin_post")


@pytest.mark.realdata
def test_joplin_post_onto_pre_grid(shared_data):
    pre, post = _joplin(shared_data)
    g = coregister(pre, post)
    loc = coregister(pre, post, mode="local")
    assert g.reliable and loc.reliable
    # The residual misregistration after reprojection is about 0-2 px.
    assert np.hypot(g.shift.x, g.shift.y) < 4
    # Both modes agree at the centre of the tile.
    assert (loc.shift.x, loc.shift.y) == pytest.approx((g.shift.x, g.shift.y), abs=0.5)
