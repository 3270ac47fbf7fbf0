"""Look at a pair before diffing it: grids, overlap, bands and the shift.

:func:`describe_pair` answers the questions a user has before a long run:
do the two images share ground, at what pixel size, with which bands and
types, and how far apart are they? The shift is estimated as
:func:`changedet.detect` does (phase correlation, see
:mod:`changedet.coreg`) but on a central crop of the overlap, so it is quick
on any size of image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from rasterio.enums import Resampling
from rasterio.io import DatasetReader
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from changedet import io
from changedet.coreg import Shift, estimate_shift
from changedet.errors import NoOverlapError
from changedet.grid import WGS84, Grid, overlap_window, resampling_for

__all__ = ["ImageSummary", "Overlap", "PairInfo", "describe_pair", "estimate_pair_shift",
           "central_window"]

#: Side, in pixels, of the central crop the shift is estimated on.
SHIFT_CROP_PX = 1024


@dataclass(frozen=True)
class ImageSummary:
    """What one input is: its grid, bands and values."""

    name: str
    crs: str | None
    width: int
    height: int
    pixel_size: tuple[float, float]
    pixel_size_m: tuple[float, float]
    bounds: tuple[float, float, float, float]
    bounds_lonlat: tuple[float, float, float, float] | None
    count: int
    dtypes: tuple[str, ...]
    nodata: float | None
    alpha_band: int | None

    def to_dict(self) -> dict[str, Any]:
        """Plain-typed description, for ``--json``."""
        return {
            "name": self.name, "crs": self.crs, "width": self.width, "height": self.height,
            "pixel_size": [_r(v) for v in self.pixel_size],
            "pixel_size_m": [_r(v) for v in self.pixel_size_m],
            "bounds": [_r(v) for v in self.bounds],
            "bounds_lonlat": [round(v, 7) for v in self.bounds_lonlat]
            if self.bounds_lonlat else None,
            "count": self.count, "dtypes": list(self.dtypes),
            "nodata": None if self.nodata is None or not math.isfinite(self.nodata)
            else self.nodata,
            "alpha_band": self.alpha_band,
        }


@dataclass(frozen=True)
class Overlap:
    """Where the two footprints meet, in each image's pixels."""

    before_window: tuple[int, int, int, int]
    after_window: tuple[int, int, int, int]
    before_fraction: float
    after_fraction: float

    def to_dict(self) -> dict[str, Any]:
        """Plain-typed description (windows as col, row, width, height)."""
        return {"before_window": list(self.before_window),
                "after_window": list(self.after_window),
                "before_percent": round(100 * self.before_fraction, 2),
                "after_percent": round(100 * self.after_fraction, 2)}


