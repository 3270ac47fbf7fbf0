"""The reference grid: overlap, regions of interest and pixel areas.

The before image's grid is the reference: the after image is resampled onto
it and every output is on it. Functions here are pure geometry on affine
transforms, bounds and CRSs; they open no files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
import shapely.affinity
from affine import Affine
from numpy.typing import NDArray
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import CRSError
from rasterio.warp import transform, transform_bounds, transform_geom
from rasterio.windows import Window
from shapely.geometry import box, mapping, shape
from shapely.geometry.base import BaseGeometry

from changedet.errors import InputError, NoOverlapError, ROIError

__all__ = [
    "translation_between",
    "Grid",
    "MIN_OVERLAP_PX",
    "PIXEL_TRANSFORM",
    "WGS84",
    "linear_unit_factor",
    "overlap_window",
    "roi_window",
    "roi_polygon",
    "geometry_to_crs",
    "resampling_for",
]

WGS84 = CRS.from_epsg(4326)

#: The smallest overlap, in pixels on a side, that is worth working on.
MIN_OVERLAP_PX = 16

#: The grid of an image without georeferencing: x = column, y = -row. It is
#: how QGIS places such an image, so pixel-space polygons overlay it there.
PIXEL_TRANSFORM = Affine(1.0, 0.0, 0.0, 0.0, -1.0, 0.0)


@dataclass(frozen=True)
class Grid:
    """A raster grid: where pixels are and how many there are.

    Parameters
    ----------
    transform : Affine
        Pixel (col, row) to map (x, y) transform of the upper-left corner.
    crs : CRS or None
        Coordinate reference system; ``None`` means pixel space (the inputs
        carried no georeferencing).
    width, height : int
        Size in pixels.
    """

    transform: Affine
    crs: CRS | None
    width: int
    height: int

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)``, as numpy orders them."""
        return (self.height, self.width)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(left, bottom, right, top)`` in the grid's CRS."""
        t = self.transform
        xs = (t.c, t.c + t.a * self.width, t.c + t.b * self.height,
              t.c + t.a * self.width + t.b * self.height)
        ys = (t.f, t.f + t.d * self.width, t.f + t.e * self.height,
              t.f + t.d * self.width + t.e * self.height)
        return (min(xs), min(ys), max(xs), max(ys))

    @property
    def res(self) -> tuple[float, float]:
        """Pixel size ``(x, y)`` in CRS units, both positive."""
        t = self.transform
        return (math.hypot(t.a, t.d), math.hypot(t.b, t.e))

    @property
    def is_georeferenced(self) -> bool:
        """Whether coordinates are map coordinates rather than pixels."""
        return self.crs is not None

    def window_grid(self, window: Window) -> Grid:
        """Return the sub-grid covered by `window` (which must be integer)."""
        col, row = int(window.col_off), int(window.row_off)
        return Grid(self.transform @ Affine.translation(col, row), self.crs,
                    int(window.width), int(window.height))

    def pixel_size_m(self) -> tuple[float, float]:
        """Pixel size ``(x, y)`` in metres, at the grid's centre.

        Pixel space counts one pixel as one unit.
        """
        rx, ry = self.res
        if self.crs is None:
            return (rx, ry)
        if self.crs.is_geographic:
            left, bottom, right, top = self.bounds
            lat = math.radians((bottom + top) / 2)
            # Metres per degree on the WGS84 ellipsoid at this latitude.
            m_lat = 111132.954 - 559.822 * math.cos(2 * lat) + 1.175 * math.cos(4 * lat)
            m_lon = 111412.84 * math.cos(lat) - 93.5 * math.cos(3 * lat)
            return (rx * m_lon, ry * m_lat)
        f = linear_unit_factor(self.crs)
        return (rx * f, ry * f)

    def pixel_area_m2(self) -> float:
        """Area of one pixel in square metres (at the centre if geographic)."""
        sx, sy = self.pixel_size_m()
        return sx * sy

    def to_dict(self) -> dict[str, Any]:
        """Plain-typed description, for metadata."""
        return {
            "crs": _crs_name(self.crs),
            "transform": [round(v, 12) for v in tuple(self.transform)[:6]],
            "width": self.width,
            "height": self.height,
        }


def _crs_name(crs: CRS | None) -> str | None:
    if crs is None:
        return None
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_wkt()


def linear_unit_factor(crs: CRS) -> float:
    """Metres per unit of a projected CRS (1.0 for metre-based CRSs)."""
    try:
        return float(crs.linear_units_factor[1])
    except CRSError:
        return 1.0


