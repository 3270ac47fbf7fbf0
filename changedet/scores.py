"""Per-pixel change scores: ``(bands, H, W)`` pairs in, ``(H, W)`` scores out.

Every method comes as a pair: ``fit_<method>`` estimates a small frozen set
of parameters once, from the whole overlap (or a sample of it), and
``score_<method>`` applies them to any block; ``params.radius`` says how
many pixels of context around a block the score needs.

Scores are in units of the no-change noise: the square root of a variable
that is chi-square distributed with ``params.dof`` degrees of freedom where
nothing changed. A threshold therefore means the same thing on any pair and
for any method: a score of 5 is five standard deviations of what unchanged
ground looks like between these two dates.

Methods
-------
``cva``
    Change-vector magnitude, whitened by the no-change covariance [1]_.
``logratio``
    The same on the logarithm of the dark-corrected values, where
    multiplicative effects (gain, illumination) become additive [2]_.
``irmad``
    The chi-square statistic of the IR-MAD variates [3]_, invariant to any
    linear radiometric change of either date.
``structure``
    Change of local structure: the windowed variance of the log-ratio,
    which a gain, a shade or a season's change of colour leave flat, and a
    new outline, surface or texture does not (cf. the structure term of
    SSIM [4]_).

Two nuisance models may be attached to any method: a shadow model (a pixel
that one date merely shades, as the sun moves, is not change) and a
vegetation gate (a pixel vegetated at both dates, by NDVI, is not a new or
removed structure, however its colour changed with the season).

References
----------
.. [1] Malila, W. A. (1980). Change vector analysis: an approach for
       detecting forest changes with Landsat. LARS Symposia, paper 385.
.. [2] Bovolo, F. and Bruzzone, L. (2005). A detail-preserving scale-driven
       approach to change detection in multitemporal SAR images. IEEE TGRS
       43(12), 2963-2972. :doi:`10.1109/TGRS.2005.857987`
.. [3] Nielsen, A. A. (2007). The regularized iteratively reweighted MAD
       method for change detection in multi- and hyperspectral data. IEEE
       TIP 16(2), 463-478. :doi:`10.1109/TIP.2006.888195`
.. [4] Wang, Z., Bovik, A. C., Sheikh, H. R. and Simoncelli, E. P. (2004).
       Image quality assessment: from error visibility to structural
       similarity. IEEE TIP 13(4), 600-612. :doi:`10.1109/TIP.2003.819861`
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from changedet import chi2
from changedet.features import low_percentile
from changedet.radiometry import IRMAD, irmad, sample_valid

__all__ = [
    "ScoreMethod",
    "SCORE_METHODS",
    "NoiseModel",
    "ShadowModel",
    "VegetationGate",
    "CVAParams",
    "LogRatioParams",
    "IRMADParams",
    "StructureParams",
    "ScoreParams",
    "fit_noise",
    "fit_shadow",
    "vegetation_mask",
    "vegetation_at",
    "default_vegetation_gate",
    "vegetation_gate_for",
    "fit_cva",
    "score_cva",
    "change_direction",
    "fit_logratio",
    "score_logratio",
    "fit_irmad",
    "score_irmad",
    "fit_structure",
    "score_structure",
    "fit_score",
    "score_change",
]

log = logging.getLogger(__name__)

ScoreMethod = Literal["cva", "logratio", "irmad", "structure"]
SCORE_METHODS: tuple[str, ...] = get_args(ScoreMethod)

#: Shadow fraction range a shaded pixel may show: full shadow is 1; less
#: would let any neutral darkening (a grey roof on paving) pass as shade.
_SHADOW_ALPHA = (0.7, 1.15)


# ----------------------------------------------------------------- noise model


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
        # Every strip of every block asks: computed once per model.
        return _whitening(self.cov).copy()

    def to_dict(self) -> dict[str, object]:
        """Plain-typed description, for metadata."""
        return {"mean": [round(m, 6) for m in self.mean],
                "std": [round(float(np.sqrt(self.cov[i][i])), 6) for i in range(self.bands)],
                "inlier_fraction": round(self.inlier_fraction, 4)}


@functools.lru_cache(maxsize=16)
def _whitening(cov: tuple[tuple[float, ...], ...]) -> NDArray[np.float32]:
    c = np.asarray(cov, np.float64)
    # A floor keeps a constant band (zero variance) from blowing up.
    floor = max(float(np.trace(c)) / len(c), 1e-12) * 1e-6
    chol = np.linalg.cholesky(c + floor * np.eye(len(c)))
    return np.linalg.inv(chol).astype(np.float32)


def _identity_noise(nb: int) -> NoiseModel:
    return NoiseModel((0.0,) * nb, tuple(tuple(float(i == j) for j in range(nb))
                                         for i in range(nb)), 0.0)


def _robust_moments(d: NDArray[np.float64], *, quantile: float = 0.5, iterations: int = 8,
                    ) -> NoiseModel:
    # Reweighted trimmed mean and covariance of (k, n) samples; see fit_noise.
    nb = d.shape[0]
    if d.shape[1] < nb + 2:
        return _identity_noise(nb)
    # Start from the median and a MAD-based diagonal, which ignore change.
    mean = np.median(d, axis=1)
    mad = np.median(np.abs(d - mean[:, None]), axis=1) * 1.4826
    cov = np.diag(np.maximum(mad, 1e-6) ** 2)
    cut = chi2.ppf(quantile, nb)
    # Covariance of a normal truncated to its `quantile` region, relative to full.
    consistency = chi2.cdf(cut, nb + 2) / quantile
    keep = np.ones(d.shape[1], bool)
    # Squared Mahalanobis distances as (inv @ c) * c summed over bands, in
    # buffers kept across iterations: a three-operand einsum took four
    # times as long.
    c, y = np.empty_like(d), np.empty_like(d)
    for _ in range(iterations):
        inv = np.linalg.pinv(cov)
        np.subtract(d, mean[:, None], out=c)
        np.matmul(inv, c, out=y)
        y *= c
        t = y.sum(axis=0)
        new_keep = t < cut
        kept = int(new_keep.sum())
        if kept < nb + 2:
            break
        # np.cov's own steps on one copy of the kept pixels (np.cov copied
        # them again): the same mean and covariance, bit for bit.
        x = d[:, new_keep]
        mean = x.mean(axis=1)
        x -= mean[:, None]
        cov = np.dot(x, x.T.conj())
        cov *= np.true_divide(1, kept - 1)
        cov = np.atleast_2d(cov / consistency)
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    return NoiseModel(tuple(float(m) for m in mean),
                      tuple(tuple(float(v) for v in row) for row in cov),
                      float(keep.mean()))


def fit_noise(before: NDArray[np.floating], after: NDArray[np.floating],
              invalid: NDArray[np.bool_], *, quantile: float = 0.5, iterations: int = 8,
              ) -> NoiseModel:
    """Robust mean and covariance of the no-change difference.

    Starts from all valid pixels, then repeatedly keeps those whose
    Mahalanobis distance is below the `quantile` of a chi-square and
    re-estimates, correcting the covariance for the truncation (a
    reweighted minimum-covariance estimate in the spirit of [1]_). Changed
    pixels, being far out, stop influencing the estimate. The default keeps
    the most alike half, as the minimum covariance determinant does: the
    differences between two real dates have heavier tails than a Gaussian,
    and a wider share would measure the tails rather than the core.

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
    d = (sample_valid(after, invalid) - sample_valid(before, invalid)).astype(np.float64)
    return _robust_moments(d, quantile=quantile, iterations=iterations)


# ---------------------------------------------------------------- shadows


@dataclass(frozen=True)
class ShadowModel:
    """How a shadow changes a pixel: ``shaded - dark = ratio * (lit - dark)``.

    A shadow leaves only skylight, a fixed share of the light in each band
    whatever the surface (weaker and bluer than direct sun) [1]_, so the
    dark-corrected values of a shaded pixel are those of the lit pixel times
    a per-band ratio.

    Attributes
    ----------
    dark : tuple of float
        Per-band dark level (path radiance and sensor offset), in the
        before image's units.
    ratio : tuple of float
        Per-band shaded-to-lit ratio of dark-corrected values.
    support : int
        Sampled pixels the estimate rests on.

    References
    ----------
    .. [1] Tsai, V. J. D. (2006). A comparative study on shadow compensation
           of color aerial images in invariant color models. IEEE TGRS 44(6),
           1661-1671. :doi:`10.1109/TGRS.2006.869980`
    """

    dark: tuple[float, ...]
    ratio: tuple[float, ...]
    support: int = 0

    def to_dict(self) -> dict[str, object]:
        """Plain-typed description, for metadata."""
        return {"dark": [round(v, 4) for v in self.dark],
                "ratio": [round(v, 4) for v in self.ratio], "support": self.support}


def _dark_level(before: NDArray[np.floating], after: NDArray[np.floating],
                valid: NDArray[np.bool_] | None = None) -> NDArray[np.float64]:
    # The darkest valid values of either date (dark-object subtraction), band
    # by band: one band's values at a time, not a float64 copy of both stacks.
    def values(band: NDArray[np.floating]) -> NDArray[np.float64]:
        return np.asarray(band if valid is None else band[valid], np.float64)

    return np.array([low_percentile(np.concatenate([values(b), values(a)]), 0.05)
                     for b, a in zip(before, after, strict=True)])


