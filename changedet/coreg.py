"""Co-registration: find and describe how the after image is displaced.

Sign convention (used everywhere in changedet): a shift ``(x, y)`` in pixels
is how far the after image's content is displaced relative to the before
image, on the before grid, x to the right (columns) and y down (rows). If a
corner at column 100, row 50 in before sits at column 103.4, row 47.3 in
after, the shift is ``(3.4, -2.7)``. In map units it is ``(x east, y north)``.

Pixel coordinates are continuous, with ``(0, 0)`` the upper-left corner of
the grid and ``(col + 0.5, row + 0.5)`` the centre of a pixel, as in an
affine geotransform. An :class:`Alignment` maps a before-grid location ``p``
to where its content sits in the after image, ``q = pixel_transform @ p``:
that is exactly what :func:`changedet.io.read_warped` takes to resample the
after image onto the before grid in a single warp.

Estimation follows "estimate globally, apply locally": the estimators read
only a decimated copy of the overlap and a set of windows (through a
:class:`WindowReader`, so a caller can serve them from files without ever
holding the whole image), and return a small frozen :class:`Alignment` that
can be applied to any block (:meth:`Alignment.for_window`).
"""

from __future__ import annotations

import functools
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol, get_args

import numpy as np
from affine import Affine
from numpy.typing import NDArray
from rasterio.windows import Window
from scipy import fft

from changedet.features import band_stats, gradient_magnitude
from changedet.grid import Grid

__all__ = [
    "CoregMode",
    "COREG_MODES",
    "MIN_PSR",
    "Shift",
    "TiePoints",
    "Alignment",
    "WindowReader",
    "ArrayReader",
    "matching_image",
    "estimate_shift",
    "estimate_alignment",
    "fit_affine",
    "apply_alignment",
    "window_transform",
]

log = logging.getLogger(__name__)

CoregMode = Literal["global", "local", "none"]
COREG_MODES: tuple[str, ...] = get_args(CoregMode)

#: Peak-to-sidelobe ratio below which a correlation peak is not trusted.
MIN_PSR = 8.0

#: Standard deviation, in cycles per pixel, of the spectral weight.
_LOWPASS_SIGMA = 0.15

#: The decimated overlap used to find large shifts is at most this many
#: pixels on its longer side. It only has to place the windows within a few
#: pixels: 512 (a 2048 px region averaged 4 x 4) finds the benchmark pair's
#: shift as 1024 did, in 0.42 s of co-registration against 0.62 s.
_COARSE_SIDE = 512

#: Side, pixels, of the central region of the overlap searched first for
#: large shifts (up to a quarter of it): on a larger overlap, decimating all
#: of it would decode every tile of both files, a full read, for a search
#: range few real pairs need. The whole overlap is searched only when the
#: windows placed from the region's answer find no reliable shift.
_COARSE_REGION = 2048

#: Window sizes (pixels) of the global consensus: the largest that fits,
#: within these bounds.
_GLOBAL_WINDOW = (32, 512)

#: Side of the consensus grid of windows in global mode.
_GLOBAL_GRID = 3

#: Windows with more invalid pixels than this fraction are not matched.
_MAX_INVALID = 0.5

#: Fraction of ``min_psr`` a tie point's peak needs to enter the affine fit.
_TIE_POINT_PSR = 0.75

#: Windows correlated at once (bounds the memory of the FFT stacks).
_CHUNK = 256


@dataclass(frozen=True)
class Shift:
    """A translation of the after image relative to the before image.

    Attributes
    ----------
    x, y : float
        Displacement in before-grid pixels, x right (columns), y down (rows).
    reliability : float
        From 0 (no evidence) to 1 (sharp correlation peaks on which all the
        windows agree).
    reliable : bool
        Whether the shift is trustworthy enough to apply.
    psr : float
        Peak-to-sidelobe ratio of the phase correlation (the median over
        the windows that agree).
    windows : int
        Windows matched (0 for a single whole-image correlation).
    inliers : int
        Windows whose shift agrees with the answer.
    spread : float
        Root-mean-square distance, in pixels, of the agreeing windows'
        shifts from the answer: a shift that varies across the image (a
        rotation, terrain) shows here.
    """

    x: float = 0.0
    y: float = 0.0
    reliability: float = 0.0
    reliable: bool = False
    psr: float = 0.0
    windows: int = 0
    inliers: int = 0
    spread: float = 0.0

    def to_map(self, grid: Grid) -> tuple[float, float]:
        """Return the shift in map units: ``(east, north)``."""
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
            "windows": self.windows,
            "inliers": self.inliers,
            "spread_px": round(self.spread, 4),
        }
        if grid is not None and grid.is_georeferenced:
            east, north = self.to_map(grid)
            out["shift_m"] = {"x": round(east, 4), "y": round(north, 4)}
        return out


@dataclass(frozen=True, eq=False)
class TiePoints:
    """Per-window displacements measured between the two images.

    Attributes
    ----------
    col, row : (n,) ndarray of float64
        Window centres in pixel coordinates of the estimation grid.
    dx, dy : (n,) ndarray of float64
        Displacement of the after image's content there, in pixels.
    psr : (n,) ndarray of float64
        Peak-to-sidelobe ratio of each window's correlation (0 if the window
        was not matched: too many invalid pixels).
    reliability : (n,) ndarray of float64
        0 to 1, from `psr`.
    inlier : (n,) ndarray of bool
        Whether the point agrees with the fitted alignment.
    residual : (n,) ndarray of float64
        Distance, in pixels, from the fitted alignment's displacement.
    size : int
        Window side in pixels.
    """

    col: NDArray[np.float64]
    row: NDArray[np.float64]
    dx: NDArray[np.float64]
    dy: NDArray[np.float64]
    psr: NDArray[np.float64]
    reliability: NDArray[np.float64]
    inlier: NDArray[np.bool_]
    residual: NDArray[np.float64]
    size: int = 0

    def __len__(self) -> int:
        return int(self.col.size)

    @classmethod
    def empty(cls) -> TiePoints:
        """No tie points."""
        z = np.zeros(0)
        return cls(z, z, z, z, z, z, np.zeros(0, bool), z)


def _affine_params(m: Affine) -> dict[str, float]:
    # Rotation and scales of the linear part, for people reading metadata.
    sx = math.hypot(m.a, m.d)
    sy = math.hypot(m.b, m.e)
    return {"rotation_deg": round(math.degrees(math.atan2(m.d, m.a)), 5),
            "scale_x": round(sx, 7), "scale_y": round(sy, 7)}


def window_transform(pixel_transform: Affine, col_off: float, row_off: float) -> Affine:
    """Re-express a pixel transform for a window whose corner is at (col_off, row_off)."""
    o = Affine.translation(col_off, row_off)
    return ~o @ pixel_transform @ o


