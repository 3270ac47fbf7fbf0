import json

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from shapely.geometry import mapping, shape

import changedet
from changedet.cli import main


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def sample(sample_tiles):
    return str(sample_tiles / "square_before.tif"), str(sample_tiles / "square_after.tif")


def test_version(runner):
    r = runner.invoke(main, ["--version"])
    assert r.exit_code == 0
    assert r.output.strip() == f"changedet {changedet.__version__}"


def test_diff_writes_geojson(runner, sample, tmp_path):
    out = tmp_path / "changes.geojson"
    r = runner.invoke(main, ["diff", *sample, "-o", str(out)])
    assert r.exit_code == 0, r.output
    fc = json.loads(out.read_text())
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == 10
    assert "10 change(s)" in r.stderr
    assert r.stdout == ""


def test_diff_without_output_goes_to_stdout(runner, sample):
    r = runner.invoke(main, ["diff", *sample, "-q"])
    assert r.exit_code == 0
    fc = json.loads(r.stdout)
    assert len(fc["features"]) == 10
    assert r.stderr == ""


def test_mask_is_a_tiled_compressed_cog_with_classes(runner, sample, tmp_path):
    out, mask = tmp_path / "c.geojson", tmp_path / "classes.tif"
    r = runner.invoke(main, ["diff", *sample, "-o", str(out), "--mask", str(mask)])
    assert r.exit_code == 0, r.output
    with rasterio.open(mask) as ds, rasterio.open(sample[0]) as before:
        assert ds.dtypes[0] == "uint8" and ds.nodata == 255
        assert ds.crs == before.crs and ds.transform == before.transform
        assert ds.profile["tiled"] and ds.compression is not None
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        classes = ds.read(1)
    assert set(np.unique(classes)) <= {0, 1, 2, 3, 255}
    assert (classes == 1).sum() > 0 and (classes == 2).sum() > 0
    fc = json.loads(out.read_text())
    n_appeared = sum(f["properties"]["change"] == "appeared" for f in fc["features"])
    appeared_px = sum(f["properties"]["pixels"] for f in fc["features"]
                      if f["properties"]["change"] == "appeared")
    assert (classes == 1).sum() == appeared_px and n_appeared == 9


def test_score_raster(runner, sample, tmp_path):
    score = tmp_path / "score.tif"
    r = runner.invoke(main, ["diff", *sample, "-q", "--score", str(score)])
    assert r.exit_code == 0, r.output
    with rasterio.open(score) as ds:
        s = ds.read(1)
        assert ds.dtypes[0] == "float32"
    assert np.nanmax(s) > 10


def test_roi_file(runner, sample, tmp_path):
    from tests.conftest import SAMPLE

    truth = json.loads((SAMPLE / "square_truth.geojson").read_text())
    big = next(f for f in truth["features"] if "podium" in f["properties"]["what"])
    roi = tmp_path / "roi.geojson"
    roi.write_text(json.dumps({"type": "Feature", "properties": {},
                               "geometry": mapping(shape(big["geometry"]).buffer(0.0002))}))
    r = runner.invoke(main, ["diff", *sample, "-q", "--roi", str(roi)])
    assert r.exit_code == 0, r.output
    fc = json.loads(r.stdout)
    assert len(fc["features"]) == 1
    assert fc["features"][0]["properties"]["change"] == "appeared"


def test_roi_with_legacy_crs_member(runner, sample, tmp_path):
    with rasterio.open(sample[0]) as ds:
        left, bottom, right, top = ds.bounds
    roi = tmp_path / "roi_utm.geojson"
    # The north-east quarter, in UTM metres, named by a legacy crs member.
    ring = [[left + 160, top - 128], [right, top - 128], [right, top], [left + 160, top],
            [left + 160, top - 128]]
    roi.write_text(json.dumps({
        "type": "FeatureCollection",
        "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32651"}},
        "features": [{"type": "Feature", "properties": {},
                      "geometry": {"type": "Polygon", "coordinates": [ring]}}]}))
    r = runner.invoke(main, ["diff", *sample, "-q", "--roi", str(roi)])
    assert r.exit_code == 0, r.output
    changes = [f["properties"]["change"] for f in json.loads(r.stdout)["features"]]
    assert changes == ["disappeared"]  # only the removed pavilion is there