def _shade_fit(lit: NDArray[np.float64], shade: NDArray[np.float64], ratio: NDArray[np.float64],
               wm: NDArray[np.float64], cut: float,
               ) -> tuple[NDArray[np.bool_], NDArray[np.float64]]:
    # Which pixels `shade = (alpha * ratio + 1 - alpha) * lit` explains within
    # the noise (alpha from 0.2, a fringe, to 1.15, full shade), and alpha.
    wd = wm @ (lit - shade)
    wu = wm @ ((1 - ratio)[:, None] * lit)
    alpha = np.clip((wd * wu).sum(axis=0) / np.maximum((wu * wu).sum(axis=0), 1e-12), 0.2, 1.15)
    r = wd - alpha * wu
    return (r * r).sum(axis=0) < cut, alpha


@dataclass(frozen=True)
class _ShadeRegions:
    # What fit_shadow finds before it needs the noise model: pixels one date
    # shades and the other lights, grouped in regions, and each large
    # region's proposed ratio.
    dark: NDArray[np.float64]
    lit: NDArray[np.float64]        # (bands, n): dark-corrected, lit date
    shade: NDArray[np.float64]      # (bands, n): the same pixels, shaded date
    lab: NDArray[np.int32]          # (n,) region of each pixel
    regions: NDArray[np.intp]       # regions of 4 pixels or more
    sizes: NDArray[np.intp]         # pixels a region, by label
    proposals: NDArray[np.float64]  # (hypotheses, bands)
    step: int


def _shade_regions(before: NDArray[np.floating], after: NDArray[np.floating],
                   invalid: NDArray[np.bool_], *, min_regions: int, max_pixels: int,
                   max_hypotheses: int) -> _ShadeRegions | None:
    # fit_shadow's search for shade, which does not depend on the noise.
    nb, h, w = before.shape
    step = max(int(np.sqrt(h * w / max_pixels)), 1)
    b, a = before[:, ::step, ::step], after[:, ::step, ::step]
    valid = ~invalid[::step, ::step]
    if valid.sum() < 100:
        return None
    dark = _dark_level(b, a, valid)

    def corrected(data: NDArray[np.floating], at: NDArray[np.bool_]) -> NDArray[np.float64]:
        # Dark-corrected values, float64, (bands, n) of the pixels `at`.
        return np.maximum(np.asarray(data[:, at], np.float64) - dark[:, None], 0)

    def brightness(data: NDArray[np.floating]) -> NDArray[np.float64]:
        # The dark-corrected bands' sum, a band at a time (the same additions
        # in the same order as summing a float64 copy of the stack).
        out = np.zeros(data.shape[1:])
        for band, d in zip(data, dark, strict=True):
            out += np.maximum(np.asarray(band, np.float64) - d, 0)
        return out

    sb, sa = brightness(b), brightness(a)
    # The lit side must be bright enough for a ratio to mean something.
    lit_floor = 0.3 * float(np.median(np.maximum(sb, sa)[valid]))
    # A shade is also darker than the ground around it at its own date (a
    # bright roof removed leaves paving no darker than its surroundings).
    size = max(int(round(SHADE_WINDOW / step)), 5)
    a_shaded = valid & (sa < 0.6 * sb) & (sb > lit_floor) & _darker_than_around(sa, size)
    b_shaded = valid & (sb < 0.6 * sa) & (sa > lit_floor) & _darker_than_around(sb, size)
    del sb, sa
    cand = a_shaded | b_shaded
    # Regions are places: fragments a few pixels apart (one object broken up
    # by its texture) count once.
    places = ndimage.binary_dilation(cand, structure=np.ones((3, 3), bool), iterations=2)
    labels, n = ndimage.label(places, structure=np.ones((3, 3), bool))
    if n < min_regions:
        return None
    lab = labels[cand]
    after_shaded = a_shaded[cand]
    yb, ya = corrected(b, cand), corrected(a, cand)
    del b, a
    lit = np.where(after_shaded, yb, ya)
    shade = np.where(after_shaded, ya, yb)
    del yb, ya
    bright = shade.sum(axis=0) / np.maximum(lit.sum(axis=0), 1e-6)
    sizes = np.bincount(lab, minlength=n + 1)
    regions = np.flatnonzero(sizes >= 4)
    if regions.size < min_regions:
        return None
    hyp = regions[np.argsort(sizes[regions])[::-1][:max_hypotheses]]
    hyp = hyp[sizes[hyp] >= 8]
    # Each region's core: its darkest third (fringes are partly lit).
    order = np.lexsort((bright, lab))
    starts = np.searchsorted(lab[order], hyp)
    core_cut = bright[order][starts + (sizes[hyp] - 1) // 3]
    cut_of = np.full(n + 1, -np.inf)
    cut_of[hyp] = core_cut
    core = bright <= cut_of[lab]
    q = shade / np.maximum(lit, 1e-6)
    proposals = np.stack([np.asarray(ndimage.median(qb[core], lab[core], hyp)) for qb in q],
                         axis=1) if hyp.size else np.zeros((0, nb))
    return _ShadeRegions(dark, lit, shade, lab, regions, sizes, proposals, step)


def _shadow_model(found: _ShadeRegions, noise: NoiseModel, min_regions: int,
                  ) -> ShadowModel | None:
    # fit_shadow's choice among the proposals, judged within the noise.
    nb = found.lit.shape[0]
    lit, shade, lab, regions, sizes = found.lit, found.shade, found.lab, found.regions, \
        found.sizes
    wm = noise.whitening().astype(np.float64)
    cut = float(chi2.ppf(0.99, nb))
    in_region = np.isin(lab, regions)
    best, best_count = None, 0
    for k in found.proposals:
        if not np.all((k > 0.02) & (k < 0.9)):
            continue
        ok, _ = _shade_fit(lit, shade, k, wm, cut)
        share = np.bincount(lab[in_region], weights=ok[in_region], minlength=sizes.size)
        count = int((share[regions] >= 0.5 * sizes[regions]).sum())
        if count > best_count:
            best, best_count = k, count
    if best is None or best_count < min_regions:
        return None
    ok, alpha = _shade_fit(lit, shade, best, wm, cut)
    full = ok & (alpha > 0.8)
    if full.sum() < 10:
        return None
    lf, sf = lit[:, full], shade[:, full]
    ratio = (lf * sf).sum(axis=1) / np.maximum((lf * lf).sum(axis=1), 1e-12)
    if not (np.all((ratio > 0.05) & (ratio < 0.6)) and ratio.mean() < 0.5):
        return None
    if nb in (3, 4) and ratio[2] < ratio[0]:
        # Taking bands 1-3 as red, green, blue (RGB and RGBN imagery): shade
        # is lit by the sky alone, bluer than the sun, so it keeps more blue
        # than red. A ratio that does not is a darker material, not shade.
        return None
    return ShadowModel(tuple(float(v) for v in found.dark), tuple(float(v) for v in ratio),
                       int(ok.sum()) * found.step * found.step)


#: fit_shadow's defaults: fewest regions explained, largest input (pixels),
#: most proposals tried.
_MIN_SHADE_REGIONS, _MAX_SHADE_PIXELS, _MAX_SHADE_HYPOTHESES = 4, 2_000_000, 200


def fit_shadow(before: NDArray[np.floating], after: NDArray[np.floating],
               invalid: NDArray[np.bool_], noise: NoiseModel, *,
               min_regions: int = _MIN_SHADE_REGIONS, max_pixels: int = _MAX_SHADE_PIXELS,
               max_hypotheses: int = _MAX_SHADE_HYPOTHESES) -> ShadowModel | None:
    """Estimate the shadow ratio from pixels that one date shades and the other not.

    Candidates are pixels whose dark-corrected brightness is less than 60 %
    of the other date's and than 60 % of the brightest ground within
    :data:`SHADE_WINDOW` pixels (something lit is near a shade), grouped
    into connected regions. Each region's darkest core proposes a ratio;
    the proposal that explains most regions
    wins (shade, full or partial, scales the lit values by
    ``alpha * ratio + 1 - alpha``), and is refined by least squares on the
    fully shaded pixels it explains. Shadows of many objects agree on one
    ratio; a new dark roof only explains itself and roofs like it.

    Parameters
    ----------
    before, after : (bands, H, W) ndarray
        Normalised, co-registered images (a decimated version will do).
    invalid : (H, W) ndarray of bool
    noise : NoiseModel
        No-change noise of ``after - before``.
    min_regions : int, optional
        Fewest separate regions the model must explain.
    max_pixels : int, optional
        Larger inputs are strided down to about this many pixels.
    max_hypotheses : int, optional
        Largest regions whose ratio is tried.

    Returns
    -------
    ShadowModel or None
        None when no ratio explains enough regions, or the ratio is not
        that of shade: every band's ratio below 0.6 and their mean below
        0.5 (shade is dark), and, for three or four bands taken as red,
        green, blue (and near-infrared), no less blue kept than red (shade
        is lit by the blue sky only).
    """
    found = _shade_regions(before, after, invalid, min_regions=min_regions,
                           max_pixels=max_pixels, max_hypotheses=max_hypotheses)
    return None if found is None else _shadow_model(found, noise, min_regions)


#: Floor of the log-ratio's logarithm, as a share of the median level.
FLOOR_SHARE = 0.5

#: Window (pixels) around a shade in which something lit must be brighter.
SHADE_WINDOW = 61

#: A shade is darker than this share of the brightest ground in the window.
SHADE_CONTRAST = 0.6


def _darker_than_around(bright: NDArray[np.floating], window: int) -> NDArray[np.bool_]:
    # A shade has lit ground near it (the shadow's own caster, or the ground
    # beyond the shadow), far brighter; a field ploughed dark does not.
    return bright < SHADE_CONTRAST * ndimage.maximum_filter(bright, window, mode="nearest")


def _locally_dark(data: NDArray[np.floating], dark: tuple[float, ...]) -> NDArray[np.bool_]:
    # Dark-corrected brightness well below the brightest nearby (context:
    # SHADE_WINDOW // 2 pixels).
    bright = np.maximum(np.asarray(data, np.float32)
                        - np.asarray(dark, np.float32)[:, None, None], 0).sum(axis=0)
    return _darker_than_around(bright, SHADE_WINDOW)


def _shadow_residual(d: NDArray[np.float32], u: NDArray[np.float32],
                     w: NDArray[np.float32]) -> NDArray[np.float32]:
    # Whitened length of d - alpha * u, alpha fitted and kept within _SHADOW_ALPHA.
    wd = np.tensordot(w, d, axes=1)
    wu = np.tensordot(w, u, axes=1)
    alpha = (wd * wu).sum(axis=0) / np.maximum((wu * wu).sum(axis=0), 1e-12)
    alpha = np.clip(alpha, *_SHADOW_ALPHA)
    r = wd - alpha[None] * wu
    return np.sqrt((r * r).sum(axis=0))


def _apply_shadow(score: NDArray[np.float32], before: NDArray[np.floating],
                  after: NDArray[np.floating], shadow: ShadowModel, w: NDArray[np.float32],
                  mean: NDArray[np.float32], candidates: _Candidates) -> None:
    # In place: where one date is only the other in shade, the score is the
    # distance from that explanation instead.
    if not candidates.at[0].size:
        return
    # Only a pixel darker than the ground around it at its date can be in
    # shade there (a field ploughed dark is as dark as its neighbours).
    in_shade_b = _locally_dark(before, shadow.dark) & candidates.mask
    in_shade_a = _locally_dark(after, shadow.dark) & candidates.mask
    dark = np.asarray(shadow.dark, np.float32)[:, None]
    k = np.asarray(shadow.ratio, np.float32)[:, None]
    for shaded, after_is_shaded in ((in_shade_a, True), (in_shade_b, False)):
        rows, cols = np.nonzero(shaded)
        if rows.size == 0:
            continue
        b = before[:, rows, cols].astype(np.float32) - dark
        a = after[:, rows, cols].astype(np.float32) - dark
        d = a - b - mean[:, None]
        u = (k - 1) * b if after_is_shaded else (1 - k) * a
        score[rows, cols] = np.minimum(score[rows, cols], _shadow_residual(d, u, w))


# ------------------------------------------------------------- vegetation


@dataclass(frozen=True)
class VegetationGate:
    """Which bands hold red and near-infrared, and when a pixel is vegetation.

    Attributes
    ----------
    red, nir : int
        0-based band indexes in the stack.
    ndvi_min : float
        NDVI above which a pixel is vegetation.
    blue, green : int, optional
        0-based band indexes of blue and green; when given, a pixel is
        vegetation only if it reflects no more blue than green or red, so
        blue paint (high NDVI with many pigments) is not taken for grass.
    dark : tuple of float
        Per-band dark level removed before computing NDVI.
    """

    red: int
    nir: int
    ndvi_min: float = 0.15
    blue: int | None = None
    green: int | None = None
    dark: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, object]:
        """Plain-typed description, for metadata."""
        return {"red": self.red, "nir": self.nir, "ndvi_min": self.ndvi_min}


