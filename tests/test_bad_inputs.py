"""Every bad input gets one clear line, exit code 1, and nothing is lost.

One table: each case builds its inputs in a fresh folder and gives the
command-line arguments. For each, ``changedet diff`` must exit with code 1,
print exactly one line on stderr that names the problem (and no
traceback), write no output (not even a temporary file), and leave its
inputs byte for byte as they were.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from click.testing import CliRunner

from changedet.cli import main
from tests.conftest import SAMPLE, flat_pair, utm_transform, write_tif

BEFORE = str(SAMPLE / "square_before.tif")
AFTER = str(SAMPLE / "square_after.tif")


def _pair(d: Path, **kw):
    p = flat_pair(0, shape=(96, 96), n_appeared=1, n_disappeared=0)
    b = write_tif(d / "b.tif", p.before, **kw.get("before", {}))
    a = write_tif(d / "a.tif", p.after, **kw.get("after", {}))
    return str(b), str(a)


def missing_file(d):
    return [BEFORE, str(d / "nowhere.tif")], "nowhere.tif: no such file"


def not_a_raster(d):
    (d / "notes.tif").write_text("these are my notes, not an image")
    return [BEFORE, str(d / "notes.tif")], "notes.tif: cannot be read as a raster"


def folder_as_input(d):
    (d / "tiles").mkdir()
    return [BEFORE, str(d / "tiles")], "tiles: is a folder, not an image"


def truncated_raster(d):
    # A COG keeps its directory first: it opens, and fails while reading.
    rasterio.shutil.copy(AFTER, d / "cut.tif", driver="COG", compress="deflate")
    size = (d / "cut.tif").stat().st_size
    with open(d / "cut.tif", "r+b") as f:
        f.truncate(int(size * 0.6))
    return [BEFORE, str(d / "cut.tif")], "cut.tif: could not read"


def truncated_header(d):
    data = (SAMPLE / "square_after.tif").read_bytes()
    (d / "half.tif").write_bytes(data[: len(data) // 2])
    return [BEFORE, str(d / "half.tif")], "half.tif: cannot be read as a raster"


def complex_dtype(d):
    b, _ = _pair(d)
    write_tif(d / "c.tif", np.ones((1, 96, 96), np.complex64))
    return [b, str(d / "c.tif")], "complex pixel type"


def band_counts_differ(d):
    # The suggested fix must be one that works: bands both images have.
    b, _ = _pair(d)
    write_tif(d / "one.tif", np.ones((1, 96, 96), np.uint8))
    return [b, str(d / "one.tif")], "has 1; choose bands both have with --bands (e.g. --bands 1)"


def no_overlap(d):
    b, a = _pair(d, after={"transform": utm_transform(origin=(800000.0, 4322620.0))})
    return [b, a], "do not overlap"


def overlap_too_small(d):
    b, a = _pair(d, after={"transform": utm_transform() @ Affine.translation(90, 0)})
    return [b, a], "overlap by only 6 x 96 pixels"


def one_date_all_nodata(d):
    b, _ = _pair(d)
    write_tif(d / "empty.tif", np.zeros((3, 96, 96), np.uint8), nodata=0)
    return [b, str(d / "empty.tif")], "empty.tif: has no valid pixels"


def georeferenced_with_plain(d):
    b, _ = _pair(d)
    p = flat_pair(0, shape=(96, 96))
    from PIL import Image

    Image.fromarray(p.after.transpose(1, 2, 0)).save(d / "photo.png")
    return [b, str(d / "photo.png")], "photo.png carries no georeferencing but"


def plain_images_of_other_sizes(d):
    from PIL import Image

    Image.fromarray(np.full((60, 80, 3), 90, np.uint8)).save(d / "x.png")
    Image.fromarray(np.full((64, 80, 3), 90, np.uint8)).save(d / "y.png")
    return [str(d / "x.png"), str(d / "y.png")], "neither image is georeferenced"


def pixel_sizes_50x_apart(d):
    p = flat_pair(0, shape=(96, 96))
    b = write_tif(d / "fine.tif", p.before, transform=utm_transform(0.5))
    a = write_tif(d / "coarse.tif", p.after[:, :8, :8], transform=utm_transform(25.0))
    return [str(b), str(a)], "50 times apart"


def roi_outside(d):
    return [BEFORE, AFTER, "--bbox", "10.0", "10.0", "10.1", "10.1"], "outside the before image"


def roi_malformed(d):
    (d / "roi.geojson").write_text('{"type": "Polygon", "coordinates": [[1, 2], ')
    return [BEFORE, AFTER, "--roi", str(d / "roi.geojson")], "roi.geojson: not a readable"


def roi_not_a_polygon(d):
    (d / "pt.geojson").write_text(json.dumps({"type": "Point", "coordinates": [125.75, 39.02]}))
    return [BEFORE, AFTER, "--roi", str(d / "pt.geojson")], "pt.geojson: holds no polygon"


def bbox_on_plain_images(d):
    from PIL import Image

    img = np.full((64, 64, 3), 90, np.uint8)
    Image.fromarray(img).save(d / "x.png")
    Image.fromarray(img).save(d / "y.png")
    return ([str(d / "x.png"), str(d / "y.png"), "--bbox", "1", "1", "2", "2"],
            "carry no georeferencing")


def output_folder_missing(d):
    return [BEFORE, AFTER, "-o", str(d / "no" / "such" / "c.geojson")], "does not exist"


def output_exists(d):
    (d / "c.geojson").write_text("yesterday's result")
    return [BEFORE, AFTER, "-o", str(d / "c.geojson")], "already exists; use --overwrite"


def output_is_an_input(d):
    b, a = _pair(d)
    return [b, a, "--mask", a, "-o", str(d / "c.geojson")], "is also an input"


def same_path_twice(d):
    return [BEFORE, AFTER, "-o", str(d / "x.tif"), "--mask", str(d / "x.tif")], "same path"


def rgb_band_missing(d):
    # Checked before any work: no GeoJSON or class raster left behind.
    return ([BEFORE, AFTER, "-o", str(d / "c.geojson"), "--mask", str(d / "c.tif"),
             "--quicklook", str(d / "q.png"), "--rgb", "4,4,4"],
            "has 3 band(s), so --rgb 4,4,4 cannot show band(s) [4, 4, 4]; pick bands from 1 to 3")


def roi_file_as_output(d):
    (d / "roi.geojson").write_text(json.dumps({"type": "Polygon", "coordinates": [[
        [125.7515, 39.019], [125.7525, 39.019], [125.7525, 39.02], [125.7515, 39.019]]]}))
    return ([BEFORE, AFTER, "--roi", str(d / "roi.geojson"), "-o", str(d / "roi.geojson"),
             "--overwrite"], "roi.geojson: is also an input")


def several_rasters_in_one_file(d):
    # A GeoPackage with two raster tables opens with no bands of its own:
    # say which subdatasets to choose from.
    rasterio.shutil.copy(AFTER, d / "two.gpkg", driver="GPKG", RASTER_TABLE="one")
    rasterio.shutil.copy(AFTER, d / "two.gpkg", driver="GPKG", RASTER_TABLE="two",
                         APPEND_SUBDATASET="YES")
    return [BEFORE, str(d / "two.gpkg")], "holds 2 rasters (subdatasets), not one; give one"


CASES = [missing_file, not_a_raster, folder_as_input, truncated_raster, truncated_header,
         complex_dtype,
         band_counts_differ, no_overlap, overlap_too_small, one_date_all_nodata,
         georeferenced_with_plain, plain_images_of_other_sizes, pixel_sizes_50x_apart,
         roi_outside, roi_malformed, roi_not_a_polygon, bbox_on_plain_images,
         output_folder_missing, output_exists, output_is_an_input, same_path_twice,
         several_rasters_in_one_file, rgb_band_missing, roi_file_as_output]


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_bad_input(case, tmp_path):
    args, message = case(tmp_path)
    before_files = _digest(tmp_path)
    sample_before = _digest(SAMPLE)
    r = CliRunner().invoke(main, ["diff", *args])
    assert r.exit_code == 1, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("Error: ") and message in lines[0], lines[0]
    assert "Traceback" not in r.output and r.stdout == ""
    # Nothing written, nothing changed.
    assert _digest(tmp_path) == before_files
    assert _digest(SAMPLE) == sample_before


def test_output_folder_not_writable(tmp_path, monkeypatch):
    # Permission bits do not stop root (CI runs as root): answer as os.access
    # would for an ordinary user.
    ro = tmp_path / "ro"
    ro.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, m: False if str(p) == str(ro) else real(p, m))
    r = CliRunner().invoke(main, ["diff", BEFORE, AFTER, "-o", str(ro / "c.geojson")])
    assert r.exit_code == 1
    assert r.stderr.strip() == f"Error: {ro / 'c.geojson'}: folder {ro} is not writable"
    assert list(ro.iterdir()) == []


def test_nan_and_inf_in_float_rasters_are_nodata(tmp_path):
    p = flat_pair(0, shape=(128, 128), dtype="float32")
    after = p.after.astype(np.float32)
    after[:, :20] = np.nan
    after[:, 40, 40] = np.inf
    b = write_tif(tmp_path / "b.tif", p.before.astype(np.float32))
    a = write_tif(tmp_path / "a.tif", after)
    r = CliRunner().invoke(main, ["diff", str(b), str(a), "--mask", str(tmp_path / "m.tif"),
                                  "-q"])
    assert r.exit_code == 0, r.output
    # Structures clear of the blanked rows are all found; none is reported
    # where the after image has no data.
    clear = sum(1 for g in p.appeared + p.disappeared if g.bounds[1] > 26)
    assert clear >= 1
    assert len(json.loads(r.stdout)["features"]) == clear
    with rasterio.open(tmp_path / "m.tif") as ds:
        classes = ds.read(1)
    # The inf pixel (col 40, row 40) lands, shifted back by co-registration,
    # within a couple of pixels of where it was.
    assert (classes[:18] == 255).all() and (classes[36:45, 36:45] == 255).any()


def test_plain_images_work_in_pixel_space(tmp_path):
    from PIL import Image

    p = flat_pair(0)
    Image.fromarray(p.before.transpose(1, 2, 0)).save(tmp_path / "b.png")
    Image.fromarray(p.after.transpose(1, 2, 0)).save(tmp_path / "a.png")
    r = CliRunner().invoke(main, ["diff", str(tmp_path / "b.png"), str(tmp_path / "a.png"),
                                  "--mask", str(tmp_path / "m.tif")])
    assert r.exit_code == 0, r.output
    # One warning: not also rasterio's about writing the class raster's
    # pixel-space transform.
    assert r.stderr.count("Warning:") == 1 and "not lon/lat" in r.stderr
    with rasterio.open(tmp_path / "m.tif") as m:
        assert m.shape == (256, 256) and (m.read(1) == 1).sum() > 100
    fc = json.loads(r.stdout)
    assert fc["changedet"]["coordinates"].startswith("pixels")
    assert len(fc["features"]) == 3
    for f in fc["features"]:
        assert f["properties"]["area_m2"] is None and f["properties"]["pixels"] > 100
        xs, ys = zip(*f["geometry"]["coordinates"][0], strict=True)
        assert 0 <= min(xs) and max(xs) <= 256 and -256 <= min(ys) and max(ys) <= 0
    # The appeared structure: x = columns, y = -rows of its footprint.
    rows, cols = np.nonzero(p.truth == 1)
    appeared = [f for f in fc["features"] if f["properties"]["change"] == "appeared"]
    xs = [x for f in appeared for x, _ in f["geometry"]["coordinates"][0]]
    ys = [y for f in appeared for _, y in f["geometry"]["coordinates"][0]]
    assert abs(min(xs) - cols.min()) <= 2 and abs(-max(ys) - rows.min()) <= 2


def test_jpeg_pair_finds_every_structure(tmp_path):
    from PIL import Image
    from shapely.affinity import affine_transform
    from shapely.geometry import shape

    p = flat_pair(0)
    Image.fromarray(p.before.transpose(1, 2, 0)).save(tmp_path / "b.jpg", quality=90)
    Image.fromarray(p.after.transpose(1, 2, 0)).save(tmp_path / "a.jpg", quality=90)
    r = CliRunner().invoke(main, ["diff", str(tmp_path / "b.jpg"), str(tmp_path / "a.jpg"),
                                  "-q"])
    assert r.exit_code == 0, r.output
    found = [shape(f["geometry"]) for f in json.loads(r.stdout)["features"]]
    for g in p.appeared + p.disappeared:
        g = affine_transform(g, [1, 0, 0, -1, 0, 0])  # (col, row) -> (x, -row)
        assert any(q.intersection(g).area > 0.5 * g.area for q in found)


@pytest.mark.parametrize("case", [no_overlap, overlap_too_small, georeferenced_with_plain,
                                  plain_images_of_other_sizes],
                         ids=lambda c: c.__name__)
def test_coregister_names_the_files_in_its_errors(case, tmp_path):
    args, message = case(tmp_path)
    r = CliRunner().invoke(main, ["coregister", *args])
    assert r.exit_code == 1, r.output
    line = r.stderr.strip()
    assert line.startswith("Error: ") and message in line and "\n" not in line, line
    assert Path(args[0]).name in line and Path(args[1]).name in line


def test_no_overlap_says_where_each_image_lies(tmp_path):
    args, _ = no_overlap(tmp_path)
    r = CliRunner().invoke(main, ["diff", *args])
    # Both footprints in lon/lat (UTM 52N near Pyongyang, 50 km apart).
    assert "covers lon 125.75" in r.stderr and "a.tif lon 126.46" in r.stderr, r.stderr


def test_gdal_virtual_paths_and_subdatasets_are_inputs(tmp_path):
    # Names GDAL opens that are not files on disk (a zip member, a GeoPackage
    # table) reach GDAL rather than a "no such file".
    import zipfile

    with zipfile.ZipFile(tmp_path / "pair.zip", "w") as z:
        z.write(AFTER, "after.tif")
    rasterio.shutil.copy(AFTER, tmp_path / "two.gpkg", driver="GPKG", RASTER_TABLE="one")
    rasterio.shutil.copy(BEFORE, tmp_path / "two.gpkg", driver="GPKG", RASTER_TABLE="two",
                         APPEND_SUBDATASET="YES")
    counts = []
    for after in (AFTER, f"/vsizip/{tmp_path / 'pair.zip'}/after.tif",
                  f"GPKG:{tmp_path / 'two.gpkg'}:ONE"):
        r = CliRunner().invoke(main, ["diff", BEFORE, after, "-q"])
        assert r.exit_code == 0, r.output
        counts.append(len(json.loads(r.stdout)["features"]))
    assert counts[0] > 0 and counts == [counts[0]] * 3
    r = CliRunner().invoke(main, ["diff", BEFORE, f"/vsizip/{tmp_path / 'none.zip'}/a.tif"])
    assert r.exit_code == 1 and "cannot be read as a raster" in r.stderr


@pytest.mark.parametrize("option, value", [("--min-area", "inf"), ("--min-area", "nan"),
                                           ("--simplify", "nan"), ("--threshold", "inf"),
                                           ("--threshold", "1e308")])
def test_non_finite_numbers_are_usage_errors(option, value, tmp_path):
    r = CliRunner().invoke(main, ["diff", BEFORE, AFTER, "-o", str(tmp_path / "c.geojson"),
                                  option, value])
    assert r.exit_code == 2 and f"Invalid value for '{option}'" in r.stderr, r.output
    assert "internal error" not in r.stderr and list(tmp_path.iterdir()) == []


def test_dash_output_is_standard_output_and_coreg_none_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["diff", BEFORE, AFTER, "-o", "-", "--coreg", "none"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["type"] == "FeatureCollection"
    assert list(tmp_path.iterdir()) == []
    assert "; co-registration off" in r.stderr and "no reliable shift" not in r.stderr


@pytest.mark.parametrize("args, option", [
    (["diff", BEFORE, AFTER, "-o", "c.geojson", "--mask", "-"], "'--mask'"),
    (["diff", BEFORE, AFTER, "-o", "c.geojson", "--score", "-"], "'--score'"),
    (["diff", BEFORE, AFTER, "--quicklook", "-"], "'--quicklook'"),
    (["diff", BEFORE, AFTER, "--report", "-"], "'--report'"),
    (["coregister", BEFORE, AFTER, "-o", "-"], "'-o' / '--output'"),
    (["coregister", BEFORE, AFTER, "--tie-points", "-"], "'--tie-points'"),
    (["diff", BEFORE, AFTER, "--roi", "-"], "'--roi'"),
])
def test_dash_for_a_file_only_option_is_a_usage_error(args, option, tmp_path, monkeypatch):
    # An output used to be written to a file named "-".
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2, r.output
    assert f"Invalid value for {option}" in r.stderr
    stream = "come from standard input" if option == "'--roi'" else "go to standard output"
    assert f"cannot {stream}: give a file name" in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_series_dash_output_is_standard_output(tmp_path, monkeypatch):
    # It used to write a file named "-".
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["series", BEFORE, AFTER, "-o", "-", "--coreg", "none"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["type"] == "FeatureCollection"
    assert list(tmp_path.iterdir()) == []


def test_rgb_without_pictures_warns_that_it_does_nothing(tmp_path):
    r = CliRunner().invoke(main, ["diff", BEFORE, AFTER, "-o", str(tmp_path / "c.geojson"),
                                  "--rgb", "3,2,1"])
    assert r.exit_code == 0, r.output
    assert "Warning: --rgb only chooses the bands of --quicklook and --report" in r.stderr


def test_image_placed_by_ground_control_points_says_to_warp_it(tmp_path):
    from rasterio.control import GroundControlPoint

    p = flat_pair(0, shape=(96, 96))
    gcps = [GroundControlPoint(row=r, col=c, x=738180 + 0.5 * c, y=4322620 - 0.5 * r)
            for r, c in ((0, 0), (0, 95), (95, 0), (95, 95))]
    with rasterio.open(tmp_path / "gcp.tif", "w", driver="GTiff", width=96, height=96,
                       count=3, dtype="uint8", gcps=gcps, crs="EPSG:32651") as dst:
        dst.write(p.after)
    r = CliRunner().invoke(main, ["diff", BEFORE, str(tmp_path / "gcp.tif")])
    assert r.exit_code == 1
    assert "gcp.tif: is placed by 4 ground control points, not on a grid; warp it" in r.stderr