@dataclass(frozen=True)
class Alignment:
    """How the after image maps onto the before grid: fitted once, applied anywhere.

    Attributes
    ----------
    mode : {"global", "local", "none"}
        What was asked for.
    model : {"identity", "translation", "affine"}
        What was fitted (local mode falls back to a translation when the tie
        points cannot support an affine).
    shift : Shift
        The displacement at the centre of the grid (the global shift).
    pixel_transform : Affine
        Before-grid pixel location ``p`` to after-image location
        ``pixel_transform @ p``, in pixel coordinates of the grid the
        estimate was made on. Pass it to :func:`changedet.io.read_warped`.
    shape : (int, int)
        ``(H, W)`` of that grid.
    tie_points : TiePoints
        The windows matched (local mode: the tie-point grid).
    rmse : float
        Root-mean-square residual, in pixels, of the inlier tie points
        against the fitted model.
    matched_on : str
        The image the windows were matched on.
    note : str
        Why the result is unreliable or fell back, if it is or did.
    """

    mode: str = "none"
    model: str = "identity"
    shift: Shift = field(default_factory=Shift)
    pixel_transform: Affine = field(default_factory=Affine.identity)
    shape: tuple[int, int] = (0, 0)
    tie_points: TiePoints = field(default_factory=TiePoints.empty)
    rmse: float = 0.0
    matched_on: str = ""
    note: str = ""

    @property
    def reliable(self) -> bool:
        """Whether the alignment is trustworthy enough to apply."""
        return self.shift.reliable

    @property
    def reliability(self) -> float:
        """From 0 (no evidence) to 1."""
        return self.shift.reliability

    def for_window(self, col_off: float, row_off: float) -> Affine:
        """Return the pixel transform for a block whose corner is at (col_off, row_off).

        The block's own pixel coordinates start at 0; pass the result as
        ``pixel_transform`` to :func:`changedet.io.read_warped` with the
        block's grid. The block may lie anywhere (even beyond the grid the
        estimate was made on: an affine extrapolates).
        """
        return window_transform(self.pixel_transform, col_off, row_off)

    def displacement(self, col: NDArray[np.floating], row: NDArray[np.floating],
                     ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Displacement ``(dx, dy)`` in pixels at grid locations (col, row)."""
        m = self.pixel_transform
        col, row = np.asarray(col, np.float64), np.asarray(row, np.float64)
        return (m.a * col + m.b * row + m.c - col, m.d * col + m.e * row + m.f - row)

    def to_dict(self, grid: Grid | None = None) -> dict[str, Any]:
        """Plain-typed description, for metadata and ``--json``."""
        out: dict[str, Any] = {"mode": self.mode, "model": self.model,
                               **self.shift.to_dict(grid)}
        if self.model == "affine":
            out["pixel_transform"] = [round(v, 9) for v in tuple(self.pixel_transform)[:6]]
            out.update(_affine_params(self.pixel_transform))
        out["tie_points"] = len(self.tie_points)
        out["tie_point_inliers"] = int(self.tie_points.inlier.sum())
        out["rmse_px"] = round(self.rmse, 4)
        if self.matched_on:
            out["matched_on"] = self.matched_on
        if self.note:
            out["note"] = self.note
        return out


class WindowReader(Protocol):
    """One image on the estimation grid, read a window at a time.

    The estimators call :meth:`read` with windows inside the grid; a reader
    backed by a file reads only those pixels.
    """

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)`` of the estimation grid."""
        ...

    def read(self, window: Window, factor: int = 1,
             ) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        """Pixels of `window` averaged over `factor` x `factor` blocks.

        Returns ``(bands, h // factor, w // factor)`` float32 values and the
        matching ``(h // factor, w // factor)`` invalid mask (True = invalid).
        """
        ...

    # A reader may also have ``tiles``: ``(tile_height, tile_width, row, col)``,
    # the file's tiles on the estimation grid (one has its corner at ``(row,
    # col)``), or None. The global windows are then placed inside tiles:
    # a window across four tiles decodes four for one's worth of pixels.


class ArrayReader:
    """A :class:`WindowReader` over an in-memory ``(bands, H, W)`` or ``(H, W)`` array.

    Windows are converted to float32 as they are read; the array itself is
    never copied.
    """

    def __init__(self, data: NDArray[Any], invalid: NDArray[np.bool_] | None = None) -> None:
        data = np.asarray(data)
        self.data = data[np.newaxis] if data.ndim == 2 else data
        if self.data.ndim != 3:
            raise ValueError(f"expected a (bands, H, W) or (H, W) array, got shape {data.shape}")
        if invalid is not None and np.shape(invalid) != self.data.shape[1:]:
            raise ValueError(f"invalid mask shape {np.shape(invalid)} does not match image "
                             f"shape {self.data.shape[1:]}")
        self.invalid = invalid

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)``."""
        return (int(self.data.shape[1]), int(self.data.shape[2]))

    def read(self, window: Window, factor: int = 1,
             ) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        """See :meth:`WindowReader.read`."""
        c0, r0 = int(window.col_off), int(window.row_off)
        h = int(window.height) // factor * factor
        w = int(window.width) // factor * factor
        data = self.data[:, r0:r0 + h, c0:c0 + w].astype(np.float32)
        inv = (np.zeros((h, w), bool) if self.invalid is None
               else np.asarray(self.invalid[r0:r0 + h, c0:c0 + w], bool).copy())
        inv |= ~np.isfinite(data).all(axis=0)
        data[:, inv] = 0
        if factor == 1:
            return data, inv
        b, hh, ww = data.shape[0], h // factor, w // factor
        count = (~inv).reshape(hh, factor, ww, factor).sum(axis=(1, 3))
        total = data.reshape(b, hh, factor, ww, factor).sum(axis=(2, 4))
        out = (total / np.maximum(count, 1)).astype(np.float32)
        low = count < factor * factor / 2
        out[:, low] = 0
        return out, low


def matching_image(data: NDArray[np.floating], invalid: NDArray[np.bool_] | None = None,
                   ) -> NDArray[np.float32]:
    """Return the image co-registration matches on: a gradient magnitude.

    See :func:`changedet.features.gradient_magnitude`; it keeps the geometry
    of edges and drops gain, offset and haze. Bands are combined by their
    standardised mean, so every band counts alike whatever its range.
    """
    return gradient_magnitude(data, invalid)


# -- the correlation core -----------------------------------------------------

@functools.lru_cache(maxsize=8)
def _window2d(shape: tuple[int, int]) -> NDArray[np.float32]:
    # A Tukey window keeps most of the image while killing the edge jump that
    # would otherwise dominate the spectrum with a spurious zero-shift peak.
    wy, wx = _tukey(shape[0]), _tukey(shape[1])
    return wy[:, None] * wx[None, :]


def _tukey(n: int, alpha: float = 0.25) -> NDArray[np.float32]:
    """``scipy.signal.windows.tukey(n, alpha)`` (symmetric), as float32.

    Written out because importing :mod:`scipy.signal` costs 0.3 s (it
    imports :mod:`scipy.stats`), more than a whole global co-registration.
    """
    if n < 2:
        return np.ones(n, np.float32)
    x = np.arange(n, dtype=np.float64) / (n - 1)      # 0 .. 1
    # Cosine tapers over the first and last alpha / 2 of the window.
    edge = np.minimum(x, 1.0 - x)
    taper = 0.5 * (1.0 + np.cos(np.pi * (2.0 * edge / alpha - 1.0)))
    return np.where(edge < alpha / 2, taper, 1.0).astype(np.float32)


def _prepare(m: NDArray[np.float32], inv: NDArray[np.bool_], win: NDArray[np.float32],
             ) -> NDArray[np.float32]:
    """Zero-mean over valid pixels, zero where invalid, tapered: (n, h, w)."""
    valid = ~inv
    count = np.maximum(valid.sum(axis=(1, 2)), 1)
    mean = (m * valid).sum(axis=(1, 2), dtype=np.float64) / count
    out = m - mean.astype(np.float32)[:, None, None]
    out[inv] = 0
    out *= win
    return out


def _psr(surface: NDArray[np.float32], py: NDArray[np.intp], px: NDArray[np.intp],
         exclude: int = 5) -> NDArray[np.float64]:
    """Peak-to-sidelobe ratio of each surface, outside a square around the peak."""
    n, h, w = surface.shape
    off = np.arange(-exclude, exclude + 1)
    rows = (py[:, None] + off) % h
    cols = (px[:, None] + off) % w
    near = surface[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
    s1 = surface.sum(axis=(1, 2), dtype=np.float64) - near.sum(axis=(1, 2), dtype=np.float64)
    s2 = (np.square(surface, dtype=np.float64).sum(axis=(1, 2))
          - np.square(near, dtype=np.float64).sum(axis=(1, 2)))
    k = h * w - near[0].size
    mean = s1 / k
    std = np.sqrt(np.maximum(s2 / k - mean * mean, 0))
    peak = surface[np.arange(n), py, px].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        psr = np.where(std > 0, (peak - mean) / std, 0.0)
    return np.nan_to_num(psr)


def _log_parabola(m: NDArray, c: NDArray, p: NDArray) -> NDArray[np.float64]:
    # The low-passed peak is close to a Gaussian, whose log is a parabola.
    lm, lc, lp = (np.log(np.maximum(v.astype(np.float64), 1e-12)) for v in (m, c, p))
    d = lm - 2 * lc + lp
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(d < 0, 0.5 * (lm - lp) / d, 0.0)
    return np.clip(np.nan_to_num(out), -0.5, 0.5)


def _correlate(b: NDArray[np.float32], a: NDArray[np.float32], inv_b: NDArray[np.bool_],
               inv_a: NDArray[np.bool_], *, tol: float = 1e-3, iterations: int = 4,
               ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Phase-correlate stacks of matching images, window by window.

    Parameters
    ----------
    b, a : (n, h, w) ndarray of float32
        Matching images of the before and after windows.
    inv_b, inv_a : (n, h, w) ndarray of bool

    Returns
    -------
    dx, dy : (n,) ndarray of float64
        Displacement of `a`'s content relative to `b`, in pixels.
    psr : (n,) ndarray of float64
    """
    n, h, w = b.shape
    win = _window2d((h, w))
    fb = fft.rfft2(_prepare(b, inv_b, win), workers=-1)
    fa = fft.rfft2(_prepare(a, inv_a, win), workers=-1)
    prod = fa * fb.conj()
    del fa, fb
    prod /= np.maximum(np.abs(prod), np.float32(1e-12))
    # Phase correlation weighs every frequency alike, so the noisy, aliased
    # high frequencies pull the sub-pixel peak towards whole pixels. A
    # Gaussian low-pass on the normalised cross-power removes that bias.
    fy = fft.fftfreq(h).astype(np.float32)
    fx = fft.rfftfreq(w).astype(np.float32)
    prod *= np.exp(-(fy[:, None] ** 2 + fx[None, :] ** 2) / np.float32(2 * _LOWPASS_SIGMA ** 2))
    surface = fft.irfft2(prod, s=(h, w), workers=-1)
    peak = surface.reshape(n, -1).argmax(axis=1)
    py, px = np.unravel_index(peak, (h, w))
    psr = _psr(surface, py, px)
    idx = np.arange(n)
    near = {(dy, dx): surface[idx, (py + dy) % h, (px + dx) % w]
            for dy, dx in ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))}
    y = py + _log_parabola(near[-1, 0], near[0, 0], near[1, 0])
    x = px + _log_parabola(near[0, -1], near[0, 0], near[0, 1])
    del surface
    # Newton's method on the continuous, band-limited surface: its maximum
    # is exactly the shift for a pure translation (every cosine of the
    # weighted spectrum peaks there), with no upsampling grid to quantise it.
    weight = np.full(fx.shape, 2.0, np.float32)
    weight[0] = 1.0
    if w % 2 == 0:
        weight[-1] = 1.0
    prod *= weight
    ky = (2j * np.pi * fy).astype(np.complex64)
    kx = (2j * np.pi * fx).astype(np.complex64)
    for _ in range(iterations):
        ey = np.exp(ky[None, :] * y[:, None].astype(np.float32))
        ex = np.exp(kx[None, :] * x[:, None].astype(np.float32))
        u = np.matmul(prod, np.stack([ex, ex * kx, ex * kx * kx], axis=2))  # (n, h, 3)
        sy = (ey * ky * u[:, :, 0]).sum(axis=1).real.astype(np.float64)
        syy = (ey * ky * ky * u[:, :, 0]).sum(axis=1).real.astype(np.float64)
        sx = (ey * u[:, :, 1]).sum(axis=1).real.astype(np.float64)
        sxx = (ey * u[:, :, 2]).sum(axis=1).real.astype(np.float64)
        sxy = (ey * ky * u[:, :, 1]).sum(axis=1).real.astype(np.float64)
        det = syy * sxx - sxy * sxy
        ok = (det > 0) & (syy < 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            step_y = np.where(ok, -(sxx * sy - sxy * sx) / det, 0.0)
            step_x = np.where(ok, -(syy * sx - sxy * sy) / det, 0.0)
        step_y, step_x = np.clip(step_y, -0.5, 0.5), np.clip(step_x, -0.5, 0.5)
        y, x = y + step_y, x + step_x
        if max(float(np.abs(step_y).max(initial=0)), float(np.abs(step_x).max(initial=0))) < tol:
            break
    y = np.where(y > h / 2, y - h, y)
    x = np.where(x > w / 2, x - w, x)
    return x, y, psr


def _reliability(psr: NDArray[np.float64] | float, min_psr: float) -> NDArray[np.float64]:
    return np.clip((np.asarray(psr, np.float64) - min_psr / 2) / (3 * min_psr), 0, 1)


# -- reading and matching windows -----------------------------------------------

def _band_weights(data: NDArray[np.float32], invalid: NDArray[np.bool_]) -> NDArray[np.float32]:
    """Weights that make the band sum the standardised mean (up to a constant)."""
    std = band_stats(data, invalid).std
    out = np.array([1.0 / s if s > 0 else 0.0 for s in std], np.float32)
    return out / max(data.shape[0], 1)


def _match_image(data: NDArray[np.float32], invalid: NDArray[np.bool_],
                 weights: NDArray[np.float32]) -> NDArray[np.float32]:
    combined = np.tensordot(weights, data, axes=1).astype(np.float32, copy=False)
    return gradient_magnitude(combined, invalid)


@dataclass(frozen=True)
class _Image:
    reader: WindowReader
    weights: NDArray[np.float32]


#: One helper thread reads the before image while the caller reads the after
#: image: file reads and decompression release the GIL. The helper only ever
#: serves the before image, so no dataset handle is used by two threads at
#: once (GDAL's handles are not thread-safe).
_HELPER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="changedet-coreg")