#: NDVI smoothing of vegetation_mask: a Gaussian of one pixel, to 3 sigma.
_NDVI_SIGMA, _NDVI_TRUNCATE = 1.0, 3.0


def _ndvi(red: NDArray[np.float32], nir: NDArray[np.float32]) -> NDArray[np.float32]:
    return (nir - red) / np.maximum(np.abs(nir + red), 1e-6)


def vegetation_mask(data: NDArray[np.floating], gate: VegetationGate) -> NDArray[np.bool_]:
    """Flag vegetation: where NDVI is above ``gate.ndvi_min``.

    NDVI is smoothed over a pixel or so first, so that the texture of a
    field does not break it into speckle (context needed: 3 pixels).

    Parameters
    ----------
    data : (bands, H, W) ndarray
    gate : VegetationGate

    Returns
    -------
    (H, W) ndarray of bool

    Examples
    --------
    >>> grass = np.array([8, 16, 6, 45], np.float32).reshape(4, 1, 1)
    >>> roof = np.array([28, 28, 30, 31], np.float32).reshape(4, 1, 1)
    >>> g = VegetationGate(red=0, nir=3)
    >>> bool(vegetation_mask(grass, g)[0, 0]), bool(vegetation_mask(roof, g)[0, 0])
    (True, False)
    """
    def band(i: int) -> NDArray[np.float32]:
        v = np.asarray(data[i], np.float32)
        return v - np.float32(gate.dark[i]) if gate.dark else v

    red = band(gate.red)
    veg = ndimage.gaussian_filter(_ndvi(red, band(gate.nir)), _NDVI_SIGMA, mode="nearest",
                                  truncate=_NDVI_TRUNCATE) > gate.ndvi_min
    if gate.blue is not None and gate.green is not None:
        veg &= band(gate.blue) <= np.maximum(band(gate.green), red)
    return veg


def _gate(score: NDArray[np.float32], before: NDArray[np.floating],
          after: NDArray[np.floating], gate: VegetationGate | None,
          at: tuple[NDArray[np.intp], NDArray[np.intp]] | None = None) -> None:
    # In place: 0 where a candidate pixel (default: every pixel) is
    # vegetation at both dates (the season changes a field's colour; it is
    # not a structure built or removed). The scores that know their
    # candidates gate only those: the others keep their plain score (below
    # the candidates' cut, which the default threshold lies above; a lower
    # threshold sees them ungated), and the gate then costs a few percent
    # of the pixels' neighbourhoods instead of two smoothed NDVI images a
    # strip. A new roof painted with a pigment as bright in the
    # near-infrared as leaves (some green paints are) on grass is missed:
    # NDVI cannot tell them apart.
    if gate is None:
        return
    if at is None:
        veg = vegetation_mask(before, gate)
        if veg.any():  # built-up strips: no need to look at the other date
            veg &= vegetation_mask(after, gate)
            score[veg] = 0
        return
    rows, cols = at
    veg = vegetation_at(before, gate, rows, cols)
    rows, cols = rows[veg], cols[veg]
    veg = vegetation_at(after, gate, rows, cols)
    score[rows[veg], cols[veg]] = 0


@functools.cache
def _ndvi_kernel() -> NDArray[np.float64]:
    # vegetation_mask's smoothing kernel, one axis (scipy's Gaussian kernel).
    radius = int(_NDVI_TRUNCATE * _NDVI_SIGMA + 0.5)
    x = np.arange(-radius, radius + 1)
    k = np.exp(-0.5 * x * x / _NDVI_SIGMA ** 2)
    return k / k.sum()


def _smooth(taps: Callable[[int], NDArray[np.floating]]) -> NDArray[np.float64]:
    # One axis of vegetation_at's smoothing, given the values at each
    # offset: one float64 multiply-add at a time in a fixed order, so that a
    # pixel's own neighbourhood and shifted whole images give the same bits.
    # (Given float64 values, no tap is copied; the products go through one
    # scratch array: the same operations, fewer passes over memory.)
    k = _ndvi_kernel()
    radius = k.size // 2
    out = np.multiply(np.asarray(taps(-radius), np.float64), k[0])
    tmp = np.empty_like(out)
    for i in range(1 - radius, radius + 1):
        out += np.multiply(np.asarray(taps(i), np.float64), k[i + radius], out=tmp)
    return out