def _pixel_window(grid: Grid, bounds: tuple[float, float, float, float]) -> Window:
    """Integer window of `grid` covering `bounds`, clipped to the grid.

    The bounds' four corners in pixel coordinates, so that any grid works:
    north-up, south-up, mirrored or rotated (rasterio's ``from_bounds``
    expects north-up and divides by the transform's ``a``).
    """
    left, bottom, right, top = bounds
    inv = ~grid.transform
    corners = [inv @ (x, y) for x in (left, right) for y in (bottom, top)]
    cols, rows = [c for c, _ in corners], [r for _, r in corners]
    col0 = max(0, math.floor(min(cols) + 1e-6))
    row0 = max(0, math.floor(min(rows) + 1e-6))
    col1 = min(grid.width, math.ceil(max(cols) - 1e-6))
    row1 = min(grid.height, math.ceil(max(rows) - 1e-6))
    return Window(col0, row0, max(0, col1 - col0), max(0, row1 - row0))


def overlap_window(grid: Grid, other_bounds: tuple[float, float, float, float],
                   other_crs: CRS | None, *, min_size: int = MIN_OVERLAP_PX,
                   names: tuple[str, str] = ("the first image", "the second image"),
                   ) -> Window:
    """Window of `grid` that another image's footprint covers.

    Parameters
    ----------
    grid : Grid
        The reference grid.
    other_bounds : tuple of 4 floats
        ``(left, bottom, right, top)`` of the other image in `other_crs`.
    other_crs : CRS or None
        CRS of the other image; ``None`` only if `grid` is in pixel space too.
    min_size : int, optional
        Smallest acceptable overlap, in pixels on each side.
    names : (str, str), optional
        How messages name the image of `grid` and the other one (their files).

    Returns
    -------
    Window
        Integer window, clipped to the grid.

    Raises
    ------
    InputError
        If one image is georeferenced and the other not, or neither is and
        their sizes differ.
    NoOverlapError
        If the footprints do not overlap by at least `min_size` pixels.
    """
    first, second = names
    if (grid.crs is None) != (other_crs is None):
        plain, geo = (second, first) if grid.crs is not None else (first, second)
        raise InputError(
            f"{plain} carries no georeferencing but {geo} does, so they cannot be placed on "
            f"one grid; georeference {plain} (e.g. QGIS's Georeferencer, or gdal_translate "
            "-a_srs -a_ullr) or give two plain images of the same size")
    if grid.crs is None:
        ow, oh = round(other_bounds[2] - other_bounds[0]), round(other_bounds[3] - other_bounds[1])
        if (ow, oh) != (grid.width, grid.height):
            raise InputError(
                f"neither image is georeferenced and their sizes differ ({first}: "
                f"{grid.width} x {grid.height}, {second}: {ow} x {oh} pixels), so how they "
                "align is unknown; georeference them first (e.g. gdal_translate -a_srs "
                "-a_ullr, or QGIS's Georeferencer)")
    own_bounds = other_bounds
    if grid.crs is not None and other_crs != grid.crs:
        other_bounds = transform_bounds(other_crs, grid.crs, *other_bounds, densify_pts=21)
    left, bottom, right, top = grid.bounds
    ol, ob, orr, ot = other_bounds
    inter = (max(left, ol), max(bottom, ob), min(right, orr), min(top, ot))
    if inter[0] >= inter[2] or inter[1] >= inter[3]:
        raise NoOverlapError(
            f"{first} and {second} do not overlap ({first} covers "
            f"{_lonlat(grid.bounds, grid.crs)}, {second} {_lonlat(own_bounds, other_crs)}); "
            "check that both show the same place and that each carries its right CRS "
            "(gdalinfo or rio info prints them)")
    win = _pixel_window(grid, inter)
    if win.width < min_size or win.height < min_size:
        raise NoOverlapError(
            f"{first} and {second} overlap by only {win.width} x {win.height} pixels "
            f"(at least {min_size} x {min_size} needed)")
    return win


def _lonlat(bounds: tuple[float, float, float, float], crs: CRS | None) -> str:
    # A footprint as a reader can check it on a map.
    if crs is None:
        return f"pixels {bounds[0]:g} to {bounds[2]:g} across"
    try:
        w, s, e, n = transform_bounds(crs, WGS84, *bounds, densify_pts=21)
    except Exception:  # noqa: BLE001 - GDAL's errors vary; a local CRS has no lon/lat
        left, bottom, right, top = bounds
        return f"x {left:g} to {right:g}, y {bottom:g} to {top:g} in its own CRS"
    return f"lon {w:.5f} to {e:.5f}, lat {s:.5f} to {n:.5f}"