def test_bbox(runner, sample):
    r = runner.invoke(main, ["diff", *sample, "-q", "--bbox", "125.7510", "39.0186",
                             "125.7525", "39.0197"])
    assert r.exit_code == 0, r.output
    fc = json.loads(r.stdout)
    for f in fc["features"]:
        w, s, e, n = shape(f["geometry"]).bounds
        assert w >= 125.7510 - 1e-6 and e <= 125.7525 + 1e-6


def test_existing_output_is_kept_without_overwrite(runner, sample, tmp_path):
    out = tmp_path / "changes.geojson"
    out.write_text("precious")
    r = runner.invoke(main, ["diff", *sample, "-o", str(out)])
    assert r.exit_code == 1
    assert "already exists" in r.stderr and "--overwrite" in r.stderr
    assert out.read_text() == "precious"
    r = runner.invoke(main, ["diff", *sample, "-o", str(out), "--overwrite"])
    assert r.exit_code == 0
    assert json.loads(out.read_text())["type"] == "FeatureCollection"


def test_missing_input_is_exit_1_with_one_line(runner, tmp_path):
    r = runner.invoke(main, ["diff", str(tmp_path / "nope.tif"), str(tmp_path / "b.tif")])
    assert r.exit_code == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "nope.tif" in lines[0] and "no such file" in lines[0]
    assert "Traceback" not in r.output


def test_output_equal_to_input_is_refused(runner, sample):
    r = runner.invoke(main, ["diff", *sample, "--mask", sample[1]])
    assert r.exit_code == 1
    assert "is also an input" in r.stderr


@pytest.mark.parametrize("args", [
    ["diff"],
    ["diff", "a.tif"],
    ["diff", "a.tif", "b.tif", "--min-area", "-5"],
    ["diff", "a.tif", "b.tif", "--coreg", "sideways"],
    ["diff", "a.tif", "b.tif", "--threshold", "lots"],
    ["diff", "a.tif", "b.tif", "--bands", "red"],
    ["diff", "a.tif", "b.tif", "--bbox", "1", "2", "3"],
    ["diff", "a.tif", "b.tif", "--roi", "r.geojson", "--bbox", "1", "2", "3", "4"],
    ["frobnicate"],
])
def test_usage_errors_exit_2(runner, args):
    r = runner.invoke(main, args)
    assert r.exit_code == 2, r.output


def test_help_has_examples(runner):
    r = runner.invoke(main, ["diff", "--help"])
    assert r.exit_code == 0
    assert "$ changedet diff before.tif after.tif -o changes.geojson" in r.output


def test_scale_options_give_the_same_result(runner, sample, tmp_path):
    a, b = tmp_path / "a.geojson", tmp_path / "b.geojson"
    r1 = runner.invoke(main, ["diff", *sample, "-o", str(a), "-q"])
    r2 = runner.invoke(main, ["diff", *sample, "-o", str(b), "-q", "--threads", "1",
                              "--block-size", "128"])
    assert r1.exit_code == r2.exit_code == 0
    fa, fb = (json.loads(p.read_text()) for p in (a, b))
    assert sorted(json.dumps(f["geometry"]) for f in fa["features"]) == \
        sorted(json.dumps(f["geometry"]) for f in fb["features"])


def test_progress_reports_blocks_and_time_left():
    import io as _io

    from click.testing import CliRunner as _R

    from changedet.cli.options import Progress

    with _R().isolation() as (out, err, _):
        p = Progress(enabled=True)
        p("co-registering", 0, 1)
        for i in range(1, 5):
            p("blocks", i, 4)
        for i in range(3):       # a counted stage announced at its start
            p("changes across seams", i, 2)
        text = err.getvalue().decode() if err is not None else out.getvalue().decode()
    assert "co-registering..." in text
    assert "blocks 4/4 (100%)" in text and "left" in text and "elapsed" in text
    assert "changes across seams 0/2 (0%), 0s elapsed, starting" in text
    assert "changes across seams 2/2 (100%)" in text
    silent = Progress(enabled=False)
    silent("blocks", 1, 2)  # nothing to assert but that it is quiet and does not fail
    assert not silent.enabled and _io is not None


def test_interrupt_while_drawing_pictures_says_what_was_written(tmp_path, monkeypatch):
    # The GeoJSON and class raster are complete by then: the message must
    # not say that nothing was written.
    import changedet.quicklook as quicklook
    from tests.conftest import SAMPLE

    before, after = str(SAMPLE / "square_before.tif"), str(SAMPLE / "square_after.tif")

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(quicklook, "read_previews", interrupted)
    out, mask, look = tmp_path / "c.geojson", tmp_path / "c.tif", tmp_path / "q.png"
    r = CliRunner().invoke(main, ["diff", before, after, "-o", str(out), "--mask", str(mask),
                                  "--quicklook", str(look)])
    assert r.exit_code == 130
    assert r.stderr.strip() == (f"Interrupted while drawing the pictures; {out}, {mask} "
                                f"written, not {look}.")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.geojson", "c.tif"]