def vegetation_at(data: NDArray[np.floating], gate: VegetationGate, rows: NDArray[np.intp],
                  cols: NDArray[np.intp]) -> NDArray[np.bool_]:
    """:func:`vegetation_mask` at some pixels only.

    When few pixels are asked for, each one's smoothed NDVI is computed
    from its own neighbourhood (the image's edge repeated past it, as
    :func:`vegetation_mask` does), so the cost follows their number, not
    the image's size; when many are (a flood is all change), from the whole
    image. Both give the same bits. The answers are those of
    :func:`vegetation_mask` but for the rounding of the smoothing (a pixel
    within ~1e-6 of ``gate.ndvi_min`` may differ).

    Parameters
    ----------
    data : (bands, H, W) ndarray
    gate : VegetationGate
    rows, cols : (n,) ndarray of int

    Returns
    -------
    (n,) ndarray of bool
    """
    _, h, w = data.shape
    radius = _ndvi_kernel().size // 2

    def band(i: int, at: Any = ...) -> NDArray[np.float32]:
        v = np.asarray(data[i][at] if at is not ... else data[i], np.float32)
        return v - np.float32(gate.dark[i]) if gate.dark else v

    def is_vegetation(smoothed: NDArray[np.float64], at: Any) -> NDArray[np.bool_]:
        veg = smoothed > gate.ndvi_min
        if gate.blue is not None and gate.green is not None:
            veg &= band(gate.blue, at) <= np.maximum(band(gate.green, at), band(gate.red, at))
        return veg

    # Down the columns, then along the rows.
    if not rows.size:
        return np.zeros(0, bool)
    r0, r1, c0, c1 = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
    if (r1 - r0 + 2 * radius) * (c1 - c0 + 2 * radius) <= rows.size * _DENSE_NDVI_RATIO:
        # Over the pixels' bounding box (and the kernel's reach around it;
        # the image's edge repeated past it, as np.pad does): the same
        # operations on the same values as whole, for any box.
        y0, y1 = max(r0 - radius, 0), min(r1 + radius, h)
        x0, x1 = max(c0 - radius, 0), min(c1 + radius, w)
        box = np.s_[y0:y1, x0:x1]
        pad = np.pad(_ndvi(band(gate.red, box), band(gate.nir, box)).astype(np.float64),
                     ((y0 - (r0 - radius), r1 + radius - y1),
                      (x0 - (c0 - radius), c1 + radius - x1)), mode="edge")
        bh, bw = r1 - r0, c1 - c0
        down = _smooth(lambda i: pad[radius + i:radius + i + bh])
        smoothed = _smooth(lambda j: down[:, radius + j:radius + j + bw])
        return is_vegetation(smoothed[rows - r0, cols - c0], (rows, cols))
    out = np.zeros(rows.size, bool)
    offsets = np.arange(-radius, radius + 1)
    for s in range(0, rows.size, _TOLERANT_CHUNK):
        r, c = rows[s:s + _TOLERANT_CHUNK], cols[s:s + _TOLERANT_CHUNK]
        rr = np.clip(r + offsets[:, None], 0, h - 1)          # (taps, n)
        cc = np.clip(c + offsets[:, None], 0, w - 1)
        ndvi = _ndvi(band(gate.red, (rr[:, None, :], cc[None, :, :])),
                     band(gate.nir, (rr[:, None, :], cc[None, :, :]))).astype(np.float64)
        # (taps, taps, n) above; (taps, n) and (n,) below.
        down = _smooth(lambda i, ndvi=ndvi: ndvi[i + radius])           # (taps, n)
        smoothed = _smooth(lambda j, down=down: down[j + radius])
        out[s:s + r.size] = is_vegetation(smoothed, (r, c))
    return out


#: Pixels of the bounding box (grown by the kernel's reach) over which
#: vegetation_at smooths NDVI whole, per pixel asked for, below which it
#: does: a pixel's own neighbourhood costs ~0.3 us, a box ~0.03 us a pixel.
#: (A block's candidates are mostly spread over it, so the box serves a
#: flood's blocks; on the 8192 px benchmark pairs, ratios of 10 to 80 made
#: no measurable difference to the gate's time.)
_DENSE_NDVI_RATIO = 10


def default_vegetation_gate(bands: int, dark: NDArray[np.floating] | None = None,
                            ) -> VegetationGate | None:
    """Return the vegetation gate for a band count: four are red, green, blue, NIR.

    That is the layout of NAIP and most four-band aerial cameras; other
    layouts (and other band counts) get no gate unless one is given
    explicitly.

    Parameters
    ----------
    bands : int
    dark : (bands,) array, optional
        Dark level to remove before computing NDVI.

    Returns
    -------
    VegetationGate or None
    """
    if bands != 4:
        return None
    return VegetationGate(red=0, nir=3, green=1, blue=2,
                          dark=() if dark is None else tuple(float(v) for v in dark))


def vegetation_gate_for(count: int | None, picked: Sequence[int] | None,
                        ) -> VegetationGate | None:
    """Return the vegetation gate for a stack of some bands of two images.

    Four-band images are red, green, blue, near-infrared (see
    :func:`default_vegetation_gate`): a stack of their bands is gated when
    it holds band 1 (red) and band 4 (NIR), wherever they sit in it. The
    bands of other images (or of two images whose band counts differ) say
    nothing of their colours: a stack of four of them is read as red,
    green, blue, NIR in the order picked, as a four-band image is.

    Parameters
    ----------
    count : int or None
        Data bands of each image (None: the two images differ).
    picked : sequence of int or None
        1-based bands stacked, in order (None: all of them).

    Returns
    -------
    VegetationGate or None

    Examples
    --------
    >>> g = vegetation_gate_for(4, [4, 2, 1])
    >>> g.red, g.nir, g.green, g.blue
    (2, 0, 1, None)
    >>> vegetation_gate_for(4, [1, 2, 3]) is None
    True
    >>> vegetation_gate_for(8, [5, 3, 2, 7]).nir     # WorldView's R, G, B, NIR1
    3
    """
    if picked is None:
        return default_vegetation_gate(count or 0)
    if count != 4:
        return default_vegetation_gate(len(picked))
    if 1 not in picked or 4 not in picked:
        return None
    at = {band: k for k, band in reversed(list(enumerate(picked)))}
    return VegetationGate(red=at[1], nir=at[4], green=at.get(2), blue=at.get(3))


# ------------------------------------------------------------- nuisances


@dataclass(frozen=True, kw_only=True)
class _Nuisances:
    # What every difference-based score may explain away: shade, the season
    # on vegetation, and a displacement of up to `tolerance` pixels.
    shadow: ShadowModel | None = None
    vegetation: VegetationGate | None = None
    tolerance: int = 1

    @property
    def radius(self) -> int:
        """Context in pixels a block needs around it."""
        return max(self.tolerance, SHADE_WINDOW // 2 if self.shadow is not None else 0,
                   3 if self.vegetation is not None else 0)

    def _nuisances(self) -> dict[str, object]:
        return {"shadow": self.shadow.to_dict() if self.shadow else None,
                "vegetation": self.vegetation.to_dict() if self.vegetation else None,
                "tolerance_px": self.tolerance}


def _noise_and_shadow(before: NDArray[np.floating], after: NDArray[np.floating],
                      invalid: NDArray[np.bool_], noise: NoiseModel | None, *, shadows: bool,
                      ) -> tuple[NoiseModel, ShadowModel | None]:
    # The no-change model of the difference (fitted unless given) and the
    # shadow model (if asked for), which needs it only to judge the shades it
    # found: the search for them runs beside the noise fit, on another core
    # (both are numpy and scipy work that releases the GIL).
    if not shadows:
        return (noise if noise is not None else fit_noise(before, after, invalid)), None
    if noise is not None:
        return noise, fit_shadow(before, after, invalid, noise)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="changedet-fit") as pool:
        pending = pool.submit(fit_noise, before, after, invalid)
        try:
            found = _shade_regions(before, after, invalid, min_regions=_MIN_SHADE_REGIONS,
                                   max_pixels=_MAX_SHADE_PIXELS,
                                   max_hypotheses=_MAX_SHADE_HYPOTHESES)
        finally:
            noise = pending.result()
    return noise, None if found is None else _shadow_model(found, noise, _MIN_SHADE_REGIONS)


def _fit_nuisances(before: NDArray[np.floating], after: NDArray[np.floating],
                   invalid: NDArray[np.bool_], noise: NoiseModel | None, *, shadows: bool,
                   vegetation: VegetationGate | None | Literal["auto"], tolerance: int,
                   ) -> dict[str, Any]:
    # The _Nuisances fields of a score's parameters. The shadow model needs
    # the no-change difference model (fitted here if not given).
    shadow = _noise_and_shadow(before, after, invalid, noise, shadows=True)[1] if shadows \
        else None
    return _nuisances(shadow, vegetation, before.shape[0], tolerance)


def _nuisances(shadow: ShadowModel | None, vegetation: VegetationGate | None | Literal["auto"],
               bands: int, tolerance: int) -> dict[str, Any]:
    if vegetation == "auto":
        # NDVI is taken on the values as they are: the darkest near-infrared
        # value of a scene is rarely a zero reflectance, and removing it
        # skews NDVI.
        vegetation = default_vegetation_gate(bands)
    return {"shadow": shadow, "vegetation": vegetation, "tolerance": int(tolerance)}


# --------------------------------------------------------------------- CVA


@dataclass(frozen=True)
class CVAParams(_Nuisances):
    """Parameters of :func:`score_cva`.

    Attributes
    ----------
    noise : NoiseModel
        No-change difference model.
    shadow : ShadowModel or None
        Shade explained away, if given.
    vegetation : VegetationGate or None
        Candidate pixels (see :func:`score_cva`) vegetated at both dates
        score 0, if given.
    tolerance : int
        Displacement (pixels) a difference may be explained by.
    """

    noise: NoiseModel

    @property
    def dof(self) -> int:
        """Degrees of freedom of the no-change chi-square distribution."""
        return self.noise.bands

    def to_dict(self) -> dict[str, object]:
        """Plain-typed description, for metadata."""
        return {"method": "cva", "noise": self.noise.to_dict(), **self._nuisances()}


def fit_cva(before: NDArray[np.floating], after: NDArray[np.floating],
            invalid: NDArray[np.bool_], *, tolerance: int = 1, shadows: bool = True,
            vegetation: VegetationGate | None | Literal["auto"] = "auto") -> CVAParams:
    """Fit :func:`score_cva`: the no-change noise, and the shadow model.

    Parameters
    ----------
    before, after : (bands, H, W) ndarray
        Normalised, co-registered images (or decimated versions).
    invalid : (H, W) ndarray of bool
    tolerance : int, optional
        Displacement tolerated, pixels.
    shadows : bool, optional
        Fit a shadow model (:func:`fit_shadow`).
    vegetation : VegetationGate, None or "auto", optional
        ``"auto"``: gate on NDVI when there are four bands (red, green,
        blue, near-infrared).

    Returns
    -------
    CVAParams
    """
    noise, shadow = _noise_and_shadow(before, after, invalid, None, shadows=shadows)
    return CVAParams(noise, **_nuisances(shadow, vegetation, before.shape[0], tolerance))


