"""Relative radiometric normalisation: make the after image look like before.

Two dates differ in sun, haze and sensor. Normalisation maps each band of
the after image to the before image's radiometry with a gain and an offset,
estimated once from the whole overlap (or a sample of it) and then applied
anywhere, block by block if need be.

The default finds pseudo-invariant pixels with IR-MAD [1]_ and fits each
band by orthogonal regression on them, as Canty's radcal does [2]_. MAD
variates are invariant to any linear change of either image, so which pixels
count as unchanged does not depend on the gains being estimated.

References
----------
.. [1] Nielsen, A. A. (2007). The regularized iteratively reweighted MAD
       method for change detection in multi- and hyperspectral data. IEEE
       Transactions on Image Processing 16(2), 463-478.
       :doi:`10.1109/TIP.2006.888195`
.. [2] Canty, M. J. and Nielsen, A. A. (2008). Automatic radiometric
       normalization of multitemporal satellite imagery with the iteratively
       re-weighted MAD transformation. Remote Sensing of Environment 112(3),
       1025-1036. :doi:`10.1016/j.rse.2007.07.013`
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np
from numpy.typing import NDArray
from scipy import linalg, ndimage, special

from changedet.features import low_percentile

__all__ = [
    "NormaliseMethod",
    "NORMALISE_METHODS",
    "MIN_BAND_CORRELATION",
    "RadiometricFit",
    "IRMAD",
    "sample_valid",
    "irmad",
    "orthogonal_regression",
    "robust_orthogonal_regression",
    "HistogramFit",
    "NormalisationFit",
    "fit_irmad",
    "fit_histogram",
    "fit_robust_linear",
    "fit_normalisation",
    "apply_normalisation",
]

NormaliseMethod = Literal["irmad", "histogram", "linear", "none"]

#: Pixels sampled for IR-MAD: enough for a 6-band covariance many times over.
_IRMAD_SAMPLES = 100_000

#: Below this correlation between the dates on a band's invariant pixels,
#: the band's orthogonal regression line is left to chance (the principal
#: axis of a round cloud points anywhere: NAIP's red, July against
#: September three years on, gave a gain of -48); the band's spreads on
#: those pixels are matched instead.
MIN_BAND_CORRELATION = 0.5

#: Candidate lines whose residuals robust_orthogonal_regression holds at
#: once: 8 lines of 20 000 points are 1.3 MB, two buffers that stay in the
#: core's cache (64 lines made 10 MB temporaries: 0.28 s a band, against
#: 0.13 s).
_LINES_AT_ONCE = 8

#: The least-median search first ranks every line by the median of its
#: residuals on this many of the scoring points, and finds the median of
#: the best few (this many lines) exactly; see _lmeds_line.
_ROUGH_POINTS, _ROUGH_LINES = 2000, 16

#: Ratio of the two dates' spreads beyond which robust_orthogonal_regression
#: takes them to be in other units.
_UNITS_APART = 3.0

NORMALISE_METHODS: tuple[str, ...] = get_args(NormaliseMethod)


@dataclass(frozen=True)
class RadiometricFit:
    """Per-band linear map ``after * gain + offset`` onto the before image.

    Attributes
    ----------
    gain, offset : tuple of float
        One value per band.
    method : str
        How the coefficients were estimated.
    """

    gain: tuple[float, ...]
    offset: tuple[float, ...]
    method: str = "irmad"
    details: dict[str, object] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        """Plain-typed description, for metadata."""
        return {"method": self.method,
                "gain": [round(g, 6) for g in self.gain],
                "offset": [round(o, 6) for o in self.offset], **self.details}


def sample_valid(data: NDArray[np.floating], invalid: NDArray[np.bool_], *,
                 max_samples: int = 250_000, seed: int = 0) -> NDArray[np.float32]:
    """Draw a deterministic random sample of valid pixels.

    Returns
    -------
    (bands, n) ndarray of float32
    """
    flat_valid = np.flatnonzero(~invalid)
    if flat_valid.size > max_samples:
        rng = np.random.default_rng(seed)
        flat_valid = np.sort(rng.choice(flat_valid, max_samples, replace=False))
    return data.reshape(data.shape[0], -1)[:, flat_valid].astype(np.float32, copy=False)


@dataclass(frozen=True)
class IRMAD:
    """The converged IR-MAD transformation of a pair.

    Attributes
    ----------
    a, b : (bands, bands) ndarray
        Canonical vectors (columns) of before and after, ordered by
        increasing canonical correlation.
    mean_before, mean_after : (bands,) ndarray
        Weighted means removed before projecting.
    centre, scale : (bands,) ndarray
        Robust centre and standard deviation of each MAD variate.
    rho : (bands,) ndarray
        Canonical correlations.
    iterations : int
    converged : bool
    """

    a: NDArray[np.float64]
    b: NDArray[np.float64]
    mean_before: NDArray[np.float64]
    mean_after: NDArray[np.float64]
    centre: NDArray[np.float64]
    scale: NDArray[np.float64]
    rho: NDArray[np.float64]
    iterations: int
    converged: bool

    def chi2(self, before: NDArray[np.floating], after: NDArray[np.floating],
             ) -> NDArray[np.float64]:
        """Sum of squared standardised MAD variates of (bands, n) samples.

        Chi-square distributed with ``bands`` degrees of freedom where
        nothing changed.
        """
        mad = (self.a.T @ (before - self.mean_before[:, None])
               - self.b.T @ (after - self.mean_after[:, None]))
        z = (mad - self.centre[:, None]) / self.scale[:, None]
        return (z * z).sum(axis=0)

    def no_change_probability(self, before: NDArray[np.floating],
                              after: NDArray[np.floating]) -> NDArray[np.float64]:
        """Chi-square tail probability of no change for (bands, n) samples."""
        return special.chdtrc(self.a.shape[0], self.chi2(before, after))


def irmad(before: NDArray[np.floating], after: NDArray[np.floating], *,
          max_iter: int = 30, tol: float = 1e-3) -> IRMAD:
    """Run iteratively reweighted multivariate alteration detection (IR-MAD).

    Canonical correlation analysis of the two dates, iterated with each
    pixel weighted by its chi-square probability of no change [1]_. The
    variance of each MAD variate is estimated robustly (scaled median
    absolute deviation) rather than as ``2 (1 - rho)``: real no-change
    residuals have heavier tails than a Gaussian, and the textbook weights
    then concentrate on an ever smaller core and never settle.

    Parameters
    ----------
    before, after : (bands, n) ndarray
        Samples of the two dates (e.g. from :func:`sample_valid`).
    max_iter : int, optional
        Iteration limit.
    tol : float, optional
        Convergence: largest change of a canonical correlation. Components
        that are mostly noise keep drifting by a few 1e-4 long after the
        invariant pixels have stopped changing, so a tighter tolerance only
        costs iterations.

    Returns
    -------
    IRMAD

    References
    ----------
    .. [1] Nielsen, A. A. (2007). :doi:`10.1109/TIP.2006.888195`
    """
    b = np.asarray(before, np.float64)
    a = np.asarray(after, np.float64)
    nb, n = b.shape
    w = np.ones(n)
    rho_old = None
    converged = False
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 - `it` is reported after the loop
        sw = w.sum()
        mb = (b * w).sum(axis=1) / sw
        ma = (a * w).sum(axis=1) / sw
        bc, ac = b - mb[:, None], a - ma[:, None]
        sq = np.sqrt(w)
        x = np.vstack([bc * sq, ac * sq])
        cov = x @ x.T / sw
        # A ridge keeps constant or duplicated bands from making it singular.
        cov += np.eye(2 * nb) * (1e-9 * max(float(np.trace(cov)), 1e-12) / (2 * nb))
        s11, s22, s12 = cov[:nb, :nb], cov[nb:, nb:], cov[:nb, nb:]
        rho2, va = linalg.eigh(s12 @ linalg.solve(s22, s12.T, assume_a="pos"), s11)
        rho = np.sqrt(np.clip(rho2, 0, 1))
        vb = linalg.solve(s22, s12.T @ va, assume_a="pos") / np.maximum(rho, 1e-12)
        # Scale vb to unit variance and make each canonical pair positively correlated.
        vb /= np.sqrt(np.maximum(np.einsum("ij,ik,kj->j", vb, s22, vb), 1e-24))
        vb *= np.where(np.einsum("ij,ik,kj->j", va, s12, vb) < 0, -1.0, 1.0)
        mad = va.T @ bc - vb.T @ ac
        centre = np.median(mad, axis=1)
        scale = 1.4826 * np.median(np.abs(mad - centre[:, None]), axis=1)
        scale = np.maximum(scale, 1e-12)
        z = (mad - centre[:, None]) / scale[:, None]
        w = special.chdtrc(nb, (z * z).sum(axis=0))
        if rho_old is not None and float(np.abs(rho - rho_old).max()) < tol:
            converged = True
            break
        rho_old = rho
    return IRMAD(va, vb, mb, ma, centre, scale, rho, it, converged)


def orthogonal_regression(x: NDArray[np.floating], y: NDArray[np.floating],
                          ) -> tuple[float, float]:
    """Slope and intercept of ``y = slope * x + intercept`` by total least squares.

    Both variables have errors (noise in both dates), so neither is
    regressed on the other; the line follows the first principal axis.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    mx, my = float(x.mean()), float(y.mean())
    sxx = float(((x - mx) ** 2).mean())
    syy = float(((y - my) ** 2).mean())
    sxy = float(((x - mx) * (y - my)).mean())
    if abs(sxy) < 1e-12 * max(sxx, syy, 1e-300):
        slope = float(np.sqrt(syy / sxx)) if sxx > 0 and syy > 0 else 1.0
    else:
        slope = (syy - sxx + np.sqrt((syy - sxx) ** 2 + 4 * sxy * sxy)) / (2 * sxy)
    return float(slope), my - float(slope) * mx


