"""``coregister``: align the after image on the before image's grid.

The file-level face of :mod:`changedet.coreg`: open the two images, find the
area they share, serve the estimator windows of it (the before image as it
is, the after image reprojected onto the before grid, both read a window at
a time), and return the fitted :class:`~changedet.coreg.Alignment` with what
is needed to resample the after image onto the before grid in a single
warp, write it, and write the tie points for inspection.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import numpy as np
import shapely
from affine import Affine
from numpy.typing import NDArray
from rasterio.enums import Resampling
from rasterio.io import DatasetReader
from rasterio.windows import Window

from changedet import io
from changedet.coreg import MIN_PSR, Alignment, CoregMode, Shift, estimate_alignment
from changedet.errors import CoregistrationError
from changedet.geojson import feature, feature_collection, to_wgs84
from changedet.grid import Grid, overlap_window, resampling_for, translation_between
from changedet.process import FILTER_SWAPS

__all__ = [
    "estimate_on_window", "CoregistrationResult", "coregister", "ALIGN_MODES"]

#: The modes :func:`coregister` accepts.
ALIGN_MODES: tuple[str, ...] = ("global", "local")

#: Rows of the aligned image resampled and written at a time.
_BLOCK_ROWS = 512


def _decimated(grid: Grid, factor: int) -> Grid:
    return Grid(grid.transform @ Affine.scale(factor), grid.crs,
                grid.width // factor, grid.height // factor)


def _read(ds: DatasetReader, window: Window, bands: list[int], name: str, factor: int,
          ) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    # A window of a dataset on its own grid, decimated by `factor`.
    w, h = int(window.width), int(window.height)
    out_shape = None if factor == 1 else (h // factor, w // factor)
    return io.read_window(ds, window, bands=bands, name=name, out_shape=out_shape)


class _BeforeReader:
    """Windows of the before image, relative to the overlap."""

    def __init__(self, ds: DatasetReader, overlap: Window, bands: Sequence[int], name: str,
                 ) -> None:
        self.ds, self.overlap, self.bands, self.name = ds, overlap, list(bands), name
        #: The file's tiles on the overlap's pixels (see changedet.coreg.WindowReader).
        self.tiles = _tiles(ds, int(overlap.row_off), int(overlap.col_off))

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.overlap.height), int(self.overlap.width))

    def read(self, window: Window, factor: int = 1,
             ) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        win = Window(int(window.col_off + self.overlap.col_off),
                     int(window.row_off + self.overlap.row_off),
                     int(window.width), int(window.height))
        return _read(self.ds, win, self.bands, self.name, factor)


class _AfterReader:
    """Windows of the after image resampled onto the overlap grid.

    When the after image's pixels are the overlap's pixels moved by whole
    pixels (same CRS and pixel size), a plain windowed read gives the same
    values as a warp, much faster.
    """

    def __init__(self, ds: DatasetReader, grid: Grid, own: Grid, bands: Sequence[int],
                 resampling: Resampling, name: str) -> None:
        self.ds, self.grid, self.own, self.bands = ds, grid, own, list(bands)
        self.resampling, self.name = resampling, name
        self.offset = _whole_pixel_offset(grid, own)

    @property
    def shape(self) -> tuple[int, int]:
        return self.grid.shape

    def read(self, window: Window, factor: int = 1,
             ) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        w, h = int(window.width), int(window.height)
        if self.offset is not None:
            c0, r0 = int(window.col_off) + self.offset[0], int(window.row_off) + self.offset[1]
            if c0 >= 0 and r0 >= 0 and c0 + w <= self.own.width and r0 + h <= self.own.height:
                return _read(self.ds, Window(c0, r0, w, h), self.bands, self.name, factor)
        grid = _decimated(self.grid.window_grid(window), factor)
        return io.read_warped(self.ds, grid, bands=self.bands, name=self.name,
                              resampling=self.resampling if factor == 1 else Resampling.average)


def _tiles(ds: DatasetReader, row_off: int, col_off: int) -> tuple[int, int, int, int] | None:
    # (tile height, tile width, row, col) of `ds`'s tiles on a grid whose
    # origin is `ds`'s pixel (row_off, col_off); None for strips.
    th, tw = (int(v) for v in ds.block_shapes[0])
    if tw >= ds.width or th >= ds.height or th < 16 or tw < 16:
        return None
    return (th, tw, -row_off % th, -col_off % tw)


def _whole_pixel_offset(grid: Grid, other: Grid) -> tuple[int, int] | None:
    """Where `grid`'s origin is in `other`'s pixels, if whole pixels are all that differs."""
    move = translation_between(other, grid)
    if move is None or not all(float(v).is_integer() for v in move):
        return None
    return (int(move[0]), int(move[1]))


def _bands_label(before: Sequence[int], after: Sequence[int]) -> str:
    b = ", ".join(map(str, before))
    a = ", ".join(map(str, after))
    which = f"bands {b}" if list(before) == list(after) else f"bands {b} (before), {a} (after)"
    return f"gradient magnitude of the mean of standardised {which}"


@dataclass
class CoregistrationResult:
    """What :func:`coregister` found, and the after image aligned on the before grid.

    Attributes
    ----------
    alignment : Alignment
        The fitted alignment, in pixel coordinates of `grid`.
    grid : Grid
        The before image's grid cropped to the overlap: where the aligned
        image lies.
    before, after : str
        The inputs' names.
    bands : tuple of int
        Bands of the after image that the aligned image holds.
    dtype : str
        Data type of those bands (the aligned image keeps it when written).
    nodata : float or None
        The after image's nodata value.
    resampling : Resampling
        Kernel of the single warp that aligns the after image.
    source : path, dataset or Raster
        The after image, read again to resample it (an open dataset must
        stay open while the result is used).
    """

    alignment: Alignment
    grid: Grid
    before: str
    after: str
    bands: tuple[int, ...]
    dtype: str
    nodata: float | None
    resampling: Resampling
    source: io.RasterSource

    @property
    def shift(self) -> Shift:
        """The displacement at the centre of the overlap."""
        return self.alignment.shift

    @property
    def reliable(self) -> bool:
        """Whether the alignment is trustworthy (only then is it applied)."""
        return self.alignment.reliable

    def pixel_transform(self, window: Window | None = None) -> Affine:
        """Return what :func:`changedet.io.read_warped` needs to align a window of `grid`.

        The identity when the alignment is not reliable.
        """
        if not self.reliable:
            return Affine.identity()
        if window is None:
            return self.alignment.pixel_transform
        return self.alignment.for_window(window.col_off, window.row_off)

    def read_aligned(self, window: Window | None = None,
                     ) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        """Resample a window of the after image onto `grid`, aligned, in one warp.

        Returns
        -------
        data : (bands, h, w) ndarray of float32
        invalid : (h, w) ndarray of bool
        """
        window = window or Window(0, 0, self.grid.width, self.grid.height)
        with io.open_raster(self.source) as ds:
            return self._warp(ds, window)

    def _warp(self, ds: DatasetReader, window: Window,
              ) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        return io.read_warped(ds, self.grid.window_grid(window), bands=self.bands,
                              pixel_transform=self.pixel_transform(window),
                              resampling=self.resampling, name=self.after)

    @cached_property
    def _aligned(self) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        return self.read_aligned()

    @property
    def aligned(self) -> NDArray[np.float32]:
        """The whole aligned after image, ``(bands, H, W)`` float32 (read on first use)."""
        return self._aligned[0]

    @property
    def invalid(self) -> NDArray[np.bool_]:
        """``(H, W)`` bool, True where the aligned image has no valid value."""
        return self._aligned[1]

    def _blocks(self) -> Iterator[tuple[Window, NDArray[np.float32], NDArray[np.bool_]]]:
        with io.open_raster(self.source) as ds:
            for row in range(0, self.grid.height, _BLOCK_ROWS):
                window = Window(0, row, self.grid.width,
                                min(_BLOCK_ROWS, self.grid.height - row))
                yield (window, *self._warp(ds, window))

    def write_aligned(self, path: str | os.PathLike, *, overwrite: bool = False) -> None:
        """Write the aligned after image as a Cloud-Optimized GeoTIFF on `grid`.

        It keeps the after image's bands, data type and nodata value (or
        marks invalid pixels in a mask band), and records the alignment in a
        ``CHANGEDET_COREGISTRATION`` tag. Written block by block, atomically.
        """
        io.write_image(self._blocks(), self.grid, path, count=len(self.bands), dtype=self.dtype,
                       nodata=self.nodata, overwrite=overwrite, inputs=self._inputs(),
                       tags={"CHANGEDET_COREGISTRATION": json.dumps(self.to_dict())})

    def to_dict(self) -> dict[str, Any]:
        """Plain-typed description, for metadata and ``--json``."""
        return {"before": self.before, "after": self.after, "grid": self.grid.to_dict(),
                "applied": self.reliable, **self.alignment.to_dict(self.grid)}

    def tie_points_geojson(self) -> dict[str, Any]:
        """Return the tie points as an RFC 7946 FeatureCollection of WGS84 points.

        Each point's properties: ``dx``, ``dy`` (pixels, x right, y down),
        ``dx_m``, ``dy_m`` (map units, x east, y north; None in pixel space),
        ``psr``, ``reliability``, ``inlier`` and ``residual_px`` (from the
        fitted alignment). In pixel space coordinates are (col, row).
        """
        tp = self.alignment.tie_points
        t = self.grid.transform
        x, y = t.a * tp.col + t.b * tp.row + t.c, t.d * tp.col + t.e * tp.row + t.f
        geoms = to_wgs84(list(shapely.points(x, y)), self.grid.crs)
        feats = []
        for i, g in enumerate(geoms):
            east, north = Shift(x=float(tp.dx[i]), y=float(tp.dy[i])).to_map(self.grid)
            georef = self.grid.is_georeferenced
            props = {
                "dx": round(float(tp.dx[i]), 4), "dy": round(float(tp.dy[i]), 4),
                "dx_m": round(east, 4) if georef else None,
                "dy_m": round(north, 4) if georef else None,
                "psr": round(float(tp.psr[i]), 2),
                "reliability": round(float(tp.reliability[i]), 4),
                "inlier": bool(tp.inlier[i]),
                "residual_px": round(float(tp.residual[i]), 4),
            }
            feats.append(feature(i + 1, g, props))
        # total_bounds swaps the warning filters (see FILTER_SWAPS).
        with FILTER_SWAPS:
            bbox = shapely.total_bounds(geoms).tolist() if geoms else None
        return feature_collection(feats, bbox=bbox, metadata=self.to_dict())

    def write_tie_points(self, path: str | os.PathLike, *, overwrite: bool = False) -> None:
        """Write :meth:`tie_points_geojson` to `path`, atomically."""
        io.write_geojson(self.tie_points_geojson(), path, overwrite=overwrite,
                         inputs=self._inputs())

    def _inputs(self) -> list[str]:
        return [self.before, self.after]


def estimate_on_window(bds: DatasetReader, ads: DatasetReader, binfo: io.ImageInfo,
                       ainfo: io.ImageInfo, area: Window, *, mode: CoregMode = "global",
                       bands: Sequence[int] | None = None,
                       resampling: Resampling | None = None, **options: Any) -> Alignment:
    """Estimate the alignment of two open images over a window of the before grid.

    Reads only what the estimator asks for: the window's central 2048 px
    decimated to 512 px a side, then the matched windows at full resolution. The
    result's ``pixel_transform`` is in pixel coordinates of `area`.

    Parameters
    ----------
    bds, ads : DatasetReader
        The before and after images.
    binfo, ainfo : ImageInfo
        Their descriptions (:func:`changedet.io.image_info`).
    area : Window
        Window of the before grid to estimate over (typically the overlap).
    mode : {"global", "local"}, optional
    bands : sequence of int, optional
        Bands of both images to match on (default: all data bands of each).
    resampling : Resampling, optional
        Kernel for the after image (default: :func:`changedet.grid.resampling_for`).
    **options
        Passed to :func:`changedet.coreg.estimate_alignment`.
    """
    grid = binfo.grid.window_grid(area)
    bbands = tuple(bands) if bands else binfo.bands
    abands = tuple(bands) if bands else ainfo.bands
    resampling = resampling or resampling_for(binfo.grid, ainfo.grid)
    alignment = estimate_alignment(
        _BeforeReader(bds, area, bbands, binfo.name),
        _AfterReader(ads, grid, ainfo.grid, abands, resampling, ainfo.name),
        mode=mode, **options)
    return replace(alignment, matched_on=_bands_label(bbands, abands))


def coregister(before: io.RasterSource, after: io.RasterSource, *,
               mode: CoregMode = "global", bands: Sequence[int] | None = None,
               window: int = 128, spacing: int | None = None, max_tie_points: int = 2000,
               threshold: float = 1.0, min_psr: float = MIN_PSR,
               strict: bool = True) -> CoregistrationResult:
    """Find how the after image is displaced and align it on the before grid.

    Parameters
    ----------
    before, after : path, rasterio dataset or Raster
        The two images, anything GDAL reads, in any CRS and pixel size; the
        after image is reprojected onto the before image's grid.
    mode : {"global", "local"}, optional
        One translation, or an affine fitted to a grid of tie points.
    bands : sequence of int, optional
        1-based bands of both images to match on and to align (default: all
        data bands of each).
    window, spacing, max_tie_points, threshold, min_psr
        See :func:`changedet.coreg.estimate_alignment`.
    strict : bool, optional
        Raise when no reliable alignment is found (default); otherwise return
        the flagged result, which then applies no displacement.

    Returns
    -------
    CoregistrationResult
        ``result.shift`` (pixels; ``result.to_dict()["shift_m"]`` in map
        units), ``result.alignment``, ``result.aligned``, and writers.

    Raises
    ------
    RasterReadError
        An input is missing, unreadable or corrupt.
    NoOverlapError
        The images share too little ground.
    CoregistrationError
        No reliable alignment exists (featureless images, too little
        overlap once displaced, too much change) and `strict` is true.
    ValueError
        `mode` is not one of those listed.

    Notes
    -----
    Reads the overlap's centre decimated to 512 pixels a side, then only the
    windows matched (as strips of `window` rows in local mode); the aligned
    image is resampled when first used, a block at a time when written.

    Examples
    --------
    >>> import changedet
    >>> r = changedet.coregister("before.tif", "after.tif", mode="local")  # doctest: +SKIP
    >>> r.shift.x, r.shift.y                                               # doctest: +SKIP
    (3.41, -2.69)
    >>> r.write_aligned("after_aligned.tif")                               # doctest: +SKIP
    """
    if mode not in ALIGN_MODES:
        raise ValueError(f"mode must be one of {ALIGN_MODES}, not {mode!r}")
    with io.open_raster(before) as bds, io.open_raster(after) as ads:
        binfo = io.image_info(bds, io.source_name(before))
        ainfo = io.image_info(ads, io.source_name(after))
        abands = tuple(bands) if bands else ainfo.bands
        overlap = overlap_window(binfo.grid, ainfo.grid.bounds, ainfo.grid.crs,
                                 names=(binfo.name, ainfo.name))
        grid = binfo.grid.window_grid(overlap)
        resampling = resampling_for(binfo.grid, ainfo.grid)
        alignment = estimate_on_window(
            bds, ads, binfo, ainfo, overlap, mode=mode, bands=bands, resampling=resampling,
            window=window, spacing=spacing, max_tie_points=max_tie_points,
            threshold=threshold, min_psr=min_psr)
        dtype = np.result_type(*[ads.dtypes[b - 1] for b in abands]).name
    if strict and not alignment.reliable:
        raise CoregistrationError(f"{binfo.name} and {ainfo.name}: no reliable co-registration; "
                                  f"{alignment.note}")
    return CoregistrationResult(alignment=alignment, grid=grid, before=io.source_label(before),
                                after=io.source_label(after), bands=abands, dtype=dtype,
                                nodata=ainfo.nodata, resampling=resampling, source=after)