def _check_pair(before: NDArray[np.floating], after: NDArray[np.floating], bands: int) -> None:
    if before.shape != after.shape:
        raise ValueError(f"shapes differ: {before.shape} vs {after.shape}")
    if before.shape[0] != bands:
        raise ValueError(f"parameters are for {bands} bands, images have {before.shape[0]}")


def _whiten(data: NDArray[np.floating], w: NDArray[np.float32],
            centre: NDArray[np.float32] | None = None) -> NDArray[np.float32]:
    # One matrix product into a new array: the strips score_change passes
    # are views across the bands, which np.tensordot copied first (0.39 ms
    # a 96-row strip of 1120 px and four bands, against 0.20 ms).
    data = np.asarray(data, np.float32)
    out = np.empty((w.shape[0], *data.shape[1:]), np.float32)
    np.matmul(w, data.reshape(data.shape[0], -1), out=out.reshape(w.shape[0], -1))
    if centre is not None:
        out -= (w @ centre)[:, None, None]
    return out


def _search_offsets(radius: int) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    # (dy, dx) of the displacements a tolerant search tries, in one fixed
    # order: both searches below take them from here, and give the same
    # bits because they walk them alike.
    dy, dx = (v.ravel() for v in np.mgrid[-radius:radius + 1, -radius:radius + 1])
    disc = dx * dx + dy * dy <= radius * radius + radius
    return dy[disc], dx[disc]


def _tolerant_distance(wa: NDArray[np.float32], wb: NDArray[np.float32],
                       rows: NDArray[np.intp], cols: NDArray[np.intp], radius: int,
                       ) -> NDArray[np.float32]:
    # For each candidate pixel: the smallest distance between after(p) and any
    # before pixel within `radius`, and vice versa; the larger of the two.
    # All offsets at once, candidates in chunks: a loop over the offsets made
    # some 250 small numpy calls per strip, whose interpreter time (holding
    # the GIL) kept the other block thread waiting. (np.take on flat indices
    # gathers several times faster than 2-D fancy indexing.)
    bands, h, w = wa.shape
    flat_a, flat_b = wa.reshape(bands, -1), wb.reshape(bands, -1)
    dy, dx = (v[:, None] for v in _search_offsets(radius))
    out = np.empty(rows.size, np.float32)
    for s in range(0, rows.size, _TOLERANT_CHUNK):
        r, c = rows[s:s + _TOLERANT_CHUNK], cols[s:s + _TOLERANT_CHUNK]
        centre = r * w + c
        near = np.clip(r + dy, 0, h - 1) * w + np.clip(c + dx, 0, w - 1)  # (offsets, n)
        best = None
        for other, own in ((flat_b, flat_a), (flat_a, flat_b)):
            d = np.take(other, near, axis=1)                 # (bands, offsets, n)
            d -= np.take(own, centre, axis=1)[:, None, :]
            np.square(d, out=d)
            dist = d.sum(axis=0).min(axis=0)
            best = dist if best is None else np.maximum(best, dist)
        out[s:s + r.size] = np.sqrt(best)
    return out


#: Candidate pixels searched at a time (their neighbourhoods take about
#: 1.4 MB per date with a 2-pixel tolerance).
_TOLERANT_CHUNK = 4096

#: Share of a strip's pixels that are candidates above which every offset is
#: compared over the whole strip instead (:func:`_tolerant_distance_dense`):
#: on a 104 x 1120 strip of four bands that takes about 12.5 ms whatever
#: the candidates, the search by candidate 3.6 ms at 10 %, 12.2 ms at 40 %
#: and 29.6 ms at 100 % (a flood's interior).
_DENSE_SHARE = 0.4


def _tolerant_distance_dense(wa: NDArray[np.float32], wb: NDArray[np.float32], radius: int,
                             ) -> NDArray[np.float32]:
    # _tolerant_distance at every pixel, offset by offset over the whole
    # array (the dates padded by repeating their edges, as the search by
    # candidate clips its indices). The same operations in the same order:
    # the same values, bit for bit.
    bands, h, w = wa.shape
    r = radius
    pad = ((0, 0), (r, r), (r, r))
    acc = np.empty((h, w), np.result_type(wa, wb))
    tmp = np.empty_like(acc)
    offsets = list(zip(*_search_offsets(r), strict=True))
    best: NDArray[np.float32] | None = None
    for own, other in ((wa, np.pad(wb, pad, mode="edge")), (wb, np.pad(wa, pad, mode="edge"))):
        low: NDArray[np.float32] | None = None
        for oy, ox in offsets:
            near = other[:, r + oy:r + oy + h, r + ox:r + ox + w]
            np.subtract(near[0], own[0], out=acc)
            np.square(acc, out=acc)
            for b in range(1, bands):
                np.subtract(near[b], own[b], out=tmp)
                np.square(tmp, out=tmp)
                acc += tmp
            if low is None:
                low = acc.copy()
            else:
                np.minimum(low, acc, out=low)
        best = low if best is None else np.maximum(best, low, out=best)
    return np.sqrt(best, out=best)


@dataclass(frozen=True)
class _Candidates:
    # The pixels a score's nuisances are judged at: as a mask, and its
    # np.nonzero (found once: it cost as much as the vegetation gate's own
    # look-up of them).
    mask: NDArray[np.bool_]
    at: tuple[NDArray[np.intp], ...]


@functools.lru_cache(maxsize=64)
def _candidate_cut(p: float, dof: int) -> float:
    # The score whose no-change tail probability is p. Asked by every strip
    # of every block: scipy.stats took 0.16 ms a call (2 ms a block), holding
    # the GIL.
    return float(np.sqrt(chi2.isf(p, dof)))


def _whitened_score(wb: NDArray[np.float32], wa: NDArray[np.float32], dof: int,
                    tolerance: int, candidate_p: float, exact_above: float = 0.0,
                    ) -> tuple[NDArray[np.float32], _Candidates]:
    # Plain whitened distance, then the displacement-tolerant one on the
    # pixels that could be change at all; also returns those candidates.
    # Every nuisance only lowers a score, so a pixel whose plain score is at
    # most `exact_above` (the lowest threshold in use) stays below it
    # whatever they explain: it need not be searched.
    # Band by band into one (H, W) sum: the same additions in the same
    # order as summing a (bands, H, W) array of squares over its first axis,
    # without that array (0.29 against 0.47 ms a 100-row strip).
    score = np.subtract(wa[0], wb[0], dtype=np.float32)
    np.square(score, out=score)
    if wa.shape[0] > 1:
        tmp = np.empty_like(score)
        for b in range(1, wa.shape[0]):
            np.subtract(wa[b], wb[b], out=tmp)
            np.square(tmp, out=tmp)
            score += tmp
    np.sqrt(score, out=score)
    cut = max(_candidate_cut(candidate_p, dof), exact_above)
    candidates = score > cut
    at = np.nonzero(candidates)
    if tolerance > 0 and at[0].size > _DENSE_SHARE * score.size:
        score[at] = _tolerant_distance_dense(wa, wb, tolerance)[at]
    elif tolerance > 0 and at[0].size:
        score[at] = _tolerant_distance(wa, wb, *at, tolerance)
    return score, _Candidates(candidates, at)


