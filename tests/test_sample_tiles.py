"""The demo pair in sample_tiles/: every true change, and nothing else."""

import json

import pytest
import rasterio
from shapely.geometry import shape

import changedet


@pytest.fixture(scope="module")
def result(sample_tiles):
    return changedet.detect(sample_tiles / "square_before.tif",
                            sample_tiles / "square_after.tif")


@pytest.fixture(scope="module")
def truth(sample_tiles):
    fc = json.loads((sample_tiles / "square_truth.geojson").read_text())
    return [(shape(f["geometry"]), f["properties"]) for f in fc["features"]]


def test_sample_tiles_are_as_documented(sample_tiles):
    for name in ("square_before.tif", "square_after.tif"):
        path = sample_tiles / name
        assert path.stat().st_size < 1_000_000
        with rasterio.open(path) as ds:
            assert ds.crs.to_epsg() == 32651
            assert ds.res == (0.5, 0.5)
            lon, lat = rasterio.warp.transform(ds.crs, "EPSG:4326",
                                               [(ds.bounds.left + ds.bounds.right) / 2],
                                               [(ds.bounds.bottom + ds.bounds.top) / 2])
            assert abs(lon[0] - 125.753) < 0.005 and abs(lat[0] - 39.019) < 0.005


def test_every_true_change_is_found_with_its_class(result, truth):
    features = [(shape(f["geometry"]), f["properties"]) for f in result.features]
    for g, props in truth:
        hits = [p for q, p in features if q.intersection(g).area > 0.5 * g.area]
        assert len(hits) == 1, props
        assert hits[0]["change"] == props["change"], props


def test_nothing_else_is_found(result, truth):
    for f in result.features:
        q = shape(f["geometry"])
        assert any(q.intersects(g) for g, _ in truth), f["properties"]


def test_the_shift_between_the_dates_is_removed(result):
    # The demo pair was rendered with the after image displaced by (2.6, -1.8)
    # pixels; moving shadows and new objects bias the estimate a little.
    assert result.shift.reliable
    assert result.shift.x == pytest.approx(2.6, abs=0.3)
    assert result.shift.y == pytest.approx(-1.8, abs=0.3)
