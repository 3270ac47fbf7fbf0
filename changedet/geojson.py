"""RFC 7946 GeoJSON: WGS84 lon/lat, counter-clockwise exteriors, a bbox.

Geometries come in on the analysis grid's CRS and leave as plain dicts ready
for ``json.dumps``: reprojected to WGS84 (cut at the antimeridian), snapped
to a 1e-7 degree grid (about 1 cm) without losing validity, and oriented
with exterior rings counter-clockwise. Pixel-space results (inputs without
georeferencing) keep pixel coordinates and say so.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import shapely
import shapely.affinity
from rasterio.crs import CRS
from rasterio.warp import transform_geom
from shapely.geometry import mapping, shape
from shapely.geometry.base import BaseGeometry

from changedet.grid import WGS84

__all__ = ["DECIMALS", "to_wgs84", "east_extent", "lonlat_bbox", "geometry_dict", "feature",
           "feature_collection"]

#: Decimal places of lon/lat written (1e-7 degree is about 1 cm).
DECIMALS = 7


def to_wgs84(geoms: Sequence[BaseGeometry], crs: CRS | None) -> list[BaseGeometry]:
    """Reproject geometries to WGS84 lon/lat, snapped to the output precision.

    With ``crs=None`` (pixel space) the geometries are only oriented.
    """
    if not geoms:
        return []
    if crs is None:
        out = list(geoms)
    else:
        moved = transform_geom(crs, WGS84, [mapping(g) for g in geoms],
                               antimeridian_cutting=True)
        out = [_within_longitudes(shape(g)) for g in moved]
        out = list(shapely.set_precision(np.asarray(out, dtype=object), 10.0 ** -DECIMALS))
    return list(shapely.orient_polygons(np.asarray(out, dtype=object), exterior_cw=False))


def _within_longitudes(geom: BaseGeometry) -> BaseGeometry:
    # Longitudes in [-180, 180], as RFC 7946 asks: a polygon past 180 (an
    # EPSG:4326 image that extends beyond it, where GDAL has nothing to
    # cut) is cut there and its far part moved by 360 degrees.
    minx, _, maxx, _ = geom.bounds
    if minx >= -180 and maxx <= 180:
        return geom
    parts = []
    for turn in (-1, 0, 1):
        piece = geom.intersection(shapely.box(-180 + 360 * turn, -90, 180 + 360 * turn, 90))
        parts += [shapely.affinity.translate(p, -360 * turn) for p in shapely.get_parts(piece)
                  if p.geom_type == "Polygon" and not p.is_empty]
    return parts[0] if len(parts) == 1 else shapely.MultiPolygon(parts)


def east_extent(geom: BaseGeometry) -> tuple[float, float]:
    """Return a lon/lat geometry's longitude range with longitudes in [0, 360).

    Narrower than its extent in [-180, 180] when it lies across the
    antimeridian: see :func:`lonlat_bbox`.
    """
    x = shapely.get_coordinates(geom)[:, 0]
    if not x.size:
        return (np.inf, -np.inf)
    east = np.where(x < 0, x + 360, x)
    return (float(east.min()), float(east.max()))


def lonlat_bbox(bounds: Sequence[float], east: Sequence[float]) -> list[float]:
    """Return an RFC 7946 bbox from bounds in [-180, 180] and the same range in [0, 360).

    When the range in [0, 360) is the narrower (the geometries lie across
    the antimeridian) the bbox's west is greater than its east, as RFC 7946
    section 5.2 asks, rather than spanning the whole globe.

    Examples
    --------
    >>> lonlat_bbox([-179.9, 10, 179.8, 11], [179.8, 180.1])
    [179.8, 10, -179.9, 11]
    >>> lonlat_bbox([5, 10, 6, 11], [5, 6])
    [5, 10, 6, 11]
    """
    west, south, east_, north = bounds
    lo, hi = east
    if hi - lo < east_ - west:
        return [round(lo - 360 if lo > 180 else lo, 10), south,
                round(hi - 360 if hi > 180 else hi, 10), north]
    return [west, south, east_, north]


def _round(coords: Any, decimals: int) -> Any:
    if isinstance(coords, (list, tuple)):
        if coords and isinstance(coords[0], (int, float)):
            return [round(float(c), decimals) + 0.0 for c in coords]
        return [_round(c, decimals) for c in coords]
    return coords


def geometry_dict(geom: BaseGeometry, decimals: int = DECIMALS) -> dict[str, Any]:
    """Return a GeoJSON geometry dict with rounded coordinates as plain lists."""
    m = mapping(geom)
    return {"type": m["type"], "coordinates": _round(m["coordinates"], decimals)}


def feature(fid: int, geom: BaseGeometry, properties: dict[str, Any], *,
            decimals: int = DECIMALS) -> dict[str, Any]:
    """Return a GeoJSON Feature with an integer id."""
    return {"type": "Feature", "id": fid, "geometry": geometry_dict(geom, decimals),
            "properties": properties}


def feature_collection(features: Iterable[dict[str, Any]], *,
                       bbox: Sequence[float] | None = None,
                       metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return a FeatureCollection with an optional bbox and a ``changedet`` foreign member."""
    fc: dict[str, Any] = {"type": "FeatureCollection"}
    if bbox is not None:
        fc["bbox"] = [round(float(v), DECIMALS) + 0.0 for v in bbox]
    if metadata is not None:
        fc["changedet"] = metadata
    fc["features"] = list(features)
    return fc