def score_cva(before: NDArray[np.floating], after: NDArray[np.floating],
              params: CVAParams | NoiseModel, *, tolerance: int | None = None,
              candidate_p: float = 0.01, exact_above: float = 0.0) -> NDArray[np.float32]:
    """Change-vector magnitude in units of the no-change noise.

    The difference vector ``after - before`` of every pixel is centred and
    whitened with the noise model, so its squared length is chi-square
    distributed with ``bands`` degrees of freedom where nothing changed; the
    score is its square root (a Mahalanobis distance) [1]_.

    With ``tolerance=r > 0`` a difference that a displacement of up to `r`
    pixels explains does not count: each pixel of one date is compared with
    the closest-looking pixel within `r` in the other date, both ways, and
    the larger of the two distances is kept. Edges that moved by a pixel
    (residual misregistration, parallax, a shadow's edge as the sun moves)
    then score low, while an object larger than `r` still differs from
    everything around its place in the other date.

    With a shadow model, a pixel that one date shows in shade scores its
    distance from that explanation; with a vegetation gate, a pixel
    vegetated at both dates scores 0. Both apply to the candidates of
    `candidate_p` only.

    Parameters
    ----------
    before, after : (bands, H, W) ndarray
        Co-registered, normalised images.
    params : CVAParams or NoiseModel
        From :func:`fit_cva` (or a bare noise model from :func:`fit_noise`).
    tolerance : int, optional
        Radius in pixels of the displacement tolerated (0: plain CVA);
        default ``params.tolerance`` (1 for a bare noise model).
    candidate_p : float, optional
        Only pixels whose plain score exceeds this no-change tail
        probability are searched (the others cannot be change at any
        sensible threshold and keep their plain score, an upper bound).
    exact_above : float, optional
        Nor those whose plain score is at most this (the lowest threshold
        that will be applied, :attr:`changedet.thresholds.Threshold.lowest`):
        the nuisances only lower a score, so they stay below it anyway.
        Default 0: the candidate tail alone decides.

    Returns
    -------
    (H, W) ndarray of float32

    Notes
    -----
    Memory: two whitened float32 copies of the stack plus the score. The
    neighbourhood search costs ``2 (2r + 1)^2`` distance evaluations per
    candidate pixel only.

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
    if isinstance(params, NoiseModel):
        params = CVAParams(params)
    score, at = _cva(before, after, params, tolerance=tolerance, candidate_p=candidate_p,
                     exact_above=exact_above)
    _gate(score, before, after, params.vegetation, at)
    return score


def _cva(before: NDArray[np.floating], after: NDArray[np.floating], params: CVAParams, *,
         tolerance: int | None = None, candidate_p: float = 0.01, exact_above: float = 0.0,
         ) -> tuple[NDArray[np.float32], tuple[NDArray[np.intp], NDArray[np.intp]]]:
    # score_cva but the vegetation gate; also returns the candidates it
    # would gate (score_change gates a block's at once).
    noise = params.noise
    _check_pair(before, after, noise.bands)
    tolerance = params.tolerance if tolerance is None else tolerance
    if tolerance < 0:
        raise ValueError("tolerance must not be negative")
    w = noise.whitening()
    mean = np.asarray(noise.mean, np.float32)
    wa = _whiten(after, w, mean)
    wb = _whiten(before, w)
    score, candidates = _whitened_score(wb, wa, noise.bands, tolerance, candidate_p,
                                        exact_above)
    del wa, wb
    if params.shadow is not None:
        _apply_shadow(score, before, after, params.shadow, w, mean, candidates)
    return score, candidates.at


def change_direction(before: NDArray[np.floating], after: NDArray[np.floating],
                     noise: NoiseModel) -> NDArray[np.float32]:
    """Direction of the whitened change vector: angle in the first two whitened bands.

    Returns
    -------
    (H, W) ndarray of float32
        Radians in ``(-pi, pi]``: the direction of change in the plane of
        the first two whitened bands (e.g. red-green for RGB), the
        "direction" of change-vector analysis.
    """
    w = noise.whitening()
    d = _whiten(after, w, np.asarray(noise.mean, np.float32)) - _whiten(before, w)
    if d.shape[0] < 2:
        return np.where(d[0] >= 0, 0.0, np.pi).astype(np.float32)
    return np.arctan2(d[1], d[0]).astype(np.float32)


# --------------------------------------------------------------- log-ratio


@dataclass(frozen=True)
class LogRatioParams(_Nuisances):
    """Parameters of :func:`score_logratio`.

    Attributes
    ----------
    dark : tuple of float
        Per-band dark level removed before the logarithm.
    floor : tuple of float
        Per-band value added before the logarithm (half the median level,
        at least three noise standard deviations), so dark pixels do not
        blow the noise up.
    noise : NoiseModel
        No-change model of the log-ratio.
    shadow : ShadowModel or None
    vegetation : VegetationGate or None
    tolerance : int
    """

    dark: tuple[float, ...]
    floor: tuple[float, ...]
    sigma: tuple[float, ...]
    noise: NoiseModel

    @property
    def dof(self) -> int:
        """Degrees of freedom of the no-change chi-square distribution."""
        return self.noise.bands

    def log(self, data: NDArray[np.floating]) -> NDArray[np.float32]:
        """``log(max(data - dark, 0) + floor)`` per band."""
        dark = np.asarray(self.dark, np.float32)[:, None, None]
        floor = np.asarray(self.floor, np.float32)[:, None, None]
        return np.log(np.maximum(np.asarray(data, np.float32) - dark, 0) + floor)

    def spread(self, before: NDArray[np.floating], after: NDArray[np.floating],
               ) -> NDArray[np.float32]:
        """Per-pixel standard deviation of the log-ratio that sensor noise alone gives.

        ``sigma * sqrt(1 / (before - dark + floor)^2 + 1 / (after - ...)^2)``:
        a dark pixel's log-ratio is noisier than a bright one's.
        """
        dark = np.asarray(self.dark, np.float32)[:, None, None]
        floor = np.asarray(self.floor, np.float32)[:, None, None]
        sig = np.asarray(self.sigma, np.float32)[:, None, None]
        ib = 1 / (np.maximum(np.asarray(before, np.float32) - dark, 0) + floor)
        ia = 1 / (np.maximum(np.asarray(after, np.float32) - dark, 0) + floor)
        return sig * np.sqrt(ib * ib + ia * ia)

    def to_dict(self) -> dict[str, object]:
        """Plain-typed description, for metadata."""
        return {"method": "logratio", "dark": [round(v, 4) for v in self.dark],
                "floor": [round(v, 4) for v in self.floor],
                "sigma": [round(v, 4) for v in self.sigma], "noise": self.noise.to_dict(),
                **self._nuisances()}


def fit_logratio(before: NDArray[np.floating], after: NDArray[np.floating],
                 invalid: NDArray[np.bool_], *, tolerance: int = 1, shadows: bool = True,
                 vegetation: VegetationGate | None | Literal["auto"] = "auto",
                 ) -> LogRatioParams:
    """Fit :func:`score_logratio`: dark level, floor, noise and shadow models.

    Parameters
    ----------
    before, after : (bands, H, W) ndarray
        Normalised, co-registered images.
    invalid : (H, W) ndarray of bool
    tolerance, shadows, vegetation
        As for :func:`fit_cva`.

    Returns
    -------
    LogRatioParams
    """
    b = sample_valid(before, invalid).astype(np.float64)
    a = sample_valid(after, invalid).astype(np.float64)
    nb = before.shape[0]
    if b.shape[1] < nb + 2:
        return LogRatioParams((0.0,) * nb, (1.0,) * nb, (1.0,) * nb, _identity_noise(nb))
    dark = _dark_level(b, a)
    # The noise of a single date: half the variance of the no-change difference.
    d = _robust_moments(a - b)
    sigma = np.sqrt(np.maximum(np.diag(np.asarray(d.cov)), 1e-12) / 2)
    level = np.percentile(np.concatenate([b, a], axis=1), 50, axis=1) - dark
    # The floor tempers the logarithm where additive noise dominates: the
    # log-ratio of dark pixels is otherwise far noisier than that of the
    # typical pixel the noise model describes (a generalised logarithm).
    floor = np.maximum(3 * sigma, FLOOR_SHARE * np.maximum(level, 1e-6))
    yb = np.maximum(b - dark[:, None], 0) + floor[:, None]
    ya = np.maximum(a - dark[:, None], 0) + floor[:, None]
    # Standardised by the per-pixel spread of the log-ratio (see spread()).
    z = (np.log(ya) - np.log(yb)) / (sigma[:, None] * np.sqrt(1 / yb ** 2 + 1 / ya ** 2))
    noise = _robust_moments(z)
    return LogRatioParams(tuple(float(v) for v in dark), tuple(float(v) for v in floor),
                          tuple(float(v) for v in sigma), noise,
                          **_fit_nuisances(before, after, invalid, d, shadows=shadows,
                                           vegetation=vegetation, tolerance=tolerance))


def score_logratio(before: NDArray[np.floating], after: NDArray[np.floating],
                   params: LogRatioParams, *, candidate_p: float = 0.01,
                   exact_above: float = 0.0) -> NDArray[np.float32]:
    """Whitened log-ratio magnitude in units of the no-change noise.

    ``log(after - dark) - log(before - dark)`` per band [2]_, divided by
    the spread sensor noise alone gives it at that brightness (dark pixels
    have noisier ratios), centred and whitened with the no-change model:
    gain changes and illumination are additive in the log domain, so what
    is left of them after normalisation is small. A shade is a constant
    vector (``log ratio`` of the shadow model) and is explained away as in
    :func:`score_cva`.

    Parameters
    ----------
    before, after : (bands, H, W) ndarray
        Co-registered, normalised images.
    params : LogRatioParams
        From :func:`fit_logratio`.
    candidate_p, exact_above : float, optional
        As for :func:`score_cva`.

    Returns
    -------
    (H, W) ndarray of float32

    Notes
    -----
    The floor of the logarithm and the per-pixel spread keep dark pixels
    from dominating; shade and gain are still handled more exactly here
    than by CVA, additive haze less so.

    References
    ----------
    .. [2] Bovolo, F. and Bruzzone, L. (2005). :doi:`10.1109/TGRS.2005.857987`

    Examples
    --------
    >>> b = np.full((3, 8, 8), 100, np.float32); a = b * 1.0; a[:, 2:4, 2:4] = 200
    >>> noisy = b + np.random.default_rng(0).normal(0, 1, b.shape)
    >>> p = fit_logratio(b, noisy, np.zeros((8, 8), bool))
    >>> s = score_logratio(b, a, p)
    >>> bool(s[3, 3] > 10 > s[6, 6])
    True
    """
    score, at = _logratio(before, after, params, candidate_p=candidate_p,
                          exact_above=exact_above)
    _gate(score, before, after, params.vegetation, at)
    return score


def _logratio(before: NDArray[np.floating], after: NDArray[np.floating],
              params: LogRatioParams, *, candidate_p: float = 0.01, exact_above: float = 0.0,
              ) -> tuple[NDArray[np.float32], tuple[NDArray[np.intp], NDArray[np.intp]]]:
    # score_logratio but the vegetation gate, as _cva.
    _check_pair(before, after, params.noise.bands)
    w = params.noise.whitening()
    mean = np.asarray(params.noise.mean, np.float32)
    spread = params.spread(before, after)
    wb = _whiten(params.log(before) / spread, w)
    wa = _whiten(params.log(after) / spread, w, mean)
    score, candidates = _whitened_score(wb, wa, params.dof, params.tolerance, candidate_p,
                                        exact_above)
    if params.shadow is not None:
        rows, cols = candidates.at
        if rows.size:
            # Shade moves the log values by log(ratio), a fixed vector, which
            # is then standardised like the rest.
            logk = np.log(np.asarray(params.shadow.ratio, np.float32))[:, None]
            u = np.tensordot(w, logk / spread[:, rows, cols], axes=1)
            d = wa[:, rows, cols] - wb[:, rows, cols]
            best = score[rows, cols]
            for sign in (1.0, -1.0):
                uu = sign * u
                alpha = np.clip((d * uu).sum(axis=0) / np.maximum((uu * uu).sum(axis=0), 1e-12),
                                *_SHADOW_ALPHA)
                r = d - alpha[None] * uu
                best = np.minimum(best, np.sqrt((r * r).sum(axis=0)))
            score[rows, cols] = best
    del wa, wb, spread
    return score, candidates.at


# ------------------------------------------------------------------ IR-MAD


@dataclass(frozen=True)
class IRMADParams(_Nuisances):
    """Parameters of :func:`score_irmad`: a converged IR-MAD transformation.

    Attributes
    ----------
    mad : IRMAD
        From :func:`changedet.radiometry.irmad`.
    shadow : ShadowModel or None
    vegetation : VegetationGate or None
    tolerance : int
    """

    mad: IRMAD

    @property
    def dof(self) -> int:
        """Degrees of freedom of the no-change chi-square distribution."""
        return int(self.mad.a.shape[0])

    def project(self, before: NDArray[np.floating], after: NDArray[np.floating],
                ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """Each date's canonical variates, scaled so their difference is standardised MAD."""
        m = self.mad
        scale = 1.0 / m.scale
        wb = (m.a.T * scale[:, None]).astype(np.float32)
        wa = (m.b.T * scale[:, None]).astype(np.float32)
        cb = (wb @ m.mean_before).astype(np.float32)
        ca = (wa @ m.mean_after + m.centre * scale).astype(np.float32)
        pb = _whiten(before, wb, None) - cb[:, None, None]
        pa = _whiten(after, wa, None) - ca[:, None, None]
        # MAD = pb - pa: the "after" side carries the centre.
        return pb, pa

    def to_dict(self) -> dict[str, object]:
        """Plain-typed description, for metadata."""
        return {"method": "irmad", "canonical_correlations": [round(float(r), 5)
                                                              for r in self.mad.rho],
                "iterations": self.mad.iterations, "converged": self.mad.converged,
                **self._nuisances()}