def geometry_to_crs(geometry: dict[str, Any], src_crs: CRS, dst_crs: CRS | None) -> dict[str, Any]:
    """Reproject a GeoJSON-like geometry (no-op when the CRSs match)."""
    if dst_crs is None or src_crs == dst_crs:
        return geometry
    return transform_geom(src_crs, dst_crs, geometry)


def roi_window(grid: Grid, roi: dict[str, Any], roi_crs: CRS | None = WGS84, *,
               min_size: int = MIN_OVERLAP_PX) -> tuple[Window, dict[str, Any]]:
    """Window of `grid` covering a region of interest.

    Parameters
    ----------
    grid : Grid
        The reference grid.
    roi : dict
        GeoJSON-like (multi)polygon.
    roi_crs : CRS or None, optional
        CRS of `roi` (WGS84 by default); ``None`` for pixel space.

    Returns
    -------
    window : Window
        Integer window of `grid` covering the ROI, clipped to the grid.
    geometry : dict
        The ROI reprojected to the grid's CRS.

    Raises
    ------
    ROIError
        If the ROI is not a polygon or falls outside the grid.
    """
    if grid.crs is None and roi_crs is not None:
        raise ROIError("the images carry no georeferencing, so a lon/lat region of "
                       "interest cannot be placed on them")
    shp = roi_polygon(roi, roi_crs)
    gb = box(*grid.bounds)
    if grid.crs is not None and roi_crs != grid.crs:
        # Clip to the image in the region's own CRS first: a region much
        # larger than the image (a whole country, the world) has no sensible
        # shape in the image's projection.
        footprint, shp = _footprint(grid, roi_crs), _near_copies(shp, roi_crs)
        if not shp.intersects(footprint):
            raise ROIError(_outside(shp, grid, footprint if roi_crs.is_geographic else None))
        shp = _reproject(shp.intersection(footprint), roi_crs, grid.crs)
        shp = shp.buffer(0) if not shp.is_valid else shp
    if not shp.intersects(gb):
        raise ROIError(_outside(shp, grid))
    win = _pixel_window(grid, shp.intersection(gb).bounds)
    if win.width < min_size or win.height < min_size:
        raise ROIError(
            f"the region of interest covers only {win.width} x {win.height} pixels "
            f"of the images (at least {min_size} x {min_size} needed)")
    return win, mapping(shp)


def roi_polygon(roi: dict[str, Any], crs: CRS | None = WGS84) -> BaseGeometry:
    """Check and repair a region of interest: a (multi)polygon with an area.

    Polygons are taken out of a collection; a self-intersecting one (a
    bow-tie) is repaired with :func:`shapely.make_valid`, not halved.

    Raises
    ------
    ROIError
        Saying what is wrong: not a polygon, no area, coordinates that are
        not numbers, or latitudes beyond 90 degrees (swapped coordinates).
    """
    try:
        with np.errstate(invalid="ignore"):   # NaN coordinates: said below
            shp = shape(roi)
        coords = shapely.get_coordinates(shp)
    except (AttributeError, KeyError, TypeError, ValueError, IndexError,
            shapely.errors.ShapelyError) as exc:
        raise ROIError(f"the region of interest is not a valid geometry ({exc})") from None
    if not np.isfinite(coords).all():
        raise ROIError("the region of interest has coordinates that are not numbers")
    if crs is not None and crs.is_geographic and coords.size and (
            np.abs(coords[:, 1]).max() > 90 or np.abs(coords[:, 0]).max() > 540):
        raise ROIError(
            f"the region of interest has latitudes beyond 90 degrees (up to "
            f"{np.abs(coords[:, 1]).max():g}); GeoJSON writes longitude first, "
            "[lon, lat]: are they swapped?")
    if not shp.is_valid:
        shp = shapely.make_valid(shp)
    every = shapely.get_parts(shp)      # a collection's members, or the geometry itself
    parts = [g for g in every if g.geom_type in ("Polygon", "MultiPolygon")]
    if not parts:
        kinds = " or ".join(sorted({g.geom_type for g in every})) or shp.geom_type
        raise ROIError(f"the region of interest must be a polygon, not {kinds}")
    shp = shapely.union_all(parts)
    if shp.is_empty or shp.area <= 0:
        raise ROIError("the region of interest has no area (its polygon is a line or a "
                       "point)")
    return shp


