import re
import shutil
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner

import changedet
from changedet.cli import main
from changedet.quicklook import preview_polygons, read_previews
from changedet.report import build_report, centroids_lonlat, report
from tests.conftest import write_tif

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"),
                             shutil.which("google-chrome")) if p), None)
needs_browser = pytest.mark.skipif(
    CHROMIUM is None, reason="no headless browser: install Debian's chromium "
                             "(apt-get install -y chromium; .ci/run does)")


@pytest.fixture(scope="module")
def sample_result(sample_tiles):
    b, a = str(sample_tiles / "square_before.tif"), str(sample_tiles / "square_after.tif")
    return changedet.detect(b, a), b, a


@pytest.fixture(scope="module")
def sample_html(sample_result):
    result, b, a = sample_result
    return report(result, b, a, dates=("2026-10-08", "2026-10-15"))


def _browse(path, hash_=""):
    """Load a page in headless chromium; return the DOM after its scripts ran."""
    out = subprocess.run(
        [CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
         "--virtual-time-budget=5000", "--dump-dom", path.as_uri() + hash_],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def _attr(dom, name):
    m = re.search(rf'<html[^>]*\s{name}="([^"]*)"', dom)
    return m.group(1) if m else None


def test_report_is_self_contained(sample_html):
    html = sample_html
    assert html.startswith("<!DOCTYPE html>")
    # Nothing is loaded from elsewhere: no remote src/href/url(), no external scripts.
    # (Leaflet's code holds an attribution link, which the report does not show.)
    markup = re.sub(r"<script[^>]*>.*?</script>", "", html, flags=re.S)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", markup)
    assert not re.search(r"url\(\s*['\"]?(https?:|//|images/)", html)
    assert not re.search(r"<script[^>]+src=", html)
    assert not re.search(r"<link[^>]+stylesheet", html)
    assert html.count("data:image/jpeg;base64,") == 2       # before and after on the map
    assert html.count("data:image/png;base64,") == 1        # the quick-look figure
    assert "Leaflet 1.9.4" in html


def test_report_table_lists_every_change_with_centroid(sample_result, sample_html):
    result = sample_result[0]
    rows = re.findall(r'<tr data-id="(\d+)"', sample_html)
    assert rows == [str(i) for i in range(1, len(result) + 1)]
    for lon, lat in centroids_lonlat(result):
        assert f"{lat:.5f}, {lon:.5f}" in sample_html
        assert 125.75 < lon < 125.76 and 39.01 < lat < 39.03
    assert "appeared" in sample_html and "disappeared" in sample_html
    shift = result.shift
    assert f"{shift.x:+.2f}, {shift.y:+.2f} px" in sample_html  # run metadata
    assert "2026-10-08" in sample_html


def test_script_end_tags_in_names_cannot_break_out(tmp_path):
    from tests.conftest import flat_pair

    p = flat_pair(1)
    evil = "</script><script>alert(1)</script>"
    b = changedet.Raster(p.before, _utm(), "EPSG:32651",
                         name=f"b{evil}.tif")
    a = changedet.Raster(p.after, _utm(), "EPSG:32651", name=f"a{evil}.tif")
    result = changedet.detect(b, a)
    html = report(result, b, a)
    assert evil not in html and "</script><script>alert" not in html
    assert html.count("</script>") == 5     # onerror, two data blocks, Leaflet, the app


def _utm():
    from tests.conftest import utm_transform

    return utm_transform()


def test_build_report_checks_its_inputs(sample_result):
    result = sample_result[0]
    with pytest.raises(ValueError, match="one polygon per"):
        build_report(result, before_image=b"\x89PNG\r\n\x1a\n", after_image=b"\xff\xd8\xff",
                     image_size=(10, 10), picture_polygons=[])
    with pytest.raises(ValueError, match="PNG or JPEG"):
        build_report(result, before_image=b"GIF89a", after_image=b"GIF89a",
                     image_size=(10, 10), picture_polygons=list(result.geometries))


@needs_browser
def test_report_loads_in_a_headless_browser_and_draws_the_polygons(sample_result, sample_html,
                                                                     tmp_path):
    result = sample_result[0]
    page = tmp_path / "report.html"
    page.write_text(sample_html, encoding="utf-8")
    dom = _browse(page, "#selftest")
    assert _attr(dom, "data-errors") == "0", re.search(r'id="js-errors">([^<]*)', dom)
    assert _attr(dom, "data-ready") == "1"
    assert _attr(dom, "data-polygons") == str(len(result))
    # Every row, clicked, selected and showed its polygon.
    assert _attr(dom, "data-selftest") == "ok"
    # Leaflet drew one interactive SVG path per change, in the class colours.
    paths = re.findall(r'<path[^>]*class="leaflet-interactive"[^>]*>', dom)
    assert len(paths) == len(result)
    assert sum('stroke="#e69f00"' in p for p in paths) == 9       # appeared
    assert sum('stroke="#56b4e9"' in p for p in paths) == 1       # disappeared
    assert len(re.findall(r'<img[^>]*leaflet-image-layer', dom)) >= 1


@needs_browser
def test_report_with_no_change_loads_too(tmp_path):
    from tests.conftest import flat_pair

    p = flat_pair(2, n_appeared=0, n_disappeared=0)
    b = write_tif(tmp_path / "b.tif", p.before)
    a = write_tif(tmp_path / "a.tif", p.after)
    out = tmp_path / "r.html"
    r = CliRunner().invoke(main, ["diff", str(b), str(a), "-q", "--report", str(out)])
    assert r.exit_code == 0, r.output
    dom = _browse(out)
    assert _attr(dom, "data-errors") == "0" and _attr(dom, "data-ready") == "1"
    assert _attr(dom, "data-polygons") == "0"
    assert "No change larger than" in dom


def test_cli_report_refuses_to_overwrite(sample_tiles, tmp_path):
    b, a = str(sample_tiles / "square_before.tif"), str(sample_tiles / "square_after.tif")
    out = tmp_path / "r.html"
    out.write_text("keep")
    r = CliRunner().invoke(main, ["diff", b, a, "-q", "--report", str(out)])
    assert r.exit_code == 1 and "already exists" in r.stderr
    assert out.read_text() == "keep"
    r = CliRunner().invoke(main, ["diff", b, a, "-q", "--report", str(out), "--quicklook",
                                  str(out)])
    assert r.exit_code == 1 and "same path" in r.stderr


def test_picture_polygons_match_the_previews(sample_result):
    result, b, a = sample_result
    pv = read_previews(result, b, a, max_size=400)
    polys = preview_polygons(result, pv)
    h, w = pv.before.shape[:2]
    for g, _ in polys:
        x0, y0, x1, y1 = g.bounds
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
    # Area scales with the square of the preview scale.
    ratio = polys[0][0].area / (result.geometries[0].area / 0.25)
    assert ratio == pytest.approx(pv.scale ** 2, rel=1e-6)
    assert np.isfinite(ratio)


def test_pixel_space_centroids_are_column_and_row(tmp_path):
    # Pixel-space polygons have y = -row; the report's "col, row" showed the
    # negative y.
    import warnings

    from PIL import Image

    import changedet
    from changedet.report import centroids_lonlat
    from tests.conftest import flat_pair

    p = flat_pair(0)
    Image.fromarray(p.before.transpose(1, 2, 0)).save(tmp_path / "b.png")
    Image.fromarray(p.after.transpose(1, 2, 0)).save(tmp_path / "a.png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", changedet.PixelSpaceWarning)
        result = changedet.detect(tmp_path / "b.png", tmp_path / "a.png")
    cents = centroids_lonlat(result)
    assert cents and all(0 < c < 256 and 0 < r < 256 for c, r in cents)
    rows, cols = np.nonzero(p.truth == 2)          # the one structure removed
    (c, r), = [cr for cr, q in zip(cents, result.properties, strict=True)
               if q["change"] == "disappeared"]
    assert abs(c - cols.mean()) < 2 and abs(r - rows.mean()) < 2