def fit_irmad(before: NDArray[np.floating], after: NDArray[np.floating],
              invalid: NDArray[np.bool_], *, tolerance: int = 1, shadows: bool = True,
              vegetation: VegetationGate | None | Literal["auto"] = "auto") -> IRMADParams:
    """Fit :func:`score_irmad`: IR-MAD on a sample of valid pixels [3]_.

    Parameters
    ----------
    before, after : (bands, H, W) ndarray
        Co-registered images (normalisation does not matter: MAD variates
        are invariant to linear changes of either date).
    invalid : (H, W) ndarray of bool
    tolerance, shadows, vegetation
        As for :func:`fit_cva`.

    Returns
    -------
    IRMADParams
        The converged transformation, with the nuisance models.

    References
    ----------
    .. [3] Nielsen, A. A. (2007). :doi:`10.1109/TIP.2006.888195`
    """
    b = sample_valid(before, invalid).astype(np.float64)
    a = sample_valid(after, invalid).astype(np.float64)
    res = irmad(b, a)
    return IRMADParams(res, **_fit_nuisances(before, after, invalid, None, shadows=shadows,
                                             vegetation=vegetation, tolerance=tolerance))


def score_irmad(before: NDArray[np.floating], after: NDArray[np.floating],
                params: IRMADParams, *, candidate_p: float = 0.01,
                exact_above: float = 0.0) -> NDArray[np.float32]:
    """Square root of the IR-MAD chi-square statistic.

    The sum of squared standardised MAD variates is chi-square with
    ``bands`` degrees of freedom where nothing changed [3]_; its square
    root is in the same units as the other scores. Displacement tolerance
    and shadows are handled as in :func:`score_cva`, in the space of the
    canonical variates.

    Parameters
    ----------
    before, after : (bands, H, W) ndarray
    params : IRMADParams
        From :func:`fit_irmad`.
    candidate_p : float, optional
        No-change tail probability below which a pixel's plain score is
        searched for a displacement or a shade that explains it.
    exact_above : float, optional
        As for :func:`score_cva`.

    Returns
    -------
    score : (H, W) ndarray of float32
        In no-change standard deviations (``params.dof`` degrees of freedom).

    Notes
    -----
    The canonical variates mix the bands, so a pair in which a large area
    changed in one consistent way (fields ripening) can bend them; CVA on
    per-band normalised images is then the steadier score.

    References
    ----------
    .. [3] Nielsen, A. A. (2007). :doi:`10.1109/TIP.2006.888195`
    """
    score, at = _irmad(before, after, params, candidate_p=candidate_p, exact_above=exact_above)
    _gate(score, before, after, params.vegetation, at)
    return score


def _irmad(before: NDArray[np.floating], after: NDArray[np.floating], params: IRMADParams, *,
           candidate_p: float = 0.01, exact_above: float = 0.0,
           ) -> tuple[NDArray[np.float32], tuple[NDArray[np.intp], NDArray[np.intp]]]:
    # score_irmad but the vegetation gate, as _cva.
    _check_pair(before, after, params.dof)
    pb, pa = params.project(before, after)
    score, candidates = _whitened_score(pb, pa, params.dof, params.tolerance, candidate_p,
                                        exact_above)
    del pb, pa
    if params.shadow is not None:
        # Shade is judged in the before image's radiometry: map the after image
        # there through the canonical variates (a per-pixel linear map).
        m = params.mad
        w = (m.a.T / m.scale[:, None]).astype(np.float32)
        # after in before's units: solve a.T (x - mb) = b.T (after - ma) + centre.
        inv = np.linalg.pinv(m.a.T)
        lin = (inv @ m.b.T).astype(np.float32)
        off = (m.mean_before - lin @ m.mean_after + inv @ m.centre).astype(np.float32)
        after_b = np.tensordot(lin, np.asarray(after, np.float32), axes=1) + off[:, None, None]
        _apply_shadow(score, before, after_b, params.shadow, w, np.zeros(params.dof, np.float32),
                      candidates)
    return score, candidates.at


# --------------------------------------------------------------- structure


@dataclass(frozen=True)
class StructureParams:
    """Parameters of :func:`score_structure`.

    Attributes
    ----------
    sigma : float
        Standard deviation in pixels of the Gaussian window.
    log : LogRatioParams
        The log transform (dark level, floor) and the per-band noise of one
        date (``log.sigma``).
    scale : float
        Empirical factor on the noise variance, so that the median of the
        statistic is that of its no-change distribution (real dates differ
        more than sensor noise alone: texture, parallax, compression).
    vegetation : VegetationGate or None
    spread_dof : float, optional
        Degrees of freedom measured from the statistic's spread; noise
        correlated between neighbours (blur, resampling) leaves fewer than
        the window holds pixels.
    """

    sigma: float
    log: LogRatioParams
    scale: float = 1.0
    vegetation: VegetationGate | None = None
    spread_dof: float | None = None

    @property
    def dof(self) -> int:
        """Degrees of freedom of the no-change chi-square distribution (a z-score: 1)."""
        return 1

    @property
    def radius(self) -> int:
        """Context in pixels a block needs around it (the window's 4 sigma)."""
        return int(np.ceil(4 * self.sigma))

    @property
    def effective_dof(self) -> float:
        """Degrees of freedom of the windowed variance where nothing changed."""
        if self.spread_dof is not None:
            return self.spread_dof
        # A Gaussian window of variance s^2 averages about 4 pi s^2 pixels.
        return len(self.log.sigma) * max(4 * np.pi * self.sigma ** 2 - 1, 1.0)

    def to_dict(self) -> dict[str, object]:
        """Plain-typed description, for metadata."""
        return {"method": "structure", "sigma_px": round(self.sigma, 3),
                "noise": [round(v, 4) for v in self.log.sigma],
                "scale": round(self.scale, 4), "dof": round(self.effective_dof, 2),
                "vegetation": self.vegetation.to_dict() if self.vegetation else None}


def _structure_ratio(before: NDArray[np.floating], after: NDArray[np.floating],
                     log: LogRatioParams, sigma: float) -> NDArray[np.float32]:
    # Windowed variance of the log-ratio over the variance noise gives it,
    # summed over bands, per band-window: about 1 where nothing changed.
    def smooth(x: NDArray[np.float32]) -> NDArray[np.float32]:
        return ndimage.gaussian_filter(x, sigma, mode="reflect", truncate=4.0)

    nb = before.shape[0]
    weights_sq = 1.0 / (4 * np.pi * sigma ** 2)  # sum of squared window weights
    total = np.zeros(before.shape[1:], np.float32)
    spread = log.spread(before, after)
    ratio = log.log(after) - log.log(before)
    for i in range(nb):
        d = ratio[i]
        m = smooth(d)
        v = np.maximum(smooth(d * d) - m * m, 0)
        total += v / np.maximum(smooth(spread[i] ** 2) * (1 - weights_sq), 1e-12)
    return total / nb


