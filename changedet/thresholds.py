"""Thresholds that turn a change score into a change mask.

Scores from :mod:`changedet.scores` are in units of the no-change noise, the
square root of a chi-square variable with ``dof`` degrees of freedom where
nothing changed, so the default threshold is statistical: a pixel is change
when its score is improbable under the no-change model, and an object must
hold at least one very improbable pixel (hysteresis, [1]_).

Histogram methods (Otsu [2]_, Kittler-Illingworth minimum error [3]_) split
the score distribution in two whether or not anything changed. With the
guard on (the default), they only set how far change *grows*: seeds must
still be improbable under the no-change model, so a pair with no change
gives no change whatever the histogram looks like.

Every threshold is computed from global statistics (the scores of the whole
overlap, or a sample of them) and then applied anywhere, block by block.

References
----------
.. [1] Canny, J. (1986). A computational approach to edge detection. IEEE
       TPAMI 8(6), 679-698. :doi:`10.1109/TPAMI.1986.4767851`
.. [2] Otsu, N. (1979). A threshold selection method from gray-level
       histograms. IEEE SMC 9(1), 62-66. :doi:`10.1109/TSMC.1979.4310076`
.. [3] Kittler, J. and Illingworth, J. (1986). Minimum error thresholding.
       Pattern Recognition 19(1), 41-47. :doi:`10.1016/0031-3203(86)90030-0`
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
from numpy.typing import NDArray
from skimage.filters import threshold_otsu as _sk_otsu

from changedet import chi2
from changedet.cleanup import label_components

__all__ = [
    "ThresholdMethod",
    "THRESHOLD_METHODS",
    "HISTOGRAM_METHODS",
    "P_SEED",
    "P_GROW",
    "Threshold",
    "threshold_chi2",
    "threshold_otsu",
    "threshold_ki",
    "threshold_fixed",
    "guard",
    "select_threshold",
    "apply_threshold",
    "threshold_masks",
    "seeded_components",
]

ThresholdMethod = Literal["auto", "chi2", "otsu", "ki"]
THRESHOLD_METHODS: tuple[str, ...] = get_args(ThresholdMethod)
#: The methods that look at the score's distribution (the others need only
#: its degrees of freedom).
HISTOGRAM_METHODS: tuple[str, ...] = ("otsu", "ki")

#: Tail probabilities of the default chi-square hysteresis thresholds.
P_SEED = 1e-7
P_GROW = 1e-3


@dataclass(frozen=True)
class Threshold:
    """A hysteresis threshold on a score.

    Pixels above `high` seed change; connected pixels above `low` grow it.
    ``low == high`` is a plain threshold; ``high = inf`` finds nothing.
    """

    low: float
    high: float
    method: str

    def to_dict(self) -> dict[str, object]:
        """Plain-typed description, for metadata."""
        def num(v: float) -> float | None:
            return round(v, 4) if np.isfinite(v) else None

        return {"method": self.method, "low": num(self.low), "high": num(self.high)}

    @property
    def lowest(self) -> float:
        """The score a pixel must exceed to be change at all (as a candidate)."""
        return min(self.low, self.high)


def _values(score: NDArray[np.floating], invalid: NDArray[np.bool_] | None,
            max_samples: int = 1_000_000) -> NDArray[np.float32]:
    v = np.asarray(score if invalid is None else score[~invalid], np.float32).ravel()
    v = v[np.isfinite(v)]
    if v.size > max_samples:
        # A fixed stride: deterministic, and enough for a histogram.
        v = v[:: v.size // max_samples + 1]
    return v


def threshold_chi2(dof: int, *, p_seed: float = P_SEED, p_grow: float = P_GROW) -> Threshold:
    """Hysteresis thresholds at chi-square tail probabilities.

    For a score that is the square root of a chi-square variable with `dof`
    degrees of freedom where nothing changed: seeds have a no-change
    probability below `p_seed`, and grow over pixels below `p_grow`.

    Examples
    --------
    >>> t = threshold_chi2(3)
    >>> round(t.low, 2), round(t.high, 2)
    (4.03, 5.95)
    """
    if not 0 < p_seed <= p_grow < 1:
        raise ValueError("need 0 < p_seed <= p_grow < 1")
    return Threshold(float(np.sqrt(chi2.isf(p_grow, dof))),
                     float(np.sqrt(chi2.isf(p_seed, dof))), "chi2")


def threshold_otsu(score: NDArray[np.floating], invalid: NDArray[np.bool_] | None = None,
                   ) -> Threshold:
    """Otsu's threshold on the valid scores [2]_ (always finds *some* change).

    `score` may be the whole score raster or a sample of it. See
    :func:`guard` for a version that finds nothing in a pair without change.

    References
    ----------
    .. [2] Otsu, N. (1979). :doi:`10.1109/TSMC.1979.4310076`
    """
    v = _values(score, invalid)
    if v.size == 0 or float(v.min()) == float(v.max()):
        return Threshold(np.inf, np.inf, "otsu")
    t = float(_sk_otsu(v))
    return Threshold(t, t, "otsu")


def threshold_ki(score: NDArray[np.floating], invalid: NDArray[np.bool_] | None = None, *,
                 bins: int = 512) -> Threshold:
    """Kittler-Illingworth minimum-error threshold on the valid scores [3]_.

    Models the histogram as two Gaussians (no change, change) and picks the
    threshold that minimises the classification error criterion
    ``J(t) = 1 + 2 (P1 ln s1 + P2 ln s2) - 2 (P1 ln P1 + P2 ln P2)``.
    Unlike Otsu's method it copes with classes of very different size and
    spread, as change and no change are. The histogram spans the scores up
    to their 99.9th percentile, so a few extreme values do not squeeze it.

    Parameters
    ----------
    score : ndarray
        Scores (the whole raster or a sample).
    invalid : ndarray of bool, optional
        Scores to leave out.
    bins : int, optional
        Histogram bins.

    Returns
    -------
    Threshold

    References
    ----------
    .. [3] Kittler, J. and Illingworth, J. (1986).
           :doi:`10.1016/0031-3203(86)90030-0`

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> s = np.concatenate([rng.normal(1, 0.5, 90000), rng.normal(8, 1.5, 1000)])
    >>> 2.5 < threshold_ki(s).high < 5
    True
    """
    v = _values(score, invalid)
    if v.size == 0:
        return Threshold(np.inf, np.inf, "ki")
    lo, hi = float(v.min()), float(np.percentile(v, 99.9))
    if hi <= lo:
        return Threshold(np.inf, np.inf, "ki")
    hist, edges = np.histogram(v, bins=bins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    h = hist.astype(np.float64) / max(hist.sum(), 1)
    p1 = np.cumsum(h)
    m1 = np.cumsum(h * centres)
    q1 = np.cumsum(h * centres * centres)
    p2 = 1 - p1
    m2 = m1[-1] - m1
    q2 = q1[-1] - q1
    with np.errstate(divide="ignore", invalid="ignore"):
        mu1, mu2 = m1 / p1, m2 / p2
        v1 = q1 / p1 - mu1 ** 2
        v2 = q2 / p2 - mu2 ** 2
        j = 1 + (p1 * np.log(v1) + p2 * np.log(v2)) - 2 * (p1 * np.log(p1) + p2 * np.log(p2))
    # A class needs some spread and a few members for its Gaussian to mean anything.
    width = (hi - lo) / bins
    ok = (p1 > 1e-4) & (p2 > 1e-4) & (v1 > width ** 2) & (v2 > width ** 2) & np.isfinite(j)
    if not ok.any():
        return threshold_otsu(v)
    t = float(edges[1:][np.flatnonzero(ok)[np.argmin(j[ok])]])
    return Threshold(t, t, "ki")


def threshold_fixed(value: float) -> Threshold:
    """Return a plain threshold at `value`."""
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"threshold must be a finite, non-negative number, not {value}")
    return Threshold(float(value), float(value), "fixed")


def guard(threshold: Threshold, dof: int, *, p_seed: float = P_SEED) -> Threshold:
    """Make a histogram threshold find nothing where nothing changed.

    The histogram threshold sets how far change grows (`low`), but seeds
    (`high`) must also be improbable under the no-change model: their
    chi-square tail probability must be below `p_seed`. In a pair without
    change no pixel is, so nothing is found.

    Examples
    --------
    >>> t = guard(Threshold(2.0, 2.0, "otsu"), 3)
    >>> t.low, round(t.high, 2), t.method
    (2.0, 5.95, 'otsu+guard')
    """
    seed = float(np.sqrt(chi2.isf(p_seed, dof)))
    return Threshold(threshold.low, max(threshold.high, seed), threshold.method + "+guard")


def select_threshold(score: NDArray[np.floating], *, dof: int,
                     method: ThresholdMethod | float = "auto",
                     invalid: NDArray[np.bool_] | None = None,
                     guarded: bool = True) -> Threshold:
    """Choose a threshold by name or value.

    Parameters
    ----------
    score : ndarray
        Scores, or a sample of them (only ``"otsu"`` and ``"ki"`` look).
    dof : int
        Degrees of freedom of the score's no-change chi-square distribution
        (see the score's parameters, e.g. ``CVAParams.dof``).
    method : {"auto", "chi2", "otsu", "ki"} or float
        ``"auto"`` and ``"chi2"``: chi-square hysteresis
        (:func:`threshold_chi2`); ``"otsu"``, ``"ki"``: histogram thresholds,
        guarded by the no-change model unless ``guarded=False``; a number is
        a fixed threshold.
    invalid : ndarray of bool, optional
        Scores to leave out.
    guarded : bool, optional
        Apply :func:`guard` to histogram thresholds.

    Raises
    ------
    ValueError
        If `method` is neither a known name nor a number.
    """
    if isinstance(method, (int, float)) and not isinstance(method, bool):
        return threshold_fixed(float(method))
    if method not in THRESHOLD_METHODS:
        raise ValueError(f"threshold must be one of {THRESHOLD_METHODS} or a number, "
                         f"not {method!r}")
    if method in HISTOGRAM_METHODS:
        t = threshold_otsu(score, invalid) if method == "otsu" else threshold_ki(score, invalid)
        return guard(t, dof) if guarded else t
    return threshold_chi2(dof)


def threshold_masks(score: NDArray[np.floating], threshold: Threshold,
                    invalid: NDArray[np.bool_] | None = None,
                    ) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """Candidate pixels (above the lower threshold) and seeds (above the upper).

    Invalid pixels are neither. The two arrays are always distinct.
    """
    if not np.isfinite(threshold.high):
        return np.zeros(score.shape, bool), np.zeros(score.shape, bool)
    if threshold.low >= threshold.high:
        cand = score > threshold.high
        if invalid is not None:
            cand &= ~invalid
        return cand, cand.copy()
    cand = score > threshold.low
    if invalid is not None:
        cand &= ~invalid
    return cand, cand & (score > threshold.high)


def apply_threshold(score: NDArray[np.floating], threshold: Threshold,
                    invalid: NDArray[np.bool_] | None = None) -> NDArray[np.bool_]:
    """Binary change mask: hysteresis between ``threshold.low`` and ``.high``.

    The candidates (above ``low``) that are 8-connected to a seed (above
    ``high``), as the pipeline keeps them; invalid pixels neither count nor
    connect.

    Returns
    -------
    (H, W) ndarray of bool
        True where changed; never True where `invalid`.
    """
    cand, seeds = threshold_masks(score, threshold, invalid)
    if not seeds.any() or threshold.low >= threshold.high:
        return seeds
    labels, seeded = seeded_components(cand, seeds)
    return np.take(seeded, labels)


def seeded_components(cand: NDArray[np.bool_], seeds: NDArray[np.bool_],
                      ) -> tuple[NDArray[np.int32], NDArray[np.bool_]]:
    """Label the 8-connected components of `cand`; say which hold a seed.

    Returns
    -------
    labels : (H, W) ndarray of int32
        0 is the background.
    seeded : (n + 1,) ndarray of bool
        By label; False for the background.
    """
    labels, n = label_components(cand)
    seeded = np.bincount(labels[seeds], minlength=n + 1) > 0
    seeded[0] = False
    return labels, seeded
