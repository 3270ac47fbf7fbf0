"""Thresholds that turn a change score into a change mask.

Scores from :mod:`changedet.scores` are in units of the no-change noise, so
the default threshold is statistical: a pixel is change when its score is
improbable under the no-change model (chi-square), and an object must hold
at least one very improbable pixel (hysteresis) [1]_. Unlike Otsu's method,
which always splits the histogram in two, this finds nothing when there is
nothing.

References
----------
.. [1] Canny, J. (1986). A computational approach to edge detection. IEEE
       TPAMI 8(6), 679-698. :doi:`10.1109/TPAMI.1986.4767851`
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
from numpy.typing import NDArray
from scipy import stats
from skimage.filters import apply_hysteresis_threshold, threshold_otsu as _sk_otsu

__all__ = [
    "ThresholdMethod",
    "THRESHOLD_METHODS",
    "Threshold",
    "threshold_chi2",
    "threshold_otsu",
    "threshold_fixed",
    "select_threshold",
    "apply_threshold",
]

ThresholdMethod = Literal["auto", "chi2", "otsu"]
THRESHOLD_METHODS: tuple[str, ...] = get_args(ThresholdMethod)

#: Tail probabilities of the default chi-square hysteresis thresholds.
P_SEED = 1e-7
P_GROW = 1e-3


@dataclass(frozen=True)
class Threshold:
    """A hysteresis threshold on a score.

    Pixels above `high` seed change; connected pixels above `low` grow it.
    ``low == high`` is a plain threshold.
    """

    low: float
    high: float
    method: str

    def to_dict(self) -> dict[str, object]:
        """Plain-typed description, for metadata."""
        return {"method": self.method, "low": round(self.low, 4), "high": round(self.high, 4)}


def threshold_chi2(bands: int, *, p_seed: float = P_SEED, p_grow: float = P_GROW) -> Threshold:
    """Hysteresis thresholds at chi-square tail probabilities.

    For a score that is the square root of a chi-square variable with
    `bands` degrees of freedom where nothing changed.

    Examples
    --------
    >>> t = threshold_chi2(3)
    >>> round(t.low, 2), round(t.high, 2)
    (4.03, 5.95)
    """
    if not 0 < p_seed <= p_grow < 1:
        raise ValueError("need 0 < p_seed <= p_grow < 1")
    return Threshold(float(np.sqrt(stats.chi2.isf(p_grow, bands))),
                     float(np.sqrt(stats.chi2.isf(p_seed, bands))), "chi2")


def threshold_otsu(score: NDArray[np.floating], invalid: NDArray[np.bool_] | None = None,
                   ) -> Threshold:
    """Otsu's threshold on the valid scores [1]_ (always finds *some* change).

    References
    ----------
    .. [1] Otsu, N. (1979). A threshold selection method from gray-level
           histograms. IEEE SMC 9(1), 62-66. :doi:`10.1109/TSMC.1979.4310076`
    """
    v = score if invalid is None else score[~invalid]
    v = v[np.isfinite(v)]
    if v.size == 0 or float(v.min()) == float(v.max()):
        return Threshold(np.inf, np.inf, "otsu")
    t = float(_sk_otsu(v))
    return Threshold(t, t, "otsu")


def threshold_fixed(value: float) -> Threshold:
    """A plain threshold at `value`."""
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"threshold must be a finite, non-negative number, not {value}")
    return Threshold(float(value), float(value), "fixed")


def select_threshold(score: NDArray[np.floating], *, bands: int,
                     method: ThresholdMethod | float = "auto",
                     invalid: NDArray[np.bool_] | None = None) -> Threshold:
    """Choose a threshold by name or value.

    Parameters
    ----------
    score : (H, W) ndarray
    bands : int
        Degrees of freedom of the score's no-change distribution.
    method : {"auto", "chi2", "otsu"} or float
        ``"auto"`` is ``"chi2"``; a number is a fixed threshold.

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
    if method == "otsu":
        return threshold_otsu(score, invalid)
    return threshold_chi2(bands)


def apply_threshold(score: NDArray[np.floating], threshold: Threshold,
                    invalid: NDArray[np.bool_] | None = None) -> NDArray[np.bool_]:
    """Binary change mask: hysteresis between ``threshold.low`` and ``.high``.

    Returns
    -------
    (H, W) ndarray of bool
        True where changed; never True where `invalid`.
    """
    if not np.isfinite(threshold.high):
        return np.zeros(score.shape, bool)
    if threshold.low >= threshold.high:
        mask = score > threshold.high
    else:
        mask = apply_hysteresis_threshold(score, threshold.low, threshold.high)
    if invalid is not None:
        mask &= ~invalid
    return mask