def fit_structure(before: NDArray[np.floating], after: NDArray[np.floating],
                  invalid: NDArray[np.bool_], *, sigma: float = 2.0,
                  vegetation: VegetationGate | None | Literal["auto"] = "auto",
                  max_pixels: int = 1_000_000) -> StructureParams:
    """Fit :func:`score_structure`.

    The log transform and the per-band noise of one date come from
    :func:`fit_logratio`; the degrees of freedom and the noise scale of the
    windowed statistic are then set from its quartiles, so that its median
    and spread are those of its no-change distribution (robust to change
    covering up to a quarter of the image).

    Parameters
    ----------
    before, after : (bands, H, W) ndarray
        Normalised, co-registered images (a central crop of at most
        `max_pixels` pixels is used).
    invalid : (H, W) ndarray of bool
    sigma : float, optional
        Window standard deviation in pixels (about a metre suits 0.3-1 m
        imagery).
    vegetation : VegetationGate, None or "auto", optional
        As for :func:`fit_cva`.
    max_pixels : int, optional

    Returns
    -------
    StructureParams
    """
    log = fit_logratio(before, after, invalid, tolerance=0, shadows=False, vegetation=None)
    h, w = before.shape[1:]
    side = int(np.sqrt(max_pixels))
    r0, c0 = max((h - side) // 2, 0), max((w - side) // 2, 0)
    win = (slice(None), slice(r0, r0 + side), slice(c0, c0 + side))
    params = StructureParams(float(sigma), log)
    t = _structure_ratio(before[win], after[win], log, sigma)
    v = t[~invalid[win[1:]]]
    scale, nu = 1.0, params.effective_dof
    if v.size >= 10:
        q25, q50, q75 = np.percentile(v, [25, 50, 75])
        # Relative spread of a chi-square / dof is about sqrt(2 / dof).
        if q75 > q25:
            nu = float(np.clip(2 * (1.349 * q50 / (q75 - q25)) ** 2, 2.0, nu))
        scale = float(max(q50 / (chi2.ppf(0.5, nu) / nu), 1e-6))
    if vegetation == "auto":
        vegetation = default_vegetation_gate(before.shape[0])
    return StructureParams(float(sigma), log, scale, vegetation, nu)


def score_structure(before: NDArray[np.floating], after: NDArray[np.floating],
                    params: StructureParams) -> NDArray[np.float32]:
    """Change of local structure, in no-change standard deviations.

    The log-ratio of the dates is flat wherever they differ only by a
    multiplicative factor: a gain, haze (once normalised), shade, a colour
    change of a field with the season (its texture stays). Its local
    variance in a Gaussian window, relative to what noise gives, is about
    1 there, and large where an outline, a surface or a texture is new or
    gone: the local structure changed [4]_. That ratio, summed over bands,
    is a chi-square variable with about ``bands * 4 pi sigma^2`` degrees of
    freedom where nothing changed; the score is its Wilson-Hilferty normal
    deviate (clipped at 0), so thresholds read as for a 1-dof chi-square.

    Parameters
    ----------
    before, after : (bands, H, W) ndarray
        Co-registered, normalised images.
    params : StructureParams
        From :func:`fit_structure`.

    Returns
    -------
    (H, W) ndarray of float32

    Notes
    -----
    Needs ``params.radius`` pixels of context around a block. Memory: a few
    single-band float32 rasters on top of the inputs. The mean change of a
    window (a uniform new surface on a uniform one) does not count: only
    its outline does.

    References
    ----------
    .. [4] Wang, Z. et al. (2004). :doi:`10.1109/TIP.2003.819861` (the
           structure term); Wilson, E. B. and Hilferty, M. M. (1931). The
           distribution of chi-square. PNAS 17(12), 684-688.
           :doi:`10.1073/pnas.17.12.684`
    """
    _check_pair(before, after, len(params.log.sigma))
    t = _structure_ratio(before, after, params.log, params.sigma)
    t /= np.float32(params.scale)
    nu = params.effective_dof
    # Wilson-Hilferty: (X / nu)^(1/3) is nearly normal for chi-square X.
    c = np.float32(2 / (9 * nu))
    z = (np.cbrt(t) - (1 - c)) / np.sqrt(c)
    np.maximum(z, 0, out=z)
    _gate(z, before, after, params.vegetation)
    return z.astype(np.float32, copy=False)


# --------------------------------------------------------------- dispatch

ScoreParams = CVAParams | LogRatioParams | IRMADParams | StructureParams


def fit_score(method: ScoreMethod, before: NDArray[np.floating], after: NDArray[np.floating],
              invalid: NDArray[np.bool_], *, tolerance: int = 1,
              vegetation: VegetationGate | None | Literal["auto"] = "auto",
              sigma: float | None = None) -> ScoreParams:
    """Fit the parameters of a change score by name.

    Parameters
    ----------
    method : {"cva", "logratio", "irmad", "structure"}
    before, after : (bands, H, W) ndarray
    invalid : (H, W) ndarray of bool
    tolerance : int, optional
        Displacement tolerated, pixels (not used by ``"structure"``).
    vegetation : VegetationGate, None or "auto", optional
    sigma : float, optional
        Window of ``"structure"``, pixels (default 2).

    Raises
    ------
    ValueError
        If `method` is unknown.
    """
    if method not in SCORE_METHODS:
        raise ValueError(f"method must be one of {SCORE_METHODS}, not {method!r}")
    if method == "cva":
        return fit_cva(before, after, invalid, tolerance=tolerance, vegetation=vegetation)
    if method == "logratio":
        return fit_logratio(before, after, invalid, tolerance=tolerance, vegetation=vegetation)
    if method == "irmad":
        return fit_irmad(before, after, invalid, tolerance=tolerance, vegetation=vegetation)
    return fit_structure(before, after, invalid, sigma=2.0 if sigma is None else sigma,
                         vegetation=vegetation)


#: Rows of a strip that :func:`score_change` scores at a time.
STRIP_ROWS = 96


def score_change(before: NDArray[np.floating], after: NDArray[np.floating],
                 params: ScoreParams, *, strip_rows: int = STRIP_ROWS,
                 exact_above: float = 0.0) -> NDArray[np.float32]:
    """Apply fitted score parameters (from :func:`fit_score`) to a pair or a block.

    Every score depends only on pixels within ``params.radius``, so a tall
    pair is scored in strips of `strip_rows` rows, each with that margin
    above and below: the same result as scoring it whole, with the
    intermediate arrays small enough to stay in the processor's cache (on a
    whole block, each of a dozen passes over memory waits on RAM, and two
    threads then run no faster than one).

    With `exact_above` (the lowest threshold that will be applied), the
    scores that judge their nuisances on candidate pixels (``cva``,
    ``logratio``, ``irmad``) skip the pixels whose plain score is at most
    that: they keep the plain score, an upper bound, and stay below the
    threshold as they would have anyway. Every pixel that can be change,
    and every score above `exact_above`, is the same as without it.
    """
    structure = isinstance(params, StructureParams)
    # The vegetation gate once on all the strips' candidates: each strip's
    # few hundred made a dozen calls a block, whose fixed cost was most of
    # the gate's.
    apply = score_structure if structure else functools.partial(
        _ungated(params), exact_above=float(exact_above))
    h = before.shape[-2]
    margin = params.radius + 1
    # Margins of a wide-reaching model (shadows) would otherwise dominate.
    strip_rows = max(strip_rows, 8 * margin) if strip_rows > 0 else 0
    whole = strip_rows <= 0 or h <= 2 * strip_rows
    if structure:
        return apply(before, after, params) if whole else \
            _in_strips(apply, before, after, params, strip_rows, margin)[0]
    if whole:
        score, at = apply(before, after, params)
    else:
        score, at = _in_strips(apply, before, after, params, strip_rows, margin)
    _gate(score, before, after, params.vegetation, at)
    return score


def _in_strips(apply: Callable[..., Any], before: NDArray[np.floating],
               after: NDArray[np.floating], params: ScoreParams, strip_rows: int, margin: int,
               ) -> tuple[NDArray[np.float32], tuple[NDArray[np.intp], NDArray[np.intp]]]:
    # score_change's strips: the score, and the candidates `apply` returns
    # with it (if any) in the strips' own rows, in the whole's coordinates.
    h = before.shape[-2]
    out = np.empty(before.shape[-2:], np.float32)
    rows: list[NDArray[np.intp]] = []
    cols: list[NDArray[np.intp]] = []
    for r0 in range(0, h, strip_rows):
        r1 = min(h, r0 + strip_rows)
        a0, a1 = max(0, r0 - margin), min(h, r1 + margin)
        part = apply(before[..., a0:a1, :], after[..., a0:a1, :], params)
        if isinstance(part, tuple):
            part, (rr, cc) = part
            own = (rr >= r0 - a0) & (rr < r1 - a0)
            rows.append(rr[own] + a0)
            cols.append(cc[own])
        out[r0:r1] = part[r0 - a0:r1 - a0]
    empty = np.zeros(0, np.intp)
    return out, (np.concatenate(rows) if rows else empty, np.concatenate(cols) if cols else empty)


def _ungated(params: ScoreParams) -> Callable[..., tuple[
        NDArray[np.float32], tuple[NDArray[np.intp], NDArray[np.intp]]]]:
    # The score function that applies `params` but the vegetation gate
    # (which it leaves to the caller, with the candidates it would gate).
    for kind, func in ((CVAParams, _cva), (LogRatioParams, _logratio), (IRMADParams, _irmad)):
        if isinstance(params, kind):
            return func
    raise TypeError(f"not score parameters: {type(params).__name__}")
