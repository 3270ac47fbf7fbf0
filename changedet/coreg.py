"""Co-registration: find and describe how the after image is displaced.

Sign convention (used everywhere in changedet): a shift ``(x, y)`` in pixels
is how far the after image's content is displaced relative to the before
image, on the before grid, x to the right (columns) and y down (rows). If a
corner at column 100, row 50 in before sits at column 103.4, row 47.3 in
after, the shift is ``(3.4, -2.7)``. In map units it is ``(x east, y north)``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
from numpy.typing import NDArray
from scipy import fft
from skimage.registration import phase_cross_correlation

from changedet.features import gradient_magnitude
from changedet.grid import Grid

__all__ = [
    "CoregMode",
    "COREG_MODES",
    "Shift",
    "matching_image",
    "estimate_shift",
]

log = logging.getLogger(__name__)

CoregMode = Literal["global", "none"]
COREG_MODES: tuple[str, ...] = get_args(CoregMode)

#: Peak-to-sidelobe ratio below which a correlation peak is not trusted.
MIN_PSR = 8.0

#: Standard deviation, in cycles per pixel, of the spectral weight.
_LOWPASS_SIGMA = 0.15


@dataclass(frozen=True)
class Shift:
    """A translation of the after image relative to the before image.

    Attributes
    ----------
    x, y : float
        Displacement in before-grid pixels, x right (columns), y down (rows).
    reliability : float
        From 0 (no evidence) to 1 (a sharp, unique correlation peak).
    reliable : bool
        Whether the shift is trustworthy enough to apply.
    psr : float
        Peak-to-sidelobe ratio of the phase correlation surface.
    """

    x: float = 0.0
    y: float = 0.0
    reliability: float = 0.0
    reliable: bool = False
    psr: float = 0.0

    def to_map(self, grid: Grid) -> tuple[float, float]:
        """The shift in map units: ``(east, north)``."""
        t = grid.transform
        east = t.a * self.x + t.b * self.y
        north = t.d * self.x + t.e * self.y
        return (east, north)

    def to_dict(self, grid: Grid | None = None) -> dict[str, Any]:
        """Plain-typed description, for metadata and ``--json``."""
        out: dict[str, Any] = {
            "shift_px": {"x": round(self.x, 4), "y": round(self.y, 4)},
            "reliability": round(self.reliability, 4),
            "reliable": self.reliable,
            "psr": round(self.psr, 2),
        }
        if grid is not None and grid.is_georeferenced:
            east, north = self.to_map(grid)
            out["shift_m"] = {"x": round(east, 4), "y": round(north, 4)}
        return out


def matching_image(data: NDArray[np.floating], invalid: NDArray[np.bool_] | None = None,
                   ) -> NDArray[np.float32]:
    """The image co-registration matches on: a gradient magnitude.

    See :func:`changedet.features.gradient_magnitude`; it keeps the geometry
    of edges and drops gain, offset and haze.
    """
    return gradient_magnitude(data, invalid)


def _window2d(shape: tuple[int, int]) -> NDArray[np.float32]:
    # A Tukey window keeps most of the image while killing the edge jump that
    # would otherwise dominate the spectrum with a spurious zero-shift peak.
    from scipy.signal.windows import tukey

    wy = tukey(shape[0], alpha=0.25).astype(np.float32)
    wx = tukey(shape[1], alpha=0.25).astype(np.float32)
    return wy[:, None] * wx[None, :]


def _peak_to_sidelobe(surface: NDArray[np.floating], peak: tuple[int, ...], exclude: int = 5,
                      ) -> float:
    shifted = np.roll(surface, [-p + exclude for p in peak], axis=(0, 1))
    side = shifted.copy()
    side[: 2 * exclude + 1, : 2 * exclude + 1] = np.nan
    mean, std = float(np.nanmean(side)), float(np.nanstd(side))
    if std == 0 or not math.isfinite(std):
        return 0.0
    return (float(surface[peak]) - mean) / std


def estimate_shift(before: NDArray[np.floating], after: NDArray[np.floating], *,
                   invalid_before: NDArray[np.bool_] | None = None,
                   invalid_after: NDArray[np.bool_] | None = None,
                   upsample_factor: int = 100, min_psr: float = MIN_PSR) -> Shift:
    """Estimate the global translation of `after` relative to `before`.

    Parameters
    ----------
    before, after : (bands, H, W) or (H, W) ndarray
        The two images on the same grid.
    invalid_before, invalid_after : (H, W) ndarray of bool, optional
        True where pixels are invalid.
    upsample_factor : int, optional
        Sub-pixel precision of the estimate is ``1 / upsample_factor``.
    min_psr : float, optional
        Peak-to-sidelobe ratio below which the result is flagged unreliable.

    Returns
    -------
    Shift
        In the sign convention of this module.

    Notes
    -----
    Phase correlation [1]_ of gradient-magnitude images under a Tukey window,
    refined by the matrix-multiply DFT of [2]_ (``skimage``). Memory: a few
    complex copies of the image; pass a crop for very large images.

    References
    ----------
    .. [1] Kuglin, C. D. and Hines, D. C. (1975). The phase correlation image
           alignment method. Proc. IEEE Int. Conf. Cybernetics and Society.
    .. [2] Guizar-Sicairos, M., Thurman, S. T. and Fienup, J. R. (2008).
           Efficient subpixel image registration algorithms. Optics Letters
           33(2), 156-158. :doi:`10.1364/OL.33.000156`

    Examples
    --------
    >>> import numpy as np
    >>> from scipy import ndimage
    >>> rng = np.random.default_rng(0)
    >>> img = ndimage.gaussian_filter(rng.random((128, 128)), 2)
    >>> moved = ndimage.shift(img, (-2, 3))   # content moves 3 right, 2 up
    >>> s = estimate_shift(img, moved)
    >>> round(s.x), round(s.y), s.reliable
    (3, -2, True)
    """
    b = matching_image(before, invalid_before)
    a = matching_image(after, invalid_after)
    if b.shape != a.shape:
        raise ValueError(f"images differ in shape: {b.shape} vs {a.shape}")
    if min(b.shape) < 8 or not b.any() or not a.any():
        return Shift()
    win = _window2d(b.shape)
    fb = fft.fft2((b - b[b > 0].mean()) * win)
    fa = fft.fft2((a - a[a > 0].mean()) * win)
    prod = fb * fa.conj()
    prod /= np.maximum(np.abs(prod), 1e-12)
    # Phase correlation weighs every frequency alike, so the noisy, aliased
    # high frequencies pull the sub-pixel peak towards whole pixels. A
    # Gaussian low-pass on the normalised cross-power removes that bias.
    ky = fft.fftfreq(b.shape[0]).astype(np.float32)[:, None]
    kx = fft.fftfreq(b.shape[1]).astype(np.float32)[None, :]
    prod *= np.exp(-(kx * kx + ky * ky) / (2 * _LOWPASS_SIGMA ** 2))
    surface = fft.ifft2(prod).real
    peak = np.unravel_index(int(np.argmax(surface)), surface.shape)
    psr = _peak_to_sidelobe(surface, peak)
    # The cross-power spectrum is passed as the "reference" against a flat
    # spectrum, so skimage refines the peak of exactly this weighted surface.
    shift, _, _ = phase_cross_correlation(prod, np.ones_like(prod),
                                          upsample_factor=upsample_factor,
                                          space="fourier", normalization=None)
    # skimage returns the shift that registers `after` onto `before`: the
    # displacement of after's content is its negative.
    dy, dx = -float(shift[0]), -float(shift[1])
    reliability = float(np.clip((psr - min_psr / 2) / (3 * min_psr), 0, 1))
    result = Shift(x=dx, y=dy, reliability=reliability, reliable=psr >= min_psr, psr=psr)
    log.debug("global shift x=%.3f y=%.3f px, PSR %.1f", dx, dy, psr)
    return result
