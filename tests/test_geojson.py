import json

import pytest
import shapely
from shapely.geometry import Polygon, shape

import changedet
from changedet.geojson import DECIMALS, feature_collection, geometry_dict, to_wgs84
from changedet.pipeline import PROPERTY_KEYS
from tests.conftest import UTM


@pytest.fixture(scope="module")
def collection(sample_tiles):
    r = changedet.detect(sample_tiles / "square_before.tif", sample_tiles / "square_after.tif")
    return json.loads(json.dumps(r.to_geojson()))  # as any client would see it


def _rings(geom):
    polys = [geom] if geom.geom_type == "Polygon" else list(geom.geoms)
    for p in polys:
        yield True, p.exterior
        for hole in p.interiors:
            yield False, hole


def test_is_an_rfc7946_feature_collection(collection):
    assert collection["type"] == "FeatureCollection"
    assert "crs" not in collection
    assert len(collection["features"]) > 0
    ids = [f["id"] for f in collection["features"]]
    assert len(set(ids)) == len(ids) and all(isinstance(i, int) for i in ids)


def test_coordinates_are_lon_lat_near_the_square(collection):
    for f in collection["features"]:
        g = shape(f["geometry"])
        minx, miny, maxx, maxy = g.bounds
        assert -180 <= minx <= maxx <= 180 and -90 <= miny <= maxy <= 90
        # The sample tiles lie near 39.019 N, 125.753 E.
        assert 125.74 < minx < 125.77 and 39.01 < miny < 39.03


def test_rings_closed_counter_clockwise_and_valid(collection):
    for f in collection["features"]:
        coords = f["geometry"]["coordinates"]
        polys = [coords] if f["geometry"]["type"] == "Polygon" else coords
        for poly in polys:
            for ring in poly:
                assert ring[0] == ring[-1] and len(ring) >= 4
        g = shape(f["geometry"])
        assert shapely.is_valid(g)
        for exterior, ring in _rings(g):
            assert ring.is_ccw == exterior


def test_identical_plain_property_keys(collection):
    for f in collection["features"]:
        assert tuple(f["properties"]) == PROPERTY_KEYS
        for v in f["properties"].values():
            assert isinstance(v, (str, int, float)) or v is None


def test_bbox_covers_every_feature(collection):
    w, s, e, n = collection["bbox"]
    for f in collection["features"]:
        minx, miny, maxx, maxy = shape(f["geometry"]).bounds
        assert w <= minx and s <= miny and maxx <= e and maxy <= n


def test_precision_is_seven_decimals(collection):
    for f in collection["features"]:
        for x, y in shape(f["geometry"]).exterior.coords if f["geometry"]["type"] == "Polygon" \
                else shape(f["geometry"]).geoms[0].exterior.coords:
            assert round(x, DECIMALS) == x and round(y, DECIMALS) == y


def test_metadata_makes_the_run_reproducible(collection):
    meta = collection["changedet"]
    assert meta["version"] == changedet.__version__
    assert meta["before"].endswith("square_before.tif")
    assert meta["after"].endswith("square_after.tif")
    assert set(meta["coregistration"]["shift_px"]) == {"x", "y"}
    assert set(meta["coregistration"]["shift_m"]) == {"x", "y"}
    assert meta["method"] == "cva"
    assert {"low", "high", "method"} <= set(meta["threshold"])
    assert meta["options"]["min_area_m2"] == 30.0


def test_round_trips_through_json(collection):
    text = json.dumps(collection)
    assert json.loads(text) == collection


def test_geo_interface_matches_to_geojson(sample_tiles):
    r = changedet.detect(sample_tiles / "square_before.tif", sample_tiles / "square_after.tif")
    assert r.__geo_interface__ == r.to_geojson()


def test_area_is_measured_before_reprojection(sample_tiles):
    r = changedet.detect(sample_tiles / "square_before.tif", sample_tiles / "square_after.tif")
    for g, p in zip(r.geometries, r.properties, strict=True):
        assert p["area_m2"] == pytest.approx(g.area, rel=1e-6)  # UTM metres


