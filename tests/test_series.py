import io as pyio
import json
import warnings

import numpy as np
import pytest
import rasterio
import shapely
from click.testing import CliRunner
from shapely.geometry import box

import changedet
from changedet.cli import main
from changedet.series import (
    SERIES_PROPERTY_KEYS,
    acquisition_date,
    date_from_name,
    link_changes,
    parse_date,
    track_series,
)
from changedet.synthetic import SceneObject, Sensor, Sun, quantise, rect, render, textured_ground
from tests.conftest import pixel_polygons_to_map, utm_transform, write_tif

DATES = ["2020-03-01", "2021-03-01", "2022-03-01"]


def three_dates(seed=0, shape=(256, 256)):
    """A site at three dates: A built by date 2, B by date 3, C removed by date 3.

    Each date has its own gain, haze, noise and sub-pixel shift. Returns the
    three images and the footprints (pixel coordinates of date 1's grid).
    """
    rng = np.random.default_rng(seed)
    s = 4
    ground = textured_ground((shape[0] * s, shape[1] * s), "pavement", bands=3, rng=rng,
                             texture=0.02, grain=12.0, slab=24.0)
    static = [SceneObject(rect(20, 20, 40, 30), "roof_grey"),
              SceneObject(rect(180, 190, 50, 40), "roof_red")]
    a = SceneObject(rect(60, 120, 44, 36), "white")          # appears at date 2
    b = SceneObject(rect(150, 40, 36, 50), "blue")           # appears at date 3
    c = SceneObject(rect(40, 200, 40, 30), "roof_green")     # gone at date 3
    scenes = [static + [c], static + [c, a], static + [a, b]]
    sensors = [Sensor(),
               Sensor(gain=(1.08, 1.05, 1.02), offset=(0.02, 0.02, 0.03), haze=0.04,
                      blur=0.7, noise=0.01, shift=(1.4, -0.8)),
               Sensor(gain=(0.95, 0.97, 1.0), offset=(0.01, 0.0, 0.02), haze=0.02,
                      blur=0.65, noise=0.01, shift=(-0.9, 1.7))]
    imgs = [quantise(render(ground, objs, sun=Sun(150, 55), sensor=sen, supersample=s,
                            rng=rng)) for objs, sen in zip(scenes, sensors, strict=True)]
    return imgs, {"A": a.footprint, "B": b.footprint, "C": c.footprint}, sensors


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    d = tmp_path_factory.mktemp("series")
    imgs, truth, sensors = three_dates()
    paths = [write_tif(d / f"site_{date.replace('-', '')}.tif", img)
             for date, img in zip(DATES, imgs, strict=True)]
    return [str(p) for p in paths], truth, sensors


@pytest.fixture(scope="module")
def stack_result(stack):
    paths, _, _ = stack
    # Given out of order: the series sorts by date.
    return track_series([paths[2], paths[0], paths[1]])


def _match(result, footprint):
    g = pixel_polygons_to_map([footprint], utm_transform())[0]
    best, props = 0.0, None
    for q, p in zip(result.geometries, result.properties, strict=True):
        iou = g.intersection(q).area / g.union(q).area
        if iou > best:
            best, props = iou, p
    return best, props


def test_structures_get_the_date_they_first_appeared(stack_result):
    r = stack_result
    assert r.dates == DATES
    iou_a, a = _match(r, _fp("A"))
    iou_b, b = _match(r, _fp("B"))
    iou_c, c = _match(r, _fp("C"))
    assert min(iou_a, iou_b, iou_c) >= 0.7, (iou_a, iou_b, iou_c)
    # A: built between dates 1 and 2, still there: ONE feature, first seen at date 2.
    assert a["change"] == "appeared" and a["first_seen"] == DATES[1]
    assert a["absent_before"] == DATES[0] and a["last_seen"] == DATES[2]
    assert a["absent_after"] is None
    # B: built between dates 2 and 3.
    assert b["change"] == "appeared" and b["first_seen"] == DATES[2]
    assert b["absent_before"] == DATES[1]
    # C: there from the start, gone at date 3.
    assert c["change"] == "disappeared" and c["first_seen"] == DATES[0]
    assert c["last_seen"] == DATES[1] and c["absent_after"] == DATES[2]
    assert c["absent_before"] is None
    assert len(r) == 3, r.properties
    assert all(list(p) == list(SERIES_PROPERTY_KEYS) for p in r.properties)


