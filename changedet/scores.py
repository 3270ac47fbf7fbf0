"""Per-pixel change scores: ``(bands, H, W)`` pairs in, ``(H, W)`` scores out.

Scores are in units of the no-change noise, so that a threshold means the
same thing on any pair: a score of 5 is five standard deviations of what
unchanged ground looks like between these two dates.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
from numpy.typing import NDArray
from scipy import stats

from changedet.radiometry import sample_valid

__all__ = [
    "ScoreMethod",
    "SCORE_METHODS",
    "NoiseModel",
    "fit_noise",
    "score_cva",
]

log = logging.getLogger(__name__)

ScoreMethod = Literal["cva"]
SCORE_METHODS: tuple[str, ...] = get_args(ScoreMethod)


@dataclass(frozen=True)
class NoiseModel:
    """What the difference between the dates looks like where nothing changed.

    Attributes
    ----------
    mean : tuple of float
        Mean difference per band (after - before).
    cov : tuple of tuple of float
        Covariance of the difference between bands.
    inlier_fraction : float
        Share of sampled pixels that fit the model (a rough "unchanged" share).
    """

    mean: tuple[float, ...]
    cov: tuple[tuple[float, ...], ...]
    inlier_fraction: float = 1.0

    @property
    def bands(self) -> int:
        """Number of bands."""
        return len(self.mean)

    def whitening(self) -> NDArray[np.float32]:
        """Matrix ``W`` with ``W @ cov @ W.T = I`` (inverse Cholesky factor)."""
        cov = np.asarray(self.cov, np.float64)
        # A floor keeps a constant band (zero variance) from blowing up.
        floor = max(float(np.trace(cov)) / len(cov), 1e-12) * 1e-6
        chol = np.linalg.cholesky(cov + floor * np.eye(len(cov)))
        return np.linalg.inv(chol).astype(np.float32)

    def to_dict(self) -> dict[str, object]:
        """Plain-typed description, for metadata."""
        return {"mean": [round(m, 6) for m in self.mean],
                "std": [round(float(np.sqrt(self.cov[i][i])), 6) for i in range(self.bands)],
                "inlier_fraction": round(self.inlier_fraction, 4)}


def fit_noise(before: NDArray[np.floating], after: NDArray[np.floating],
              invalid: NDArray[np.bool_], *, quantile: float = 0.9, iterations: int = 8,
              ) -> NoiseModel:
    """Robust mean and covariance of the no-change difference.

    Starts from all valid pixels, then repeatedly keeps those whose
    Mahalanobis distance is below the `quantile` of a chi-square and
    re-estimates, correcting the covariance for the truncation (a
    reweighted minimum-covariance estimate in the spirit of [1]_). Changed
    pixels, being far out, stop influencing the estimate.

    Parameters
    ----------
    before, after : (bands, H, W) ndarray
        The two images, radiometrically normalised and co-registered.
    invalid : (H, W) ndarray of bool
        True where either image is invalid.

    Returns
    -------
    NoiseModel

    References
    ----------
    .. [1] Rousseeuw, P. J. and Van Driessen, K. (1999). A fast algorithm for
           the minimum covariance determinant estimator. Technometrics 41(3),
           212-223. :doi:`10.1080/00401706.1999.10485670`
    """
    nb = before.shape[0]
    d = (sample_valid(after, invalid) - sample_valid(before, invalid)).astype(np.float64)
    if d.shape[1] < nb + 2:
        return NoiseModel((0.0,) * nb, tuple(tuple(float(i == j) for j in range(nb))
                                             for i in range(nb)), 0.0)
    # Start from the median and a MAD-based diagonal, which ignore change.
    mean = np.median(d, axis=1)
    mad = np.median(np.abs(d - mean[:, None]), axis=1) * 1.4826
    cov = np.diag(np.maximum(mad, 1e-6) ** 2)
    cut = stats.chi2.ppf(quantile, nb)
    # Covariance of a normal truncated to its `quantile` region, relative to full.
    consistency = stats.chi2.cdf(cut, nb + 2) / quantile
    keep = np.ones(d.shape[1], bool)
    for _ in range(iterations):
        inv = np.linalg.pinv(cov)
        c = d - mean[:, None]
        t = np.einsum("ij,in,jn->n", inv, c, c)
        new_keep = t < cut
        if new_keep.sum() < nb + 2:
            break
        mean = d[:, new_keep].mean(axis=1)
        cov = np.cov(d[:, new_keep]) / consistency
        cov = np.atleast_2d(cov)
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    return NoiseModel(tuple(float(m) for m in mean),
                      tuple(tuple(float(v) for v in row) for row in cov),
                      float(keep.mean()))


def _tolerant_distance(before: NDArray[np.floating], after: NDArray[np.floating],
                       w: NDArray[np.float32], centre: NDArray[np.float32],
                       rows: NDArray[np.intp], cols: NDArray[np.intp], radius: int,
                       ) -> NDArray[np.float32]:
    # For each candidate pixel: the smallest whitened distance between
    # after(p) and any before pixel within `radius`, and vice versa; the
    # larger of the two. Only the candidates' neighbourhoods are gathered.
    h, wd = before.shape[1:]
    a_c = after[:, rows, cols].astype(np.float32) - centre[:, None]
    b_c = before[:, rows, cols].astype(np.float32)
    best_ab = np.full(rows.size, np.inf, np.float32)
    best_ba = np.full(rows.size, np.inf, np.float32)
    for dy in range(-radius, radius + 1):
        rr = np.clip(rows + dy, 0, h - 1)
        for dx in range(-radius, radius + 1):
            if dx * dx + dy * dy > radius * radius + radius:
                continue
            cc = np.clip(cols + dx, 0, wd - 1)
            ab = w @ (a_c - before[:, rr, cc])
            ba = w @ (after[:, rr, cc] - centre[:, None] - b_c)
            np.minimum(best_ab, (ab * ab).sum(axis=0), out=best_ab)
            np.minimum(best_ba, (ba * ba).sum(axis=0), out=best_ba)
    return np.sqrt(np.maximum(best_ab, best_ba))


def score_cva(before: NDArray[np.floating], after: NDArray[np.floating], noise: NoiseModel,
              *, tolerance: int = 1, candidate_p: float = 0.01) -> NDArray[np.float32]:
    """Change-vector magnitude in units of the no-change noise.

    The difference vector ``after - before`` of every pixel is centred and
    whitened with the `noise` model, so its squared length is chi-square
    distributed with ``bands`` degrees of freedom where nothing changed; the
    score is its square root (a Mahalanobis distance) [1]_.

    With ``tolerance=r > 0`` a difference that a displacement of up to `r`
    pixels explains does not count: each pixel of one date is compared with
    the closest-looking pixel within `r` in the other date, both ways, and
    the larger of the two distances is kept. Edges that moved by a pixel
    (residual misregistration, parallax, a shadow's edge as the sun moves)
    then score low, while an object larger than `r` still differs from
    everything around its place in the other date.

    Parameters
    ----------
    before, after : (bands, H, W) ndarray
        Co-registered, normalised images.
    noise : NoiseModel
        From :func:`fit_noise`.
    tolerance : int, optional
        Radius in pixels of the displacement tolerated (0: plain CVA).
    candidate_p : float, optional
        Only pixels whose plain score exceeds this no-change tail
        probability are searched (the others cannot be change at any
        sensible threshold and keep their plain score, an upper bound).

    Returns
    -------
    (H, W) ndarray of float32

    Notes
    -----
    Memory: two float32 copies of the stack (the difference and its
    whitened version) plus the score. The neighbourhood search costs about
    ``2 (2r + 1)^2`` distance evaluations per candidate pixel only.

    References
    ----------
    .. [1] Malila, W. A. (1980). Change vector analysis: an approach for
           detecting forest changes with Landsat. LARS Symposia, paper 385.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.zeros((3, 4, 4), np.float32); b = a.copy(); b[:, 0, 0] = 1
    >>> nm = NoiseModel((0.0,) * 3, ((0.01, 0, 0), (0, 0.01, 0), (0, 0, 0.01)))
    >>> s = score_cva(a, b, nm, tolerance=0)
    >>> round(float(s[0, 0]), 2), float(s[1, 1])
    (17.32, 0.0)
    """
    if before.shape != after.shape:
        raise ValueError(f"shapes differ: {before.shape} vs {after.shape}")
    if before.shape[0] != noise.bands:
        raise ValueError(f"noise model has {noise.bands} bands, images have {before.shape[0]}")
    if tolerance < 0:
        raise ValueError("tolerance must not be negative")
    w = noise.whitening()
    centre = np.asarray(noise.mean, np.float32)
    d = np.subtract(after, before, dtype=np.float32)
    d -= centre[:, None, None]
    white = np.tensordot(w, d, axes=1)
    del d
    np.square(white, out=white)
    score = np.sqrt(white.sum(axis=0, dtype=np.float32))
    del white
    if tolerance > 0:
        cut = float(np.sqrt(stats.chi2.isf(candidate_p, noise.bands)))
        rows, cols = np.nonzero(score > cut)
        if rows.size:
            score[rows, cols] = _tolerant_distance(before, after, w, centre, rows, cols,
                                                   tolerance)
    return score