def _read_both(before: WindowReader, after: WindowReader, wb: Window, wa: Window,
               factor: int = 1) -> tuple[NDArray[np.float32], NDArray[np.bool_],
                                         NDArray[np.float32], NDArray[np.bool_]]:
    pending = _HELPER.submit(before.read, wb, factor)
    ad, ai = after.read(wa, factor)
    bd, bi = pending.result()
    return bd, bi, ad, ai


def _read_match(img: _Image, window: Window) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    data, inv = img.reader.read(window)
    return _match_image(data, inv, img.weights), inv


def _cut_windows(img: _Image, cols: NDArray[np.intp], rows: NDArray[np.intp], size: int,
                 ) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """Read the matching images of the windows at (cols, rows), all in one row band.

    Windows that cover most of the band's span are read as one strip (a
    gradient needs its neighbours, and one read is cheaper than many).
    """
    n = cols.size
    c0, c1 = int(cols.min()), int(cols.max()) + size
    r0, r1 = int(rows.min()), int(rows.max()) + size
    m = np.zeros((n, size, size), np.float32)
    inv = np.ones((n, size, size), bool)
    if n * size * size >= 0.5 * (c1 - c0) * (r1 - r0):
        strip, sinv = _read_match(img, Window(c0, r0, c1 - c0, r1 - r0))
        for i, (c, r) in enumerate(zip(cols - c0, rows - r0, strict=True)):
            m[i] = strip[r:r + size, c:c + size]
            inv[i] = sinv[r:r + size, c:c + size]
    else:
        for i, (c, r) in enumerate(zip(cols, rows, strict=True)):
            m[i], inv[i] = _read_match(img, Window(int(c), int(r), size, size))
    return m, inv


