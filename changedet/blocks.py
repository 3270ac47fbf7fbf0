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

A group too large for any window is processed in tiles: each reports the
:class:`Piece` of it in its core, and :func:`join_pieces` joins them. That
is complete but not exact: each tile delineates the change from its own
view of it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import shapely
from affine import Affine
from numpy.typing import NDArray
from scipy import ndimage
from shapely.geometry.base import BaseGeometry

from changedet.cleanup import CONNECTIVITY, clean_mask, delineate, dilate_square, label_components
from changedet.direction import CLASS_NAMES, Direction, classify_direction
from changedet.features import BandStats
from changedet.grid import Grid
from changedet.labelstats import first_pixel, labelled_maximum
from changedet.radiometry import NormalisationFit
from changedet.scores import ScoreParams, score_change
from changedet.thresholds import Threshold, seeded_components, threshold_masks
from changedet.vectorize import (
    areas_m2,
    join_polygons,
    label_stats,
    polygons_from_labels,
    simplify_polygons,
)

__all__ = [
    "Plan",
    "Edges",
    "ChangeObject",
    "Piece",
    "WindowResult",
    "Selector",
    "boxes_meet",
    "is_complete",
    "process_window",
    "Footprint",
    "join_pieces",
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
    parts: tuple[Footprint, ...] = ()

    def masks(self) -> Iterator[tuple[int, int, NDArray[np.bool_]]]:
        """Yield ``(row_off, col_off, mask)`` for each part of the object's pixels.

        An object assembled from pieces (see :class:`Piece`) keeps its other
        pieces in :attr:`parts`, packed; they are unpacked one at a time
        here.
        """
        yield self.row_off, self.col_off, self.mask
        for part in self.parts:
            yield part.row_off, part.col_off, part.mask


@dataclass(frozen=True)
class Footprint:
    """Where a change lies: its pixels, packed 8 a byte.

    Attributes
    ----------
    row_off, col_off : int
        Global position of the mask's upper-left pixel.
    shape : (int, int)
        The mask's shape.
    packed : ndarray of uint8
        The mask, packed (:attr:`mask` unpacks it).
    """

    row_off: int
    col_off: int
    shape: tuple[int, int]
    packed: NDArray[np.uint8]

    @classmethod
    def of(cls, obj: ChangeObject) -> list[Footprint]:
        """Return the footprints of an object's parts."""
        return [cls(r, c, m.shape, np.packbits(m)) for r, c, m in obj.masks()]

    @property
    def mask(self) -> NDArray[np.bool_]:
        """(h, w) ndarray of bool."""
        return _unpack(self.packed, self.shape)

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        """Global ``row0, col0, row1, col1``."""
        return (self.row_off, self.col_off, self.row_off + self.shape[0],
                self.col_off + self.shape[1])


@dataclass(frozen=True)
class Piece(Footprint):
    """The part, within a window's core, of an object whose group the window cuts.

    A change too large for any window is processed in tiles; each tile
    reports the pieces of such objects that fall in its core, and
    :func:`join_pieces` joins them.

    Attributes
    ----------
    row_off, col_off, shape, packed
        Where its pixels are (see :class:`Footprint`).
    anchor : (int, int)
        Global (row, col) of its first pixel.
    change : int
        Direction of the object the piece belongs to, as the window saw it.
    confidence : float
    pixels : int
    score_sum, score_max : float
        Sum and maximum of the score over the piece's pixels.
    seed_packed : ndarray of uint8
        The piece's pixels of change that has a seed within the window,
        packed as :attr:`packed` (see :attr:`seeded`).
    """

    anchor: tuple[int, int]
    change: int
    confidence: float
    pixels: int
    score_sum: float
    score_max: float
    seed_packed: NDArray[np.uint8]

    @property
    def seeded(self) -> bool:
        """Whether the piece holds pixels of change seeded within the window.

        Change touching a window's edge counts as change there (its seed
        may lie beyond); a joined object none of whose pieces holds such
        pixels has no seed at all.
        """
        return bool(self.seed_packed.any())


def _unpack(packed: NDArray[np.uint8], shape: tuple[int, int]) -> NDArray[np.bool_]:
    n = shape[0] * shape[1]
    return np.unpackbits(packed, count=n).view(bool).reshape(shape)


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
    pieces: list[Piece] = field(default_factory=list)


#: Chooses, among complete groups, those to emit: called with their global
#: anchors (n, 2) and bounding boxes (n, 4), returns a boolean (n,) array.
Selector = Callable[[NDArray[np.int64], NDArray[np.int64]], NDArray[np.bool_]]


def boxes_meet(boxes: NDArray[np.int64], box: Sequence[int]) -> NDArray[np.bool_]:
    """Which of `boxes` overlap `box`.

    Parameters
    ----------
    boxes : (n, 4) ndarray of int
        ``row0, col0, row1, col1`` each, end exclusive.
    box : (4,) sequence of int
        The same for one box.
    """
    return ((boxes[:, 0] < box[2]) & (boxes[:, 2] > box[0])
            & (boxes[:, 1] < box[3]) & (boxes[:, 3] > box[1]))


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
                   edges: Edges = Edges(), select: Selector | None = None,
                   core: tuple[int, int, int, int] | None = None) -> WindowResult:
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
    core : (row0, col0, row1, col1), optional
        Window pixels (end exclusive) whose pieces of incomplete groups to
        return as :attr:`WindowResult.pieces` (default: none). Their
        delineation and direction are those of the window's view of them.

    Returns
    -------
    WindowResult

    Notes
    -----
    Memory: about six float32 copies of one band of the window, plus the
    score's two whitened copies of the stack.
    """
    h, w = invalid.shape
    # Scores that cannot reach the threshold need not be exact (see
    # score_change): the nuisance search then costs the pixels that can be
    # change, not the 1 % tail of the noise.
    score = score_change(before, after, plan.score, exact_above=plan.threshold.lowest)
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
    has_own_seed = seeded.copy() if core is not None else None
    # (The inner edges' strips read as slices: a window-sized mask of them
    # cost a pass over the window to make and another to read.)
    band = [part.ravel() for part, inner in (
        (clabels[:m], not edges.top), (clabels[h - m:], not edges.bottom),
        (clabels[:, :m], not edges.left), (clabels[:, w - m:], not edges.right)) if inner]
    if band:
        seeded[np.unique(np.concatenate(band))] = True
    seeded[0] = False
    live = np.take(seeded, clabels)   # (a look-up table: np.take is twice as fast)
    if not live.any():
        return WindowResult(score)
    k = plan.link_radius
    grouped = dilate_square(live, k)
    glabels, ng = ndimage.label(grouped, structure=CONNECTIVITY)
    ids = np.arange(1, ng + 1)
    bbox, first = _group_extents(live, glabels, ng, k)
    anchors = np.stack([first // w, first % w], axis=1)
    complete = is_complete(bbox, edges, (h, w))
    offset = np.array([row_off, col_off], np.int64)
    g_anchor = anchors + offset
    g_bbox = bbox + np.concatenate([offset, offset])
    seed_first = first_pixel(glabels, ids, among=seeds)
    has_seed = seed_first >= 0
    emit = complete & has_seed
    if select is not None and emit.any():
        chosen = np.zeros(ng, bool)
        chosen[emit] = select(g_anchor[emit], g_bbox[emit])
        emit = chosen
    key = np.where(has_seed[:, None],
                   np.stack([seed_first // w, seed_first % w], axis=1) + offset, g_anchor)
    incomplete = np.concatenate([key, g_bbox], axis=1)[~complete]
    cut = np.zeros(ng, bool) if core is None else ~complete & boxes_meet(bbox, core)
    work = emit | cut
    if not work.any():
        return WindowResult(score, [], incomplete)

    # Nothing below reaches further than `k` past a group: work in boxes
    # that hold the groups to emit or cut with that margin, each box its
    # own groups only (a block with a few structures then costs a few
    # structures' worth, and one with hundreds scattered over it costs
    # their boxes, not the whole window), the same result as on the whole
    # window.
    objects: list[ChangeObject] = []
    pieces: list[tuple[int, Piece]] = []
    for idx, box in _work_boxes(bbox, np.flatnonzero(work), k + m, (h, w)):
        mine = np.zeros(ng + 1, bool)
        mine[idx + 1] = True
        found, cut_here = _process_box(before, after, invalid, score, live, glabels, mine, emit,
                                       has_own_seed, clabels, plan, box, row_off, col_off, core)
        objects += found
        pieces += cut_here
    # In raster order of their objects' first pixels, as one box gives them.
    objects.sort(key=lambda o: o.anchor)
    pieces.sort(key=lambda kp: kp[0])
    return WindowResult(score, objects, incomplete, [p for _, p in pieces])


def _group_extents(live: NDArray[np.bool_], glabels: NDArray[np.integer], ng: int, k: int,
                   ) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Box and first pixel of each group, from its live pixels.

    A group (a component of `live` dilated by a ``2k + 1`` square, labelled
    1..`ng` in `glabels`) is the union of its live pixels' squares: its box
    is theirs grown by `k` (within the window), and its first pixel in
    raster order lies in its box's top row, `k` left of the first live
    pixel within `k` rows below that row. The same as
    ``ndimage.find_objects`` and :func:`first_pixel` on `glabels`, from
    the few live pixels rather than two passes over the window.

    Returns
    -------
    bbox : (ng, 4) ndarray of int64
        ``row0, col0, row1, col1`` (ends exclusive), by label.
    first : (ng,) ndarray of int64
        Flat index (row * width + col) of each group's first pixel.
    """
    h, w = live.shape
    at = np.flatnonzero(live)
    lab = glabels.ravel()[at].astype(np.intp) - 1
    rows, cols = np.divmod(at, w)
    top, left = np.full(ng, h, np.int64), np.full(ng, w, np.int64)
    bottom, right = np.full(ng, -1, np.int64), np.full(ng, -1, np.int64)
    np.minimum.at(top, lab, rows)
    np.maximum.at(bottom, lab, rows)
    np.minimum.at(left, lab, cols)
    np.maximum.at(right, lab, cols)
    r0 = np.maximum(top - k, 0)
    bbox = np.stack([r0, np.maximum(left - k, 0), np.minimum(bottom + k + 1, h),
                     np.minimum(right + k + 1, w)], axis=1)
    near = rows <= r0[lab] + k
    start = np.full(ng, w, np.int64)
    np.minimum.at(start, lab[near], cols[near])
    return bbox, r0 * w + np.maximum(start - k, 0)


