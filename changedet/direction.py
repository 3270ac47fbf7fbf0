"""Telling appeared from disappeared.

A change polygon has the outline of the object that changed. The date that
holds the object also holds its outline as an edge against the ground
around it; the date without it shows only the ground's own texture along
that line. In each date, the edge strength along the polygon's boundary is
compared with the texture of the ground just outside it: an outline that
stands out in the after image only is an object that appeared, in the
before image only one that disappeared, and in both one that changed in
place (a new roof, another material). The test is relative to each date's
own local texture, so it does not depend on how bright or contrasted either
image is.

A second test looks inside the polygon: the date whose surface there
stands apart from the ground around it (median against median, in units of
the ground's spread) holds the object. Outlines are swayed by moving
shadows and blur, surfaces much less, so where the surfaces give a clear
answer (one date :data:`REGION_RATIO` times more distinct than the other)
it decides.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from changedet.features import BandStats, gradient_magnitude
from changedet.labelstats import LabelGroups, labelled_median

__all__ = [
    "NODATA_CLASS",
    "REGION_RATIO",
    "CLASS_NAMES",
    "Direction",
    "classify_direction",
    "default_gradient_floor",
    "class_raster",
]

#: Class raster values.
CLASS_NAMES: dict[int, str] = {0: "none", 1: "appeared", 2: "disappeared", 3: "changed"}
NODATA_CLASS = 255

#: An outline "is there" when its edges are this many times stronger than
#: the texture of the ground around it.
EDGE_PRESENT = 2.0


@dataclass(frozen=True)
class Direction:
    """Direction of each labelled change.

    Attributes
    ----------
    classes : (n,) ndarray of uint8
        1 appeared, 2 disappeared, 3 changed, for labels 1..n.
    confidence : (n,) ndarray of float32
        0 (the dates' outlines are alike) to 1 (one date has no outline).
    contrast_before, contrast_after : (n,) ndarray of float32
        Edge strength along each outline relative to the local texture.
    """

    classes: NDArray[np.uint8]
    confidence: NDArray[np.float32]
    contrast_before: NDArray[np.float32]
    contrast_after: NDArray[np.float32]


def _spread(labels: NDArray[np.int32], size: int) -> NDArray[np.int32]:
    # Each object's id carried `size // 2` pixels outwards (grey dilation).
    return ndimage.grey_dilation(labels, size=(size, size)) if size > 1 else labels


def _rings(labels: NDArray[np.int32], width: int, gap: int,
           ) -> tuple[NDArray[np.int32], NDArray[np.int32]]:
    # The band `width` pixels either side of each outline, and the band of
    # ground beyond it (after a `gap`), both labelled with the object's id.
    outside = _spread(labels, 2 * width + 1)
    inside = ndimage.grey_erosion(labels, size=(2 * width + 1,) * 2)
    edge = np.where(labels > 0, np.where(inside != labels, labels, 0), outside)
    near = _spread(labels, 2 * (width + gap) + 1)
    far = _spread(labels, 2 * (width + gap + 2 * width) + 1)
    ground = np.where((near == 0) & (far > 0), far, 0)
    return edge.astype(np.int32), ground.astype(np.int32)


#: A polygon's surface stands apart from its surroundings this many times
#: more clearly in one date than in the other: that date holds the object.
REGION_RATIO = 3.0


def _cores(labels: NDArray[np.int32]) -> NDArray[np.int32]:
    # Each polygon's core: its pixels 2 px from its outline, or the whole
    # polygon when it is too thin to have any.
    core = np.where(ndimage.grey_erosion(labels, size=(5, 5)) == labels, labels, 0)
    has_core = np.bincount(core.ravel(), minlength=int(labels.max()) + 1) > 0
    has_core[0] = True
    return np.where(has_core[labels], core, labels)


def _region_contrast(data: NDArray[np.floating], core: NDArray[np.int32],
                     ground: NDArray[np.int32], idx: NDArray[np.intp],
                     stats: BandStats | None = None) -> NDArray[np.float64]:
    # Distance between the median of each polygon's core and the median of
    # the ground around it, in units of that ground's spread (per band, then
    # the root mean square over bands). The spread is floored at 1 % of the
    # band's typical magnitude: from the global `stats` when given, so the
    # answer does not depend on the extent of the arrays.
    in_core, in_ground = core > 0, ground > 0
    core_ids, ground_ids = core[in_core], ground[in_ground]
    # Each band's medians are over the same pixels: group them once.
    cores, grounds = LabelGroups(core_ids, idx), LabelGroups(ground_ids, idx)
    total = np.zeros(idx.size)
    for i, band in enumerate(data):
        band = np.asarray(band, np.float32)
        inner = np.nan_to_num(cores.median(band[in_core]))
        ring = band[in_ground]
        outer = np.nan_to_num(grounds.median(ring))
        spread = np.nan_to_num(grounds.median(np.abs(ring - outer[ground_ids - 1])))
        typical = abs(stats.mean[i]) if stats is not None else float(np.median(np.abs(band)))
        floor = 0.01 * max(typical, 1e-6)
        total += ((inner - outer) / (1.4826 * spread + floor)) ** 2
    return np.sqrt(total / max(len(data), 1))


def classify_direction(before: NDArray[np.floating], after: NDArray[np.floating],
                       labels: NDArray[np.int32], n: int, *,
                       invalid: NDArray[np.bool_] | None = None, width: int = 1,
                       present: float = EDGE_PRESENT,
                       stats_before: BandStats | None = None,
                       stats_after: BandStats | None = None,
                       gradient_floor: float | None = None) -> Direction:
    """Classify labelled changes as appeared, disappeared or changed.

    Parameters
    ----------
    before, after : (bands, H, W) ndarray
        Co-registered images.
    labels : (H, W) ndarray of int32
        Change objects labelled 1..n (0 = no change).
    n : int
        Number of labels.
    invalid : (H, W) ndarray of bool, optional
    width : int, optional
        Half-width in pixels of the band along each outline.
    present : float, optional
        Outline-to-ground edge ratio above which an outline is present.
    stats_before, stats_after : BandStats, optional
        Global band statistics for the edge images (default: the arrays').
    gradient_floor : float, optional
        Smallest ground edge strength divided by (default: 5 % of the
        median edge strength of `before`, plus 1e-3). Global values make the
        result independent of the extent of the arrays given.

    Returns
    -------
    Direction
        An outline (or a distinct surface) present only after: appeared
        (1); only before: disappeared (2); in both or in neither: changed
        (3).
    """
    if n == 0:
        empty = np.zeros(0, np.float32)
        return Direction(np.zeros(0, np.uint8), empty, empty, empty)
    gb = gradient_magnitude(before, invalid, stats=stats_before)
    ga = gradient_magnitude(after, invalid, stats=stats_after)
    edge, ground = _rings(labels, width, gap=2)
    if invalid is not None:
        edge[invalid] = 0
        ground[invalid] = 0
    idx = np.arange(1, n + 1)
    floor = gradient_floor if gradient_floor is not None else default_gradient_floor(gb)

    def contrast(g: NDArray[np.float32]) -> NDArray[np.float64]:
        # An object with no edge pixel left (all invalid, or cut by the
        # window) has no mean there: 0, without numpy's 0 / 0 warning.
        with np.errstate(invalid="ignore", divide="ignore"):
            on = np.nan_to_num(np.asarray(ndimage.mean(g, edge, idx), np.float64))
        off = np.nan_to_num(labelled_median(g, ground, idx))
        return on / np.maximum(off, floor)

    cb, ca = contrast(gb), contrast(ga)
    in_b, in_a = cb > present, ca > present
    classes = np.full(n, 3, np.uint8)
    classes[in_a & ~in_b] = 1
    classes[in_b & ~in_a] = 2
    # Confidence: how clearly one date has the outline and the other not.
    lr = np.abs(np.log(np.maximum(ca, 1e-3) / np.maximum(cb, 1e-3)))
    # Second opinion, which a moving shadow or a blurred outline does not
    # sway: the date whose surface inside the polygon stands apart from the
    # ground around it holds the object. Where it is clear, it decides.
    core = _cores(labels)
    rb = _region_contrast(before, core, ground, idx, stats_before)
    ra = _region_contrast(after, core, ground, idx, stats_after)
    rr = np.log(np.maximum(ra, 1e-3) / np.maximum(rb, 1e-3))
    clear = (np.abs(rr) > np.log(REGION_RATIO)) & (np.maximum(ra, rb) > present)
    classes[clear & (rr > 0)] = 1
    classes[clear & (rr < 0)] = 2
    lr = np.where(clear, np.maximum(lr, np.abs(rr)), lr)
    confidence = np.where(classes == 3, 0.0, np.clip(lr / np.log(4.0), 0, 1))
    return Direction(classes, confidence.astype(np.float32), cb.astype(np.float32),
                     ca.astype(np.float32))


def default_gradient_floor(gradient: NDArray[np.float32]) -> float:
    """5 % of the median non-zero edge strength, plus 1e-3."""
    positive = gradient[gradient > 0]
    return 1e-3 + 0.05 * float(np.median(positive)) if positive.size else 1e-3


def class_raster(labels: NDArray[np.int32], classes: NDArray[np.uint8],
                 invalid: NDArray[np.bool_] | None = None) -> NDArray[np.uint8]:
    """Per-pixel classes: 0 none, 1 appeared, 2 disappeared, 3 changed, 255 nodata."""
    lut = np.concatenate([[0], classes]).astype(np.uint8)
    out = lut[labels]
    if invalid is not None:
        out[invalid] = NODATA_CLASS
    return out