_TRUTH: dict = {}


def _fp(name):
    if not _TRUTH:
        _TRUTH.update(three_dates()[1])
    return _TRUTH[name]


def test_every_date_is_coregistered_to_the_first(stack_result, stack):
    _, _, sensors = stack
    shifts = stack_result.shifts
    assert shifts[0].x == 0 and shifts[0].y == 0
    for s, sensor in zip(shifts[1:], sensors[1:], strict=True):
        assert s.reliable
        assert (s.x, s.y) == pytest.approx(sensor.shift, abs=0.25)
    meta = stack_result.metadata
    assert [e["date"] for e in meta["series"]] == DATES
    assert ([(st["from"], st["to"]) for st in meta["steps"]]
            == list(zip(DATES, DATES[1:], strict=False)))
    assert meta["steps"][0]["appeared"] == 1 and meta["steps"][1]["disappeared"] == 1


def test_geojson_output_is_rfc7946(stack_result, tmp_path):
    fc = stack_result.to_geojson(tmp_path / "s.geojson")
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == 3
    assert [f["id"] for f in fc["features"]] == [1, 2, 3]
    lon, lat = fc["features"][0]["geometry"]["coordinates"][0][0]
    assert 125 < lon < 126 and 38 < lat < 40
    back = json.loads((tmp_path / "s.geojson").read_text())
    assert back["features"][0]["properties"]["first_seen"] in DATES


