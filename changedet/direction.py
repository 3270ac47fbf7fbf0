"""Telling appeared from disappeared.

A change polygon has the outline of the object that changed. The date that
holds the object also holds its outline as an edge against the ground
around it; the date without it shows only the ground's own texture along
that line. Comparing the edge strength along each polygon's boundary in
the two dates therefore tells whether the object appeared (edges only
after), disappeared (edges only before) or changed in place (edges in both:
a new roof, a different material).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from changedet.features import gradient_magnitude

__all__ = [
    "NODATA_CLASS",
    "CLASS_NAMES",
    "Direction",
    "classify_direction",
    "class_raster",
]

#: Class raster values.
CLASS_NAMES: dict[int, str] = {0: "none", 1: "appeared", 2: "disappeared", 3: "changed"}
NODATA_CLASS = 255

#: Edge-strength ratio between dates beyond which a direction is called.
EDGE_RATIO = 1.35


@dataclass(frozen=True)
class Direction:
    """Direction of each labelled change.

    Attributes
    ----------
    classes : (n,) ndarray of uint8
        1 appeared, 2 disappeared, 3 changed, for labels 1..n.
    confidence : (n,) ndarray of float32
        0 (the dates' outlines are alike) to 1 (one date has no outline).
    log_ratio : (n,) ndarray of float32
        log(after / before) of the boundary edge strength.
    """

    classes: NDArray[np.uint8]
    confidence: NDArray[np.float32]
    log_ratio: NDArray[np.float32]


def _boundary_labels(labels: NDArray[np.int32], width: int) -> NDArray[np.int32]:
    # A band `width` pixels either side of each object's outline, labelled
    # with the object's id.
    outside = ndimage.grey_dilation(labels, size=(2 * width + 1,) * 2)
    outside[labels > 0] = 0
    eroded = ndimage.grey_erosion(labels, size=(2 * width + 1,) * 2)
    inside = np.where((labels > 0) & (eroded != labels), labels, 0)
    return np.where(inside > 0, inside, outside).astype(np.int32)


def classify_direction(before: NDArray[np.floating], after: NDArray[np.floating],
                       labels: NDArray[np.int32], n: int, *,
                       invalid: NDArray[np.bool_] | None = None, width: int = 2,
                       ratio: float = EDGE_RATIO) -> Direction:
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
        Half-width in pixels of the boundary band examined.
    ratio : float, optional
        Edge-strength ratio beyond which a direction is called.

    Returns
    -------
    Direction
    """
    if n == 0:
        empty = np.zeros(0, np.float32)
        return Direction(np.zeros(0, np.uint8), empty, empty)
    gb = gradient_magnitude(before, invalid)
    ga = gradient_magnitude(after, invalid)
    # Blur or contrast may differ between dates: compare each object's
    # edges relative to the image's typical edge strength.
    valid = ~invalid if invalid is not None else np.ones(gb.shape, bool)
    ref_b = float(np.median(gb[valid])) + 1e-6
    ref_a = float(np.median(ga[valid])) + 1e-6
    ring = _boundary_labels(labels, width)
    idx = np.arange(1, n + 1)
    eb = np.asarray(ndimage.mean(gb, ring, idx), np.float64) / ref_b
    ea = np.asarray(ndimage.mean(ga, ring, idx), np.float64) / ref_a
    lr = np.log((ea + 1e-3) / (eb + 1e-3))
    lr = np.nan_to_num(lr)
    classes = np.full(n, 3, np.uint8)
    classes[lr > np.log(ratio)] = 1
    classes[lr < -np.log(ratio)] = 2
    confidence = np.clip(np.abs(lr) / np.log(4.0), 0, 1)
    return Direction(classes, confidence.astype(np.float32), lr.astype(np.float32))


def class_raster(labels: NDArray[np.int32], classes: NDArray[np.uint8],
                 invalid: NDArray[np.bool_] | None = None) -> NDArray[np.uint8]:
    """Per-pixel classes: 0 none, 1 appeared, 2 disappeared, 3 changed, 255 nodata."""
    lut = np.concatenate([[0], classes]).astype(np.uint8)
    out = lut[labels]
    if invalid is not None:
        out[invalid] = NODATA_CLASS
    return out