#: A box of groups to process is split in two while it is larger than this
#: (pixels) and than twice its groups' own boxes: each box processed costs
#: some 40 numpy and scipy calls, whatever its size.
_SPLIT_PIXELS = 128 * 128


def _work_boxes(bbox: NDArray[np.int64], which: NDArray[np.intp], pad: int,
                shape: tuple[int, int],
                ) -> list[tuple[NDArray[np.intp], tuple[int, int, int, int]]]:
    # Groups `which` (indices into bbox) in boxes to process separately:
    # (the groups, their box padded by `pad` within `shape`). Boxes may
    # overlap; each is processed with its own groups only. Groups whose
    # boxes meet stay in one box: a group can lie in another's hole (a shed
    # in a courtyard), and whether the hole is filled depends on both.
    cluster = _meeting(bbox[which])
    n = int(cluster.max()) + 1 if cluster.size else 0
    lo = np.full((n, 2), np.iinfo(np.int64).max)
    hi = np.full((n, 2), np.iinfo(np.int64).min)
    np.minimum.at(lo, cluster, np.maximum(bbox[which, :2] - pad, 0))
    np.maximum.at(hi, cluster, np.minimum(bbox[which, 2:] + pad, shape))
    padded = np.concatenate([lo, hi], axis=1)
    sizes = (padded[:, 2] - padded[:, 0]) * (padded[:, 3] - padded[:, 1])
    out = []
    todo = [np.arange(n)]
    while todo:
        i = todo.pop()
        b = padded[i]
        r0, c0 = b[:, :2].min(axis=0)
        r1, c1 = b[:, 2:].max(axis=0)
        if i.size == 1 or (r1 - r0) * (c1 - c0) <= max(_SPLIT_PIXELS, 2 * int(sizes[i].sum())):
            out.append((which[np.isin(cluster, i)], (int(r0), int(c0), int(r1), int(c1))))
            continue
        # Halves by the boxes' centres along the longer side.
        axis = 0 if r1 - r0 >= c1 - c0 else 1
        order = np.argsort(b[:, axis] + b[:, axis + 2], kind="stable")
        todo += [i[order[i.size // 2:]], i[order[:i.size // 2]]]
    return out


def _meeting(boxes: NDArray[np.int64], chunk: int = 1024) -> NDArray[np.intp]:
    # Label (0..) the sets of boxes (row0, col0, row1, col1) that meet,
    # directly or through others.
    n = len(boxes)
    if n < 2:
        return np.zeros(n, np.intp)
    pairs = []
    for s in range(0, n, chunk):
        b = boxes[s:s + chunk, None]
        meet = ((b[..., 0] < boxes[:, 2]) & (boxes[:, 0] < b[..., 2])
                & (b[..., 1] < boxes[:, 3]) & (boxes[:, 1] < b[..., 3]))
        i, j = np.nonzero(meet)
        pairs.append((i + s, j))
    i, j = (np.concatenate(v) for v in zip(*pairs, strict=True))
    return components(n, i, j)


def components(n: int, i: NDArray[np.intp], j: NDArray[np.intp]) -> NDArray[np.intp]:
    """Label (0..) the connected components of an undirected graph of `n` nodes.

    The edges join ``i[k]`` and ``j[k]``. Components are numbered in the
    order of their lowest node, as ``scipy.sparse.csgraph.connected_components``
    numbers them (whose import, with scipy.sparse's, cost every run 0.1 s
    for the few dozen boxes of a block).

    Examples
    --------
    >>> components(5, np.array([3, 1]), np.array([4, 0])).tolist()
    [0, 0, 1, 2, 2]
    """
    # Each node points to a lower one of its component; edges hook their
    # ends' roots to the lower root, then pointers jump to the roots, until
    # every edge joins nodes of one root: its component's lowest node.
    parent = np.arange(n)
    i, j = np.asarray(i, np.intp), np.asarray(j, np.intp)
    while True:
        ri, rj = parent[i], parent[j]
        if np.array_equal(ri, rj):
            break
        low = np.minimum(ri, rj)
        np.minimum.at(parent, ri, low)
        np.minimum.at(parent, rj, low)
        while True:
            up = parent[parent]
            if np.array_equal(up, parent):
                break
            parent = up
    return np.unique(parent, return_inverse=True)[1].astype(np.intp)


def _process_box(before: NDArray[np.float32], after: NDArray[np.float32],
                 invalid: NDArray[np.bool_], score: NDArray[np.float32],
                 live: NDArray[np.bool_], glabels: NDArray[np.int32], mine: NDArray[np.bool_],
                 emit: NDArray[np.bool_], has_own_seed: NDArray[np.bool_] | None,
                 clabels: NDArray[np.int32], plan: Plan, bounds: tuple[int, int, int, int],
                 row_off: int, col_off: int, core: tuple[int, int, int, int] | None,
                 ) -> tuple[list[ChangeObject], list[tuple[int, Piece]]]:
    # The objects of the groups `mine` marks (a lookup by group label) in
    # window box `bounds`: those of groups to emit whole, and the pieces
    # in `core` of the others, each with its object's first pixel (global
    # row << 32 | col) to order them by.
    r0, c0, r1, c1 = bounds
    box = np.s_[r0:r1, c0:c1]
    # In a complete group every candidate component holds a seed, so the
    # hysteresis result there is simply the live candidates.
    kept = delineate(score[box], live[box] & mine[glabels[box]], floor=plan.threshold.low)
    cleaned = clean_mask(kept, pixel_area_m2=plan.pixel_area_m2, min_area_m2=plan.min_area_m2,
                         open_radius=plan.open_radius, close_radius=plan.close_radius,
                         invalid=invalid[box])
    labels, n = label_components(cleaned)
    whole = np.ones(n, bool)
    if not emit[mine[1:]].all():
        # Each object lies in one group (groups are further apart than the
        # clean-up reaches): those of cut groups become pieces.
        group = labelled_maximum(glabels[box], labels, np.arange(1, n + 1)).astype(np.int64) - 1
        whole = emit[group]
    objects, direction, first = _objects(
        before[(slice(None),) + box], after[(slice(None),) + box], invalid[box], score[box],
        labels, n, plan, row_off + r0, col_off + c0, whole=whole)
    if whole.all():
        return objects, []
    cr0, cc0, cr1, cc1 = core
    lr0, lc0 = max(cr0 - r0, 0), max(cc0 - c0, 0)
    lr1, lc1 = min(cr1 - r0, labels.shape[0]), min(cc1 - c0, labels.shape[1])
    inner = np.where(whole[np.maximum(labels - 1, 0)], 0, labels)[lr0:lr1, lc0:lc1]
    own = has_own_seed[clabels[box]][lr0:lr1, lc0:lc1]
    pieces = _pieces(inner, score[box][lr0:lr1, lc0:lc1], direction, own,
                     row_off + r0 + lr0, col_off + c0 + lc0)
    # Ordered by their objects' first pixels, global (row, col) as one
    # number.
    rows, cols = np.divmod(first, labels.shape[1])
    return objects, [((row_off + r0 + int(rows[i])) << 32 | (col_off + c0 + int(cols[i])), piece)
                     for i, piece in pieces]


def _pieces(labels: NDArray[np.int32], score: NDArray[np.float32], direction: Direction,
            seeded: NDArray[np.bool_], row_off: int, col_off: int) -> list[tuple[int, Piece]]:
    # Each labelled object's part in `labels` (a window's core), with its
    # score statistics there and the direction found for the whole object;
    # with its label's index.
    out: list[tuple[int, Piece]] = []
    for i, sl in enumerate(ndimage.find_objects(labels)):
        if sl is None:
            continue
        mask = labels[sl] == i + 1
        vals = score[sl][mask]
        first = int(np.flatnonzero(mask.ravel())[0])
        pr, pc = sl[0].start + row_off, sl[1].start + col_off
        out.append((i, Piece(
            row_off=pr, col_off=pc, shape=mask.shape, packed=np.packbits(mask),
            anchor=(pr + first // mask.shape[1], pc + first % mask.shape[1]),
            change=int(direction.classes[i]), confidence=float(direction.confidence[i]),
            pixels=int(vals.size), score_sum=float(vals.sum(dtype=np.float64)),
            score_max=float(vals.max()), seed_packed=np.packbits(seeded[sl] & mask))))
    return out


def _objects(before: NDArray[np.float32], after: NDArray[np.float32],
             invalid: NDArray[np.bool_], score: NDArray[np.float32],
             labels: NDArray[np.int32], n: int, plan: Plan, row_off: int, col_off: int,
             whole: NDArray[np.bool_] | None = None,
             ) -> tuple[list[ChangeObject], Direction, NDArray[np.int64]]:
    # The objects labelled 1..n (those `whole` marks, default all), sorted
    # by anchor; the direction and the first pixel (flat index in `labels`)
    # of every label.
    direction = classify_direction(before, after, labels, n, invalid=invalid,
                                   stats_before=plan.stats_before,
                                   stats_after=plan.stats_after,
                                   gradient_floor=plan.gradient_floor)
    if n == 0:
        return [], direction, np.zeros(0, np.int64)
    if whole is None:
        whole = np.ones(n, bool)
    # Only the objects reported whole are outlined.
    outlined = labels if whole.all() else np.where(
        np.concatenate([[False], whole])[labels], labels, 0)
    transform = plan.grid.transform @ Affine.translation(col_off, row_off)
    geoms = polygons_from_labels(outlined, n, transform)
    if plan.simplify > 0:
        geoms = simplify_polygons(geoms, plan.simplify)
    areas = areas_m2(geoms, plan.grid)
    stats = label_stats(score, labels, n)
    h, w = labels.shape
    first = first_pixel(labels, np.arange(1, n + 1))
    out = []
    for i, sl in enumerate(ndimage.find_objects(labels)):
        if not whole[i]:
            continue
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
    return out, direction, first


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int], pad: int = 0,
             ) -> tuple[int, int, int, int] | None:
    # Intersection of box `a` grown by `pad` with box `b`, or None.
    r0, c0 = max(a[0] - pad, b[0]), max(a[1] - pad, b[1])
    r1, c1 = min(a[2] + pad, b[2]), min(a[3] + pad, b[3])
    return (r0, c0, r1, c1) if r0 < r1 and c0 < c1 else None


def _crop(mask: NDArray[np.bool_], origin: tuple[int, int], box: tuple[int, int, int, int],
          ) -> NDArray[np.bool_]:
    # `mask` (upper-left pixel at global `origin`) over the global `box`,
    # False outside it.
    out = np.zeros((box[2] - box[0], box[3] - box[1]), bool)
    r0, c0 = max(box[0], origin[0]), max(box[1], origin[1])
    r1 = min(box[2], origin[0] + mask.shape[0])
    c1 = min(box[3], origin[1] + mask.shape[1])
    if r0 < r1 and c0 < c1:
        out[r0 - box[0]:r1 - box[0], c0 - box[1]:c1 - box[1]] = \
            mask[r0 - origin[0]:r1 - origin[0], c0 - origin[1]:c1 - origin[1]]
    return out


def _touches(a: Piece, b: Piece) -> bool:
    # Is a pixel of `b` 8-adjacent to (or on) a pixel of `a`?
    box = _overlap(a.bbox, b.bbox, pad=1)
    if box is None:
        return False
    grown = (box[0] - 1, box[1] - 1, box[2] + 1, box[3] + 1)
    near = ndimage.binary_dilation(_crop(a.mask, a.bbox[:2], grown), structure=CONNECTIVITY)
    return bool((near[1:-1, 1:-1] & _crop(b.mask, b.bbox[:2], box)).any())


def _boxes(footprints: list[Footprint]) -> NDArray[np.int64]:
    return np.array([f.bbox for f in footprints], np.int64).reshape(-1, 4)


def _without(piece: Piece, footprints: list[Footprint], boxes: NDArray[np.int64],
             ) -> Piece | None:
    # The piece less the pixels of changes reported whole (which another
    # window saw whole where this tile saw them cut); None if nothing is left.
    near = np.flatnonzero(boxes_meet(boxes, piece.bbox))
    if not near.size:
        return piece
    mask = piece.mask
    taken = np.zeros_like(mask)
    for i in near:
        f = footprints[i]
        taken |= _crop(f.mask, (f.row_off, f.col_off), piece.bbox)
    mask &= ~taken
    left = int(mask.sum())
    if left == piece.pixels:
        return piece
    if left == 0:
        return None
    rows, cols = np.nonzero(mask)
    r0, c0 = int(rows.min()), int(cols.min())
    r1, c1 = int(rows.max()) + 1, int(cols.max()) + 1
    # Seeded change a tile joined to a change reported whole may be that
    # change's seed, seen through its blurred edge: not near it.
    seeds = (_unpack(piece.seed_packed, piece.shape) & mask & ~ndimage.binary_dilation(
        taken, structure=CONNECTIVITY, iterations=SEED_REACH))[r0:r1, c0:c1]
    mask = mask[r0:r1, c0:c1]
    first = int(np.flatnonzero(mask.ravel())[0])
    row_off, col_off = piece.row_off + r0, piece.col_off + c0
    # The score of the pixels left is not kept: their share of the sum.
    return Piece(row_off=row_off, col_off=col_off, shape=mask.shape, packed=np.packbits(mask),
                 anchor=(row_off + first // mask.shape[1], col_off + first % mask.shape[1]),
                 change=piece.change, confidence=piece.confidence, pixels=left,
                 score_sum=piece.score_sum * left / piece.pixels, score_max=piece.score_max,
                 seed_packed=np.packbits(seeds))


#: Pixels around a change reported whole within which a tile's seeds are
#: taken to be that change's (see :func:`join_pieces`).
SEED_REACH = 3

#: Share of a joined change's pixels on changes reported whole above which
#: it is one of them, as the tiles saw it, and is not reported again.
REPORTED_SHARE = 0.5


def join_pieces(pieces: list[Piece], plan: Plan, *, whole: list[ChangeObject] = (),
                reported: list[Footprint] = ()) -> list[ChangeObject]:
    """Join the pieces of changes too large for any window into change objects.

    Pieces that touch (8-connected) become one object, unless none of them
    holds a seed. Its outline is the union of theirs; its pixels, mean and
    maximum score are over all of them; its direction is the one found for
    most of its pixels, with the mean confidence of those pieces.

    Parameters
    ----------
    pieces : list of Piece
        From the tiles of a region, their cores not overlapping.
    plan : Plan
    whole : list of ChangeObject, optional
        Objects the tiles held whole: their pixels in a piece are a part of
        them that another tile saw cut, and are taken out of it.
    reported : list of Footprint, optional
        Changes reported before (by the blocks or grown windows, whole). A
        joined change lying mostly (:data:`REPORTED_SHARE`) on them is one
        of them as the tiles saw it and is dropped; otherwise their pixels
        are taken out of it.

    Returns
    -------
    list of ChangeObject
        Sorted by anchor.
    """
    if len(whole):
        held = [f for o in whole for f in Footprint.of(o)]
        held_boxes = _boxes(held)
        pieces = [q for q in (_without(p, held, held_boxes) for p in pieces) if q is not None]
    n = len(pieces)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    if n > 1:
        # Candidate pairs: boxes within a pixel of each other (an R-tree,
        # not all n^2 pairs: a dense change can leave thousands of pieces).
        b = np.array([p.bbox for p in pieces], np.float64)
        tree = shapely.STRtree(shapely.box(b[:, 1] - 1, b[:, 0] - 1, b[:, 3] + 1, b[:, 2] + 1))
        left, right = tree.query(shapely.box(b[:, 1], b[:, 0], b[:, 3], b[:, 2]),
                                 predicate="intersects")
        for i, j in zip(left.tolist(), right.tolist(), strict=True):
            if i < j and find(i) != find(j) and _touches(pieces[i], pieces[j]):
                parent[find(i)] = find(j)
    sets: dict[int, list[Piece]] = {}
    for i, p in enumerate(pieces):
        sets.setdefault(find(i), []).append(p)
    reported = list(reported)
    boxes = _boxes(reported)
    out = []
    for members in sets.values():
        if reported:
            total = sum(p.pixels for p in members)
            rest = [q for q in (_without(p, reported, boxes) for p in members) if q is not None]
            if sum(q.pixels for q in rest) <= (1 - REPORTED_SHARE) * total:
                continue    # a change reported before, as the tiles saw it
            members = rest
        if not any(p.seeded for p in members):
            continue    # change at tiles' edges that holds no seed anywhere
        out.append(_joined(sorted(members, key=lambda p: p.anchor), plan))
    out.sort(key=lambda o: o.anchor)
    return out


def _joined(members: list[Piece], plan: Plan) -> ChangeObject:
    # One object from touching pieces, the first (by anchor) first.
    parts = [polygons_from_labels(p.mask.astype(np.int32), 1,
                                  Affine.translation(p.col_off, p.row_off))[0] for p in members]
    geom = join_polygons(parts, plan.grid.transform)
    if plan.simplify > 0:
        geom = simplify_polygons([geom], plan.simplify)[0]
    area = float(areas_m2([geom], plan.grid)[0])
    pixels = np.array([p.pixels for p in members], np.int64)
    classes = np.array([p.change for p in members])
    votes = np.bincount(classes, weights=pixels, minlength=4)
    cls = int(np.argmax(votes))
    mine = classes == cls
    confidence = float(np.average([p.confidence for p in members], weights=pixels * mine))
    props = {
        "change": CLASS_NAMES[cls],
        "area_m2": None if np.isnan(area) else round(area, 2),
        "pixels": int(pixels.sum()),
        "score_mean": round(sum(p.score_sum for p in members) / int(pixels.sum()), 3),
        "score_max": round(max(p.score_max for p in members), 3),
        "confidence": round(confidence, 3),
    }
    first = members[0]
    return ChangeObject(anchor=first.anchor, row_off=first.row_off, col_off=first.col_off,
                        mask=first.mask, change=cls, properties=props, geometry=geom,
                        parts=tuple(Footprint(p.row_off, p.col_off, p.shape, p.packed)
                                    for p in members[1:]))
