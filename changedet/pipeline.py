"""``detect`` and ``diff``: two images in, change polygons out.

The pipeline composes the stages, each a pure function on arrays, in two
halves. *Estimate globally*: read a few windows of both images, find the
shift (:mod:`changedet.coreg`), the radiometric fit
(:mod:`changedet.radiometry`), the no-change model (:mod:`changedet.scores`)
and the threshold (:mod:`changedet.thresholds`), and freeze them in a
:class:`changedet.blocks.Plan`. *Apply locally*: process the grid block by
block (:mod:`changedet.runner`, :mod:`changedet.blocks`), on threads or a
Dask cluster, into polygons (:mod:`changedet.vectorize`,
:mod:`changedet.geojson`) and rasters.

:func:`detect` returns everything in memory; :func:`diff` streams it to
files, in memory that does not grow with the raster.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from typing import IO, Any, Literal, get_args

import numpy as np
import rasterio
from numpy.typing import NDArray
from rasterio.io import DatasetReader
from rasterio.windows import Window
from shapely.geometry import box, mapping, shape
from shapely.geometry.base import BaseGeometry
from threadpoolctl import threadpool_limits

from changedet import io
from changedet.align import estimate_on_window
from changedet.blocks import ChangeObject, Plan
from changedet.cleanup import DEFAULT_MIN_AREA_M2
from changedet.coreg import COREG_MODES, Alignment, CoregMode, Shift
from changedet.direction import CLASS_NAMES, NODATA_CLASS, default_gradient_floor
from changedet.errors import (
    BandMismatchError,
    ChangeDetError,
    DateOrderWarning,
    InputError,
    PixelSpaceWarning,
    ResolutionMismatchWarning,
    ROIError,
    UnreliableShiftWarning,
)
from changedet.features import BandStats, band_stats, gradient_magnitude
from changedet.geojson import (
    east_extent,
    feature,
    feature_collection,
    lonlat_bbox,
    to_wgs84,
)
from changedet.grid import WGS84, Grid, overlap_window, resampling_for, roi_window
from changedet.process import FILTER_SWAPS
from changedet.radiometry import (
    NORMALISE_METHODS,
    NormaliseMethod,
    apply_normalisation,
    fit_normalisation,
)
from changedet.runner import (
    DEFAULT_BLOCK_SIZE,
    BlockOutput,
    Sink,
    Sources,
    run_blocks,
    small_pages,
    steady_malloc,
)
from changedet.scores import (
    ScoreMethod,
    fit_score,
    score_change,
    vegetation_gate_for,
    vegetation_mask,
)
from changedet.thresholds import HISTOGRAM_METHODS, Threshold, ThresholdMethod, select_threshold

__all__ = ["ChangeResult", "DiffSummary", "detect", "diff", "PROPERTY_KEYS", "DetectMethod",
           "DETECT_METHODS", "AUTO_METHOD"]

log = logging.getLogger(__name__)

DetectMethod = Literal["auto", "cva", "logratio", "irmad", "structure"]
DETECT_METHODS: tuple[str, ...] = get_args(DetectMethod)

#: The change score ``method="auto"`` uses: the one scripts/bench_accuracy.py
#: supports best across the synthetic scenarios and the real labelled pairs.
AUTO_METHOD: ScoreMethod = "cva"

#: Property keys every feature carries, in order.
PROPERTY_KEYS = ("change", "area_m2", "pixels", "score_mean", "score_max", "confidence")

ProgressCallback = Callable[[str, int, int], None]

#: Margin (pixels) of context read around a region of interest to estimate
#: the shift, the radiometric fit and the noise model.
CONTEXT_MARGIN_PX = 256

#: Shifts smaller than this (pixels) are not worth a second resampling.
_MIN_APPLIED_SHIFT = 0.02

#: Radiometry, noise and statistics are estimated on the whole context up
#: to this many pixels a side; beyond, on a lattice of sample windows of
#: about as many pixels, so that memory for estimation is the same for any
#: raster size. (Co-registration reads what it needs itself.)
_ESTIMATE_FULL_PX = 1024
_SAMPLE_TILE_PX = 256
_SAMPLE_TILES = 4  # per side


class _Features:
    """GeoJSON views of `geometries` and `properties` on `grid`, with `metadata`.

    Shared by the results of detect, diff and series.
    """

    geometries: list[BaseGeometry]
    properties: list[dict[str, Any]]
    grid: Grid
    metadata: dict[str, Any]

    def __len__(self) -> int:
        return len(self.geometries)

    @cached_property
    def features(self) -> list[dict[str, Any]]:
        """GeoJSON features in WGS84 (pixel coordinates in pixel space)."""
        geoms = to_wgs84(self.geometries, self.grid.crs)
        return [feature(i + 1, g, p)
                for i, (g, p) in enumerate(zip(geoms, self.properties, strict=True))]

    @property
    def __geo_interface__(self) -> dict[str, Any]:
        """The result as an RFC 7946 FeatureCollection dict."""
        feats = self.features
        bbox = None
        if feats:
            import shapely

            # total_bounds swaps the warning filters (see FILTER_SWAPS).
            geoms = [shape(f["geometry"]) for f in feats]
            with FILTER_SWAPS:
                bbox = shapely.total_bounds(geoms).tolist()
            if self.grid.crs is not None:
                ranges = np.array([east_extent(g) for g in geoms])
                bbox = lonlat_bbox(bbox, (ranges[:, 0].min(), ranges[:, 1].max()))
        return feature_collection(feats, bbox=bbox, metadata=self.metadata)

    def to_geojson(self, path: str | os.PathLike | None = None, *,
                   overwrite: bool = False) -> dict[str, Any]:
        """Return the FeatureCollection, and write it to `path` if given.

        The file is written atomically; an existing file is only replaced
        with ``overwrite=True``.
        """
        fc = self.__geo_interface__
        if path is not None:
            io.write_geojson(fc, path, overwrite=overwrite, inputs=self._inputs())
        return fc

    def _inputs(self) -> list[str]:
        return [p for p in (self.metadata.get("before"), self.metadata.get("after"))
                if isinstance(p, str)]


@dataclass
class ChangeResult(_Features):
    """What :func:`detect` found.

    Attributes
    ----------
    classes : (H, W) ndarray of uint8
        0 no change, 1 appeared, 2 disappeared, 3 changed, 255 nodata.
    score : (H, W) ndarray of float32
        Change score in no-change standard deviations; NaN where invalid.
    grid : Grid
        Where `classes` and `score` lie: the before image's grid, cropped to
        the overlap (and region of interest).
    shift : Shift
        The displacement of the after image that was found (and removed if
        ``shift.reliable``).
    threshold : Threshold
        The threshold applied to `score`.
    geometries : list of shapely geometries
        Change polygons on the grid's CRS, in feature order.
    properties : list of dict
        Attributes of each polygon (keys: :data:`PROPERTY_KEYS`).
    metadata : dict
        Everything needed to reproduce the run.
    """

    classes: NDArray[np.uint8]
    score: NDArray[np.float32]
    grid: Grid
    shift: Shift
    threshold: Threshold
    geometries: list[BaseGeometry] = field(default_factory=list)
    properties: list[dict[str, Any]] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def transform(self):  # noqa: ANN201 - Affine
        """Affine transform of `classes` and `score`."""
        return self.grid.transform

    @property
    def crs(self):  # noqa: ANN201 - CRS or None
        """CRS of `classes`, `score` and `geometries`."""
        return self.grid.crs

    def write_mask(self, path: str | os.PathLike, *, overwrite: bool = False) -> None:
        """Write the class raster as a Cloud-Optimized GeoTIFF on the grid."""
        io.write_class_raster(self.classes, self.grid, path, overwrite=overwrite,
                              inputs=self._inputs())

    def write_score(self, path: str | os.PathLike, *, overwrite: bool = False) -> None:
        """Write the change score as a float32 Cloud-Optimized GeoTIFF."""
        io.write_float_raster(self.score, self.grid, path, overwrite=overwrite,
                              inputs=self._inputs())


@dataclass
class DiffSummary(_Features):
    """What :func:`diff` wrote.

    Attributes
    ----------
    count : int
        Number of change polygons.
    counts : dict
        Number of polygons per class name.
    shift : Shift
        Shift found (and removed if reliable).
    grid : Grid
        The processing grid.
    metadata : dict
        The run's metadata (also in the GeoJSON).
    geometries, properties : list
        The polygons (on the grid's CRS) and their attributes, in the order
        written, when :func:`diff` was asked to ``collect`` them (for
        pictures and reports); empty otherwise.
    valid_pixels : int
        Pixels of the grid valid in both images (and inside the region of
        interest).
    changed_pixels : int
        Pixels of the change polygons (the class raster's 1, 2 and 3).
    """

    count: int
    counts: dict[str, int]
    shift: Shift
    grid: Grid
    metadata: dict[str, Any]
    geometries: list[BaseGeometry] = field(default_factory=list)
    properties: list[dict[str, Any]] = field(default_factory=list)
    valid_pixels: int = 0
    changed_pixels: int = 0


def _check_choice(name: str, value: object, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, not {value!r}")


def _pick_bands(binfo: io.ImageInfo, ainfo: io.ImageInfo,
                bands: Sequence[int] | None) -> list[int] | None:
    if bands is not None:
        bands = [int(b) for b in bands]
        if not bands:
            raise InputError("bands must name at least one band")
        return bands
    if binfo.count != ainfo.count:
        raise BandMismatchError(
            f"{binfo.name} has {binfo.count} data band(s) but {ainfo.name} has "
            f"{ainfo.count}; choose bands both have with --bands (e.g. --bands "
            f"{','.join(str(b) for b in range(1, min(binfo.count, ainfo.count, 3) + 1))})")
    return None


#: Pixel-size ratios from which a pair is warned about, and refused.
RESOLUTION_WARN = 4.0
RESOLUTION_REFUSE = 20.0


def _check_resolutions(binfo: io.ImageInfo, ainfo: io.ImageInfo) -> None:
    if binfo.grid.crs is None or ainfo.grid.crs is None:
        return
    pb, pa = math.sqrt(binfo.grid.pixel_area_m2()), math.sqrt(ainfo.grid.pixel_area_m2())
    ratio = max(pb, pa) / max(min(pb, pa), 1e-12)
    sizes = f"{binfo.name} has {pb:.3g} m pixels, {ainfo.name} {pa:.3g} m"
    if ratio >= RESOLUTION_REFUSE:
        coarse = max(pb, pa)
        raise InputError(
            f"{sizes}: {ratio:.0f} times apart, too far to compare (changes smaller than the "
            f"coarser pixel cannot be seen); resample both to a common pixel size first, "
            f"e.g. gdalwarp -tr {coarse:.3g} {coarse:.3g} -r average")
    if ratio >= RESOLUTION_WARN:
        warnings.warn(
            f"{sizes} ({ratio:.0f} times apart): the after image is resampled to the before "
            "image's grid; changes smaller than the coarser pixel will be missed",
            ResolutionMismatchWarning, stacklevel=5)


def _intersect(a: Window, b: Window) -> Window | None:
    c0, r0 = max(a.col_off, b.col_off), max(a.row_off, b.row_off)
    c1 = min(a.col_off + a.width, b.col_off + b.width)
    r1 = min(a.row_off + a.height, b.row_off + b.height)
    if c1 <= c0 or r1 <= r0:
        return None
    return Window(c0, r0, c1 - c0, r1 - r0)


def _expand(window: Window, within: Window, margin: int) -> Window:
    """`window` grown by `margin` pixels on every side, clipped to `within`."""
    grown = Window(window.col_off - margin, window.row_off - margin,
                   window.width + 2 * margin, window.height + 2 * margin)
    return _intersect(grown, within) or window


def _roi_geometry(roi: Any, bbox: Sequence[float] | None) -> tuple[dict | None, Any]:
    if roi is not None and bbox is not None:
        raise ValueError("give roi or bbox, not both")
    if bbox is not None:
        if len(bbox) != 4:
            raise ROIError("bbox needs four numbers: west south east north")
        w, s, e, n = (float(v) for v in bbox)
        if not (-180 <= w < e <= 180 and -90 <= s < n <= 90):
            hint = ("; it looks like latitude first: give longitudes first, as west south "
                    f"east north ({s:g} {w:g} {n:g} {e:g}?)"
                    if max(abs(s), abs(n)) > 90 >= max(abs(w), abs(e)) else "")
            raise ROIError(f"bbox {w:g} {s:g} {e:g} {n:g} is not west south east north in "
                           f"degrees (west < east, south < north){hint}")
        return mapping(box(w, s, e, n)), WGS84
    if roi is None:
        return None, None
    if isinstance(roi, (str, os.PathLike)):
        return io.read_roi(roi)
    if isinstance(roi, dict):
        geom = roi.get("geometry", roi) if roi.get("type") == "Feature" else roi
        return geom, WGS84
    if hasattr(roi, "__geo_interface__"):
        return roi.__geo_interface__, WGS84
    raise ROIError("roi must be a GeoJSON file path, a GeoJSON geometry or a shapely polygon")


def default_tolerance(grid: Grid) -> int:
    """Displacement tolerated by the change score: about 1 m, 1 to 3 pixels."""
    if grid.crs is None:
        return 1
    return int(np.clip(round(1.0 / math.sqrt(grid.pixel_area_m2())), 1, 3))


def _roi_bounds(geom: dict[str, Any] | None) -> list[float] | None:
    return None if geom is None else [round(v, 3) for v in shape(geom).bounds]


def _window_origin(win: Window) -> tuple[int, int]:
    return int(win.row_off), int(win.col_off)


def _mosaic(tiles: list[NDArray[Any]], per_row: int) -> NDArray[Any]:
    """Arrange equal-sized (..., h, w) tiles in rows of `per_row`.

    Estimation fits that look at neighbourhoods (shade, vegetation texture)
    then see real image structure, not pixels strung into one line.
    """
    rows = [np.concatenate(tiles[i:i + per_row], axis=-1)
            for i in range(0, len(tiles), per_row)]
    return np.concatenate(rows, axis=-2)


def _sample_windows(win: Window) -> list[Window]:
    """Return the whole window if small; otherwise a regular lattice of tiles."""
    w, h = int(win.width), int(win.height)
    if w * h <= _ESTIMATE_FULL_PX ** 2:
        return [win]
    t = _SAMPLE_TILE_PX
    nr, nc = min(_SAMPLE_TILES, max(1, h // t)), min(_SAMPLE_TILES, max(1, w // t))
    rows = np.linspace(0, h - min(t, h), nr).round().astype(int)
    cols = np.linspace(0, w - min(t, w), nc).round().astype(int)
    return [Window(int(win.col_off) + c, int(win.row_off) + r, min(t, w), min(t, h))
            for r in rows for c in cols]


@dataclass
class _Opened:
    before: DatasetReader
    after: DatasetReader
    binfo: io.ImageInfo
    ainfo: io.ImageInfo
    sources_paths: tuple[str, str]
    #: Closes, with the inputs, what the estimation opens on them.
    stack: contextlib.ExitStack


#: Decoded tiles of the after image the estimation keeps, bytes: the
#: samples are read again once co-registered (moved by a fraction of a
#: pixel, they lie in the same tiles).
SAMPLE_CACHE_BYTES = 64 * 2 ** 20

#: GDAL's block cache, MB, unless the user sets GDAL_CACHEMAX: GDAL's own
#: default (5 % of RAM) lets memory grow with the raster read. (rasterio
#: passes an integer GDAL_CACHEMAX to GDAL in bytes, not megabytes.)
GDAL_CACHE_MB = 128


@contextlib.contextmanager
def _open(before: io.RasterSource, after: io.RasterSource) -> Iterator[_Opened]:
    # Blocks reopen the images (one handle per thread or worker), so every
    # input needs a name rasterio.open understands: a path, a dataset's own
    # name, or an in-memory file for arrays.
    with contextlib.ExitStack() as stack:
        if "GDAL_CACHEMAX" not in os.environ:
            stack.enter_context(rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB * 2 ** 20))
        paths = []
        datasets = []
        for src in (before, after):
            if isinstance(src, io.Raster):
                mem = stack.enter_context(io.raster_memfile(src))
                ds = stack.enter_context(mem.open())
                paths.append(mem.name)
            else:
                ds = stack.enter_context(io.open_raster(src))
                paths.append(os.fspath(src) if isinstance(src, (str, os.PathLike)) else ds.name)
            datasets.append(ds)
        bds, ads = datasets
        binfo = io.image_info(bds, io.source_label(before))
        ainfo = io.image_info(ads, io.source_label(after))
        yield _Opened(bds, ads, binfo, ainfo, (paths[0], paths[1]), stack)


@dataclass(frozen=True)
class _Prepared:
    plan: Plan
    sources: Sources
    shift: Shift
    metadata: dict[str, Any]
    #: The tiles the estimation decoded, before's and after's, for the
    #: blocks to take (run_blocks empties them): see io.TileReader.adopt.
    tiles: list[dict[Any, Any]] = field(default_factory=list)


def _prepare(opened: _Opened, *, bands: Sequence[int] | None, roi: Any,
             bbox: Sequence[float] | None, coreg: str, normalise: str, method: str,
             threshold: ThresholdMethod | float, min_area: float, open_radius: int,
             close_radius: int, simplify: float, tolerance: int | None,
             report: Callable[[str], None]) -> _Prepared:
    """Estimate globally: read sample windows and fit the run's parameters."""
    binfo, ainfo, bds, ads = opened.binfo, opened.ainfo, opened.before, opened.after
    use_bands = _pick_bands(binfo, ainfo, bands)
    roi_geom, roi_crs = _roi_geometry(roi, bbox)
    grid = binfo.grid
    overlap = overlap_window(grid, ainfo.grid.bounds, ainfo.grid.crs,
                             names=(binfo.name, ainfo.name))
    _check_resolutions(binfo, ainfo)
    window = overlap

    if roi_geom is not None:
        rwin, roi_geom = roi_window(grid, roi_geom, roi_crs)
        window = _intersect(overlap, rwin)
        if window is None:
            raise ROIError("the region of interest lies outside the area the two "
                           "images share")
    if grid.crs is None and ainfo.grid.crs is None:
        warnings.warn(
            f"{binfo.name} and {ainfo.name} carry no georeferencing: comparing them pixel "
            "for pixel; output coordinates are pixels (x = column, y = -row), not lon/lat, "
            "and areas are in pixels", PixelSpaceWarning, stacklevel=4)
    # Parameters are estimated on a context around a small region of
    # interest: a few dozen metres hold too little to co-register or to
    # model what "unchanged" looks like.
    context = window if roi_geom is None else _expand(window, overlap, CONTEXT_MARGIN_PX)
    wgrid = grid.window_grid(window)
    resampling = resampling_for(grid, ainfo.grid)

    # Both images are read as the blocks will read them (runner.read_block),
    # and the blocks are handed the tiles decoded here.
    before_tiles, after_tiles = (opened.stack.enter_context(io.TileReader(
        path, bands=use_bands, name=info.name, max_bytes=SAMPLE_CACHE_BYTES))
        for path, info in zip(opened.sources_paths, (binfo, ainfo), strict=True))

    def read_after(win: Window, alignment: Alignment | None = None,
                   ) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        p = None if alignment is None else alignment.for_window(
            win.col_off - context.col_off, win.row_off - context.row_off)
        return io.read_aligned(after_tiles, grid.window_grid(win), pixel_transform=p,
                               resampling=resampling)

    # Check there is data at all before anything else, so an empty image gets
    # one clear error rather than a co-registration warning first.
    report("reading")
    windows = _sample_windows(context)
    # The after image (its own handle per thread) is read alongside.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(lambda: [read_after(win) for win in windows])
        before_raw = [before_tiles.read(win) for win in windows]
        after_raw = pending.result()
    for raw, info in ((before_raw, binfo), (after_raw, ainfo)):
        if all(inv.all() for _, inv in raw):
            raise InputError(f"{info.name}: has no valid pixels where the images overlap "
                             "(all nodata or masked)")

    alignment, applied = Alignment(), False
    if coreg != "none":
        report("co-registering")
        alignment = estimate_on_window(bds, ads, binfo, ainfo, context, mode=coreg,
                                       bands=use_bands, resampling=resampling)
        shift = alignment.shift
        if not alignment.reliable:
            warnings.warn(
                f"co-registration found no reliable shift between {binfo.name} and "
                f"{ainfo.name} ({alignment.note or f'peak-to-sidelobe ratio {shift.psr:.1f}'}); "
                "continuing without one", UnreliableShiftWarning, stacklevel=4)
        elif alignment.model == "affine" or math.hypot(shift.x, shift.y) >= _MIN_APPLIED_SHIFT:
            applied = True
    applied_alignment = alignment if applied else None

    report("normalising")
    if applied:
        # Only the after image moves: the before samples stand. Read on two
        # threads (decoding and resampling release the GIL).
        with ThreadPoolExecutor(max_workers=2) as pool:
            after_raw = list(pool.map(lambda win: read_after(win, applied_alignment), windows))
    tiles = [before_tiles.decoded_tiles(), after_tiles.decoded_tiles()]
    before_tiles.clear()
    after_tiles.clear()
    per_row = 1 if len(windows) == 1 else len({int(w.col_off) for w in windows})
    b_s = _mosaic([b for b, _ in before_raw], per_row)
    a_s = _mosaic([a for a, _ in after_raw], per_row)
    inv_s = _mosaic([ib | ia for (_, ib), (_, ia) in zip(before_raw, after_raw, strict=True)],
                    per_row)
    del before_raw, after_raw
    if inv_s.all():
        raise InputError(f"{binfo.name} and {ainfo.name} have no valid pixels in common")
    # Vegetation is never pseudo-invariant (it changes with the season).
    gate = vegetation_gate_for(binfo.count if binfo.count == ainfo.count else None, use_bands)
    # What needs the before samples only is done beside the fits, on another
    # core (IR-MAD's iterations keep one busy): 0.1 s less on the 8192 px
    # benchmark pair's 1.5 s of estimation.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="changedet-before") as pool:
        veg_b = None if gate is None else pool.submit(vegetation_mask, b_s, gate)
        before_side = pool.submit(_before_statistics, b_s, inv_s)
        pif_invalid = inv_s if veg_b is None else (
            inv_s | vegetation_mask(a_s, gate) | veg_b.result())
        fit = fit_normalisation(b_s, a_s, pif_invalid, method=normalise)
        a_s = apply_normalisation(a_s, fit)
        if tolerance is None:
            tolerance = default_tolerance(wgrid)
        score_method: ScoreMethod = AUTO_METHOD if method == "auto" else method  # type: ignore
        params = fit_score(score_method, b_s, a_s, inv_s, tolerance=tolerance, vegetation=gate)
        stats_a = band_stats(a_s, inv_s)
        stats_b, floor = before_side.result()
    if isinstance(threshold, str) and threshold in HISTOGRAM_METHODS:
        # Histogram thresholds need the score's distribution: from the samples.
        scores = score_change(b_s, a_s, params)[~inv_s]
        thr = select_threshold(scores, dof=params.dof, method=threshold)
    else:
        thr = select_threshold(np.zeros(1, np.float32), dof=params.dof, method=threshold)
    del b_s, a_s, inv_s, pif_invalid

    pixel_area = wgrid.pixel_area_m2()
    simplify_crs = simplify / math.sqrt(pixel_area) * wgrid.res[0] if simplify > 0 else 0.0
    plan = Plan(grid=wgrid, bands=tuple(use_bands) if use_bands else None,
                pixel_transform=None if applied_alignment is None else applied_alignment.for_window(
                    window.col_off - context.col_off, window.row_off - context.row_off),
                resampling=resampling.name, fit=fit,
                score=params, threshold=thr, tolerance=int(tolerance), stats_before=stats_b,
                stats_after=stats_a, gradient_floor=floor, min_area_m2=float(min_area),
                pixel_area_m2=pixel_area,
                open_radius=int(open_radius), close_radius=int(close_radius),
                simplify=simplify_crs, roi=roi_geom)
    sources = Sources(opened.sources_paths[0], opened.sources_paths[1], binfo.name,
                      ainfo.name, _window_origin(window))

    from changedet import __version__

    metadata = {
        "version": __version__,
        "before": binfo.name,
        "after": ainfo.name,
        "coordinates": ("lon/lat WGS84" if wgrid.crs is not None
                        else "pixels: x = column, y = -row (not georeferenced)"),
        "grid": wgrid.to_dict(),
        "coregistration": {**alignment.to_dict(wgrid), "mode": coreg, "applied": applied},
        "normalisation": fit.to_dict(),
        "method": score_method,
        "score": params.to_dict(),
        "threshold": thr.to_dict(),
        "options": {
            "bands": list(use_bands) if use_bands else None,
            "roi": _roi_bounds(roi_geom),
            "min_area_m2": float(min_area),
            "open_radius_px": int(open_radius),
            "close_radius_px": int(close_radius),
            "simplify_m": float(simplify),
            "tolerance_px": int(tolerance),
            "resampling": resampling.name,
        },
        "classes": {str(k): v for k, v in CLASS_NAMES.items()},
    }
    return _Prepared(plan, sources, alignment.shift, metadata, tiles)


def _before_statistics(before: NDArray[np.float32], invalid: NDArray[np.bool_],
                       ) -> tuple[BandStats, float]:
    # The before samples' band statistics and gradient floor.
    stats = band_stats(before, invalid)
    return stats, default_gradient_floor(gradient_magnitude(before, invalid, stats=stats))


def _check_options(coreg: str, normalise: str, method: str, min_area: Any, simplify: float,
                   tolerance: int | None) -> None:
    _check_choice("coreg", coreg, COREG_MODES)
    _check_choice("normalise", normalise, NORMALISE_METHODS)
    _check_choice("method", method, DETECT_METHODS)
    if not (isinstance(min_area, (int, float)) and math.isfinite(min_area) and min_area >= 0):
        raise ValueError(f"min_area must be a non-negative number of square metres, "
                         f"not {min_area!r}")
    if simplify < 0:
        raise ValueError("simplify must not be negative")
    if tolerance is not None and not (isinstance(tolerance, int) and 0 <= tolerance <= 10):
        raise ValueError(f"tolerance must be a whole number of pixels from 0 to 10, "
                         f"not {tolerance!r}")


@contextlib.contextmanager
def _cluster(scheduler: Any, workers: int | None) -> Iterator[Any]:
    """Yield a Dask client for `scheduler` (address or Client) or `workers` local processes."""
    if scheduler is None and not workers:
        yield None
        return
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError as exc:
        raise ChangeDetError("the Dask path needs the 'dask' extra: "
                             "pip install 'changedet[dask]'") from exc
    if scheduler is not None and not isinstance(scheduler, str):
        yield scheduler
        return
    with contextlib.ExitStack() as stack:
        if scheduler is not None:
            try:
                client = stack.enter_context(Client(scheduler, timeout="10s"))
            except OSError as exc:
                raise ChangeDetError(f"could not reach the Dask scheduler at {scheduler} "
                                     f"({exc})") from exc
        else:
            cluster = stack.enter_context(LocalCluster(
                n_workers=int(workers), threads_per_worker=1, processes=True,
                dashboard_address=None))
            client = stack.enter_context(Client(cluster))
        yield client


def _check_dask_sources(sources: Sources) -> None:
    for path, name in ((sources.before, sources.before_name),
                       (sources.after, sources.after_name)):
        if path.startswith("/vsimem/"):
            raise InputError(f"{name}: the Dask path reads the images on the workers, so it "
                             "needs files (paths or URLs), not in-memory arrays")


class _MemorySink(Sink):
    def __init__(self, shape: tuple[int, int]) -> None:
        self.classes = np.zeros(shape, np.uint8)
        self.score = np.zeros(shape, np.float32)
        self.found: list[ChangeObject] = []

    def block(self, out: BlockOutput) -> None:
        rows = slice(int(out.core.row_off), int(out.core.row_off + out.core.height))
        cols = slice(int(out.core.col_off), int(out.core.col_off + out.core.width))
        self.score[rows, cols] = np.where(out.invalid, np.nan, out.score)
        current = self.classes[rows, cols]
        self.classes[rows, cols] = _merge_background(current, out.invalid)

    def object(self, obj: ChangeObject) -> None:
        for r0, c0, mask in obj.masks():
            h, w = mask.shape
            self.classes[r0:r0 + h, c0:c0 + w][mask] = obj.change
        self.found.append(obj)


def _boxes_of(mask: NDArray[np.bool_], step: int = 256) -> list[tuple[int, int, int, int]]:
    # (r0, r1, c0, c1) boxes that hold every True pixel of `mask`: within
    # each step x step square, the bounding box of its True pixels.
    out = []
    for r0 in range(0, mask.shape[0], step):
        strip = mask[r0:r0 + step]
        cols = strip.any(axis=0)
        for c0 in range(0, mask.shape[1], step):
            cc = np.flatnonzero(cols[c0:c0 + step])
            if cc.size:
                rr = np.flatnonzero(strip[:, c0 + cc[0]:c0 + cc[-1] + 1].any(axis=1))
                out.append((r0 + int(rr[0]), r0 + int(rr[-1]) + 1,
                            c0 + int(cc[0]), c0 + int(cc[-1]) + 1))
    return out


def _merge_background(current: NDArray[np.uint8], invalid: NDArray[np.bool_],
                      ) -> NDArray[np.uint8]:
    # Object pixels (1-3) may arrive before or after their block's
    # background: keep them whatever the order.
    is_object = (current >= 1) & (current <= 3)
    return np.where(is_object, current, np.where(invalid, NODATA_CLASS, 0)).astype(np.uint8)


class _FileSink(Sink):
    def __init__(self, grid: Grid, features: io.GeoJSONWriter | None,
                 classes: io.RasterBlockWriter | None,
                 score: io.RasterBlockWriter | None, collect: bool = False) -> None:
        self.grid, self.features, self.classes, self.score = grid, features, classes, score
        self.count = 0
        self.counts: Counter[str] = Counter()
        self.collect = collect
        self.geometries: list[BaseGeometry] = []
        self.properties: list[dict[str, Any]] = []
        self.valid_pixels = self.changed_pixels = 0

    def block(self, out: BlockOutput) -> None:
        self.valid_pixels += out.invalid.size - int(np.count_nonzero(out.invalid))
        # The class raster is sparse (0 where never written): a block's
        # background needs writing only where it is nodata, and never over
        # an object that a neighbour wrote first.
        # Only the boxes that hold its nodata pixels are read back and
        # rewritten (a shifted image's edge is a strip a few pixels wide):
        # the whole block each time cost 0.14 CPU-s on the 8192^2 benchmark
        # pair, and held the writer's lock 0.27 s (now 0.05 and 0.08).
        if self.classes is not None and out.invalid.any():
            core = out.core
            for r0, r1, c0, c1 in _boxes_of(out.invalid):
                inv = out.invalid[r0:r1, c0:c1]
                self.classes.update(
                    Window(core.col_off + c0, core.row_off + r0, c1 - c0, r1 - r0),
                    lambda cur, inv=inv: _merge_background(cur, inv))
        if self.score is not None:
            self.score.write(out.core, np.where(out.invalid, np.nan, out.score))

    def object(self, obj: ChangeObject) -> None:
        self.objects([obj])

    def objects(self, objs: list[ChangeObject]) -> None:
        # A block's polygons go to WGS84 in one call: one each cost 0.2 ms
        # more a polygon (a new transformation each time).
        geoms = (to_wgs84([o.geometry for o in objs], self.grid.crs)
                 if self.features is not None else [None] * len(objs))
        for obj, geom in zip(objs, geoms, strict=True):
            self._write(obj, geom)

    def _write(self, obj: ChangeObject, geom: BaseGeometry | None) -> None:
        self.count += 1
        if self.features is not None and geom is not None:
            self.features.write(feature(self.count, geom, obj.properties), geom.bounds,
                                None if self.grid.crs is None else east_extent(geom))
        self.counts[obj.properties["change"]] += 1
        self.changed_pixels += int(obj.properties["pixels"])
        if self.collect:
            self.geometries.append(obj.geometry)
            self.properties.append(obj.properties)
        if self.classes is not None:
            for r0, c0, mask in obj.masks():
                h, w = mask.shape
                self.classes.update(Window(c0, r0, w, h),
                                    lambda cur, m=mask: np.where(m, obj.change, cur))


@contextlib.contextmanager
def _session(before: io.RasterSource, after: io.RasterSource, opts: dict[str, Any], *,
             block_size: int, threads: int | None, scheduler: Any, workers: int | None,
             progress: ProgressCallback | None, check_dates: bool = True,
             ) -> Iterator[tuple[_Prepared, Callable[[Any], None]]]:
    """Open the inputs and estimate the plan.

    Yield the plan and a function that runs the block stage into a sink
    (locally or on a Dask cluster).
    """
    _check_options(opts["coreg"], opts["normalise"], opts["method"], opts["min_area"],
                   opts["simplify"], opts["tolerance"])

    def report(stage: str) -> None:
        log.info("%s", stage)
        if progress is not None:
            progress(stage, 0, 1)

    steady_malloc()
    with small_pages(), _open(before, after) as opened:
        if check_dates:
            _check_date_order(before, after, opened)
        # The estimation parallelises itself (reads beside fits, IR-MAD's
        # regressions on a pool); numpy's BLAS would add a spinning thread
        # per core to each small product, measured 0.2 s slower on two cores.
        with threadpool_limits(limits=1, user_api="blas"):
            prep = _prepare(opened, report=report, **opts)

        def run(sink: Any) -> None:
            with _cluster(scheduler, workers) as client:
                if client is not None:
                    _check_dask_sources(prep.sources)
                report("detecting")
                # The estimation's tiles go to the blocks' readers (run_blocks
                # empties the dicts: they are no longer held here).
                run_blocks(prep.sources, prep.plan, sink, block_size=block_size,
                           threads=threads, client=client, progress=progress,
                           tiles=tuple(prep.tiles) or None)

        yield prep, run
    report("done")


def _check_date_order(before: io.RasterSource, after: io.RasterSource, opened: _Opened,
                      ) -> None:
    # The dates the images carry (tags, else file names): a before image
    # dated after the after image is most likely a swapped pair, whose
    # appeared and disappeared would be the wrong way round.
    from changedet.series import acquisition_date

    # Read from the images as the run opened them; not the TIFF's own
    # date-time, often when the file was written.
    db = acquisition_date(before, file_time=False, dataset=opened.before)
    da = acquisition_date(after, file_time=False, dataset=opened.after)
    n = min(len(db or ""), len(da or ""))   # '2020' against '2019-05-01': the years
    if n and db[:n] > da[:n]:
        warnings.warn(
            f"{opened.binfo.name} is dated {db}, later than {opened.ainfo.name} ({da}): "
            "are BEFORE and AFTER swapped? 'appeared' means in the second image only",
            DateOrderWarning, stacklevel=4)


def _run_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: kwargs[k] for k in ("bands", "roi", "bbox", "coreg", "normalise", "method",
                                   "threshold", "min_area", "open_radius", "close_radius",
                                   "simplify", "tolerance")}


_DETECT_DOC_PARAMETERS = """
    before, after : path, rasterio dataset or Raster
        The two dates. Anything GDAL reads, in any CRS, pixel size, extent,
        band count and data type. The before image's grid is the reference:
        the after image is resampled onto it and only the overlap is used.
    bands : sequence of int, optional
        1-based band indexes to use in both images (default: all data bands;
        the two images must then have the same number).
    roi : path, GeoJSON-like dict or shapely polygon, optional
        Region of interest, WGS84 lon/lat (a file may name another CRS in a
        legacy ``crs`` member). Only it is processed and reported.
    bbox : (west, south, east, north), optional
        Region of interest as lon/lat bounds.
    coreg : {"global", "local", "none"}, optional
        Remove a global sub-pixel translation of the after image (phase
        correlation of several windows with a consensus), or an affine
        fitted to a grid of tie points (rotation, scale, skew), or nothing.
    normalise : {"irmad", "histogram", "linear", "none"}, optional
        Relative radiometric normalisation of the after image: orthogonal
        regression on IR-MAD invariant pixels (default), histogram
        matching, median/IQR matching, or none.
    method : {"auto", "cva", "logratio", "irmad", "structure"}, optional
        Change score (:mod:`changedet.scores`): change-vector magnitude,
        log-ratio, IR-MAD chi-square or change of local structure, each in
        no-change standard deviations; ``"auto"`` is :data:`AUTO_METHOD`.
    threshold : {"auto", "chi2", "otsu", "ki"} or float, optional
        How to threshold the score: chi-square hysteresis (auto, chi2), or
        Otsu / Kittler-Illingworth guarded by the no-change model; a number
        is a fixed score threshold.
    min_area : float, optional
        Minimum mapping unit in square metres (pixels in pixel space).
    open_radius, close_radius : int, optional
        Morphological clean-up radii in pixels.
    simplify : float, optional
        Polygon simplification tolerance in metres (0 keeps pixel edges).
    tolerance : int, optional
        Differences that a displacement of up to this many pixels explains
        are not change (moving shadow edges, parallax, residual
        misregistration). Default: about 1 m, at least 1 and at most 3 px.
    block_size : int, optional
        Side of the blocks processed at a time, pixels (default 1024). The
        result does not depend on it; memory does.
    threads : int, optional
        Threads for the block stage (default: all cores).
    scheduler : str or dask.distributed.Client, optional
        Run the block stage as tasks on a Dask cluster (its address, or a
        client). The images must then be files the workers can read.
    workers : int, optional
        Start a local Dask cluster of this many worker processes instead.
    progress : callable, optional
        Called as ``progress(stage, done, total)``."""


def detect(before: io.RasterSource, after: io.RasterSource, *,
           bands: Sequence[int] | None = None,
           roi: Any = None,
           bbox: Sequence[float] | None = None,
           coreg: CoregMode = "global",
           normalise: NormaliseMethod = "irmad",
           method: DetectMethod = "auto",
           threshold: ThresholdMethod | float = "auto",
           min_area: float = DEFAULT_MIN_AREA_M2,
           open_radius: int = 1,
           close_radius: int = 1,
           simplify: float = 0.0,
           tolerance: int | None = None,
           block_size: int = DEFAULT_BLOCK_SIZE,
           threads: int | None = None,
           scheduler: Any = None,
           workers: int | None = None,
           progress: ProgressCallback | None = None) -> ChangeResult:
    """Find what changed between two images of the same place, in memory.

    Parameters
    ----------{params}

    Returns
    -------
    ChangeResult
        Class and score rasters of the whole processing grid, the polygons
        (ordered by their first pixel) and the run's metadata.

    Raises
    ------
    RasterReadError
        An input is missing, unreadable or corrupt.
    NoOverlapError
        The images share too little ground.
    BandMismatchError
        Band counts differ and `bands` was not given.
    ROIError
        The region of interest is malformed or outside the images.
    InputError
        Other problems with the inputs (no valid pixels in common...).
    ValueError
        An option has a value outside those listed.

    Warns
    -----
    UnreliableShiftWarning
        Co-registration found no trustworthy shift; none was applied.

    Notes
    -----
    Memory: a byte and a float32 per pixel of the processing grid for the
    returned rasters, plus the blocks in flight. For rasters larger than
    memory use :func:`diff`, which streams its outputs to files.

    Examples
    --------
    >>> import changedet
    >>> result = changedet.detect(f"{SAMPLE}/square_before.tif",  # SAMPLE: sample_tiles/
    ...                           f"{SAMPLE}/square_after.tif")
    >>> sorted(p["change"] for p in result.properties)[-2:]
    ['appeared', 'disappeared']
    >>> round(result.shift.x, 1), round(result.shift.y, 1)
    (2.7, -2.0)
    """  # noqa: D407 - the {params} placeholder is filled in at the end of the module
    opts = _run_options(locals())
    with _session(before, after, opts, block_size=block_size, threads=threads,
                  scheduler=scheduler, workers=workers, progress=progress) as (prep, run):
        plan = prep.plan
        sink = _MemorySink(plan.grid.shape)
        run(sink)
    objects = sorted(sink.found, key=lambda o: o.anchor)
    return ChangeResult(classes=sink.classes, score=sink.score, grid=plan.grid,
                        shift=prep.shift, threshold=plan.threshold,
                        geometries=[o.geometry for o in objects],
                        properties=[o.properties for o in objects], metadata=prep.metadata)


def diff(before: io.RasterSource, after: io.RasterSource, output: str | os.PathLike | None = None,
         *, mask: str | os.PathLike | None = None, score: str | os.PathLike | None = None,
         stream: IO[str] | None = None, overwrite: bool = False,
         collect: bool = False, extra_outputs: Sequence[str | os.PathLike] = (),
         bands: Sequence[int] | None = None,
         roi: Any = None,
         bbox: Sequence[float] | None = None,
         coreg: CoregMode = "global",
         normalise: NormaliseMethod = "irmad",
         method: DetectMethod = "auto",
         threshold: ThresholdMethod | float = "auto",
         min_area: float = DEFAULT_MIN_AREA_M2,
         open_radius: int = 1,
         close_radius: int = 1,
         simplify: float = 0.0,
         tolerance: int | None = None,
         block_size: int = DEFAULT_BLOCK_SIZE,
         threads: int | None = None,
         scheduler: Any = None,
         workers: int | None = None,
         progress: ProgressCallback | None = None,
         check_dates: bool = True) -> DiffSummary:
    """Find what changed and write it to files, in bounded memory.

    The same analysis as :func:`detect`, streamed: features are written as
    they are found, rasters window by window, so memory depends on the
    block size, not on the raster. Every output is written to a temporary
    file beside it and moved into place only when complete.

    Parameters
    ----------
    output : path, optional
        GeoJSON to write.
    mask : path, optional
        Class raster (uint8 COG: 0 none, 1 appeared, 2 disappeared,
        3 changed, 255 nodata).
    score : path, optional
        Change score (float32 COG, NaN = nodata).
    stream : text stream, optional
        Where to write the GeoJSON when `output` is not given (e.g.
        ``sys.stdout``).
    overwrite : bool, optional
        Replace outputs that exist.
    collect : bool, optional
        Also keep the polygons in the returned summary (for pictures and
        reports); memory then grows with their number. With neither
        `output` nor `stream`, they are only collected (no GeoJSON is made).
    extra_outputs : sequence of paths, optional
        Other files the caller will write (checked like these, before any work).
    check_dates : bool, optional
        Warn (:class:`DateOrderWarning`) when `before` is dated later than
        `after` by its tags or file name, likely swapped arguments (default);
        a caller that orders its dates itself turns it off.{params}

    Returns
    -------
    DiffSummary

    Raises
    ------
    OutputExistsError
        An output exists and `overwrite` is false (checked before any work).
    OutputError
        An output cannot be written there.
    ChangeDetError
        As :func:`detect`.
    """
    opts = _run_options(locals())
    if output is None and stream is None and not collect:
        raise ValueError("give an output path or a stream, or collect=True")
    # The region of interest's file is an input too: never overwritten.
    inputs = [p for p in (before, after, roi) if isinstance(p, (str, os.PathLike))]
    io.check_output_paths((output, mask, score, *extra_outputs), overwrite=overwrite,
                          inputs=inputs)

    with _session(before, after, opts, block_size=block_size, threads=threads,
                  scheduler=scheduler, workers=workers, progress=progress,
                  check_dates=check_dates) as (prep, run), \
            contextlib.ExitStack() as stack:
        plan = prep.plan
        classes_w = score_w = None
        if mask is not None:
            classes_w = stack.enter_context(io.class_raster_writer(
                mask, plan.grid, overwrite=overwrite, inputs=inputs))
        if score is not None:
            score_w = stack.enter_context(io.RasterBlockWriter(
                score, plan.grid, dtype="float32", nodata=math.nan, overwrite=overwrite,
                inputs=inputs, predictor=3, overview_resampling="AVERAGE"))
        writer = None if output is None and stream is None else io.GeoJSONWriter(
            output, {"changedet": prep.metadata}, stream=stream, overwrite=overwrite,
            inputs=inputs)
        try:
            sink = _FileSink(plan.grid, writer, classes_w, score_w, collect=collect)
            run(sink)
            if writer is not None:
                writer.close()
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
    return DiffSummary(count=sink.count, counts=dict(sink.counts), shift=prep.shift,
                       grid=plan.grid, metadata=prep.metadata, geometries=sink.geometries,
                       properties=sink.properties, valid_pixels=sink.valid_pixels,
                       changed_pixels=sink.changed_pixels)


detect.__doc__ = detect.__doc__.replace("{params}", _DETECT_DOC_PARAMETERS)
diff.__doc__ = diff.__doc__.replace("{params}", _DETECT_DOC_PARAMETERS)