def _match(before: _Image, after: _Image, cols: NDArray[np.intp], rows: NDArray[np.intp],
           offsets: NDArray[np.intp], size: int, min_psr: float) -> TiePoints:
    """Measure the displacement in each window (before at (col, row), after + offset)."""
    n = cols.size
    dx, dy, psr = np.zeros(n), np.zeros(n), np.zeros(n)
    cx, cy = np.full(n, size / 2), np.full(n, size / 2)
    order = np.lexsort((cols, rows))
    groups = np.split(order, np.flatnonzero(np.diff(rows[order])) + 1) if n else []
    pending: list[tuple[NDArray[np.intp], NDArray, NDArray, NDArray, NDArray]] = []

    def flush() -> None:
        if not pending:
            return
        ids = np.concatenate([p[0] for p in pending])
        mb, ma = (np.concatenate([p[k] for p in pending]) for k in (1, 2))
        ib, ia = (np.concatenate([p[k] for p in pending]) for k in (3, 4))
        bad = ((ib | ia).mean(axis=(1, 2)) > _MAX_INVALID) | ~(mb.any(axis=(1, 2))
                                                                & ma.any(axis=(1, 2)))
        x, y, p = _correlate(mb, ma, ib, ia)
        p[bad] = 0.0
        dx[ids], dy[ids], psr[ids] = x, y, p
        # Under rotation or scale the displacement varies across a window, and
        # its correlation reports the displacement where the edges are: put the
        # tie point at the edges' centroid rather than the window's centre.
        e = mb * _window2d((size, size))
        total = np.maximum(e.sum(axis=(1, 2), dtype=np.float64), 1e-12)
        centre = np.arange(size) + 0.5
        cy[ids] = (e.sum(axis=2) @ centre) / total
        cx[ids] = (e.sum(axis=1) @ centre) / total
        pending.clear()

    for g in groups:
        cut_before = _HELPER.submit(_cut_windows, before, cols[g], rows[g], size)
        ma, ia = _cut_windows(after, cols[g] + offsets[g, 0], rows[g] + offsets[g, 1], size)
        mb, ib = cut_before.result()
        pending.append((g, mb, ma, ib, ia))
        if sum(p[0].size for p in pending) >= _CHUNK:
            flush()
    flush()
    return TiePoints(col=cols + cx, row=rows + cy,
                     dx=offsets[:, 0] + dx, dy=offsets[:, 1] + dy, psr=psr,
                     reliability=_reliability(psr, min_psr), inlier=np.zeros(n, bool),
                     residual=np.zeros(n), size=size)


def _span(shape: tuple[int, int], offset: tuple[int, int]) -> tuple[int, int, int, int]:
    """Before-grid ``(c0, c1, r0, r1)`` whose content, moved by `offset`, stays in the grid."""
    h, w = shape
    ox, oy = offset
    return (max(0, -ox), min(w, w - ox), max(0, -oy), min(h, h - oy))


# -- consensus and fitting --------------------------------------------------------

#: Windows that measure the same shift agree to well within this (pixels).
_AGREE_PX = 1.0


def _consensus(tp: TiePoints, min_psr: float) -> tuple[Shift, NDArray[np.bool_], str]:
    """Find the translation the most (and most confident) windows agree on.

    Windows vote with their peak-to-sidelobe ratio. The answer is the
    densest cluster: the shift with the largest vote within `_AGREE_PX` of
    it, counting weaker windows (PSR above half the minimum) as supporters.
    A median and a spread would not do: when most windows see nothing but
    new buildings, shadows or texture, their wrong answers inflate any
    spread until it swallows them. The cluster is trusted when at least two
    windows share it, one of them confident, and it outweighs any rival
    cluster by half again (a lone window only when it is the only one).
    """
    n = len(tp)
    best = float(tp.psr.max(initial=0.0))
    confident = tp.psr >= min_psr
    if not confident.any():
        note = (f"no distinct correlation peak in any of {n} window(s) (best peak-to-sidelobe "
                f"ratio {best:.1f}, {min_psr:g} needed): the images may be featureless "
                "(water, cloud) or too different")
        return Shift(psr=best, windows=n), np.zeros(n, bool), note
    voter = np.isfinite(tp.dx) & np.isfinite(tp.dy) & (tp.psr >= min_psr / 2)
    idx = np.flatnonzero(voter)
    dist = np.hypot(tp.dx[idx, None] - tp.dx[None, idx], tp.dy[idx, None] - tp.dy[None, idx])
    near = dist <= _AGREE_PX
    support = (near * tp.psr[idx][None, :]).sum(axis=1)
    # Only clusters around a confident window can win.
    support_conf = np.where(confident[idx], support, -1.0)
    top = int(np.argmax(support_conf))
    members = idx[near[top]]
    x = float(np.average(tp.dx[members], weights=tp.psr[members]))
    y = float(np.average(tp.dy[members], weights=tp.psr[members]))
    inlier = voter & (np.hypot(tp.dx - x, tp.dy - y) <= _AGREE_PX)
    wgt = tp.psr[inlier]
    x = float(np.average(tp.dx[inlier], weights=wgt))
    y = float(np.average(tp.dy[inlier], weights=wgt))
    spread = float(np.sqrt(np.mean((tp.dx[inlier] - x) ** 2 + (tp.dy[inlier] - y) ** 2)))
    vote = float(wgt.sum())
    rival = float(np.max(support[~near[top]], initial=0.0))
    k = int(inlier.sum())
    agree = vote / float(tp.psr[voter].sum())
    reliable = (k >= 2 and vote >= 1.5 * rival) or n == 1
    reliability = float(np.median(tp.reliability[inlier])) * agree
    if reliable:
        note = ""
    elif k == 1:
        note = (f"no two of the {n} windows agree on a shift (the best has peak-to-sidelobe "
                f"ratio {best:.1f}); the images may be featureless or too different")
    else:
        note = (f"{k} of the {n} windows agree on a shift, but others agree as strongly on "
                "another; the images may be too different")
    shift = Shift(x=x, y=y, reliability=reliability, reliable=reliable,
                  psr=float(np.median(wgt)), windows=n, inliers=k, spread=spread)
    return shift, inlier, note


