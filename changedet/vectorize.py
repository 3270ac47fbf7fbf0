"""From labelled change objects to polygons with attributes, on the grid's CRS.

Areas and lengths are measured here, in the grid's projected CRS (or, for a
geographic grid, in a local equal-area projection) before anything is
reprojected to WGS84 for GeoJSON.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import shapely
from affine import Affine
from numpy.typing import NDArray
from rasterio.crs import CRS
from rasterio.features import shapes
from rasterio.warp import transform_geom
from scipy import ndimage
from shapely import affinity
from shapely.geometry import mapping, shape
from shapely.geometry.base import BaseGeometry

from changedet.grid import Grid, linear_unit_factor
from changedet.labelstats import labelled_maximum
from changedet.process import FILTER_SWAPS

__all__ = [
    "polygons_from_labels",
    "simplify_polygons",
    "join_polygons",
    "areas_m2",
    "label_stats",
]


def _polygonal(geom: BaseGeometry) -> BaseGeometry:
    # Not shapely.is_valid: it wraps itself in warnings.catch_warnings, which
    # block threads racing each other can leave the caller's filters changed
    # (see changedet.process.FILTER_SWAPS).
    if shapely.is_valid_reason(geom) != "Valid Geometry":
        geom = shapely.make_valid(geom)
    if geom.geom_type in ("Polygon", "MultiPolygon"):
        return geom
    parts = [g for g in getattr(geom, "geoms", []) if g.geom_type in ("Polygon", "MultiPolygon")]
    return shapely.union_all(parts) if parts else shapely.Polygon()


def polygons_from_labels(labels: NDArray[np.integer], n: int, transform: Affine,
                         ) -> list[BaseGeometry]:
    """Outline labelled objects as polygons.

    Parameters
    ----------
    labels : (H, W) ndarray of int32
        Objects labelled 1..n, 0 = background, 8-connected.
    n : int
        Number of labels.
    transform : Affine
        Pixel to map transform of `labels`.

    Returns
    -------
    list of shapely (Multi)Polygon
        Item ``i`` is the outline of label ``i + 1``; valid geometries with
        pixel-exact edges.

    Notes
    -----
    Calls GDAL's polygonizer (``rasterio.features.shapes``) once for all
    labels, with 8-connectivity to match the labelling.
    """
    if n == 0:
        return []
    parts: dict[int, list[BaseGeometry]] = defaultdict(list)
    lab = np.ascontiguousarray(labels, dtype=np.int32)
    with FILTER_SWAPS:
        for geom, value in shapes(lab, mask=lab > 0, connectivity=8, transform=transform):
            parts[int(value)].append(shape(geom))
    out = []
    for i in range(1, n + 1):
        p = parts.get(i, [])
        geom = p[0] if len(p) == 1 else shapely.union_all(p)
        out.append(_polygonal(geom))
    return out


def join_polygons(geoms: list[BaseGeometry], transform: Affine) -> BaseGeometry:
    """Union polygons drawn in pixel coordinates, then move them onto the map.

    Outlines of neighbouring pieces of one object share edges exactly when
    they are in pixel coordinates (whole numbers), so their union has no
    slivers; `transform` (pixel to map) is applied to the union.
    """
    t = transform
    joined = affinity.affine_transform(shapely.union_all(geoms), [t.a, t.b, t.d, t.e, t.c, t.f])
    return _polygonal(joined)


def simplify_polygons(geoms: list[BaseGeometry], tolerance: float) -> list[BaseGeometry]:
    """Douglas-Peucker simplification preserving topology (tolerance in CRS units)."""
    if tolerance <= 0:
        return geoms
    simple = shapely.simplify(np.asarray(geoms, dtype=object), tolerance, preserve_topology=True)
    return [_polygonal(g) for g in simple]


def _local_equal_area(grid: Grid) -> CRS:
    left, bottom, right, top = grid.bounds
    lon, lat = (left + right) / 2, (bottom + top) / 2
    return CRS.from_proj4(f"+proj=laea +lat_0={lat:.8f} +lon_0={lon:.8f} +datum=WGS84 +units=m")


def areas_m2(geoms: list[BaseGeometry], grid: Grid) -> NDArray[np.float64]:
    """Area of each geometry in square metres.

    Projected grids: the planar area times the CRS's unit factor squared.
    Geographic grids: the area in a Lambert azimuthal equal-area projection
    centred on the grid. Pixel space: NaN (there are no metres).
    """
    if not geoms:
        return np.zeros(0)
    if grid.crs is None:
        return np.full(len(geoms), np.nan)
    if grid.crs.is_geographic:
        laea = _local_equal_area(grid)
        projected = transform_geom(grid.crs, laea, [mapping(g) for g in geoms])
        return shapely.area(np.asarray([shape(g) for g in projected], dtype=object))
    f = linear_unit_factor(grid.crs)
    return shapely.area(np.asarray(geoms, dtype=object)) * f * f


def label_stats(score: NDArray[np.floating], labels: NDArray[np.integer], n: int,
                ) -> dict[str, NDArray[Any]]:
    """Pixel count, mean and maximum score of each label 1..n."""
    if n == 0:
        return {"pixels": np.zeros(0, np.int64), "score_mean": np.zeros(0),
                "score_max": np.zeros(0)}
    idx = np.arange(1, n + 1)
    counts = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    return {
        "pixels": counts,
        "score_mean": np.asarray(ndimage.mean(score, labels, idx), np.float64),
        "score_max": labelled_maximum(score, labels, idx),
    }