@dataclass(frozen=True)
class PairInfo:
    """Everything :func:`describe_pair` found.

    Attributes
    ----------
    before, after : ImageSummary
    overlap : Overlap or None
        None if the images do not overlap (enough).
    shift : Shift or None
        The after image's displacement on the before grid, estimated on a
        central crop of the overlap; None without overlap.
    shift_m : (float, float) or None
        The same in metres, east and north.
    notes : list of str
        Things worth knowing before a diff.
    """

    before: ImageSummary
    after: ImageSummary
    overlap: Overlap | None
    shift: Shift | None
    shift_m: tuple[float, float] | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain-typed description, for ``--json``."""
        shift = None
        if self.shift is not None:
            shift = self.shift.to_dict()
            if self.shift_m is not None:
                shift["shift_m"] = {"x": round(self.shift_m[0], 4),
                                    "y": round(self.shift_m[1], 4)}
        return {"before": self.before.to_dict(), "after": self.after.to_dict(),
                "overlap": self.overlap.to_dict() if self.overlap else None,
                "shift": shift, "notes": list(self.notes)}


def _r(v: float) -> float:
    return float(f"{v:.10g}")


def _crs_label(grid: Grid) -> str | None:
    if grid.crs is None:
        return None
    epsg = grid.crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else grid.crs.to_string()


def _summary(info: io.ImageInfo) -> ImageSummary:
    g = info.grid
    lonlat = None
    if g.crs is not None:
        lonlat = tuple(transform_bounds(g.crs, WGS84, *g.bounds, densify_pts=21))
    return ImageSummary(name=info.name, crs=_crs_label(g), width=g.width, height=g.height,
                        pixel_size=g.res, pixel_size_m=g.pixel_size_m(), bounds=g.bounds,
                        bounds_lonlat=lonlat, count=info.count,
                        dtypes=tuple(info.dtypes[b - 1] for b in info.bands),
                        nodata=info.nodata, alpha_band=info.alpha)


def _win(w: Window) -> tuple[int, int, int, int]:
    return (int(w.col_off), int(w.row_off), int(w.width), int(w.height))


def central_window(window: Window, size: int = SHIFT_CROP_PX) -> Window:
    """Return the central part of `window`, at most `size` pixels on a side."""
    w, h = min(int(window.width), size), min(int(window.height), size)
    return Window(int(window.col_off) + (int(window.width) - w) // 2,
                  int(window.row_off) + (int(window.height) - h) // 2, w, h)


def estimate_pair_shift(before: DatasetReader, after: DatasetReader, grid: Grid, *,
                        bands: list[int] | None = None, after_grid: Grid | None = None,
                        ) -> Shift:
    """Estimate the after image's global shift relative to `before`, on `grid`.

    Parameters
    ----------
    before, after : DatasetReader
        Open datasets; `grid` must be a window of `before`'s grid.
    grid : Grid
        Where to compare them (e.g. a central crop of the overlap, see
        :func:`central_window`); the after image is warped onto it.
    bands : list of int, optional
        1-based bands to compare (default all data bands; the counts must
        then match).
    after_grid : Grid, optional
        The after image's own grid, to pick the resampling kernel.

    Returns
    -------
    Shift
        See :func:`changedet.coreg.estimate_shift`.

    Notes
    -----
    Memory: two float32 copies of `grid` per band.
    """
    origin = ~before.transform @ (grid.transform.c, grid.transform.f)
    win = Window(round(origin[0]), round(origin[1]), grid.width, grid.height)
    b, inv_b = io.read_window(before, win, bands=bands)
    kernel = resampling_for(grid, after_grid) if after_grid is not None else Resampling.cubic
    a, inv_a = io.read_warped(after, grid, bands=bands, resampling=kernel)
    if inv_b.all() or inv_a.all():
        return Shift()
    return estimate_shift(b, a, invalid_before=inv_b, invalid_after=inv_a)


def describe_pair(before: io.RasterSource, after: io.RasterSource, *,
                  bands: list[int] | None = None, shift: bool = True) -> PairInfo:
    """Describe two images and how they relate, without diffing them.

    Parameters
    ----------
    before, after : path, dataset or Raster
        The pair to check.
    bands : list of int, optional
        1-based bands for the shift estimate (default: all, if the counts
        match; else the first min(count) bands).
    shift : bool, optional
        Estimate the shift (reads a central crop of at most
        :data:`SHIFT_CROP_PX` pixels on a side).

    Returns
    -------
    PairInfo

    Raises
    ------
    RasterReadError
        An input is missing or unreadable.
    InputError
        One image is georeferenced and the other is not.
    """
    with io.open_raster(before) as bds, io.open_raster(after) as ads:
        # As coregister names them: a Raster by its name, a file by GDAL's.
        bi, ai = (io.image_info(ds, io.source_name(src))
                  for ds, src in ((bds, before), (ads, after)))
        notes: list[str] = []
        overlap = None
        found: Shift | None = None
        shift_m = None
        try:
            bw = overlap_window(bi.grid, ai.grid.bounds, ai.grid.crs, min_size=1,
                                names=(bi.name, ai.name))
            aw = overlap_window(ai.grid, bi.grid.bounds, bi.grid.crs, min_size=1,
                                names=(ai.name, bi.name))
        except NoOverlapError:
            notes.append("the images do not overlap: there is nothing to compare")
        else:
            overlap = Overlap(_win(bw), _win(aw),
                              bw.width * bw.height / (bi.grid.width * bi.grid.height),
                              aw.width * aw.height / (ai.grid.width * ai.grid.height))
            if min(bw.width, bw.height) < 16:
                notes.append(f"the overlap is only {bw.width} x {bw.height} pixels; "
                             "diff needs at least 16 x 16")
        if bi.count != ai.count and bands is None:
            notes.append(f"band counts differ ({bi.count} vs {ai.count}): choose bands "
                         "with --bands")
            bands = list(range(1, min(bi.count, ai.count) + 1))
        if bi.grid.crs is not None and ai.grid.crs is not None:
            rb, ra = bi.grid.pixel_size_m()[0], ai.grid.pixel_size_m()[0]
            if max(rb, ra) / max(min(rb, ra), 1e-12) > 1.5:
                notes.append(f"pixel sizes differ ({rb:.3g} m vs {ra:.3g} m): the after image "
                             "is resampled onto the before grid")
            if bi.grid.crs != ai.grid.crs:
                notes.append("the CRSs differ: the after image is reprojected onto the "
                             "before grid")
        if shift and overlap is not None and min(bw.width, bw.height) >= 16:
            crop = bi.grid.window_grid(central_window(bw))
            found = estimate_pair_shift(bds, ads, crop, bands=bands, after_grid=ai.grid)
            if bi.grid.crs is not None:
                (mx, my), (rx, ry) = bi.grid.pixel_size_m(), bi.grid.res
                e, n = found.to_map(bi.grid)
                shift_m = (e * mx / rx, n * my / ry)
            if not found.reliable:
                notes.append("no reliable shift found (little texture in common, or much "
                             "has changed); diff will not remove one")
        return PairInfo(before=_summary(bi), after=_summary(ai), overlap=overlap,
                        shift=found, shift_m=shift_m, notes=notes)