def _design(col: NDArray[np.float64], row: NDArray[np.float64], centre: tuple[float, float],
            scale: float) -> NDArray[np.float64]:
    return np.stack([np.ones_like(col), (col - centre[0]) / scale, (row - centre[1]) / scale],
                    axis=-1)


def fit_affine(col: NDArray[np.floating], row: NDArray[np.floating],
               dx: NDArray[np.floating], dy: NDArray[np.floating], *,
               weights: NDArray[np.floating] | None = None, threshold: float = 1.0,
               iterations: int = 500, seed: int = 0,
               ) -> tuple[Affine, NDArray[np.bool_], NDArray[np.float64]]:
    """Fit an affine displacement to tie points, robustly (RANSAC, then least squares).

    Parameters
    ----------
    col, row : (n,) array_like
        Tie-point locations, pixels.
    dx, dy : (n,) array_like
        Displacements measured there, pixels.
    weights : (n,) array_like, optional
        Confidence of each point in the final least-squares fit.
    threshold : float, optional
        Largest residual, in pixels, of an inlier during the random search.
        The final inliers are those within ``max(0.25, 3 sigma)`` (sigma
        from the median residual), at most `threshold`.
    iterations : int, optional
        Random triples tried.
    seed : int, optional
        Seed of the random search (the fit is deterministic).

    Returns
    -------
    transform : Affine
        Maps a location ``p`` to ``p + displacement(p)``.
    inlier : (n,) ndarray of bool
    residual : (n,) ndarray of float64
        Distance of each point's displacement from the fit, pixels.

    Raises
    ------
    ValueError
        With fewer than three points.

    References
    ----------
    .. [1] Fischler, M. A. and Bolles, R. C. (1981). Random sample consensus.
           Communications of the ACM 24(6), 381-395. :doi:`10.1145/358669.358692`

    Examples
    --------
    >>> import numpy as np
    >>> c, r = np.meshgrid(np.arange(0, 500, 100.0), np.arange(0, 500, 100.0))
    >>> c, r = c.ravel(), r.ravel()
    >>> t, inl, res = fit_affine(c, r, 2 + 0.001 * c, -1 + 0.0 * r)
    >>> round(t.c, 3), round(t.a, 4), round(t.f, 3), bool(inl.all())
    (2.0, 1.001, -1.0, True)
    """
    col, row, dx, dy = (np.asarray(v, np.float64) for v in (col, row, dx, dy))
    n = col.size
    if n < 3:
        raise ValueError(f"an affine fit needs at least 3 tie points, got {n}")
    w = np.ones(n) if weights is None else np.asarray(weights, np.float64)
    centre = (float(col.mean()), float(row.mean()))
    scale = max(float(np.ptp(col)), float(np.ptp(row)), 1.0)
    x = _design(col, row, centre, scale)
    d = np.stack([dx, dy], axis=-1)
    rng = np.random.default_rng(seed)
    triples = np.array([rng.choice(n, 3, replace=False) for _ in range(iterations)])
    xs, ds = x[triples], d[triples]
    ok = np.abs(np.linalg.det(xs)) > 1e-6
    best = np.ones(n, bool)
    if ok.any():
        beta = np.linalg.solve(xs[ok], ds[ok])  # (k, 3, 2)
        res = np.linalg.norm(np.einsum("nj,kjc->knc", x, beta) - d[None], axis=2)
        score = ((res <= threshold) * w[None]).sum(axis=1)
        best = res[int(np.argmax(score))] <= threshold
    inlier = best
    for _ in range(3):
        if inlier.sum() < 3:
            inlier = np.ones(n, bool)
        sw = np.sqrt(w[inlier])[:, None]
        beta = np.linalg.lstsq(x[inlier] * sw, d[inlier] * sw, rcond=None)[0]
        residual = np.linalg.norm(x @ beta - d, axis=1)
        sigma = 1.4826 * float(np.median(residual[inlier]))
        inlier = residual <= min(threshold, max(0.25, 3 * sigma))
    cx, cy = centre
    (ax0, ay0), (ax1, ay1), (ax2, ay2) = beta
    transform = Affine(1 + ax1 / scale, ax2 / scale, ax0 - (ax1 * cx + ax2 * cy) / scale,
                       ay1 / scale, 1 + ay2 / scale, ay0 - (ay1 * cx + ay2 * cy) / scale)
    return transform, inlier, residual


# -- the estimators --------------------------------------------------------------

def _coarse(before: tuple[NDArray[np.float32], NDArray[np.bool_], _Image],
            after: tuple[NDArray[np.float32], NDArray[np.bool_], _Image], factor: int,
            min_psr: float) -> tuple[tuple[int, int], float]:
    """Integer shift from the decimated overlap, and its PSR."""
    (bd, bi, bimg), (ad, ai, aimg) = before, after
    mb, ma = _match_image(bd, bi, bimg.weights), _match_image(ad, ai, aimg.weights)
    if not (mb.any() and ma.any()):
        return (0, 0), 0.0
    x, y, psr = _correlate(mb[None], ma[None], bi[None], ai[None])
    log.debug("coarse shift x=%.1f y=%.1f px (decimated %dx), PSR %.1f",
              x[0] * factor, y[0] * factor, factor, psr[0])
    if psr[0] < min_psr:
        return (0, 0), float(psr[0])
    return (round(float(x[0]) * factor), round(float(y[0]) * factor)), float(psr[0])


