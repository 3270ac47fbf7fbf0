"""``detect``: two images in, change polygons out.

The pipeline composes the stages, each a pure function on arrays:
read and align (:mod:`changedet.io`, :mod:`changedet.grid`), co-register
(:mod:`changedet.coreg`), normalise (:mod:`changedet.radiometry`), score
(:mod:`changedet.scores`), threshold (:mod:`changedet.thresholds`), clean
(:mod:`changedet.cleanup`), label direction (:mod:`changedet.direction`),
vectorise (:mod:`changedet.vectorize`, :mod:`changedet.geojson`).
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal, get_args

import numpy as np
from numpy.typing import NDArray
from rasterio.enums import Resampling
from rasterio.features import geometry_mask
from rasterio.windows import Window
from shapely.geometry import box, mapping
from shapely.geometry.base import BaseGeometry

from changedet import io
from changedet.cleanup import DEFAULT_MIN_AREA_M2, clean_mask, delineate, label_components
from changedet.coreg import COREG_MODES, CoregMode, Shift, estimate_shift
from changedet.direction import CLASS_NAMES, class_raster, classify_direction
from changedet.errors import (
    BandMismatchError,
    InputError,
    ROIError,
    UnreliableShiftWarning,
)
from changedet.geojson import feature, feature_collection, to_wgs84
from changedet.grid import WGS84, Grid, overlap_window, roi_window
from changedet.radiometry import (
    NORMALISE_METHODS,
    NormaliseMethod,
    RadiometricFit,
    apply_normalisation,
    fit_normalisation,
)
from changedet.scores import (
    ScoreMethod,
    ScoreParams,
    default_vegetation_gate,
    fit_score,
    score_change,
    vegetation_mask,
)
from changedet.thresholds import Threshold, ThresholdMethod, apply_threshold, select_threshold
from changedet.vectorize import areas_m2, label_stats, polygons_from_labels, simplify_polygons

__all__ = ["ChangeResult", "detect", "PROPERTY_KEYS", "DetectMethod", "DETECT_METHODS",
           "AUTO_METHOD"]

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


@dataclass
class ChangeResult:
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

    def __len__(self) -> int:
        return len(self.geometries)

    @cached_property
    def features(self) -> list[dict[str, Any]]:
        """GeoJSON features in WGS84 (pixel coordinates in pixel space)."""
        geoms = to_wgs84(self.geometries, self.grid.crs)
        return [feature(i + 1, g, p) for i, (g, p) in enumerate(zip(geoms, self.properties))]

    @property
    def __geo_interface__(self) -> dict[str, Any]:
        """The result as an RFC 7946 FeatureCollection dict."""
        feats = self.features
        bbox = None
        if feats:
            import shapely
            from shapely.geometry import shape

            bbox = shapely.total_bounds([shape(f["geometry"]) for f in feats]).tolist()
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

    def write_mask(self, path: str | os.PathLike, *, overwrite: bool = False) -> None:
        """Write the class raster as a Cloud-Optimized GeoTIFF on the grid."""
        io.write_class_raster(self.classes, self.grid, path, overwrite=overwrite,
                              inputs=self._inputs())

    def write_score(self, path: str | os.PathLike, *, overwrite: bool = False) -> None:
        """Write the change score as a float32 Cloud-Optimized GeoTIFF."""
        io.write_float_raster(self.score, self.grid, path, overwrite=overwrite,
                              inputs=self._inputs())

    def _inputs(self) -> list[str]:
        return [p for p in (self.metadata.get("before"), self.metadata.get("after"))
                if isinstance(p, str)]


def _source_label(src: Any) -> str:
    if isinstance(src, (str, os.PathLike)):
        return os.fspath(src)
    if isinstance(src, io.Raster):
        return src.name
    return str(getattr(src, "name", "<dataset>"))


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
            f"{ainfo.count}; choose matching bands with --bands (e.g. --bands 1,2,3)")
    return None


def _resampling_for(before: Grid, after: Grid) -> Resampling:
    # Averaging when the after image is much finer keeps its noise and
    # detail from aliasing; otherwise cubic keeps edges sharp.
    if before.crs is None or after.crs is None:
        return Resampling.cubic
    ratio = math.sqrt(before.pixel_area_m2() / max(after.pixel_area_m2(), 1e-12))
    return Resampling.average if ratio > 1.5 else Resampling.cubic


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
            raise ROIError(f"bbox {w} {s} {e} {n} is not west south east north in "
                           "degrees (west < east, south < north)")
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
           progress: ProgressCallback | None = None) -> ChangeResult:
    """Find what changed between two images of the same place.

    Parameters
    ----------
    before, after : path, rasterio dataset or Raster
        The two dates. Anything GDAL reads, in any CRS, pixel size, extent,
        band count and data type. The before image's grid is the reference:
        the after image is resampled onto it and only the overlap is used.
    bands : sequence of int, optional
        1-based band indexes to use in both images (default: all; the two
        images must then have the same band count).
    roi : path, GeoJSON-like dict or shapely polygon, optional
        Region of interest, WGS84 lon/lat (a file may name another CRS in a
        legacy ``crs`` member). Only it is processed and reported.
    bbox : (west, south, east, north), optional
        Region of interest as lon/lat bounds.
    coreg : {"global", "none"}, optional
        Remove a global sub-pixel translation of the after image.
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
    progress : callable, optional
        Called as ``progress(stage, done, total)``.

    Returns
    -------
    ChangeResult

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
    Memory: the overlap of both images as float32, plus a few single-band
    float32 rasters of the same size.

    Examples
    --------
    >>> import changedet
    >>> result = changedet.detect("sample_tiles/square_before.tif",
    ...                           "sample_tiles/square_after.tif")  # doctest: +SKIP
    >>> result.to_geojson("changes.geojson")  # doctest: +SKIP
    """
    _check_choice("coreg", coreg, COREG_MODES)
    _check_choice("normalise", normalise, NORMALISE_METHODS)
    _check_choice("method", method, DETECT_METHODS)
    score_method: ScoreMethod = AUTO_METHOD if method == "auto" else method  # type: ignore
    if not (isinstance(min_area, (int, float)) and math.isfinite(min_area) and min_area >= 0):
        raise ValueError(f"min_area must be a non-negative number of square metres, not {min_area!r}")
    if simplify < 0:
        raise ValueError("simplify must not be negative")
    if tolerance is not None and not (isinstance(tolerance, int) and 0 <= tolerance <= 10):
        raise ValueError(f"tolerance must be a whole number of pixels from 0 to 10, not {tolerance!r}")
    roi_geom, roi_crs = _roi_geometry(roi, bbox)

    def report(stage: str, done: int = 1, total: int = 1) -> None:
        log.info("%s", stage)
        if progress is not None:
            progress(stage, done, total)

    with io.open_raster(before) as bds, io.open_raster(after) as ads:
        binfo = io.image_info(bds, _source_label(before) if isinstance(before, io.Raster)
                              else None)
        ainfo = io.image_info(ads, _source_label(after) if isinstance(after, io.Raster)
                              else None)
        use_bands = _pick_bands(binfo, ainfo, bands)
        grid = binfo.grid
        overlap = overlap_window(grid, ainfo.grid.bounds, ainfo.grid.crs)
        window = overlap
        if roi_geom is not None:
            rwin, roi_geom = roi_window(grid, roi_geom, roi_crs if grid.crs else None)
            window = _intersect(overlap, rwin)
            if window is None:
                raise ROIError("the region of interest lies outside the area the two "
                               "images share")
        # Parameters (shift, radiometry, noise) are estimated on a context
        # around a small region of interest: a few dozen metres hold too
        # little to co-register or to model what "unchanged" looks like.
        ctx_window = window if roi_geom is None else _expand(window, overlap, CONTEXT_MARGIN_PX)
        cgrid = grid.window_grid(ctx_window)
        wgrid = grid.window_grid(window)
        resampling = _resampling_for(grid, ainfo.grid)

        report("reading")
        b, inv_b = io.read_window(bds, ctx_window, bands=use_bands, name=binfo.name)
        a, inv_a = io.read_warped(ads, cgrid, bands=use_bands, resampling=resampling,
                                  name=ainfo.name)
        if inv_b.all():
            raise InputError(f"{binfo.name}: has no valid pixels where the images overlap")
        if inv_a.all():
            raise InputError(f"{ainfo.name}: has no valid pixels where the images overlap")

        shift = Shift()
        applied = False
        if coreg == "global":
            report("co-registering")
            shift = estimate_shift(b, a, invalid_before=inv_b, invalid_after=inv_a)
            if not shift.reliable:
                warnings.warn(
                    f"co-registration found no reliable shift between {binfo.name} and "
                    f"{ainfo.name} (peak-to-sidelobe ratio {shift.psr:.1f}); "
                    "continuing without one", UnreliableShiftWarning, stacklevel=2)
            elif math.hypot(shift.x, shift.y) >= _MIN_APPLIED_SHIFT:
                a, inv_a = io.read_warped(ads, cgrid, bands=use_bands, resampling=resampling,
                                          offset_px=(shift.x, shift.y), name=ainfo.name)
                applied = True
    invalid = inv_b | inv_a
    if invalid.all():
        raise InputError(f"{binfo.name} and {ainfo.name} have no valid pixels in common")

    report("normalising")
    # Vegetation is never pseudo-invariant (it changes with the season).
    gate = default_vegetation_gate(b.shape[0])
    pif_invalid = invalid if gate is None else (
        invalid | vegetation_mask(b, gate) | vegetation_mask(a, gate))
    fit: RadiometricFit = fit_normalisation(b, a, pif_invalid, method=normalise)
    a = apply_normalisation(a, fit)
    if tolerance is None:
        tolerance = default_tolerance(wgrid)
    params: ScoreParams = fit_score(score_method, b, a, invalid, tolerance=tolerance)

    # From here on, only the processing window.
    rows = slice(int(window.row_off - ctx_window.row_off),
                 int(window.row_off - ctx_window.row_off + window.height))
    cols = slice(int(window.col_off - ctx_window.col_off),
                 int(window.col_off - ctx_window.col_off + window.width))
    b, a, invalid = b[:, rows, cols], a[:, rows, cols], invalid[rows, cols]
    if roi_geom is not None:
        invalid = invalid | geometry_mask([roi_geom], out_shape=wgrid.shape,
                                          transform=wgrid.transform)
        if invalid.all():
            raise ROIError("the images have no valid pixels in common inside the region "
                           "of interest")

    report("scoring")
    score = score_change(b, a, params)
    score[invalid] = 0
    thr = select_threshold(score, dof=params.dof, method=threshold, invalid=invalid)
    raw = apply_threshold(score, thr, invalid)
    raw = delineate(score, raw, floor=thr.low)

    report("cleaning")
    pixel_area = wgrid.pixel_area_m2()
    cleaned = clean_mask(raw, pixel_area_m2=pixel_area, min_area_m2=min_area,
                         open_radius=open_radius, close_radius=close_radius, invalid=invalid)
    labels, n = label_components(cleaned)
    direction = classify_direction(b, a, labels, n, invalid=invalid)
    classes = class_raster(labels, direction.classes, invalid)

    report("vectorising")
    geoms = polygons_from_labels(labels, n, wgrid.transform)
    if simplify > 0:
        tol = simplify / math.sqrt(pixel_area) * wgrid.res[0]
        geoms = simplify_polygons(geoms, tol)
    areas = areas_m2(geoms, wgrid)
    stats = label_stats(score, labels, n)
    props = [
        {
            "change": CLASS_NAMES[int(direction.classes[i])],
            "area_m2": None if math.isnan(areas[i]) else round(float(areas[i]), 2),
            "pixels": int(stats["pixels"][i]),
            "score_mean": round(float(stats["score_mean"][i]), 3),
            "score_max": round(float(stats["score_max"][i]), 3),
            "confidence": round(float(direction.confidence[i]), 3),
        }
        for i in range(n)
    ]
    score[invalid] = np.nan

    from changedet import __version__

    metadata = {
        "version": __version__,
        "before": _source_label(before),
        "after": _source_label(after),
        "coordinates": "lon/lat WGS84" if wgrid.crs is not None else "pixels (col, row)",
        "grid": wgrid.to_dict(),
        "coregistration": {"mode": coreg, "applied": applied, **shift.to_dict(wgrid)},
        "normalisation": fit.to_dict(),
        "method": score_method,
        "score": params.to_dict(),
        "threshold": thr.to_dict(),
        "options": {
            "bands": list(use_bands) if use_bands else None,
            "roi": mapping_or_none(roi_geom, wgrid),
            "min_area_m2": float(min_area),
            "open_radius_px": int(open_radius),
            "close_radius_px": int(close_radius),
            "simplify_m": float(simplify),
            "tolerance_px": int(tolerance),
            "resampling": resampling.name,
        },
        "classes": {str(k): v for k, v in CLASS_NAMES.items()},
    }
    report("done")
    return ChangeResult(classes=classes, score=score, grid=wgrid, shift=shift, threshold=thr,
                        geometries=geoms, properties=props, metadata=metadata)


def default_tolerance(grid: Grid) -> int:
    """Displacement tolerated by the change score: about 1 m, 1 to 3 pixels."""
    if grid.crs is None:
        return 1
    return int(np.clip(round(1.0 / math.sqrt(grid.pixel_area_m2())), 1, 3))


def mapping_or_none(geom: dict[str, Any] | None, grid: Grid) -> list[float] | None:
    """Bounds of the region of interest on the grid's CRS, for metadata."""
    if geom is None:
        return None
    from shapely.geometry import shape

    return [round(v, 3) for v in shape(geom).bounds]
