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
from rasterio.crs import CRS
from rasterio.warp import transform_geom
from shapely.geometry import mapping, shape
from shapely.geometry.base import BaseGeometry

from changedet.grid import WGS84

__all__ = ["DECIMALS", "to_wgs84", "geometry_dict", "feature", "feature_collection"]

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
        out = [shape(g) for g in moved]
        out = list(shapely.set_precision(np.asarray(out, dtype=object), 10.0 ** -DECIMALS))
    return list(shapely.orient_polygons(np.asarray(out, dtype=object), exterior_cw=False))


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
