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

from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np
from numpy.typing import NDArray
from scipy import linalg, special

__all__ = [
    "NormaliseMethod",
    "NORMALISE_METHODS",
    "RadiometricFit",
    "IRMAD",
    "sample_valid",
    "irmad",
    "orthogonal_regression",
    "fit_irmad",
    "fit_robust_linear",
    "fit_normalisation",
    "apply_normalisation",
]

NormaliseMethod = Literal["irmad", "linear", "none"]

#: Pixels sampled for IR-MAD: enough for a 6-band covariance many times over.
_IRMAD_SAMPLES = 100_000
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
    """A deterministic random sample of valid pixels.

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
    """Iteratively reweighted multivariate alteration detection (IR-MAD).

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
    for it in range(1, max_iter + 1):
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


def fit_irmad(before: NDArray[np.floating], after: NDArray[np.floating],
              invalid: NDArray[np.bool_], *, pif_probability: float = 0.9,
              min_pifs: int = 100) -> RadiometricFit:
    """Normalise on pseudo-invariant pixels found by IR-MAD.

    Pixels whose no-change probability exceeds `pif_probability` are the
    pseudo-invariant features; each band of after is mapped onto before by
    orthogonal regression on them [2]_.

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
    bs = sample_valid(before, invalid, max_samples=_IRMAD_SAMPLES).astype(np.float64)
    as_ = sample_valid(after, invalid, max_samples=_IRMAD_SAMPLES).astype(np.float64)
    if bs.shape[1] < max(min_pifs, 3 * bs.shape[0]):
        return fit_robust_linear(before, after, invalid)
    res = irmad(bs, as_)
    pifs = res.no_change_probability(bs, as_) > pif_probability
    if int(pifs.sum()) < min_pifs:
        return fit_robust_linear(before, after, invalid)
    gains, offsets = [], []
    for i in range(bs.shape[0]):
        g, o = orthogonal_regression(as_[i, pifs], bs[i, pifs])
        gains.append(g)
        offsets.append(o)
    return RadiometricFit(tuple(gains), tuple(offsets), "irmad", {
        "pif_fraction": round(float(pifs.mean()), 4),
        "canonical_correlations": [round(float(r), 5) for r in res.rho],
        "iterations": res.iterations,
        "converged": res.converged,
    })


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
    for bb, aa in zip(b, a):
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


def fit_normalisation(before: NDArray[np.floating], after: NDArray[np.floating],
                      invalid: NDArray[np.bool_], *, method: NormaliseMethod = "irmad",
                      ) -> RadiometricFit:
    """Estimate the map from after's radiometry to before's.

    Parameters
    ----------
    method : {"irmad", "linear", "none"}
        ``"irmad"``: orthogonal regression on IR-MAD invariant pixels;
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
    return fit_irmad(before, after, invalid)


def apply_normalisation(after: NDArray[np.floating], fit: RadiometricFit,
                        ) -> NDArray[np.float32]:
    """Apply a fit to `after` (a new float32 array; the input is not changed)."""
    gain = np.asarray(fit.gain, np.float32)[:, None, None]
    offset = np.asarray(fit.offset, np.float32)[:, None, None]
    return (after * gain + offset).astype(np.float32, copy=False)
