"""Time series: follow a site over many dates, and say when each change came.

:func:`track_series` co-registers every date to the first (one global
shift each), runs :func:`changedet.diff` between consecutive dates (block
by block, so memory does not grow with the images), and follows each
structure across the steps, so that something that appeared at date *k*
and is still there later is **one** feature with ``first_seen`` date *k*;
something that later disappears gets its ``last_seen``.

A date in a file is not copied: it is named through GDAL's ``vrt://``
with its geotransform moved by its shift to the first date, so every
step's polygons lie on the first date's frame. Each step also removes
the residual shift between its two dates (shifts to the first date are
estimated independently, so two of them can disagree by half a pixel,
which a comparison of consecutive dates would otherwise see as change
along every edge).

Dates come from the caller, else from the file's metadata
(``ACQUISITIONDATE``-like tags, ``TIFFTAG_DATETIME``), else from a date in
the file name (``..._20090818.tif``, ``2015-09-26.tif``, ``1985.tif``): see
:func:`acquisition_date`.

Tracking rule (:func:`link_changes`): a polygon of step *k* belongs to a
structure followed so far when they overlap by at least
:data:`LINK_OVERLAP` of the smaller of the two. An *appeared* (or
*changed*) polygon that belongs to nothing starts a structure first seen at
date *k*; one that does, grows it. A *disappeared* polygon ends the
structures it belongs to (last seen at date *k - 1*), or, belonging to
nothing, is a structure present from the first date until date *k - 1*.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import math
import os
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import rasterio
import shapely
from affine import Affine
from rasterio.io import DatasetReader
from rasterio.warp import transform, transform_bounds, transform_geom
from rasterio.windows import Window
from shapely.geometry import mapping, shape
from shapely.geometry.base import BaseGeometry

from changedet import io
from changedet.coreg import Shift
from changedet.errors import BandMismatchError, InputError, UnreliableShiftWarning
from changedet.grid import Grid, overlap_window
from changedet.pairinfo import central_window, estimate_pair_shift
from changedet.pipeline import DiffSummary, _Features, diff
from changedet.vectorize import areas_m2

__all__ = [
    "SERIES_PROPERTY_KEYS",
    "LINK_OVERLAP",
    "parse_date",
    "date_from_name",
    "acquisition_date",
    "link_changes",
    "SeriesResult",
    "track_series",
]

log = logging.getLogger(__name__)

#: Property keys of every time-series feature, in order.
SERIES_PROPERTY_KEYS = ("change", "first_seen", "last_seen", "absent_before", "absent_after",
                        "area_m2", "score_max", "confidence", "detections")

#: Overlap (of the smaller polygon) above which two polygons are one structure.
LINK_OVERLAP = 0.3

ProgressCallback = Callable[[str, int, int], None]

_FULL = re.compile(r"(?<!\d)((?:19|20)\d\d)([-_:/.]?)(\d\d)\2(\d\d)(?!\d)")
_MONTH = re.compile(r"(?<!\d)((?:19|20)\d\d)[-_](\d\d)(?![-_:/.]?\d)")
_YEAR = re.compile(r"(?<![\d])((?:19|20)\d\d)(?!\d)")


#: A date as a user writes one: YYYY, YYYY-MM or YYYY-MM-DD (month and day
#: with or without a leading zero, - or / between; also YYYYMMDD), perhaps
#: with a time of day (ISO 8601's T, or a space: the time is dropped).
_GIVEN = re.compile(r"(?:(\d{4})(?:([-/])(\d{1,2})(?:\2(\d{1,2}))?)?|(\d{4})(\d{2})(\d{2}))"
                    r"(?:[T ]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?")


def _given_date(value: Any) -> str:
    # A date the user gave (not one found in a file name): all of it must be
    # a date, and a real one. Python dates and times, numpy's and pandas'
    # are taken too (their str() is ISO).
    text = value.isoformat() if isinstance(value, (_dt.date, _dt.datetime)) else str(value)
    m = _GIVEN.fullmatch(text.strip())
    if m is None:
        raise InputError(f"{text!r} is not a date (use YYYY-MM-DD, YYYY-MM or YYYY)")
    y, mo, d = m.group(1, 3, 4) if m.group(1) else m.group(5, 6, 7)
    try:
        if d is not None:
            return _dt.date(int(y), int(mo), int(d)).isoformat()
        if mo is not None:
            return _dt.date(int(y), int(mo), 1).isoformat()[:7]
    except ValueError as exc:
        raise InputError(f"{text!r} is not a date ({exc}); use YYYY-MM-DD, YYYY-MM or "
                         "YYYY") from None
    return y


def parse_date(text: str) -> str | None:
    """Find an ISO date (``YYYY-MM-DD``, ``YYYY-MM`` or ``YYYY``) in `text`.

    Full dates may be written ``20090818``, ``2009-08-18``, ``2009_08_18``
    or ``2009:08:18`` (TIFF); the last full date in `text` wins (file names
    put the date last), then a year-month, then a lone year.

    Examples
    --------
    >>> parse_date("m_4709963_se_14_1_20090818")
    '2009-08-18'
    >>> parse_date("2026:10:08 02:30:00"), parse_date("1985"), parse_date("tile_7")
    ('2026-10-08', '1985', None)
    """
    for m in reversed(list(_FULL.finditer(text))):
        y, mo, d = int(m.group(1)), int(m.group(3)), int(m.group(4))
        try:
            return _dt.date(y, mo, d).isoformat()
        except ValueError:
            continue
    for m in reversed(list(_MONTH.finditer(text))):
        if 1 <= int(m.group(2)) <= 12:
            return f"{m.group(1)}-{m.group(2)}"
    years = _YEAR.findall(text)
    return years[-1] if years else None


#: Product names whose first date is the acquisition's and a later one the
#: processing's: Landsat (LC08_L1TP_123032_20190501_20200830_02_T1) and
#: Sentinel-2 (S2A_MSIL2A_20190501T103031_N0212_R108_T32TQM_20190501T134214).
_FIRST_DATE_NAMES = re.compile(r"^(L[COTEM]0\d|S2[A-D])_", re.IGNORECASE)


def date_from_name(path: str | os.PathLike) -> str | None:
    """Return the date in a file's name (without folders or extension), if any.

    The last date in the name, except in Landsat and Sentinel-2 product
    names, where the first is the acquisition's.

    Examples
    --------
    >>> date_from_name("LC08_L1TP_123032_20190501_20200830_02_T1.tif")
    '2019-05-01'
    >>> date_from_name("site_v2_20190501_20200601.tif")
    '2020-06-01'
    """
    name = os.path.basename(os.fspath(path))
    stem = name.split(".", 1)[0] if "." in name else name
    if _FIRST_DATE_NAMES.match(stem):
        m = _FULL.search(stem)
        if m is not None:
            found = parse_date(m.group(0))
            if found:
                return found
    return parse_date(stem)


def acquisition_date(src: io.RasterSource, *, file_time: bool = True,
                     dataset: DatasetReader | None = None) -> str | None:
    """When an image was taken: its metadata tags, else its file name.

    With ``file_time=False`` the TIFF's own date and time (``TIFFTAG_DATETIME``,
    often when the file was written rather than the image taken) is not
    used. `dataset`, if given, is `src` already open: its tags are read
    there rather than opening `src` again.

    Returns an ISO date string, or None when neither says.
    """
    opened = contextlib.nullcontext(dataset) if dataset is not None else io.open_raster(src)
    with opened as ds:
        tags = io.date_tags(ds)
        if not file_time:
            tags.pop("TIFFTAG_DATETIME", None)
        for value in tags.values():
            found = parse_date(value)
            if found:
                return found
    if isinstance(src, (str, os.PathLike)):
        return date_from_name(src)
    return None


@dataclass
class _Track:
    geom: BaseGeometry
    change: str
    first: int                 # index of the first date it is seen at
    last: int | None = None    # index of the last date it is seen at (None: to the end)
    score_max: float = 0.0
    confidence: float = 0.0
    detections: int = 1


def _overlaps(a: BaseGeometry, b: BaseGeometry, fraction: float) -> bool:
    if not a.intersects(b):
        return False
    smaller = min(a.area, b.area)
    return smaller > 0 and a.intersection(b).area >= fraction * smaller


def link_changes(steps: Sequence[Sequence[tuple[BaseGeometry, dict[str, Any]]]],
                 n_dates: int, *, overlap: float = LINK_OVERLAP) -> list[_Track]:
    """Follow structures across consecutive change steps.

    Parameters
    ----------
    steps : sequence of sequences of (geometry, properties)
        ``steps[k - 1]`` are the changes from date ``k - 1`` to date ``k``
        (``properties["change"]`` is ``appeared``, ``disappeared`` or
        ``changed``), geometries on one CRS.
    n_dates : int
        Number of dates (``len(steps) + 1``).
    overlap : float, optional
        Fraction of the smaller polygon two must share to be one structure.

    Returns
    -------
    list of tracks
        Each with ``geom``, ``change`` (``appeared``, ``disappeared``,
        ``transient`` (appeared, then disappeared) or ``changed``),
        ``first`` and ``last`` date indexes, ``score_max``, ``confidence``
        and ``detections``.
    """
    if len(steps) != n_dates - 1:
        raise ValueError(f"{n_dates} dates need {n_dates - 1} steps, not {len(steps)}")
    tracks: list[_Track] = []
    for k, changes in enumerate(steps, start=1):
        live = [t for t in tracks if t.last is None and t.first < k]
        for geom, props in changes:
            change = props["change"]
            score = float(props.get("score_max") or 0.0)
            conf = float(props.get("confidence") or 0.0)
            hits = [t for t in live if _overlaps(t.geom, geom, overlap)]
            if change == "disappeared":
                if not hits:
                    tracks.append(_Track(geom, "disappeared", 0, k - 1, score, conf))
                for t in hits:
                    t.last = k - 1
                    t.change = "transient" if t.first > 0 else "disappeared"
                    t.score_max, t.detections = max(t.score_max, score), t.detections + 1
                continue
            if hits:
                t = hits[0]
                t.geom = shapely.union(t.geom, geom)
                t.score_max, t.detections = max(t.score_max, score), t.detections + 1
                t.confidence = max(t.confidence, conf)
            else:
                tracks.append(_Track(geom, change, k, None, score, conf))
    return tracks


@dataclass
class SeriesResult(_Features):
    """What :func:`track_series` found.

    Attributes
    ----------
    dates : list of str
        The dates, in order (ISO strings).
    sources : list of str
        The inputs, in the same order.
    grid : Grid
        The common grid (the first date's, cropped to what all dates cover).
    shifts : list of Shift
        Each date's displacement relative to the first (the first: zero).
    geometries : list of shapely geometries
        One per structure, on the grid's CRS.
    properties : list of dict
        Keys :data:`SERIES_PROPERTY_KEYS`.
    steps : list of dict
        Per consecutive pair: dates and counts of what was found.
    metadata : dict
        Everything needed to reproduce the run.
    """

    dates: list[str]
    sources: list[str]
    grid: Grid
    shifts: list[Shift]
    geometries: list[BaseGeometry] = field(default_factory=list)
    properties: list[dict[str, Any]] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    def _inputs(self) -> list[str]:
        return list(self.sources)


def _resolve_dates(sources: Sequence[io.RasterSource],
                   dates: Sequence[str] | None) -> list[str]:
    if dates is not None:
        if len(dates) != len(sources):
            raise InputError(f"{len(sources)} images but {len(dates)} dates; give one date "
                             "per image, in the same order")
        return [_given_date(d) for d in dates]
    out = []
    for src in sources:
        d = acquisition_date(src)
        if d is None:
            raise InputError(
                f"{io.source_label(src)}: no date in its metadata or its name; give every "
                "image's date with --dates (e.g. --dates 2019-05-01,2020-06-12,...) or put "
                "YYYYMMDD in the file names")
        out.append(d)
    return out


def _intersect(a: Window, b: Window) -> Window:
    c0, r0 = max(a.col_off, b.col_off), max(a.row_off, b.row_off)
    c1 = min(a.col_off + a.width, b.col_off + b.width)
    r1 = min(a.row_off + a.height, b.row_off + b.height)
    if c1 - c0 < 16 or r1 - r0 < 16:
        from changedet.errors import NoOverlapError

        raise NoOverlapError("the images share too little ground (all dates together)")
    return Window(c0, r0, c1 - c0, r1 - r0)


#: GDAL's ``vrt://`` takes a geotransform (``a_gt``) from GDAL 3.8 on.
_VRT_GT = tuple(int(v) for v in rasterio.__gdal_version__.split(".")[:2]) >= (3, 8)


def _gdal_name(src: io.RasterSource) -> str | None:
    # A name every block thread (or Dask worker) can open the date by, or
    # None for what lives in this process only, or cannot take vrt:// options.
    if isinstance(src, (str, os.PathLike)):
        name = os.fspath(src)
    elif isinstance(src, DatasetReader):
        name = src.name
    else:
        return None
    if not _VRT_GT or "?" in name or name.startswith(("vrt://", "/vsimem/")):
        return None
    return name


def _moved(own: Grid, grid: Grid, shift: Shift) -> Affine:
    """Move a date's transform so that its content lies where the first date's does.

    `shift` is where the date's content is, in pixels of `grid`, relative to
    the first date.
    """
    east, north = shift.to_map(grid)
    vx, vy = -east, -north
    if own.crs != grid.crs and (vx or vy):
        # A move of a few pixels is a translation in the date's CRS too.
        cx, cy = grid.transform @ (grid.width / 2, grid.height / 2)
        xs, ys = transform(grid.crs, own.crs, [cx, cx + vx], [cy, cy + vy])
        vx, vy = xs[1] - xs[0], ys[1] - ys[0]
    return Affine.translation(vx, vy) @ own.transform


def _registered(src: io.RasterSource, label: str, own: Grid, grid: Grid,
                shift: Shift | None, window: Window | None,
                ) -> str | Callable[[], io.Raster]:
    """Put a date on the first date's frame, as a name or as a reader for later.

    A file is named through GDAL's ``vrt://`` with its geotransform moved by
    the date's shift (no pixel is copied or resampled here: the blocks read
    it like any input). Anything else is read onto `grid` in memory when its
    step comes (a `window` of the first date, or warped by `shift`; None
    leaves it where it is). Every
    data band is kept: the step picks the bands to compare, by the file's
    numbers, on both sides.
    """
    name = _gdal_name(src)
    if name is not None and grid.crs is not None and own.crs is not None:
        if shift is None:
            return name
        # Every band stays (the step picks them), so an alpha band still
        # masks: vrt://'s own band selection drops it.
        m = _moved(own, grid, shift)
        return f"vrt://{name}?a_gt=" + ",".join(repr(float(v)) for v in
                                                (m.c, m.a, m.b, m.f, m.d, m.e))

    def load() -> io.Raster:
        with io.open_raster(src) as ds:
            if window is not None:
                data, invalid = io.read_window(ds, window)
            else:
                offset = (0.0, 0.0) if shift is None else (shift.x, shift.y)
                data, invalid = io.read_warped(ds, grid, offset_px=offset)
        return io.Raster(data, grid.transform, grid.crs, mask=invalid, name=label)

    return load


def _run_step(before: io.RasterSource, after: io.RasterSource, grid: Grid,
              footprint: BaseGeometry | None, progress: ProgressCallback, coreg: str,
              options: dict[str, Any]) -> DiffSummary:
    """Find the changes between two registered dates, block by block.

    The summary's polygons are on `grid`'s CRS, within `footprint`.
    """
    # The series orders its dates itself (and may have been told them).
    s = diff(before, after, collect=True, coreg=coreg, progress=progress, check_dates=False,
             **options)
    geoms, props = s.geometries, s.properties
    bounds = s.grid.bounds
    if geoms and s.grid.crs != grid.crs:
        geoms = [shape(g) for g in transform_geom(s.grid.crs, grid.crs,
                                                  [mapping(g) for g in geoms])]
        bounds = transform_bounds(s.grid.crs, grid.crs, *bounds, densify_pts=21)
    if geoms and footprint is not None and not footprint.covers(shapely.box(*bounds)):
        # The pair shares more ground than the whole series: keep the common part.
        clipped = shapely.intersection(geoms, footprint)
        keep = [i for i, g in enumerate(clipped) if g.area > 0]
        geoms, props = [clipped[i] for i in keep], [props[i] for i in keep]
    return replace(s, geometries=list(geoms), properties=list(props))


def track_series(sources: Sequence[io.RasterSource], *,
                 dates: Sequence[str] | None = None,
                 bands: Sequence[int] | None = None,
                 coreg: str = "global",
                 overlap: float = LINK_OVERLAP,
                 progress: ProgressCallback | None = None,
                 **detect_options: Any) -> SeriesResult:
    """Find changes over a series of dates and when each structure was seen.

    Parameters
    ----------
    sources : sequence of path, dataset or Raster
        Two or more images of one place. They are put in date order.
    dates : sequence of str, optional
        One ISO date per source, in the same order (default: from each
        file's metadata or name, see :func:`acquisition_date`).
    bands : sequence of int, optional
        1-based bands to use from every image (default all; counts must
        then match).
    coreg : {"global", "none"}, optional
        Co-register every date to the first with one global shift, and each
        consecutive pair to each other; or neither.
    overlap : float, optional
        Linking overlap, see :func:`link_changes`.
    progress : callable, optional
        Called as ``progress(stage, done, total)``; `stage` names the step.
    **detect_options
        Passed to :func:`changedet.diff` for every consecutive pair
        (``min_area``, ``threshold``, ``normalise``, ``block_size``,
        ``threads``, ``scheduler``, ...).

    Returns
    -------
    SeriesResult

    Raises
    ------
    InputError
        Fewer than two images, a date missing or repeated.
    BandMismatchError
        Band counts differ and `bands` was not given.
    NoOverlapError
        The images do not all share ground.

    Warns
    -----
    UnreliableShiftWarning
        A date could not be co-registered to the first; it is used as is.

    Notes
    -----
    Memory: what :func:`changedet.diff` needs for one pair (bounded by the
    block size, not the images), plus the polygons. Dates given as files
    (paths, or datasets opened from files) are read block by block through
    GDAL's ``vrt://`` (GDAL 3.8 or later); in-memory rasters and datasets,
    files whose names hold a ``?``, and images without georeferencing are
    read onto the common grid in memory instead, two dates at a time.
    Each date is also read once for its shift (a central crop of at most
    1024 px). Where a pair of dates shares more ground than all the dates
    do, its polygons are clipped to the common ground.
    """
    if coreg not in ("global", "none"):
        raise ValueError(f"coreg must be one of ('global', 'none'), not {coreg!r}")
    for key in ("roi", "bbox", "coreg", "progress"):
        if key in detect_options:
            raise TypeError(f"track_series does not take {key!r} as a detect option")
    if len(sources) < 2:
        raise InputError("a time series needs at least two images")
    found = _resolve_dates(sources, dates)
    order = sorted(range(len(sources)), key=lambda i: found[i])
    srcs = [sources[i] for i in order]
    found = [found[i] for i in order]
    dupes = sorted({d for d in found if found.count(d) > 1})
    if dupes:
        raise InputError(f"two images have the same date ({', '.join(dupes)}); give distinct "
                         "dates with --dates")
    labels = [io.source_label(s) for s in srcs]
    n = len(srcs)
    steps_total = 2 * n - 1

    def report(stage: str, done: int, total: int) -> None:
        log.info("%s", stage)
        if progress is not None:
            progress(stage, done, total)

    # The common grid: the first date's, cropped to what every date covers.
    with io.open_raster(srcs[0]) as ref:
        rinfo = io.image_info(ref, labels[0])
        window = Window(0, 0, rinfo.grid.width, rinfo.grid.height)
        infos = [rinfo]
        for src, label in zip(srcs[1:], labels[1:], strict=True):
            with io.open_raster(src) as ds:
                info = io.image_info(ds, label)
                infos.append(info)
                window = _intersect(window, overlap_window(
                    rinfo.grid, info.grid.bounds, info.grid.crs, names=(rinfo.name, info.name)))
        counts = [info.count for info in infos]
        if bands is None and len(set(counts)) > 1:
            raise BandMismatchError(
                f"the images have different band counts ({', '.join(map(str, counts))}); "
                "choose bands with --bands (e.g. --bands 1,2,3)")
        grid = rinfo.grid.window_grid(window)
        crop = grid.window_grid(central_window(Window(0, 0, grid.width, grid.height)))
        use = list(bands) if bands is not None else None

        shifts = [Shift(reliability=1.0, reliable=True)]
        registered: list[Any] = [None] * n
        registered[0] = _registered(srcs[0], labels[0], rinfo.grid, grid, None, window)
        report(f"{found[0]}: read", 1, steps_total)
        for k in range(1, n):
            with io.open_raster(srcs[k]) as ds:
                shift = Shift()
                if coreg == "global":
                    report(f"{found[k]}: co-registering to {found[0]}", 2 * k, steps_total)
                    shift = estimate_pair_shift(ref, ds, crop, bands=use,
                                                after_grid=infos[k].grid)
                    if not shift.reliable:
                        warnings.warn(
                            f"{labels[k]} could not be co-registered to {labels[0]} "
                            f"(peak-to-sidelobe ratio {shift.psr:.1f}); using it as it is",
                            UnreliableShiftWarning, stacklevel=2)
                registered[k] = _registered(srcs[k], labels[k], infos[k].grid, grid,
                                            shift if shift.reliable else None, None)
            shifts.append(shift)
    footprint = shapely.box(*grid.bounds) if grid.crs is not None else None
    results: list[DiffSummary] = []
    for k in range(1, n):
        step = f"{found[k - 1]} → {found[k]}"

        def inner(stage: str, done: int, total: int, _s: str = step, _k: int = k) -> None:
            report(f"{_s}: {stage}", 2 * _k + 1 if stage == "done" else 2 * _k, steps_total)

        for i in (k - 1, k):
            if callable(registered[i]):
                registered[i] = registered[i]()
        results.append(_run_step(registered[k - 1], registered[k], grid, footprint, inner,
                                 coreg, {**detect_options, "bands": use}))
        registered[k - 1] = None  # an in-memory date is held only while a step needs it
    tracks = link_changes([list(zip(r.geometries, r.properties, strict=True)) for r in results], n,
                          overlap=overlap)
    tracks.sort(key=lambda t: (t.first, -1 if t.last is None else t.last,
                               -t.geom.area))
    geoms = [t.geom for t in tracks]
    areas = areas_m2(geoms, grid)
    props = []
    for t, area in zip(tracks, areas, strict=True):
        props.append({
            "change": t.change,
            "first_seen": found[t.first],
            "last_seen": found[n - 1 if t.last is None else t.last],
            "absent_before": found[t.first - 1] if t.first > 0 else None,
            "absent_after": found[t.last + 1] if t.last is not None else None,
            "area_m2": None if math.isnan(area) else round(float(area), 2),
            "score_max": round(t.score_max, 3),
            "confidence": round(t.confidence, 3),
            "detections": t.detections,
        })
    steps = []
    for k, r in enumerate(results, start=1):
        classes = [p["change"] for p in r.properties]
        steps.append({"from": found[k - 1], "to": found[k],
                      "changed_percent": round(100 * r.changed_pixels / max(r.valid_pixels, 1),
                                               2),
                      "appeared": classes.count("appeared"),
                      "disappeared": classes.count("disappeared"),
                      "changed": classes.count("changed"),
                      "threshold": r.metadata.get("threshold"),
                      "normalisation": r.metadata.get("normalisation")})
    from changedet import __version__

    metadata = {
        "version": __version__,
        "series": [{"date": d, "source": s, **sh.to_dict(grid)}
                   for d, s, sh in zip(found, labels, shifts, strict=True)],
        "coordinates": "lon/lat WGS84" if grid.crs is not None else "pixels (col, row)",
        "grid": grid.to_dict(),
        "coregistration": {"mode": coreg, "reference": found[0]},
        "linking": {"overlap": overlap},
        "steps": steps,
        "options": {"bands": list(bands) if bands else None,
                    **{k: v for k, v in detect_options.items()
                       if isinstance(v, (int, float, str, type(None)))}},
    }
    report("done", steps_total, steps_total)
    return SeriesResult(dates=found, sources=labels, grid=grid, shifts=shifts,
                        geometries=geoms, properties=props, steps=steps, metadata=metadata)