def _footprint(grid: Grid, crs: CRS) -> BaseGeometry:
    # The grid's outline in `crs`, whole: in lon/lat, an image across the
    # antimeridian keeps its longitudes continuous (past 180), not cut in two.
    out = _reproject(_densified(box(*grid.bounds)), grid.crs, crs)
    if crs.is_geographic:
        x = shapely.get_coordinates(out)[:, 0]
        if x.size and x.max() - x.min() > 180:
            out = shapely.transform(out, lambda c: np.where(c < 0, c + [360.0, 0.0], c))
    return out.buffer(0) if not out.is_valid else out


def _reproject(geom: BaseGeometry, src: CRS, dst: CRS) -> BaseGeometry:
    # Vertex by vertex, never cut at the antimeridian (transform_geom always
    # cuts there): longitudes may pass 180, as the footprint's do.
    def move(c: NDArray[np.float64]) -> NDArray[np.float64]:
        xs, ys = transform(src, dst, c[:, 0], c[:, 1])
        return np.column_stack([xs, ys])

    return shapely.transform(geom, move)


def _near_copies(roi: BaseGeometry, crs: CRS) -> BaseGeometry:
    # In lon/lat, the region with its copies 360 degrees east and west, so
    # that a region written in -180..180 (or cut there, as RFC 7946 asks)
    # meets an image's footprint that lies across 180 wherever it is.
    if not crs.is_geographic:
        return roi
    return shapely.union_all([shapely.affinity.translate(roi, 360.0 * k) for k in (-1, 0, 1)])


def _densified(poly: BaseGeometry, points: int = 64) -> BaseGeometry:
    # A rectangle's edges with points along them, so that it keeps its shape
    # reprojected (a straight edge in one CRS is a curve in another).
    return shapely.segmentize(poly, max(poly.length / (4 * points), 1e-12))


def _outside(shp: BaseGeometry, grid: Grid, lonlat_footprint: BaseGeometry | None = None,
             ) -> str:
    # Where the image is; and, given its footprint in the region's lon/lat,
    # whether the region with its coordinates swapped would meet it.
    where = _lonlat(grid.bounds, grid.crs)
    text = f"the region of interest lies outside the before image (which covers {where})"
    if lonlat_footprint is not None and shapely.transform(
            shp, lambda c: c[:, ::-1]).intersects(lonlat_footprint):
        text += "; with longitude and latitude swapped it would not: GeoJSON is [lon, lat]"
    return text


#: Offsets this close to whole pixels are whole pixels.
_SNAP_PX = 1e-6


def translation_between(src: Grid, grid: Grid, pixel_transform: Affine | None = None,
                        ) -> tuple[float, float] | None:
    """Return where `grid`'s pixel (0, 0) samples `src`, in `src` pixel indices.

    Only when a translation is all that differs (same CRS, pixel size and
    orientation; `pixel_transform`, in `grid` pixels, applied first);
    otherwise None. Grids on one lattice give whole pixels up to rounding
    (0.6 m pixels: 7.000000000931), which are snapped to whole pixels.

    Examples
    --------
    >>> a = Grid(Affine(0.5, 0, 100, 0, -0.5, 200), None, 10, 10)
    >>> translation_between(a, a.window_grid(Window(3, 2, 4, 4)))
    (3, 2)
    """
    if src.crs != grid.crs:
        return None
    m = ~src.transform @ grid.transform
    if pixel_transform is not None:
        m = m @ pixel_transform
    if max(abs(m.a - 1), abs(m.e - 1), abs(m.b), abs(m.d)) > 1e-9:
        return None
    return tuple(round(v) if abs(v - round(v)) < _SNAP_PX else v  # type: ignore[return-value]
                 for v in (m.c, m.f))


def resampling_for(before: Grid, after: Grid) -> Resampling:
    """Choose the kernel that resamples the after image onto the before grid.

    Averaging when the after image is much finer keeps its noise and detail
    from aliasing; otherwise cubic keeps edges sharp.
    """
    if before.crs is None or after.crs is None:
        return Resampling.cubic
    ratio = math.sqrt(before.pixel_area_m2() / max(after.pixel_area_m2(), 1e-12))
    return Resampling.average if ratio > 1.5 else Resampling.cubic