def _coarse_in(rb: WindowReader, ra: WindowReader, region: Window, min_psr: float,
               ) -> tuple[tuple[int, int], float, _Image, _Image]:
    """Band weights and coarse shift from `region` of the overlap, decimated."""
    factor = max(1, math.ceil(max(int(region.width), int(region.height)) / _COARSE_SIDE))
    bd, bi, ad, ai = _read_both(rb, ra, region, region, factor)
    b_img, a_img = _Image(rb, _band_weights(bd, bi)), _Image(ra, _band_weights(ad, ai))
    offset, psr = _coarse((bd, bi, b_img), (ad, ai, a_img), factor, min_psr)
    return offset, psr, b_img, a_img


def _global(before: _Image, after: _Image, shape: tuple[int, int], min_psr: float,
            offset: tuple[int, int], coarse_psr: float) -> tuple[Shift, TiePoints, str]:
    c0, c1, r0, r1 = _span(shape, offset)
    side = min(c1 - c0, r1 - r0)
    lo, hi = _GLOBAL_WINDOW
    size = min(hi, side if side < 2 * lo else side // 2 // 16 * 16)
    if side < lo:
        note = (f"the images share only {c1 - c0} x {r1 - r0} pixels once displaced by "
                f"{offset} px; at least {lo} x {lo} are needed")
        return Shift(psr=coarse_psr), TiePoints.empty(), note
    cs = np.unique(np.linspace(c0, c1 - size, _GLOBAL_GRID).round().astype(np.intp))
    rs = np.unique(np.linspace(r0, r1 - size, _GLOBAL_GRID).round().astype(np.intp))
    tiles = getattr(before.reader, "tiles", None)
    if tiles is not None:
        size, cs, rs = _inside_tiles(size, cs, rs, (c0, c1, r0, r1), tiles)
    cols, rows = (v.ravel() for v in np.meshgrid(cs, rs))
    offsets = np.tile(np.asarray(offset, np.intp), (cols.size, 1))
    tp = _match(before, after, cols, rows, offsets, size, min_psr)
    shift, inlier, note = _consensus(tp, min_psr)
    res = np.hypot(tp.dx - shift.x, tp.dy - shift.y)
    return shift, replace(tp, inlier=inlier, residual=res), note


#: Pixels a global window keeps from its tiles' edges when placed inside
#: them (see _inside_tiles): the after image's window, moved by the coarse
#: shift, then stays in the same tiles for shifts up to this.
_TILE_MARGIN = 32


def _inside_tiles(size: int, cs: NDArray[np.intp], rs: NDArray[np.intp],
                  span: tuple[int, int, int, int], tiles: tuple[int, int, int, int],
                  ) -> tuple[int, NDArray[np.intp], NDArray[np.intp]]:
    """Move the global windows inside the file's tiles (and shrink them to fit).

    A 512 px window placed anywhere on 512 px tiles meets four of them:
    both images decode four tiles for one tile's pixels (on the 8192 px
    benchmark pair, 72 tiles for the nine windows, 0.17 s of the 0.8 s
    co-registration). Each window goes instead to the middle of the tiles
    nearest it, as many across as its size needs, `_TILE_MARGIN` from
    their edges: 448 px in one 512 px tile, or in two by two 256 px tiles.
    Not done when that would shrink a window below 7/8 of its size, or
    bring two windows onto the same tiles (a small overlap).

    Returns the size and the windows' columns and rows.
    """
    th, tw, row0, col0 = tiles
    c0, c1, r0, r1 = span
    ky, kx = -(-size // th), -(-size // tw)          # tiles a window spans
    new = min(size, ky * th - 2 * _TILE_MARGIN, kx * tw - 2 * _TILE_MARGIN)
    if new < size * 7 // 8:
        return size, cs, rs

    def place(starts: NDArray[np.intp], t: int, k: int, origin: int, lo: int, hi: int,
              ) -> NDArray[np.intp] | None:
        # The k-tile span whose middle is nearest each window's middle,
        # among those within lo:hi.
        pad = (k * t - new) // 2
        first, last = -(-(lo - origin - pad) // t), (hi - new - origin - pad) // t
        j = np.round((starts + size / 2 - origin - k * t / 2) / t).astype(np.intp)
        j = np.clip(j, first, last)
        if first > last or np.unique(j).size != starts.size:
            return None
        return origin + j * t + pad

    new_cs = place(cs, tw, kx, col0, c0, c1)
    new_rs = place(rs, th, ky, row0, r0, r1)
    if new_cs is None or new_rs is None:
        return size, cs, rs
    return new, new_cs, new_rs


def _affine_agrees(tp: TiePoints, min_psr: float) -> bool:
    """Check that at least six confident windows fit one affine within `_AGREE_PX`."""
    good = np.isfinite(tp.dx) & np.isfinite(tp.dy) & (tp.psr >= min_psr)
    if good.sum() < 6:
        return False
    _, inlier, _ = fit_affine(tp.col[good], tp.row[good], tp.dx[good], tp.dy[good],
                              threshold=_AGREE_PX)
    return int(inlier.sum()) >= 6


def _local(before: _Image, after: _Image, shape: tuple[int, int], min_psr: float,
           gshift: Shift, gtp: TiePoints, *, size: int, spacing: int, threshold: float,
           ) -> tuple[Alignment, str]:
    h, w = shape
    # A first model from the global windows predicts where each tie point's
    # content is, so windows stay matched under rotation and scale too.
    prior = Affine.translation(gshift.x, gshift.y)
    good = gtp.psr >= min_psr
    if good.sum() >= 4:
        t, inl, _ = fit_affine(gtp.col[good], gtp.row[good], gtp.dx[good], gtp.dy[good],
                               threshold=3.0)
        if inl.sum() >= 4:
            prior = t
    half = size / 2
    ncol = max(1, (w - size) // spacing + 1)
    nrow = max(1, (h - size) // spacing + 1)
    cs = (w - size - (ncol - 1) * spacing) // 2 + spacing * np.arange(ncol)
    rs = (h - size - (nrow - 1) * spacing) // 2 + spacing * np.arange(nrow)
    cols, rows = (v.ravel().astype(np.intp) for v in np.meshgrid(cs, rs))
    probe = Alignment(pixel_transform=prior)
    pdx, pdy = probe.displacement(cols + half, rows + half)
    offsets = np.stack([np.round(pdx), np.round(pdy)], axis=1).astype(np.intp)
    inside = ((cols + offsets[:, 0] >= 0) & (cols + offsets[:, 0] + size <= w)
              & (rows + offsets[:, 1] >= 0) & (rows + offsets[:, 1] + size <= h))
    cols, rows, offsets = cols[inside], rows[inside], offsets[inside]
    tp = _match(before, after, cols, rows, offsets, size, min_psr)
    # RANSAC rejects wrong matches, so weaker peaks may still vote: more
    # points make a steadier fit on scenes where few windows match well.
    confident = tp.psr >= _TIE_POINT_PSR * min_psr
    n_conf = int(confident.sum())
    base = Alignment(mode="local", model="translation", shift=gshift, shape=shape,
                     pixel_transform=Affine.translation(gshift.x, gshift.y), tie_points=tp)
    if n_conf < 6:
        return base, (f"only {n_conf} of {len(tp)} tie point(s) found a distinct peak; "
                      "kept the global shift")
    transform, inl_c, res_c = fit_affine(tp.col[confident], tp.row[confident],
                                         tp.dx[confident], tp.dy[confident],
                                         weights=tp.psr[confident], threshold=threshold)
    inlier = np.zeros(len(tp), bool)
    inlier[confident] = inl_c
    fitted = Alignment(pixel_transform=transform)
    fdx, fdy = fitted.displacement(tp.col, tp.row)
    residual = np.hypot(tp.dx - fdx, tp.dy - fdy)
    tp = replace(tp, inlier=inlier, residual=residual)
    k = int(inlier.sum())
    rmse = float(np.sqrt(np.mean(residual[inlier] ** 2))) if k else 0.0
    spread_ok = (k >= 6 and np.ptp(tp.col[inlier]) >= w / 4 and np.ptp(tp.row[inlier]) >= h / 4)
    agree = k / n_conf
    if not spread_ok or agree < 0.3:
        return replace(base, tie_points=tp), (
            f"{k} of {n_conf} confident tie point(s) fit an affine, too few or too "
            "clustered to trust; kept the global shift")
    cx, cy = fitted.displacement(np.array([w / 2]), np.array([h / 2]))
    reliability = float(np.median(tp.reliability[inlier])) * agree
    shift = Shift(x=float(cx[0]), y=float(cy[0]), reliability=reliability, reliable=True,
                  psr=float(np.median(tp.psr[inlier])), windows=len(tp), inliers=k,
                  spread=rmse)
    return Alignment(mode="local", model="affine", shift=shift, pixel_transform=transform,
                     shape=shape, tie_points=tp, rmse=rmse), ""


def _reader(x: Any, invalid: NDArray[np.bool_] | None) -> WindowReader:
    if isinstance(x, np.ndarray) or isinstance(x, (list, tuple)):
        return ArrayReader(np.asarray(x), invalid)
    if invalid is not None:
        raise ValueError("give invalid masks with arrays; a WindowReader brings its own")
    return x


def estimate_alignment(before: NDArray[np.floating] | WindowReader,
                       after: NDArray[np.floating] | WindowReader, *,
                       mode: CoregMode = "global",
                       invalid_before: NDArray[np.bool_] | None = None,
                       invalid_after: NDArray[np.bool_] | None = None,
                       window: int = 128, spacing: int | None = None,
                       max_tie_points: int = 2000, threshold: float = 1.0,
                       min_psr: float = MIN_PSR) -> Alignment:
    """Estimate how the after image is displaced relative to the before image.

    Parameters
    ----------
    before, after : (bands, H, W) or (H, W) ndarray, or WindowReader
        The two images on the same grid (the after image resampled onto the
        before grid), as arrays or as readers that serve windows of them.
    mode : {"global", "local", "none"}, optional
        ``"global"``: one translation, the consensus of a 3 x 3 grid of
        windows. ``"local"``: a grid of tie points and a robust affine fit.
        ``"none"``: the identity.
    invalid_before, invalid_after : (H, W) ndarray of bool, optional
        True where pixels are invalid (arrays only).
    window : int, optional
        Side, in pixels, of the local tie-point windows.
    spacing : int, optional
        Distance between tie points, in pixels (default: `window` / 2, or
        wider so that there are at most `max_tie_points`).
    max_tie_points : int, optional
        Upper bound on the tie points when `spacing` is not given.
    threshold : float, optional
        Largest residual, in pixels, of a tie point that agrees with the
        affine fit (see :func:`fit_affine`).
    min_psr : float, optional
        Peak-to-sidelobe ratio below which a window's peak is not trusted.

    Returns
    -------
    Alignment
        ``alignment.reliable`` is False (and ``alignment.note`` says why)
        when no trustworthy match exists: featureless or unrelated images,
        too little overlap.

    Raises
    ------
    ValueError
        If `mode` is not one of those listed, or the images differ in shape.

    Notes
    -----
    1. Bands are combined into their standardised mean (weights from the
       coarse read below, so every window uses the same combination), and
       windows are matched on its gradient magnitude, which survives gain, offset
       and haze.
    2. The overlap's central 2048 x 2048 pixels (or all of a smaller
       overlap), decimated to at most 512 pixels a side, are
       phase-correlated to find large shifts (up to about a quarter of that
       region), as whole pixels; the whole overlap too when the windows
       of step 3, placed by that answer, find no reliable shift. The band
       weights come from the same read.
    3. A 3 x 3 grid of windows (as large as fits, up to 512 px; inside the
       files' tiles where they have them, 448 px in a 512 px tile), each
       displaced by that integer shift, is phase-correlated [1]_ with a
       Gaussian low-pass on the normalised cross-power spectrum (which
       removes the pull towards whole pixels); each sub-pixel peak is found
       by Newton's method on the continuous band-limited correlation
       surface (exact for a pure translation, where an upsampled DFT [2]_
       would quantise it). The confident windows (peak-to-sidelobe ratio
       >= `min_psr`) vote; their median and the windows within 1 px (or 3
       robust sigma) of it give the weighted mean shift. New buildings or a
       cloud spoil one window, not the answer.
    4. Local mode then matches a regular grid of `window`-sized tie points,
       each displaced by the prediction of an affine fitted to the global
       windows (a tie point sits at the centroid of its window's edges,
       where its displacement is measured), and fits an affine by RANSAC
       [3]_ and weighted least squares to those whose peak reaches 3/4 of
       `min_psr`.

    Memory: the decimated overlap (at most 512 x 512 x bands float32) and a
    strip of windows (`window` rows by the width) at a time, plus FFT stacks
    of 256 windows; never the whole image.

    References
    ----------
    .. [1] Kuglin, C. D. and Hines, D. C. (1975). The phase correlation image
           alignment method. Proc. IEEE Int. Conf. Cybernetics and Society.
    .. [2] Guizar-Sicairos, M., Thurman, S. T. and Fienup, J. R. (2008).
           Efficient subpixel image registration algorithms. Optics Letters
           33(2), 156-158. :doi:`10.1364/OL.33.000156`
    .. [3] Fischler, M. A. and Bolles, R. C. (1981). Random sample consensus.
           Communications of the ACM 24(6), 381-395. :doi:`10.1145/358669.358692`

    Examples
    --------
    Three bands whose content moves 7 pixels left and 5 down:

    >>> import numpy as np
    >>> from scipy import ndimage
    >>> bands = ndimage.gaussian_filter(np.random.default_rng(1).random((3, 384, 384)),
    ...                                 (0, 2, 2))
    >>> a = estimate_alignment(bands, np.roll(bands, (5, -7), axis=(1, 2)), mode="local")
    >>> a.model, round(a.shift.x, 2), round(a.shift.y, 2), a.reliable
    ('affine', -7.0, 5.0, True)
    """
    if mode not in COREG_MODES:
        raise ValueError(f"mode must be one of {COREG_MODES}, not {mode!r}")
    rb, ra = _reader(before, invalid_before), _reader(after, invalid_after)
    shape = rb.shape
    if ra.shape != shape:
        raise ValueError(f"images differ in shape: {shape} vs {ra.shape}")
    if mode == "none":
        return Alignment(shape=shape)
    if window < 16:
        raise ValueError(f"window must be at least 16 pixels, not {window}")
    h, w = shape
    full = Window(0, 0, w, h)
    region = Window((w - min(w, _COARSE_REGION)) // 2, (h - min(h, _COARSE_REGION)) // 2,
                    min(w, _COARSE_REGION), min(h, _COARSE_REGION))
    offset, coarse_psr, b_img, a_img = _coarse_in(rb, ra, region, min_psr)
    gshift, gtp, note = _global(b_img, a_img, shape, min_psr, offset, coarse_psr)
    if not gshift.reliable and region != full:
        # The central region held nothing to match, or a shift too large for
        # it (which it then aliases): search the whole overlap.
        offset2, psr2, b2, a2 = _coarse_in(rb, ra, full, min_psr)
        if offset2 != offset:
            retry = _global(b2, a2, shape, min_psr, offset2, psr2)
            if retry[0].reliable:
                (gshift, gtp, note), b_img, a_img = retry, b2, a2
    bands = b_img.weights.size
    matched_on = ("gradient magnitude of the band" if bands == 1 else
                  f"gradient magnitude of the mean of {bands} standardised bands")
    result = Alignment(mode=mode, model="translation", shift=gshift,
                       pixel_transform=Affine.translation(gshift.x, gshift.y), shape=shape,
                       tie_points=gtp, rmse=gshift.spread, matched_on=matched_on, note=note)
    log.debug("global shift x=%.3f y=%.3f px, %d/%d windows agree, reliability %.2f",
              gshift.x, gshift.y, gshift.inliers, gshift.windows, gshift.reliability)
    # Under rotation or scale the global windows disagree on one shift yet
    # agree on an affine: local mode can start from that.
    affine_ok = not gshift.reliable and _affine_agrees(gtp, min_psr)
    if affine_ok and mode == "global":
        result = replace(result, note=f"{note}; the windows agree on a rotation or scale "
                                      "rather than one shift: use local mode (--coreg local)")
    if mode == "local" and (gshift.reliable or affine_ok):
        if spacing is None:
            spacing = max(window // 2, math.ceil(math.sqrt(h * w / max(max_tie_points, 1))))
        local, note = _local(b_img, a_img, shape, min_psr, gshift, gtp, size=min(window, h, w),
                             spacing=max(1, spacing), threshold=threshold)
        result = replace(local, matched_on=matched_on, note=note)
        log.debug("local: %s, %d/%d tie points inliers, RMSE %.3f px", local.model,
                  local.tie_points.inlier.sum(), len(local.tie_points), local.rmse)
    if not result.reliable and not result.note:
        result = replace(result, note="the correlation peaks are too weak or disagree")
    return result


def estimate_shift(before: NDArray[np.floating], after: NDArray[np.floating], *,
                   invalid_before: NDArray[np.bool_] | None = None,
                   invalid_after: NDArray[np.bool_] | None = None,
                   upsample_factor: int = 100, min_psr: float = MIN_PSR) -> Shift:
    """Estimate the global translation of `after` relative to `before`.

    The global mode of :func:`estimate_alignment`, returning only the shift.

    Parameters
    ----------
    before, after : (bands, H, W) or (H, W) ndarray
        The two images on the same grid.
    invalid_before, invalid_after : (H, W) ndarray of bool, optional
        True where pixels are invalid.
    upsample_factor : int, optional
        Kept for compatibility: the sub-pixel peak is now found by Newton's
        method to better than ``1 / upsample_factor`` pixel.
    min_psr : float, optional
        Peak-to-sidelobe ratio below which a window is not trusted.

    Returns
    -------
    Shift
        In the sign convention of this module.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy import ndimage
    >>> rng = np.random.default_rng(0)
    >>> img = ndimage.gaussian_filter(rng.random((128, 128)), 2)
    >>> moved = ndimage.shift(img, (-2, 3))   # content moves 3 right, 2 up
    >>> s = estimate_shift(img, moved)
    >>> round(s.x, 2), round(s.y, 2), s.reliable
    (3.0, -2.0, True)
    """
    del upsample_factor
    return estimate_alignment(before, after, mode="global", invalid_before=invalid_before,
                              invalid_after=invalid_after, min_psr=min_psr).shift


def apply_alignment(data: NDArray[np.floating], alignment: Alignment, *, col_off: int = 0,
                    row_off: int = 0, invalid: NDArray[np.bool_] | None = None, order: int = 3,
                    ) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """Resample an after-image block that is already on the before grid.

    Output pixel ``p`` takes the value at ``alignment.for_window(col_off,
    row_off) @ p``. Prefer :func:`changedet.io.read_warped` with
    ``pixel_transform`` when the after image is still in its own file: that
    aligns and reprojects in one resampling, where this is a second one.

    Parameters
    ----------
    data : (bands, h, w) or (h, w) ndarray
        The block, with a halo of at least the largest displacement plus 2
        pixels (the cubic kernel) on every side where values are wanted.
    alignment : Alignment
    col_off, row_off : int, optional
        The block's corner in the grid the alignment was estimated on.
    invalid : (h, w) ndarray of bool, optional
    order : int, optional
        Spline order (3: cubic).

    Returns
    -------
    aligned : (bands, h, w) ndarray of float32
        0 where invalid.
    invalid : (h, w) ndarray of bool
        True where the source location is outside the block or invalid.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.zeros((1, 8, 8), np.float32); img[0, 4, 4] = 1
    >>> out, inv = apply_alignment(img, Alignment(pixel_transform=Affine.translation(1, 0)))
    >>> int(out[0].argmax() % 8)   # content one pixel right comes back one left
    3
    """
    from scipy import ndimage

    data = np.asarray(data)
    data = data[np.newaxis] if data.ndim == 2 else data
    m = alignment.for_window(col_off, row_off)
    # Index coordinates (row, col) of pixel centres: p_index = p - 0.5.
    matrix = np.array([[m.e, m.d], [m.b, m.a]])
    offset = (m.d * 0.5 + m.e * 0.5 + m.f - 0.5, m.a * 0.5 + m.b * 0.5 + m.c - 0.5)
    src_invalid = np.zeros(data.shape[1:], bool) if invalid is None else np.asarray(invalid)
    out = np.stack([ndimage.affine_transform(np.where(src_invalid, 0, band).astype(np.float32),
                                             matrix, offset=offset, order=order,
                                             mode="constant", cval=np.nan)
                    for band in data])
    gone = ndimage.affine_transform(src_invalid.astype(np.float32), matrix, offset=offset,
                                    order=1, mode="constant", cval=1.0) > 0
    bad = gone | ~np.isfinite(out).all(axis=0)
    out[:, bad] = 0
    return out, bad
