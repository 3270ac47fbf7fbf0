import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS

from changedet.grid import Grid
from changedet.vectorize import areas_m2, label_stats, polygons_from_labels, simplify_polygons
from tests.conftest import UTM, utm_transform


def test_polygons_follow_pixel_edges():
    labels = np.zeros((20, 20), np.int32)
    labels[2:6, 3:9] = 1
    labels[10:15, 10:12] = 2
    t = utm_transform()
    geoms = polygons_from_labels(labels, 2, t)
    assert [g.area for g in geoms] == [24 * 0.25, 10 * 0.25]
    assert geoms[0].bounds == (t.c + 1.5, t.f - 3.0, t.c + 4.5, t.f - 1.0)


def test_diagonal_pixels_make_one_valid_feature():
    labels = np.zeros((6, 6), np.int32)
    labels[1, 1] = labels[2, 2] = labels[3, 3] = 1
    (g,) = polygons_from_labels(labels, 1, Affine.identity())
    assert g.is_valid and g.area == 3


def test_holes_are_kept():
    labels = np.ones((10, 10), np.int32)
    labels[4:6, 4:6] = 0
    (g,) = polygons_from_labels(labels, 1, Affine.identity())
    assert g.area == 96 and len(g.interiors) == 1


def test_areas_projected_geographic_and_pixel_space():
    labels = np.zeros((100, 100), np.int32)
    labels[10:60, 10:60] = 1
    g_utm = Grid(utm_transform(1.0), UTM, 100, 100)
    (p,) = polygons_from_labels(labels, 1, g_utm.transform)
    assert areas_m2([p], g_utm)[0] == pytest.approx(2500)
    # 1e-5 degree pixels at 39 N: 0.865 m x 1.11 m.
    g_geo = Grid(Affine(1e-5, 0, 125.75, 0, -1e-5, 39.02), CRS.from_epsg(4326), 100, 100)
    (q,) = polygons_from_labels(labels, 1, g_geo.transform)
    assert areas_m2([q], g_geo)[0] == pytest.approx(2500 * 0.865 * 1.11, rel=0.01)
    g_px = Grid(Affine.identity(), None, 100, 100)
    assert np.isnan(areas_m2([p], g_px)[0])


def test_label_stats():
    labels = np.array([[1, 1, 0], [0, 2, 2]], np.int32)
    score = np.array([[1.0, 3.0, 9.0], [9.0, 5.0, 7.0]], np.float32)
    s = label_stats(score, labels, 2)
    assert list(s["pixels"]) == [2, 2]
    assert list(s["score_mean"]) == [2.0, 6.0] and list(s["score_max"]) == [3.0, 7.0]


def test_simplify_keeps_validity():
    labels = np.zeros((40, 40), np.int32)
    yy, xx = np.mgrid[:40, :40]
    labels[(yy - 20) ** 2 + (xx - 20) ** 2 < 150] = 1
    (g,) = polygons_from_labels(labels, 1, Affine.identity())
    (s,) = simplify_polygons([g], 1.0)
    assert s.is_valid and len(s.exterior.coords) < len(g.exterior.coords)
    assert s.area == pytest.approx(g.area, rel=0.05)