def robust_orthogonal_regression(x: NDArray[np.floating], y: NDArray[np.floating], *,
                                 trials: int = 600, max_points: int = 20_000,
                                 cutoff: float = 2.5, seed: int = 0,
                                 units: float | None = None,
                                 ) -> tuple[float, float, NDArray[np.bool_]]:
    """Orthogonal regression on the inliers of a least-median-of-squares line.

    Lines through random pairs of points are scored by the median of their
    squared orthogonal residuals (LMedS, [1]_: up to half the points may be
    outliers); the best one's inliers (residual within `cutoff` robust
    standard deviations) are then fitted by :func:`orthogonal_regression`.
    Pseudo-invariant pixels chosen by IR-MAD still hold some change when a
    large area changed consistently (a field ripening): this keeps it out.

    Parameters
    ----------
    x, y : (n,) ndarray
    trials : int, optional
        Candidate lines.
    max_points : int, optional
        Points used to score candidates (a deterministic random subset).
    cutoff : float, optional
        Inlier band, in robust standard deviations.
    seed : int, optional
    units : float, optional
        Factor that brings x to y's units (default: found from their
        spreads, see below).

    Returns
    -------
    slope, intercept : float
    inliers : (n,) ndarray of bool

    Notes
    -----
    Candidate lines must have a plausible gain (0.1 to 10), and the fit
    weighs both variables' noise alike: both hold in comparable units. When
    the two spread more than 3 times apart, x is taken to be in other units
    (another bit depth, reflectance against 8-bit counts) and multiplied by
    the power of two nearest their interquartile ranges' ratio for the fit;
    the line is mapped back. A bit depth apart, the answer is then exactly
    the one in shared units.

    References
    ----------
    .. [1] Rousseeuw, P. J. (1984). Least median of squares regression.
           JASA 79(388), 871-880. :doi:`10.1080/01621459.1984.10477105`

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> x = rng.uniform(0, 100, 4000); y = 0.8 * x + 12 + rng.normal(0, 0.5, 4000)
    >>> y[:1500] = rng.uniform(0, 100, 1500)          # 37 % outliers
    >>> s, i, _ = robust_orthogonal_regression(x, y)
    >>> round(s, 2), round(i, 1)
    (0.8, 12.0)
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    n = x.size
    if n < 3:
        slope, icpt = orthogonal_regression(x, y) if n else (1.0, 0.0)
        return slope, icpt, np.ones(n, bool)
    # Plausible gains, and equal noise in both variables, hold in comparable
    # units only: x in other units than y (an 8-bit image against a 16-bit
    # or reflectance product of the same scene) is brought to y's spread
    # first, and the line mapped back.
    if units is None:
        units = _units_ratio(_spread_ratio(x, y))
    if units == 1.0:
        return _lmeds_line(x, y, trials, max_points, cutoff, seed)
    slope, icpt, inliers = _lmeds_line(x * units, y, trials, max_points, cutoff, seed)
    return slope * units, icpt, inliers


def _lmeds_line(x: NDArray[np.float64], y: NDArray[np.float64], trials: int, max_points: int,
                cutoff: float, seed: int) -> tuple[float, float, NDArray[np.bool_]]:
    # robust_orthogonal_regression in units where the dates' spreads compare.
    n = x.size
    rng = np.random.default_rng(seed)
    uni = rng.choice(n, max_points, replace=False) if n > max_points else np.arange(n)
    # Candidate lines join pairs drawn evenly from 16 brightness strata (of
    # y): when one material holds most pixels, pairs within it say nothing
    # about the slope.
    lo, hi = np.percentile(y, [0.5, 99.5])
    strata = np.clip(((y - lo) / max(hi - lo, 1e-12) * 16).astype(np.intp), 0, 15)
    per = max(max_points // 16, 1)
    strat = np.concatenate([
        (lambda idx: rng.choice(idx, per, replace=False) if idx.size > per else idx)(
            np.flatnonzero(strata == k)) for k in range(16)])
    pool = np.concatenate([strat, uni])
    i, j = rng.choice(pool, (2, trials))
    dx, dy = x[j] - x[i], y[j] - y[i]
    ok = dx > 0
    ok[ok] &= (dy[ok] > 0.1 * dx[ok]) & (dy[ok] < 10 * dx[ok])  # plausible gains only
    if not ok.any():
        slope, icpt = orthogonal_regression(x, y)
        return slope, icpt, np.ones(n, bool)
    theta = np.arctan2(dy[ok], dx[ok])
    x0, y0 = x[i[ok]], y[i[ok]]
    xs, ys = x[uni], y[uni]
    npts, half = xs.size, xs.size // 2

    buf = np.empty((_LINES_AT_ONCE, npts))
    tmp = np.empty_like(buf)

    def residuals(lines: slice | NDArray[np.intp], points: int = npts) -> NDArray[np.float64]:
        # Orthogonal distances of the first `points` scoring points from
        # some candidate lines, (lines, points), in a buffer reused from
        # chunk to chunk. A few lines at a time: all 600 at once made
        # temporaries of ~100 MB each, whose page faults cost more than the
        # arithmetic.
        t = theta[lines, None]
        out, other = buf[:t.shape[0], :points], tmp[:t.shape[0], :points]
        np.multiply(-np.sin(t), np.subtract(xs[:points], x0[lines, None], out=out), out=out)
        np.multiply(np.cos(t), np.subtract(ys[:points], y0[lines, None], out=other), out=other)
        return np.abs(np.add(out, other, out=out), out=out)

    def medians(r: NDArray[np.float64]) -> NDArray[np.float64]:
        # np.median's values along the rows (the mean of the middle two of
        # an even count), partitioning `r` in place instead of a copy.
        h = r.shape[1] // 2
        if r.shape[1] % 2:
            r.partition(h, axis=1)
            return r[:, h].copy()
        r.partition([h - 1, h], axis=1)
        return (r[:, h - 1] + r[:, h]) / 2

    # The exact median of a line's residuals (NaN until needed): the
    # partition it takes cost more than all else, so it is found only for
    # the lines whose median matters, and the answer is the one that
    # finding every line's median gives, bit for bit.
    med = np.full(theta.size, np.nan)

    def find(lines: NDArray[np.intp]) -> None:
        lines = lines[np.isnan(med[lines])]
        for s in range(0, lines.size, _LINES_AT_ONCE):
            c = lines[s:s + _LINES_AT_ONCE]
            med[c] = medians(residuals(c))

    chunks = [slice(s, s + _LINES_AT_ONCE) for s in range(0, theta.size, _LINES_AT_ONCE)]
    # The smallest median: among the lines whose median on a share of the
    # points is smallest, unless a line has as many residuals below it as
    # a smaller median needs (then that line's median is found, and the
    # count taken again against the new smallest).
    rough = np.concatenate([medians(residuals(c, min(_ROUGH_POINTS, npts))) for c in chunks])
    find(np.argsort(rough, kind="stable")[:_ROUGH_LINES])
    below, within = np.zeros(theta.size, np.intp), np.zeros(theta.size, np.intp)
    while True:
        least = float(np.nanmin(med))
        # The spread of the best least-median line (through the commonest
        # material) sets the inlier band; the line with most inliers wins,
        # which is the one through that material and the others that did
        # not change.
        scale = 1.4826 * least * (1 + 5 / max(npts - 2, 1))
        band = cutoff * max(scale, 1e-12)
        for c in chunks:
            r = residuals(c)
            below[c] = (r < least).sum(axis=1)
            within[c] = (r <= band).sum(axis=1)
        smaller = np.flatnonzero((below >= npts - half) & np.isnan(med))
        find(smaller)
        if not smaller.size or float(np.nanmin(med)) == least:
            break
    # Only lines whose median is within the band can win: one whose median
    # is beyond it has at most half the points within it, while the best
    # least-median line (median <= band) has at least half, and on a tie
    # the smaller median wins. More than half the residuals within the
    # band put the median within it, fewer than half beyond it; exactly
    # half (an even count) needs the median.
    if npts % 2 == 0:
        find(np.flatnonzero(within == half))
    known = ~np.isnan(med)
    contenders = np.where(known, np.where(known, med, np.inf) <= band, within > half)
    counts = np.where(contenders, within, 0)
    best = np.flatnonzero(counts == counts.max())
    find(best)
    k = int(best[np.argsort(med[best], kind="stable")[0]])
    t, px, py = float(theta[k]), float(x0[k]), float(y0[k])
    inliers = np.abs(-np.sin(t) * (x - px) + np.cos(t) * (y - py)) <= band
    if inliers.sum() < 3:
        inliers = np.ones(n, bool)
    slope, icpt = orthogonal_regression(x[inliers], y[inliers])
    return slope, icpt, inliers


def _saturated(samples: NDArray[np.floating], share: float = 1e-3) -> NDArray[np.bool_]:
    # Pixels at a band's extreme value when many share it: clipped by the
    # sensor or the quantisation, so no longer linear in the scene.
    out = np.zeros(samples.shape[1], bool)
    for band in samples:
        for v in (band.min(), band.max()):
            hit = band == v
            if hit.mean() > share:
                out |= hit
    return out


def _shaded(data: NDArray[np.floating], invalid: NDArray[np.bool_], *, window: int = 31,
            ratio: float = 0.7) -> NDArray[np.bool_]:
    # Pixels much darker than the ground around them: shade, which moves
    # with the sun, so never pseudo-invariant.
    data = np.asarray(data, np.float32)
    dark = np.array([low_percentile(band[~invalid], 0.5) if (~invalid).any() else 0.0
                     for band in data], np.float32)
    bright = np.maximum(data - dark[:, None, None], 0).sum(axis=0)
    return bright < ratio * ndimage.uniform_filter(bright, window, mode="nearest")


def fit_irmad(before: NDArray[np.floating], after: NDArray[np.floating],
              invalid: NDArray[np.bool_], *, pif_probability: float = 0.01,
              min_pifs: int = 100, min_correlation: float = 0.9) -> RadiometricFit:
    """Normalise on pseudo-invariant pixels found by IR-MAD.

    IR-MAD's chi-square no-change probability sets aside the pixels that
    clearly changed (probability below `pif_probability`), as do shade
    (pixels much darker than their surroundings at either date: shadows
    move with the sun) and clipped values; each band of after is then
    mapped onto before by orthogonal regression [2]_ on the inliers of a
    robust line through what is left
    (:func:`robust_orthogonal_regression`). The robust step matters on
    real scenes: a large area that changed in a consistent way (fields
    ripening) passes IR-MAD's test, and when one material (paving) covers
    most of the scene the slope is set by the few others that did not
    change. A band whose dates correlate less than
    :data:`MIN_BAND_CORRELATION` on those inliers (crops at another stage
    in every field) has no line to find: its spreads there are matched
    instead, and the metadata's ``spreads_matched`` names it.

    When not even the best canonical correlation reaches
    `min_correlation`, nothing reliable is invariant (dates years apart, a
    small tile that changed throughout) and the fit falls back to
    :func:`fit_robust_linear`.

    Parameters
    ----------
    before, after : (bands, H, W) ndarray
    invalid : (H, W) ndarray of bool
        True where either image is invalid.
    pif_probability : float, optional
        No-change probability a pixel needs to be used.
    min_pifs : int, optional
        Below this many invariant pixels, fall back to
        :func:`fit_robust_linear`.
    min_correlation : float, optional
        If no canonical correlation reaches it, the dates share too little
        to find invariant pixels: fall back to :func:`fit_robust_linear`.

    Returns
    -------
    RadiometricFit

    References
    ----------
    .. [2] Canty, M. J. and Nielsen, A. A. (2008).
           :doi:`10.1016/j.rse.2007.07.013`

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> b = rng.gamma(4, 20, (3, 64, 64)).astype(np.float32)
    >>> a = b * np.array([1.5, 0.8, 1.2], np.float32)[:, None, None] + 10
    >>> fit = fit_irmad(b, a, np.zeros((64, 64), bool))
    >>> [round(g, 3) for g in fit.gain]
    [0.667, 1.25, 0.833]
    """
    # Shade moves with the sun: keep it out of the invariant candidates
    # (each date on its own thread: the filters release the GIL).
    with ThreadPoolExecutor(max_workers=2) as pool:
        shaded_after = pool.submit(_shaded, after, invalid)
        shaded = _shaded(before, invalid) | shaded_after.result()
    if (~(invalid | shaded)).sum() >= max(min_pifs, 3 * before.shape[0]):
        invalid = invalid | shaded
    bs = sample_valid(before, invalid, max_samples=_IRMAD_SAMPLES).astype(np.float64)
    as_ = sample_valid(after, invalid, max_samples=_IRMAD_SAMPLES).astype(np.float64)
    if bs.shape[1] < max(min_pifs, 3 * bs.shape[0]):
        return fit_robust_linear(before, after, invalid)
    res = irmad(bs, as_)
    pifs = (res.no_change_probability(bs, as_) > pif_probability)
    pifs &= ~(_saturated(bs) | _saturated(as_))
    if int(pifs.sum()) < min_pifs:
        return fit_robust_linear(before, after, invalid)
    if float(res.rho.max()) < min_correlation:
        # Even the best-matched combination of bands hardly agrees between
        # the dates: no invariant set to trust (a small tile that changed
        # throughout, dates years apart). Matching the spreads is safer.
        fit = fit_robust_linear(before, after, invalid)
        return RadiometricFit(fit.gain, fit.offset, "linear", {
            "reason": "IR-MAD canonical correlations below "
                      f"{min_correlation}: {[round(float(r), 3) for r in res.rho]}"})
    # Bands are fitted independently, on all cores (the same answer as one
    # after another: each fit draws from its own seeded generator).
    # Units are an image's, not a band's: one factor for all its bands.
    xs, ys = as_[:, pifs], bs[:, pifs]
    units = _units_ratio(float(np.median([_spread_ratio(x, y)
                                          for x, y in zip(xs, ys, strict=True)])))
    with ThreadPoolExecutor(max_workers=min(bs.shape[0], os.cpu_count() or 1)) as pool:
        fits = list(pool.map(_band_fit, xs, ys, [units] * len(xs)))
    gains = [g for g, _, _, _ in fits]
    offsets = [o for _, o, _, _ in fits]
    used = [float(inl.mean()) for _, _, inl, _ in fits]
    spreads = [k + 1 for k, (*_, matched) in enumerate(fits) if matched]
    return RadiometricFit(tuple(gains), tuple(offsets), "irmad", {
        "pif_fraction": round(float(pifs.mean()), 4),
        "inlier_fraction": [round(u, 4) for u in used],
        **({"spreads_matched": spreads} if spreads else {}),
        "canonical_correlations": [round(float(r), 5) for r in res.rho],
        "iterations": res.iterations,
        "converged": res.converged,
    })


def _spread_ratio(x: NDArray[np.float64], y: NDArray[np.float64]) -> float:
    # y's interquartile range over x's (1 when either is flat).
    qx, qy = np.percentile(x, [25, 75]), np.percentile(y, [25, 75])
    sx, sy = float(qx[1] - qx[0]), float(qy[1] - qy[0])
    return sy / sx if sx > 0 and sy > 0 else 1.0


def _units_ratio(spread_ratio: float) -> float:
    # 1 when the dates spread alike (within a factor _UNITS_APART: the scene
    # differs, haze, sun, and the data's own units are those in which the
    # dates' noise is alike). Otherwise they are in other units, and this is
    # the power of two nearest the ratio: exact for the commonest case,
    # another bit depth (8 against 10, 12 or 16 bits), and within 0.4 % for
    # 8 bits against reflectance in 0-1.
    if 1 / _UNITS_APART <= spread_ratio <= _UNITS_APART:
        return 1.0
    return float(2.0 ** round(math.log2(spread_ratio)))


def _band_fit(x: NDArray[np.float64], y: NDArray[np.float64], units: float,
              ) -> tuple[float, float, NDArray[np.bool_], bool]:
    # One band's map of after (x) onto before (y) on the invariant pixels:
    # the robust orthogonal line, or, when the dates hardly correlate on
    # the line's inliers (or do the other way round: no sensor inverts a
    # band), the line through their means matching their spreads (the
    # reduced major axis: always a positive gain). Also says which.
    slope, icpt, inliers = robust_orthogonal_regression(x, y, units=units)
    xi, yi = x[inliers], y[inliers]
    sx, sy = float(xi.std()), float(yi.std())
    if sx == 0 or sy == 0:
        return slope, icpt, inliers, False
    r = float(((xi - xi.mean()) * (yi - yi.mean())).mean()) / (sx * sy)
    if r >= MIN_BAND_CORRELATION and slope > 0:
        return slope, icpt, inliers, False
    gain = sy / sx
    return gain, float(yi.mean()) - gain * float(xi.mean()), inliers, True


def fit_robust_linear(before: NDArray[np.floating], after: NDArray[np.floating],
                      invalid: NDArray[np.bool_]) -> RadiometricFit:
    """Match each band's median and interquartile range.

    Robust to change covering up to about a quarter of the overlap, which
    moves the quartiles little.

    Parameters
    ----------
    before, after : (bands, H, W) ndarray
    invalid : (H, W) ndarray of bool
        True where either image is invalid.

    Returns
    -------
    RadiometricFit
    """
    b = sample_valid(before, invalid)
    a = sample_valid(after, invalid)
    gains, offsets = [], []
    for bb, aa in zip(b, a, strict=False):
        if bb.size == 0:
            gains.append(1.0)
            offsets.append(0.0)
            continue
        qb = np.percentile(bb, [25, 50, 75])
        qa = np.percentile(aa, [25, 50, 75])
        spread_a = float(qa[2] - qa[0])
        gain = float(qb[2] - qb[0]) / spread_a if spread_a > 0 else 1.0
        gains.append(gain)
        offsets.append(float(qb[1] - gain * qa[1]))
    return RadiometricFit(tuple(gains), tuple(offsets), "linear")


@dataclass(frozen=True)
class HistogramFit:
    """Per-band monotone maps of after's quantiles onto before's.

    Attributes
    ----------
    after_quantiles, before_quantiles : tuple of tuple of float
        For each band, matching quantiles of the two dates (increasing).
    """

    after_quantiles: tuple[tuple[float, ...], ...]
    before_quantiles: tuple[tuple[float, ...], ...]
    method: str = "histogram"

    def to_dict(self) -> dict[str, object]:
        """Plain-typed description, for metadata."""
        return {"method": self.method, "quantiles": len(self.after_quantiles[0])
                if self.after_quantiles else 0}


def fit_histogram(before: NDArray[np.floating], after: NDArray[np.floating],
                  invalid: NDArray[np.bool_], *, quantiles: int = 256) -> HistogramFit:
    """Histogram matching: map each band of after so its distribution is before's.

    A simple alternative to :func:`fit_irmad` that assumes the two dates
    hold the same mix of surfaces: robust to any monotone radiometric
    change (not only linear), but change that alters the mix (a new
    district, a season) bends the map [1]_.

    Parameters
    ----------
    before, after : (bands, H, W) ndarray
    invalid : (H, W) ndarray of bool
    quantiles : int, optional
        Number of matched quantiles per band.

    Returns
    -------
    HistogramFit

    References
    ----------
    .. [1] Gonzalez, R. C. and Woods, R. E. (2018). Digital Image
           Processing, 4th ed., section 3.3 (histogram matching).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> b = rng.gamma(4, 20, (2, 64, 64)).astype(np.float32)
    >>> a = np.sqrt(b) * 10                         # a non-linear change
    >>> fit = fit_histogram(b, a, np.zeros((64, 64), bool))
    >>> bool(np.abs(apply_normalisation(a, fit) - b).max() < 2)
    True
    """
    bs = sample_valid(before, invalid)
    as_ = sample_valid(after, invalid)
    q = np.linspace(0, 100, quantiles)
    if bs.shape[1] == 0:
        ident = tuple((0.0, 1.0) for _ in range(before.shape[0]))
        return HistogramFit(ident, ident)
    qa = np.percentile(as_, q, axis=1).T
    qb = np.percentile(bs, q, axis=1).T
    # np.interp needs increasing x: merge ties of after's quantiles.
    a_out, b_out = [], []
    for xa, xb in zip(qa, qb, strict=True):
        xa, idx = np.unique(xa, return_index=True)
        a_out.append(tuple(float(v) for v in xa))
        b_out.append(tuple(float(v) for v in xb[idx]))
    return HistogramFit(tuple(a_out), tuple(b_out))


NormalisationFit = RadiometricFit | HistogramFit


def fit_normalisation(before: NDArray[np.floating], after: NDArray[np.floating],
                      invalid: NDArray[np.bool_], *, method: NormaliseMethod = "irmad",
                      ) -> NormalisationFit:
    """Estimate the map from after's radiometry to before's.

    Parameters
    ----------
    method : {"irmad", "histogram", "linear", "none"}
        ``"irmad"``: orthogonal regression on IR-MAD invariant pixels;
        ``"histogram"``: histogram matching (:func:`fit_histogram`);
        ``"linear"``: per-band median and interquartile range matching;
        ``"none"``: the identity.

    Raises
    ------
    ValueError
        If `method` is unknown.
    """
    if method not in NORMALISE_METHODS:
        raise ValueError(f"normalisation method must be one of {NORMALISE_METHODS}, "
                         f"not {method!r}")
    nb = before.shape[0]
    if method == "none":
        return RadiometricFit((1.0,) * nb, (0.0,) * nb, "none")
    if method == "linear":
        return fit_robust_linear(before, after, invalid)
    if method == "histogram":
        return fit_histogram(before, after, invalid)
    return fit_irmad(before, after, invalid)


def apply_normalisation(after: NDArray[np.floating], fit: NormalisationFit, *,
                        out: NDArray[np.float32] | None = None) -> NDArray[np.float32]:
    """Apply a fit to `after`.

    Pixel by pixel: applies to any block. Returns a new float32 array (the
    input is not changed) unless `out` is given, which may be `after`
    itself when the caller owns it.
    """
    if out is None:
        out = np.empty(after.shape, np.float32)
    if isinstance(fit, HistogramFit):
        for i, (xa, xb) in enumerate(zip(fit.after_quantiles, fit.before_quantiles,
                                         strict=True)):
            out[i] = np.interp(after[i], xa, xb)
        return out
    np.multiply(after, np.asarray(fit.gain, np.float32)[:, None, None], out=out)
    out += np.asarray(fit.offset, np.float32)[:, None, None]
    return out
