import json

import pytest
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform, transform_bounds
from shapely.geometry import MultiPolygon, box, mapping, shape

from changedet.errors import InputError, NoOverlapError, ROIError
from changedet.grid import WGS84, Grid, linear_unit_factor, overlap_window, roi_window
from tests.conftest import UTM, utm_transform


@pytest.fixture
def grid():
    return Grid(utm_transform(), UTM, 200, 100)


def test_bounds_res_and_area(grid):
    left, bottom, right, top = grid.bounds
    assert (right - left, top - bottom) == (100.0, 50.0)
    assert grid.res == (0.5, 0.5)
    assert grid.pixel_area_m2() == 0.25


def test_overlap_window_same_crs(grid):
    left, bottom, right, top = grid.bounds
    w = overlap_window(grid, (left + 25, bottom - 10, right + 10, top - 5), UTM)
    assert (w.col_off, w.row_off, w.width, w.height) == (50, 10, 150, 90)


def test_overlap_window_other_crs(grid):
    from rasterio.warp import transform_bounds

    wgs = transform_bounds(UTM, "EPSG:4326", *grid.bounds)
    w = overlap_window(grid, wgs, CRS.from_epsg(4326))
    assert w.width >= 199 and w.height >= 99


def test_no_and_too_small_overlap(grid):
    left, bottom, right, top = grid.bounds
    with pytest.raises(NoOverlapError, match="do not overlap"):
        overlap_window(grid, (right + 1, bottom, right + 50, top), UTM)
    with pytest.raises(NoOverlapError, match="only 4 x 100"):
        overlap_window(grid, (right - 2, bottom, right + 50, top), UTM)


def test_georeferenced_with_pixel_space_is_an_error(grid):
    with pytest.raises(InputError, match="b.tif carries no georeferencing but a.tif does"):
        overlap_window(grid, (0, 0, 10, 10), None, names=("a.tif", "b.tif"))


def test_roi_window(grid):
    left, bottom, right, top = grid.bounds
    roi = mapping(box(left + 10, bottom + 10, left + 30, bottom + 20))
    w, geom = roi_window(grid, roi, UTM)
    assert (w.col_off, w.row_off, w.width, w.height) == (20, 60, 40, 20)
    with pytest.raises(ROIError, match="outside"):
        roi_window(grid, mapping(box(right + 10, bottom, right + 20, top)), UTM)
    with pytest.raises(ROIError, match="polygon"):
        roi_window(grid, {"type": "Point", "coordinates": [left + 1, bottom + 1]}, UTM)


def test_feet_are_converted_to_metres():
    assert linear_unit_factor(CRS.from_epsg(2277)) == pytest.approx(0.3048006)
    g = Grid(Affine(2, 0, 0, 0, -2, 0), CRS.from_epsg(2277), 10, 10)
    assert g.pixel_area_m2() == pytest.approx((2 * 0.3048006) ** 2)


def test_geographic_pixel_area():
    g = Grid(Affine(1e-5, 0, 125.75, 0, -1e-5, 39.02), CRS.from_epsg(4326), 100, 100)
    # 1e-5 degree is about 1.11 m north-south and 0.86 m east-west at 39 N.
    sx, sy = g.pixel_size_m()
    assert sy == pytest.approx(1.11, abs=0.01) and sx == pytest.approx(0.865, abs=0.01)


def test_no_overlap_in_a_local_crs_says_where_in_its_own_units():
    # An engineering CRS has no lon/lat: the footprints are given as they are.
    local = CRS.from_wkt('LOCAL_CS["site grid",UNIT["metre",1],AXIS["Easting",EAST],'
                         'AXIS["Northing",NORTH]]')
    g = Grid(Affine(1, 0, 0, 0, -1, 100), local, 100, 100)
    with pytest.raises(NoOverlapError, match=r"a.tif covers x 0 to 100, y 0 to 100 in its own "
                                             r"CRS, b.tif x 5000 to 5100"):
        overlap_window(g, (5000, 0, 5100, 100), local, names=("a.tif", "b.tif"))