def test_interrupt_after_the_quicklook_names_it_as_written(tmp_path, monkeypatch):
    import changedet.report as report
    from tests.conftest import SAMPLE

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "report", interrupted)
    before, after = str(SAMPLE / "square_before.tif"), str(SAMPLE / "square_after.tif")
    out, look, page = tmp_path / "c.geojson", tmp_path / "q.png", tmp_path / "r.html"
    r = CliRunner().invoke(main, ["diff", before, after, "-o", str(out), "--quicklook",
                                  str(look), "--report", str(page)])
    assert r.exit_code == 130
    assert r.stderr.strip() == (f"Interrupted while drawing the pictures; {out}, {look} "
                                f"written, not {page}.")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.geojson", "q.png"]


def test_swapped_dates_are_warned_about(sample, tmp_path):
    # The sample tiles carry their acquisition dates: given the later one as
    # BEFORE, appeared and disappeared come out the wrong way round.
    before, after = sample
    out = str(tmp_path / "c.geojson")
    r = CliRunner().invoke(main, ["diff", after, before, "-o", out])
    assert r.exit_code == 0, r.output
    assert (f"Warning: {after} is dated 2026-10-15, later than {before} (2026-10-08): are "
            "BEFORE and AFTER swapped?") in r.stderr
    r = CliRunner().invoke(main, ["diff", before, after, "-o", out, "--overwrite"])
    assert r.exit_code == 0 and "Warning" not in r.stderr


def test_quiet_silences_gdal_s_own_warnings_too(shared_data, tmp_path):
    # GDAL prints "Warning 1: TIFFReadDirectory: ..." for these Landsat
    # composites straight to stderr, from threads rasterio's handler does
    # not cover: -q must silence it as it does changedet's own (a separate
    # process: GDAL writes to the file descriptor, past click's capture).
    import subprocess
    import sys

    folder = shared_data / "timeseries" / "landsat"
    cmd = [sys.executable, "-c", "from changedet.cli import main; main()", "diff",
           str(folder / "1985.tif"), str(folder / "1990.tif"), "-o",
           str(tmp_path / "c.geojson")]
    loud = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert "Warning 1: TIFFReadDirectory" in loud.stderr
    quiet = subprocess.run([*cmd, "--overwrite", "-q"], capture_output=True, text=True,
                           check=True)
    assert quiet.stderr == ""


def test_output_names_that_say_another_format_are_warned_about(sample, tmp_path):
    before, after = sample
    look, mask = tmp_path / "look.jpg", tmp_path / "mask.png"
    r = CliRunner().invoke(main, ["diff", before, after, "-o", str(tmp_path / "c.geojson"),
                                  "--mask", str(mask), "--quicklook", str(look)])
    assert r.exit_code == 0, r.output
    assert f"Warning: {look}: is written as a PNG; name it .png" in r.stderr
    assert f"Warning: {mask}: is written as a GeoTIFF; name it .tif" in r.stderr
    assert look.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("names, warned", [
    (("site_2020.tif", "site_2019-05-01.tif"), True),           # years compared
    (("site_2019.tif", "site_2019-05-01.tif"), False),          # the same year: unknown
    (("LC08_L1TP_1_20190501_20200830_02_T1.tif", "LC08_L1TP_1_20200710_20200820_02_T1.tif"),
     False),                                                    # processing dates ignored
])
def test_date_order_compares_what_the_dates_say(tmp_path, names, warned):
    from tests.conftest import SAMPLE

    for name, src in zip(names, ("square_before.tif", "square_after.tif"), strict=True):
        data = (SAMPLE / src).read_bytes()
        (tmp_path / name).write_bytes(data)
        with rasterio.open(tmp_path / name, "r+") as ds:   # drop the sample's own date tags
            ds.update_tags(ACQUISITION_DATE="")
    r = CliRunner().invoke(main, ["diff", str(tmp_path / names[0]), str(tmp_path / names[1]),
                                  "-o", str(tmp_path / "c.geojson")])
    assert r.exit_code == 0, r.output
    assert ("are BEFORE and AFTER swapped?" in r.stderr) == warned, r.stderr