def test_clockwise_input_is_reoriented():
    cw = Polygon([(500000, 4300000), (500000, 4300010), (500010, 4300010), (500010, 4300000)])
    assert not cw.exterior.is_ccw
    (out,) = to_wgs84([cw], UTM)
    assert out.exterior.is_ccw


def test_antimeridian_is_cut():
    from rasterio.crs import CRS

    # A square straddling 180 degrees in a polar-ish equal-area projection.
    laea = CRS.from_proj4("+proj=laea +lat_0=60 +lon_0=180 +datum=WGS84 +units=m")
    sq = Polygon([(-1000, -1000), (1000, -1000), (1000, 1000), (-1000, 1000)])
    (out,) = to_wgs84([sq], laea)
    assert out.geom_type == "MultiPolygon"
    assert all(-180 <= x <= 180 for p in out.geoms for x, _ in p.exterior.coords)


def test_empty_collection_has_no_bbox():
    fc = feature_collection([], metadata={"version": "x"})
    assert fc == {"type": "FeatureCollection", "changedet": {"version": "x"}, "features": []}


def test_geometry_dict_has_plain_lists():
    d = geometry_dict(Polygon([(0.123456789, 0), (1, 0), (1, 1)]))
    assert d["coordinates"][0][0] == [0.1234568, 0.0]


def test_longitudes_past_180_are_cut_and_moved():
    # An EPSG:4326 image extending past 180 degrees: GDAL has nothing to cut
    # (the CRS is already lon/lat), and longitudes of 180.0001 were written.
    from changedet.grid import WGS84

    sq = Polygon([(179.9999, 10), (180.0002, 10), (180.0002, 10.0003), (179.9999, 10.0003)])
    (out,) = to_wgs84([sq], WGS84)
    assert out.geom_type == "MultiPolygon"
    xs = [x for p in out.geoms for x, _ in p.exterior.coords]
    assert min(xs) == pytest.approx(-180) and max(xs) == pytest.approx(180)
    assert {round(x, 7) for x in xs if abs(x) < 180} == {-179.9998, 179.9999}
    assert sum(p.area for p in out.geoms) == pytest.approx(sq.area, rel=1e-6)


def test_bbox_across_the_antimeridian_has_west_greater_than_east(tmp_path):
    # RFC 7946 section 5.2: a collection lying across the antimeridian has
    # a bbox from its western edge (near +180) to its eastern (near -180),
    # not one spanning the globe. A UTM 60S image over 180 degrees, with a
    # structure on each side and one across.
    import numpy as np
    from affine import Affine
    from rasterio.warp import transform

    from tests.conftest import write_tif

    (x,), (y,) = transform("EPSG:4326", "EPSG:32760", [180.0], [-17.0])
    x0, y0 = round(x) - 1500, round(y) + 1500
    rng = np.random.default_rng(0)
    before = rng.normal(100, 4, (3, 300, 300)).astype(np.float32)
    after = before + rng.normal(0, 2, before.shape).astype(np.float32)
    for r, c in ((100, 60), (100, 140), (180, 200)):   # west, across, east of 180
        after[:, r:r + 30, c:c + 30] += 80
    t = Affine(10, 0, x0, 0, -10, y0)
    b = write_tif(tmp_path / "b.tif", before, transform=t, crs="EPSG:32760")
    a = write_tif(tmp_path / "a.tif", after, transform=t, crs="EPSG:32760")
    result = changedet.detect(b, a, coreg="none")
    fc = result.__geo_interface__
    assert len(fc["features"]) == 3
    assert any(f["geometry"]["type"] == "MultiPolygon" for f in fc["features"])
    west, _, east, _ = fc["bbox"]
    assert 179 < west < 180 and -180 < east < -179
    summary = changedet.diff(b, a, tmp_path / "c.geojson", coreg="none")
    assert summary.count == 3
    assert json.loads((tmp_path / "c.geojson").read_text())["bbox"] == fc["bbox"]
