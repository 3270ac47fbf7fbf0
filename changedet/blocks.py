"""Block-wise change detection: the "apply locally" half of the pipeline.

The global parameters of a run (shift, radiometric fit, noise model,
threshold, band statistics) are estimated once and frozen in a
:class:`Plan`. The processing grid is then cut into blocks, each read with a
halo, and :func:`process_window` turns a block into change objects.

Everything a change object becomes (hysteresis, delineation, clean-up,
direction, polygon, attributes) depends only on its own pixels and those
within a few pixels of it. Change pixels are therefore *grouped*: pixels
above the lower threshold, dilated by :attr:`Plan.link_radius`, form groups
such that two objects that could influence each other always share a group.
A group that stays clear of the window's inner edges (the edges that are not
edges of the processing grid) is *complete*: every result inside it is
exactly what processing the whole raster at once would give. Each complete
group is emitted by exactly one block, the one whose core holds the group's
first pixel in raster order (its *anchor*); a group that is too large for
its anchor block's halo is reported as incomplete and is processed again in
a window grown to hold it (see :mod:`changedet.runner`). The result is the
same for any block size, on one thread, several, or a Dask cluster.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from affine import Affine
from numpy.typing import NDArray
from scipy import ndimage
from shapely.geometry.base import BaseGeometry

from changedet.cleanup import CONNECTIVITY, clean_mask, delineate, label_components
from changedet.direction import CLASS_NAMES, classify_direction
from changedet.features import BandStats
from changedet.grid import Grid
from changedet.labelstats import first_pixel
from changedet.radiometry import NormalisationFit
from changedet.scores import ScoreParams, score_change
from changedet.thresholds import Threshold, seeded_components, threshold_masks
from changedet.vectorize import areas_m2, label_stats, polygons_from_labels, simplify_polygons

__all__ = [
    "Plan",
    "Edges",
    "ChangeObject",
    "WindowResult",
    "Selector",
    "is_complete",
    "process_window",
]

#: Pixels kept clear between a complete group and a window's inner edge.
SAFE_MARGIN = 2

#: Reach, in pixels beyond an object, of the direction test's rings
#: (edge band, gap, ground band) plus the Sobel kernel.
_DIRECTION_REACH = 6


@dataclass(frozen=True)
class Plan:
    """Everything fixed for a run before its blocks are processed.

    Attributes
    ----------
    grid : Grid
        The processing grid: the before image's grid cropped to the overlap
        (and the region of interest).
    bands : tuple of int or None
        1-based bands read from both images (None: all data bands).
    pixel_transform : Affine or None
        The alignment of the after image in `grid` pixel coordinates (see
        :func:`changedet.io.read_warped`); None when none is applied.
    resampling : str
        GDAL resampling kernel name for the after image.
    fit : RadiometricFit or HistogramFit
        Radiometric normalisation of the after image.
    score : ScoreParams
        The change score's fitted parameters (no-change model, nuisance
        models); :func:`changedet.scores.score_change` applies them.
    threshold : Threshold
        Hysteresis thresholds on the score.
    tolerance : int
        Displacement, in pixels, that the score tolerates.
    stats_before, stats_after : BandStats
        Global band statistics (the after image's after normalisation).
    gradient_floor : float
        Global floor of ground edge strength for the direction test.
    min_area_m2, pixel_area_m2 : float
        Minimum mapping unit (also the largest hole filled) and area of a
        pixel.
    open_radius, close_radius : int
        Morphological clean-up radii in pixels.
    simplify : float
        Simplification tolerance in CRS units (0: pixel edges).
    roi : dict or None
        Region of interest on the grid's CRS.
    """

    grid: Grid
    bands: tuple[int, ...] | None
    pixel_transform: Affine | None
    resampling: str
    fit: NormalisationFit
    score: ScoreParams
    threshold: Threshold
    tolerance: int
    stats_before: BandStats
    stats_after: BandStats
    gradient_floor: float
    min_area_m2: float
    pixel_area_m2: float
    open_radius: int = 1
    close_radius: int = 1
    simplify: float = 0.0
    roi: dict[str, Any] | None = None

    @property
    def link_radius(self) -> int:
        """Dilation radius that groups pixels whose objects can interact."""
        return max(self.open_radius + self.close_radius, _DIRECTION_REACH + 1) + 1

    @property
    def halo(self) -> int:
        """Smallest useful halo: the score's reach plus a group's dilation."""
        return max(self.tolerance, self.score.radius) + 2 + self.link_radius + SAFE_MARGIN


@dataclass(frozen=True)
class Edges:
    """Which sides of a window are edges of the processing grid itself."""

    top: bool = True
    left: bool = True
    bottom: bool = True
    right: bool = True


@dataclass
class ChangeObject:
    """One change polygon with its pixels.

    Attributes
    ----------
    anchor : (int, int)
        Global (row, col) of its first pixel in raster order: a stable,
        block-independent key for ordering.
    row_off, col_off : int
        Global position of `mask`'s upper-left pixel.
    mask : (h, w) ndarray of bool
        The object's pixels within its bounding box.
    change : int
        1 appeared, 2 disappeared, 3 changed.
    properties : dict
        GeoJSON properties.
    geometry : shapely geometry
        Outline on the grid's CRS.
    """

    anchor: tuple[int, int]
    row_off: int
    col_off: int
    mask: NDArray[np.bool_]
    change: int
    properties: dict[str, Any]
    geometry: BaseGeometry


@dataclass
class WindowResult:
    """What :func:`process_window` found in a window.

    Attributes
    ----------
    score : (h, w) ndarray of float32
        Change score of the window (0 where invalid).
    objects : list of ChangeObject
        Objects of the complete groups the selector accepted, by anchor.
    incomplete : (n, 6) ndarray of int64
        Groups that touch an inner edge: the row and col of their first seed
        (of their first pixel if they hold none), and global bounding box
        row0, col0, row1, col1 (end exclusive). The block whose core holds
        that pixel defers the group: a seedless candidate reaching a
        window's edge can join a seeded group to one whose first pixel lies
        in another block's core, where that candidate, seen whole, is
        nothing; the seed's block still answers for it.
    """

    score: NDArray[np.float32]
    objects: list[ChangeObject] = field(default_factory=list)
    incomplete: NDArray[np.int64] = field(
        default_factory=lambda: np.zeros((0, 6), np.int64))


#: Chooses, among complete groups, those to emit: called with their global
#: anchors (n, 2) and bounding boxes (n, 4), returns a boolean (n,) array.
Selector = Callable[[NDArray[np.int64], NDArray[np.int64]], NDArray[np.bool_]]


def is_complete(bbox: NDArray[np.int64], edges: Edges, shape: tuple[int, int],
                ) -> NDArray[np.bool_]:
    """Which groups a window holds whole: clear of its inner edges by `SAFE_MARGIN`.

    Parameters
    ----------
    bbox : (n, 4) ndarray of int
        ``row0, col0, row1, col1`` of each group, in the window's pixels.
    edges : Edges
        Which sides of the window are the processing grid's own edges.
    shape : (h, w)
        The window's size.
    """
    h, w, m = shape[0], shape[1], SAFE_MARGIN
    return ((edges.top | (bbox[:, 0] >= m)) & (edges.left | (bbox[:, 1] >= m))
            & (edges.bottom | (bbox[:, 2] <= h - m)) & (edges.right | (bbox[:, 3] <= w - m)))


def process_window(before: NDArray[np.float32], after: NDArray[np.float32],
                   invalid: NDArray[np.bool_], plan: Plan, *, row_off: int, col_off: int,
                   edges: Edges = Edges(), select: Selector | None = None) -> WindowResult:
    """Detect change objects in one window of the processing grid.

    Parameters
    ----------
    before, after : (bands, h, w) ndarray of float32
        The window of both images; `after` aligned and normalised.
    invalid : (h, w) ndarray of bool
        True where either image is invalid or outside the region of interest.
    plan : Plan
        The run's global parameters.
    row_off, col_off : int
        Position of the window in the processing grid.
    edges : Edges, optional
        Which sides of the window are the processing grid's own edges
        (default: all, i.e. the window is the whole grid).
    select : callable, optional
        Which complete groups to emit (default: all).

    Returns
    -------
    WindowResult

    Notes
    -----
    Memory: about six float32 copies of one band of the window, plus the
    score's two whitened copies of the stack.
    """
    h, w = invalid.shape
    score = score_change(before, after, plan.score)
    score[invalid] = 0
    cand, seeds = threshold_masks(score, plan.threshold, invalid)
    if not cand.any():
        return WindowResult(score)

    m = SAFE_MARGIN
    # Only candidate components that can become change are grouped: those
    # holding a seed, and those touching an inner edge (their seed may lie
    # beyond it). Grouping every seedless speck of noise would join them
    # all into one group spanning the image.
    clabels, seeded = seeded_components(cand, seeds)
    band = np.zeros((h, w), bool)
    if not edges.top:
        band[:m] = True
    if not edges.bottom:
        band[h - m:] = True
    if not edges.left:
        band[:, :m] = True
    if not edges.right:
        band[:, w - m:] = True
    seeded[np.unique(clabels[band])] = True
    seeded[0] = False
    live = seeded[clabels]
    if not live.any():
        return WindowResult(score)
    k = plan.link_radius
    grouped = ndimage.maximum_filter(live.view(np.uint8), size=2 * k + 1) > 0
    glabels, ng = ndimage.label(grouped, structure=CONNECTIVITY)
    ids = np.arange(1, ng + 1)
    slices = ndimage.find_objects(glabels)
    bbox = np.array([[s[0].start, s[1].start, s[0].stop, s[1].stop] for s in slices],
                    np.int64).reshape(-1, 4)
    first = first_pixel(glabels, ids)
    anchors = np.stack([first // w, first % w], axis=1)
    complete = is_complete(bbox, edges, (h, w))
    offset = np.array([row_off, col_off], np.int64)
    g_anchor = anchors + offset
    g_bbox = bbox + np.concatenate([offset, offset])
    seed_first = first_pixel(np.where(seeds, glabels, 0), ids)
    has_seed = seed_first >= 0
    emit = complete & has_seed
    if select is not None and emit.any():
        chosen = np.zeros(ng, bool)
        chosen[emit] = select(g_anchor[emit], g_bbox[emit])
        emit = chosen
    key = np.where(has_seed[:, None],
                   np.stack([seed_first // w, seed_first % w], axis=1) + offset, g_anchor)
    incomplete = np.concatenate([key, g_bbox], axis=1)[~complete]
    if not emit.any():
        return WindowResult(score, [], incomplete)

    lut = np.concatenate([[False], emit])
    # Nothing below reaches further than `k` past a group: work in the box
    # that holds the emitted groups with that margin (a block with a few
    # structures then costs a few structures' worth), the same result as on
    # the whole window.
    r0, c0 = np.maximum(bbox[emit, :2].min(axis=0) - k - m, 0)
    r1, c1 = np.minimum(bbox[emit, 2:].max(axis=0) + k + m, (h, w))
    box = np.s_[r0:r1, c0:c1]
    # In a complete group every candidate component holds a seed, so the
    # hysteresis result there is simply the live candidates.
    kept = delineate(score[box], live[box] & lut[glabels[box]], floor=plan.threshold.low)
    cleaned = clean_mask(kept, pixel_area_m2=plan.pixel_area_m2, min_area_m2=plan.min_area_m2,
                         open_radius=plan.open_radius, close_radius=plan.close_radius,
                         invalid=invalid[box])
    labels, n = label_components(cleaned)
    objects = _objects(before[(slice(None),) + box], after[(slice(None),) + box], invalid[box],
                       score[box], labels, n, plan, row_off + int(r0), col_off + int(c0))
    return WindowResult(score, objects, incomplete)


def _objects(before: NDArray[np.float32], after: NDArray[np.float32],
             invalid: NDArray[np.bool_], score: NDArray[np.float32],
             labels: NDArray[np.int32], n: int, plan: Plan, row_off: int, col_off: int,
             ) -> list[ChangeObject]:
    if n == 0:
        return []
    direction = classify_direction(before, after, labels, n, invalid=invalid,
                                   stats_before=plan.stats_before,
                                   stats_after=plan.stats_after,
                                   gradient_floor=plan.gradient_floor)
    transform = plan.grid.transform @ Affine.translation(col_off, row_off)
    geoms = polygons_from_labels(labels, n, transform)
    if plan.simplify > 0:
        geoms = simplify_polygons(geoms, plan.simplify)
    areas = areas_m2(geoms, plan.grid)
    stats = label_stats(score, labels, n)
    h, w = labels.shape
    first = first_pixel(labels, np.arange(1, n + 1))
    out = []
    for i, sl in enumerate(ndimage.find_objects(labels)):
        cls = int(direction.classes[i])
        props = {
            "change": CLASS_NAMES[cls],
            "area_m2": None if np.isnan(areas[i]) else round(float(areas[i]), 2),
            "pixels": int(stats["pixels"][i]),
            "score_mean": round(float(stats["score_mean"][i]), 3),
            "score_max": round(float(stats["score_max"][i]), 3),
            "confidence": round(float(direction.confidence[i]), 3),
        }
        out.append(ChangeObject(
            anchor=(int(first[i] // w) + row_off, int(first[i] % w) + col_off),
            row_off=sl[0].start + row_off, col_off=sl[1].start + col_off,
            mask=labels[sl] == i + 1, change=cls, properties=props, geometry=geoms[i]))
    out.sort(key=lambda o: o.anchor)
    return out