def test_cli_series(stack, tmp_path):
    paths, _, _ = stack
    out = tmp_path / "series.geojson"
    r = CliRunner().invoke(main, ["series", *paths, "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "3 structure(s) over 3 dates: 2 appeared, 1 disappeared" in r.stderr
    assert f"{DATES[0]} → {DATES[1]}: 1 appeared" in r.stderr
    fc = json.loads(out.read_text())
    assert sorted(f["properties"]["first_seen"] for f in fc["features"]) == \
        [DATES[0], DATES[1], DATES[2]]


def test_cli_dates_option_overrides_names(stack, tmp_path):
    paths, _, _ = stack
    r = CliRunner().invoke(main, ["series", *paths, "-q", "--dates", "2001,2002,2003"])
    assert r.exit_code == 0, r.output
    fc = json.loads(r.stdout)
    assert sorted(f["properties"]["first_seen"] for f in fc["features"]) == \
        ["2001", "2002", "2003"]
    r = CliRunner().invoke(main, ["series", *paths, "--dates", "2001,2002"])
    assert r.exit_code == 1 and "3 images but 2 dates" in r.stderr
    r = CliRunner().invoke(main, ["series", *paths, "--dates", "2001,2001,2003"])
    assert r.exit_code == 1 and "same date" in r.stderr
    r = CliRunner().invoke(main, ["series", paths[0]])
    assert r.exit_code == 2


@pytest.mark.parametrize("dates, message", [
    ("2017-09-01,2017-13-01,2018", "'2017-13-01' is not a date (month must be in 1..12)"),
    ("2017-09-01,2017-02-30,2018", "'2017-02-30' is not a date (day is out of range"),
    ("09/01/2017,10/01/2017,2018", "'09/01/2017' is not a date (use YYYY-MM-DD"),
])
def test_cli_impossible_dates_are_refused_not_cut_to_the_year(stack, dates, message):
    # A month 13 was read as "2017" and could reorder the series silently.
    paths, _, _ = stack
    r = CliRunner().invoke(main, ["series", *paths, "--dates", dates])
    assert r.exit_code == 1 and message in r.stderr, r.stderr


def test_given_dates_are_normalised():
    from changedet.series import _given_date

    assert [_given_date(t) for t in ("2017-9-5", "20170905", "1985-1", "2001")] == \
        ["2017-09-05", "2017-09-05", "1985-01", "2001"]


# -- dates -----------------------------------------------------------------

@pytest.mark.parametrize("text, iso", [
    ("m_4709963_se_14_1_20090818", "2009-08-18"),
    ("S2A_2019-05-01_T32", "2019-05-01"),
    ("scene_2019_05_01", "2019-05-01"),
    ("2026:10:08 02:30:00", "2026-10-08"),
    ("1985", "1985"),
    ("mosaic_2021-07", "2021-07"),
    ("tile_12345678", None),          # not a valid date, and no year
    ("tile_7", None),
    ("20191332_then_2018", "2018"),   # month 13: not a date; the year remains
])
def test_parse_date(text, iso):
    assert parse_date(text) == iso


def test_date_from_metadata_wins_over_name(tmp_path):
    p = write_tif(tmp_path / "img_20200101.tif", np.zeros((3, 32, 32), np.uint8))
    assert acquisition_date(str(p)) == "2020-01-01"
    with rasterio.open(p, "r+") as ds:
        ds.update_tags(ACQUISITIONDATE="2019-06-30T10:11:12Z")
    assert acquisition_date(str(p)) == "2019-06-30"
    assert date_from_name("/a/b/1985.tif") == "1985"


def test_sample_tiles_dates_come_from_their_tags(sample_tiles):
    assert acquisition_date(sample_tiles / "square_before.tif") == "2026-10-08"
    assert acquisition_date(sample_tiles / "square_after.tif") == "2026-10-15"


def test_missing_dates_say_how_to_give_them(tmp_path):
    ps = [str(write_tif(tmp_path / f"tile_{c}.tif", np.zeros((3, 32, 32), np.uint8)))
          for c in "ab"]
    with pytest.raises(changedet.InputError, match="--dates"):
        track_series(ps)


# -- linking ---------------------------------------------------------------

def test_link_changes_follows_appear_then_disappear():
    g = box(0, 0, 10, 10)
    steps = [[(g, {"change": "appeared"})],            # 1 -> 2
             [(box(1, 1, 11, 11), {"change": "appeared"})],  # grows
             [(box(0, 0, 10, 10), {"change": "disappeared"})],
             []]
    (t,) = link_changes(steps, 5)
    assert (t.change, t.first, t.last, t.detections) == ("transient", 1, 2, 3)
    assert t.geom.area == pytest.approx(100 + 100 - 81)
    far = [[(g, {"change": "appeared"})], [(box(50, 50, 60, 60), {"change": "disappeared"})]]
    t1, t2 = link_changes(far, 3)
    assert (t1.change, t1.first, t1.last) == ("appeared", 1, None)
    assert (t2.change, t2.first, t2.last) == ("disappeared", 0, 1)
    with pytest.raises(ValueError):
        link_changes(far, 4)


# -- progress --------------------------------------------------------------

class _TTY(pyio.StringIO):
    def isatty(self):
        return True


def test_progress_only_on_a_terminal_and_not_with_q():
    import click

    from changedet.cli.options import progress_reporter

    with click.Context(click.Command("x"), obj={}) as ctx:
        tty = _TTY()
        prog = progress_reporter(tty)
        prog("reading", 1, 1)
        prog("scoring", 3, 8)
        prog("done", 1, 1)
        text = tty.getvalue()
        assert "reading...\n" in text
        assert "\rscoring 3/8 (37%)" in text and "elapsed" in text and text.endswith("\n")
        assert progress_reporter(pyio.StringIO()) is None       # not a terminal
        ctx.obj["quiet"] = 1
        assert progress_reporter(_TTY()) is None


def test_series_reports_progress_through_a_callable(stack):
    paths, _, _ = stack
    seen = []
    track_series(paths[:2], progress=lambda s, d, t: seen.append((s, d, t)))
    assert seen[-1] == ("done", 3, 3)
    assert any("co-registering" in s for s, _, _ in seen)
    assert any(s.startswith(f"{DATES[0]} → {DATES[1]}: detecting") for s, _, _ in seen)


# -- real data -------------------------------------------------------------

@pytest.mark.realdata
def test_naip_series_is_a_false_alarm_control(shared_data):
    files = sorted((shared_data / "timeseries" / "naip").glob("*.tif"))[:3]
    if len(files) < 3:
        pytest.skip("timeseries/naip is incomplete")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = track_series([str(f) for f in files])
    assert r.dates == ["2009-08-18", "2012-07-31", "2015-09-26"]   # from the names
    # Mosaics of one tile: shifts to the first date are small and reliable.
    for s in r.shifts[1:]:
        assert s.reliable and abs(s.x) < 1.5 and abs(s.y) < 1.5
    for p in r.properties:
        assert p["first_seen"] in r.dates and p["last_seen"] in r.dates
        assert p["first_seen"] <= p["last_seen"]
    # Fields and water change between seasons; no structure rises: the changes
    # are mostly in place ("changed"), not appeared ones.
    kinds = [p["change"] for p in r.properties]
    assert kinds.count("changed") > kinds.count("appeared")


@pytest.mark.realdata
def test_landsat_series_dates_from_year_names(shared_data):
    folder = shared_data / "timeseries" / "landsat"
    files = [folder / f"{y}.tif" for y in (1985, 2000, 2020)]
    if not all(f.exists() for f in files):
        pytest.skip("timeseries/landsat is incomplete")
    r = track_series([str(f) for f in files], bands=[1, 2, 3, 4])
    assert r.dates == ["1985", "2000", "2020"]
    assert all(s.reliable and abs(s.x) < 0.5 and abs(s.y) < 0.5 for s in r.shifts[1:])
    assert r.grid.crs.to_epsg() == 4326
    assert len(r) > 0
    areas = [p["area_m2"] for p in r.properties]
    assert all(a > 0 for a in areas)


def test_images_that_do_not_overlap_are_named():
    from changedet.errors import NoOverlapError
    from changedet.io import Raster
    from tests.conftest import UTM, utm_transform

    data = np.ones((3, 64, 64), np.uint16)
    first = Raster(data, utm_transform(), UTM, name="march.tif")
    far = Raster(data, utm_transform(origin=(800000.0, 4322620.0)), UTM, name="april.tif")
    with pytest.raises(NoOverlapError, match="march.tif and april.tif do not overlap"):
        track_series([first, far], dates=["2021-03", "2021-04"])


def _same_tracks(a, b):
    # Structure by structure: the same class and dates, and nearly the same outline.
    assert len(a) == len(b)
    for g, p in zip(a.geometries, a.properties, strict=True):
        iou = [g.intersection(q).area / g.union(q).area for q in b.geometries]
        k = int(np.argmax(iou))
        assert iou[k] > 0.9, (p, iou[k])
        q = b.properties[k]
        assert (p["change"], p["first_seen"], p["last_seen"]) == \
            (q["change"], q["first_seen"], q["last_seen"])


def test_files_in_memory_rasters_and_datasets_give_the_same_series(stack, stack_result):
    # Files are read block by block through vrt://; rasters and datasets are
    # warped onto the common grid in memory. Both find the same structures.
    from changedet.io import Raster

    paths, _, _ = stack
    rasters = []
    for p in paths:
        with rasterio.open(p) as ds:
            rasters.append(Raster(ds.read(), ds.transform, ds.crs, name=p))
    _same_tracks(track_series(rasters, dates=DATES), stack_result)
    # Bands are the files' numbers on both paths.
    _same_tracks(track_series(rasters, dates=DATES, bands=[1, 3]),
                 track_series(paths, bands=[1, 3]))
    with rasterio.open(paths[0]) as d0, rasterio.open(paths[1]) as d1, \
            rasterio.open(paths[2]) as d2:
        _same_tracks(track_series([d0, d1, d2], dates=DATES), stack_result)


def test_series_does_not_depend_on_blocks_or_threads(stack, stack_result):
    paths, _, _ = stack
    r = track_series(paths, block_size=64, threads=1)
    assert [g.wkb for g in r.geometries] == [g.wkb for g in stack_result.geometries]
    assert r.properties == stack_result.properties
    assert r.steps == stack_result.steps


def test_a_date_is_moved_onto_the_first_dates_frame(tmp_path):
    # Known answer: a date displaced by (2.6, -1.3) px, in the first date's
    # CRS or in another one, named through vrt:// with its geotransform
    # moved, lines up with the first date to a small fraction of a pixel.
    from rasterio.warp import calculate_default_transform, reproject

    from changedet import coregister, io
    from changedet.series import _registered

    imgs, _, _ = three_dates(seed=3)
    sensor_shift = (2.6, -1.3)
    shifted = quantise(render(textured_ground((1024, 1024), "pavement", bands=3,
                                              rng=np.random.default_rng(3), texture=0.02,
                                              grain=12.0, slab=24.0),
                              [], sun=Sun(150, 55), sensor=Sensor(shift=sensor_shift),
                              supersample=4, rng=np.random.default_rng(4)))
    still = quantise(render(textured_ground((1024, 1024), "pavement", bands=3,
                                            rng=np.random.default_rng(3), texture=0.02,
                                            grain=12.0, slab=24.0),
                            [], sun=Sun(150, 55), sensor=Sensor(), supersample=4,
                            rng=np.random.default_rng(4)))
    first = write_tif(tmp_path / "first.tif", still)
    moved = write_tif(tmp_path / "moved.tif", shifted)
    # The same displaced image in geographic coordinates.
    with rasterio.open(moved) as src:
        t, w, h = calculate_default_transform(src.crs, "EPSG:4326", src.width, src.height,
                                              *src.bounds)
        geo = np.zeros((3, h, w), np.float32)
        reproject(src.read().astype(np.float32), geo, src_transform=src.transform,
                  src_crs=src.crs, dst_transform=t, dst_crs="EPSG:4326",
                  resampling=rasterio.enums.Resampling.cubic, dst_nodata=0)
    lonlat = write_tif(tmp_path / "lonlat.tif", geo, transform=t, crs="EPSG:4326", nodata=0)
    with rasterio.open(first) as ds:
        grid = io.image_info(ds).grid
    for path in (moved, lonlat):
        before = coregister(first, path)
        with rasterio.open(path) as ds:
            own = io.image_info(ds).grid
        named = _registered(str(path), "x", own, grid, before.shift, None)
        assert named.startswith("vrt://") and "a_gt=" in named
        after = coregister(first, named)
        assert abs(before.shift.x) > 2 and abs(before.shift.y) > 1
        assert (after.shift.x, after.shift.y) == pytest.approx((0, 0), abs=0.1)


def test_series_of_files_in_another_crs_lies_on_the_first_dates_crs(stack, stack_result,
                                                                   tmp_path):
    # The last date in lon/lat: its step's polygons come back in the first
    # date's CRS, where the same structures are found.
    from rasterio.warp import calculate_default_transform, reproject

    paths, _, _ = stack
    with rasterio.open(paths[2]) as src:
        t, w, h = calculate_default_transform(src.crs, "EPSG:4326", src.width, src.height,
                                              *src.bounds)
        geo = np.zeros((src.count, h, w), np.float32)
        reproject(src.read().astype(np.float32), geo, src_transform=src.transform,
                  src_crs=src.crs, dst_transform=t, dst_crs="EPSG:4326",
                  resampling=rasterio.enums.Resampling.cubic, dst_nodata=0)
    last = write_tif(tmp_path / "site_20220301.tif", geo, transform=t, crs="EPSG:4326",
                     nodata=0)
    r = track_series([paths[0], paths[1], str(last)])
    assert r.grid.crs == stack_result.grid.crs
    _same_tracks(r, stack_result)


def test_an_alpha_band_still_masks_when_bands_are_chosen(stack, stack_result, tmp_path):
    # The middle date's top rows are transparent (alpha 0) and black: with
    # --bands 1,2,3 they must stay nodata, not become a dark change.
    paths, _, _ = stack
    with rasterio.open(paths[1]) as src:
        data, profile = src.read(), src.profile
    alpha = np.full(data.shape[1:], 255, data.dtype)
    alpha[:24] = 0
    data[:, :24] = 0
    profile.update(count=4, photometric="RGB", alpha="YES")
    rgba = tmp_path / "site_20210301.tif"
    with rasterio.open(rgba, "w", **profile) as ds:
        ds.write(np.concatenate([data, alpha[None]]))
    r = track_series([paths[0], str(rgba), paths[2]], bands=[1, 2, 3])
    top = shapely.box(*r.grid.bounds).bounds[3] - 24 * abs(r.grid.transform.e)
    assert all(g.bounds[3] <= top + 1e-6 or g.bounds[1] < top - 10 for g in r.geometries)
    _same_tracks(r, stack_result)


def test_given_dates_may_be_iso_times_slashes_or_python_dates():
    import datetime as dt

    import numpy as np

    from changedet.series import _given_date

    for value in (dt.date(2019, 5, 1), dt.datetime(2019, 5, 1, 10, 30), "2019-05-01T10:30:00Z",
                  "2019/05/01", "2019-05-01 10:30", np.datetime64("2019-05-01T10:30")):
        assert _given_date(value) == "2019-05-01", value


def test_landsat_and_sentinel_names_give_the_acquisition_date():
    # Their names end with the processing date; the first is the image's.
    from changedet.series import date_from_name

    assert date_from_name("LC08_L1TP_123032_20190501_20200830_02_T1_SR.tif") == "2019-05-01"
    assert date_from_name("S2A_MSIL2A_20190501T103031_N0212_R108_T32TQM_20190601T134214"
                          ".tif") == "2019-05-01"
    assert date_from_name("site_20190501_20200601.tif") == "2020-06-01"
