import json

import numpy as np
import pytest
from click.testing import CliRunner
from rasterio.windows import Window

from changedet.cli import main
from changedet.pairinfo import central_window, describe_pair
from tests.conftest import ORIGIN, PIXEL, flat_pair, utm_transform, write_tif


@pytest.fixture
def offset_pair(tmp_path):
    """After covers the before grid from column 32 and row 40 on, content shifted (2.4, -1.3)."""
    p = flat_pair(0)
    b = write_tif(tmp_path / "before.tif", p.before)
    origin = (ORIGIN[0] + 32 * PIXEL, ORIGIN[1] - 40 * PIXEL)
    a = write_tif(tmp_path / "after.tif", np.ascontiguousarray(p.after[:, 40:, 32:]),
                  transform=utm_transform(origin=origin), nodata=0)
    return str(b), str(a), p


def test_known_overlap_and_shift(offset_pair):
    b, a, p = offset_pair
    info = describe_pair(b, a)
    assert info.overlap.before_window == (32, 40, 224, 216)
    assert info.overlap.after_window == (0, 0, 224, 216)
    assert info.overlap.before_fraction == pytest.approx(224 * 216 / 256 ** 2)
    assert info.overlap.after_fraction == pytest.approx(1.0)
    assert info.shift.reliable
    assert (info.shift.x, info.shift.y) == pytest.approx(p.shift, abs=0.25)
    # In metres: x east, y north (rows grow southwards).
    assert info.shift_m == pytest.approx((p.shift[0] * PIXEL, -p.shift[1] * PIXEL), abs=0.13)
    assert info.before.crs == info.after.crs == "EPSG:32651"
    assert info.after.nodata == 0 and info.before.nodata is None
    assert info.before.dtypes == ("uint8",) * 3 and info.before.count == 3
    assert info.notes == []


def test_cli_text_and_json(offset_pair):
    b, a, p = offset_pair
    r = CliRunner().invoke(main, ["info", b, a])
    assert r.exit_code == 0, r.output
    text = r.stdout
    for s in ("EPSG:32651", "0.5 x 0.5", "224 x 216 px of before (73.8 %)",
              "224 x 216 px of after (100.0 %)", "reliable", "3 x uint8", "nodata       0",
              "738180, 4322492, 738308, 4322620"):
        assert s in text, (s, text)
    r = CliRunner().invoke(main, ["info", b, a, "--json"])
    assert r.exit_code == 0
    d = json.loads(r.stdout)
    assert d["overlap"]["before_percent"] == pytest.approx(73.83, abs=0.01)
    assert d["shift"]["shift_px"]["x"] == pytest.approx(p.shift[0], abs=0.25)
    assert d["shift"]["reliable"] is True
    assert d["before"]["bounds_lonlat"][0] == pytest.approx(125.75108, abs=1e-4)
    r = CliRunner().invoke(main, ["info", b, a, "--json", "--no-shift"])
    assert json.loads(r.stdout)["shift"] is None


def test_disjoint_images_are_described_not_refused(tmp_path):
    p = flat_pair(0)
    b = write_tif(tmp_path / "b.tif", p.before)
    a = write_tif(tmp_path / "a.tif", p.after,
                  transform=utm_transform(origin=(ORIGIN[0] + 5000, ORIGIN[1])))
    r = CliRunner().invoke(main, ["info", str(b), str(a)])
    assert r.exit_code == 0, r.output
    assert "overlap      none" in r.stdout and "do not overlap" in r.stdout


def test_notes_on_band_count_and_resolution(tmp_path):
    p = flat_pair(0, bands=4)
    b = write_tif(tmp_path / "b.tif", p.before)
    coarse = p.after[:3, ::4, ::4]
    a = write_tif(tmp_path / "a.tif", np.ascontiguousarray(coarse),
                  transform=utm_transform(pixel=2.0))
    info = describe_pair(str(b), str(a))
    assert any("band counts differ (4 vs 3)" in n for n in info.notes)
    assert any("pixel sizes differ" in n for n in info.notes)


def test_missing_file_is_one_line_exit_1(tmp_path):
    r = CliRunner().invoke(main, ["info", str(tmp_path / "nope.tif"), str(tmp_path / "b.tif")])
    assert r.exit_code == 1 and "no such file" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_central_window():
    assert central_window(Window(10, 20, 3000, 500), 1024) == Window(998, 20, 1024, 500)