def test_roi_larger_than_the_image_is_clipped_to_it(grid):
    # A lon/lat box around the whole image, or the whole world: clipped in
    # lon/lat before it is projected (projected whole, it missed the image).
    for bounds in ((-180, -90, 180, 90), (0, 0, 179, 80)):
        w, geom = roi_window(grid, mapping(box(*bounds)), WGS84)
        assert (w.col_off, w.row_off, w.width, w.height) == (0, 0, grid.width, grid.height)
        assert shape(geom).contains(box(*grid.bounds).buffer(-1e-6))


def test_roi_with_swapped_coordinates_says_so(grid):
    w, s, e, n = transform_bounds(grid.crs, WGS84, *grid.bounds)
    swapped = mapping(box(s, w, n, e))          # [lat, lon]
    with pytest.raises(ROIError, match=r"GeoJSON writes longitude first, \[lon, lat\]"):
        roi_window(grid, swapped, WGS84)


def test_self_intersecting_roi_is_repaired_not_halved(grid):
    # A bow-tie: buffer(0) kept one lobe; make_valid keeps both.
    left, bottom, right, top = grid.bounds
    x0, y0, x1, y1 = left + 10, bottom + 10, left + 30, bottom + 30
    bowtie = {"type": "Polygon", "coordinates": [[(x0, y0), (x1, y1), (x1, y0), (x0, y1),
                                                  (x0, y0)]]}
    _, geom = roi_window(grid, bowtie, UTM)
    assert shape(geom).area == pytest.approx(200.0)      # two triangles of 100 m²
    assert shape(geom).bounds == (x0, y0, x1, y1)


@pytest.mark.parametrize("geom, message", [
    ({"type": "Polygon", "coordinates": [[(0, 0), (1, 0), (0, 0), (0, 0)]]}, "polygon"),
    ({"type": "Polygon", "coordinates": [[(0, 0), (float("nan"), 0), (1, 1), (0, 0)]]},
     "not numbers"),
])
def test_roi_without_an_area_is_an_roi_error(grid, geom, message):
    with pytest.raises(ROIError, match=message):
        roi_window(grid, geom, UTM)


def test_polygon_inside_a_geometry_collection_is_a_region(tmp_path):
    from changedet.io import read_roi

    poly = {"type": "Polygon", "coordinates": [[[125.75, 39.01], [125.76, 39.01],
                                                [125.76, 39.02], [125.75, 39.01]]]}
    p = tmp_path / "gc.geojson"
    p.write_text(json.dumps({"type": "GeometryCollection", "geometries": [
        poly, {"type": "Point", "coordinates": [125.7, 39.0]}]}))
    geom, _ = read_roi(p)
    assert geom["type"] == "Polygon"


@pytest.mark.parametrize("roi", [
    box(179.97, 9.05, 180.02, 9.08),                    # longitudes past 180
    box(-180.03, 9.05, -179.98, 9.08),                  # past -180
    MultiPolygon([box(179.97, 9.05, 180.0, 9.08), box(-180.0, 9.05, -179.98, 9.08)]),  # cut
], ids=["east", "west", "cut"])
def test_roi_across_the_antimeridian_is_whole(roi):
    # A UTM 60N image lying across 180 degrees: its outline in lon/lat was
    # cut in two by the reprojection, and the region clipped to one half.
    g = Grid(Affine(10, 0, 825000, 0, -10, 1010000), CRS.from_epsg(32660), 1000, 1000)
    w, geom = roi_window(g, mapping(roi), WGS84)
    (x,), (y,) = transform("EPSG:4326", "EPSG:32660", [179.97], [9.08])
    assert w.col_off == int((x - 825000) // 10) and w.width == pytest.approx(554, abs=1)
    assert shape(geom).area / 1e6 == pytest.approx(18.27, abs=0.05)


def test_roi_outside_says_where_the_image_is_and_whether_swapping_helps():
    (x,), (y,) = transform("EPSG:4326", "EPSG:32632", [9.0], [45.0])
    g = Grid(Affine(1, 0, x, 0, -1, y), CRS.from_epsg(32632), 500, 500)
    with pytest.raises(ROIError, match=r"covers lon 9\.00000 to 9\.00634.*with longitude and "
                                       r"latitude swapped it would not"):
        roi_window(g, mapping(box(44.9999, 9.0001, 45.0, 9.0002)), WGS84)
    with pytest.raises(ROIError, match=r"outside the before image \(which covers[^;]*\)$"):
        roi_window(g, mapping(box(20.0, 20.0, 20.1, 20.1)), WGS84)
