"""Resampling a raster displaced by a sub-pixel translation, on arrays.

When the after image's pixels are the processing grid's pixels moved by a
translation (the same CRS and pixel size, whatever the co-registration
found), resampling it needs no general warp: :func:`cubic_shift` applies
the separable cubic convolution kernel that GDAL's ``cubic`` uses (Keys,
``a = -0.5`` [1]_) with four multiply-adds per axis, several times faster
than a ``WarpedVRT`` on the same window.

References
----------
.. [1] Keys, R. (1981). Cubic convolution interpolation for digital image
       processing. IEEE Transactions on Acoustics, Speech, and Signal
       Processing 29(6), 1153-1160. :doi:`10.1109/TASSP.1981.1163711`
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["KEYS_A", "MAX_INVALID_WEIGHT", "cubic_weights", "cubic_support", "cubic_shift",
           "exact_in_float32"]

#: The Keys kernel's free parameter, as in GDAL's ``cubic``.
KEYS_A = -0.5

#: Source pixels a cubic sample needs before and after its own: it reads
#: ``floor(s) - 1`` to ``floor(s) + 2``.
_BEFORE, _AFTER = 1, 2

#: Share of a sample's kernel weight (in absolute value) that may fall on
#: invalid source pixels: beyond it the sample is invalid. A quarter keeps
#: the pixels whose nearest source pixel is valid under a small shift (its
#: weight is then near one), and drops those that half of the 2 x 2 pixels
#: around a half-pixel sample would have made.
MAX_INVALID_WEIGHT = 0.25

#: Output rows resampled at a time: a strip of a 1091 px wide band and its
#: two scratch strips take about 1.7 MB at 128 rows, within a core's 2 MB
#: of L2 cache here; at 256 rows (3.4 MB) every pass spilled from it.
#: Smaller strips mean more numpy calls and GIL hand-offs. Measured on two
#: threads, each resampling 4-band 1088 px blocks: 64 rows 13.8 ms a block,
#: 128 rows 11.8 ms, 256 rows 14.4 ms; in the 8192^2 benchmark's run, 1.34
#: CPU-s against 1.65 at 256 rows.
_STRIP_ROWS = 128


def cubic_weights(frac: float) -> NDArray[np.float32]:
    """Return the four Keys weights for a sample `frac` past a pixel centre.

    The weights apply to pixels ``-1, 0, 1, 2`` relative to ``floor(s)``,
    where ``frac = s - floor(s)`` is in ``[0, 1)``; they sum to 1.

    Examples
    --------
    >>> cubic_weights(0.0).tolist()
    [0.0, 1.0, 0.0, 0.0]
    >>> [round(float(w), 4) for w in cubic_weights(0.5)]
    [-0.0625, 0.5625, 0.5625, -0.0625]
    """
    a = KEYS_A
    out = np.empty(4, np.float64)
    for k, x in enumerate((1.0 + frac, frac, 1.0 - frac, 2.0 - frac)):
        if x <= 1.0:
            out[k] = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
        elif x < 2.0:
            out[k] = ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
        else:
            out[k] = 0.0
    return out.astype(np.float32)


def cubic_support(offset: float, size: int) -> tuple[int, int]:
    """Return the source index range ``[start, stop)`` that :func:`cubic_shift` reads.

    For `size` output pixels sampling the source at ``i + offset``.

    Examples
    --------
    >>> cubic_support(2.3, 10)
    (1, 14)
    """
    base = math.floor(offset)
    return base - _BEFORE, base + size + _AFTER


def _taps(n: int, weights: NDArray[np.float32], size: int, axis: int,
          ) -> list[tuple[float, tuple[slice, ...]]]:
    # (weight, slice) of the taps with a non-zero weight, along `axis` of an
    # n-dimensional array.
    out = []
    for k, wk in enumerate(weights):
        if wk != 0.0:
            take = [slice(None)] * n
            take[axis] = slice(k, k + size)
            out.append((float(wk), tuple(take)))
    return out


def _convolve(src: NDArray[Any], taps: list[tuple[float, tuple[slice, ...]]],
              out: NDArray[np.float32], tmp: NDArray[np.float32]) -> None:
    # out = sum of weight * src[slice] in float32 (src float32, or integers
    # it holds exactly), with one scratch array.
    (w0, s0), *rest = taps
    np.multiply(src[s0], np.float32(w0), out=out)
    for wk, sk in rest:
        np.multiply(src[sk], np.float32(wk), out=tmp)
        out += tmp


def exact_in_float32(dtype: Any) -> bool:
    """Whether float32 holds every value of `dtype` exactly, and it may stay as it is.

    Float32 itself, and integers of up to 16 bits: :func:`cubic_shift`
    converts these as it reads them rather than copying its input whole.
    """
    dtype = np.dtype(dtype)
    return dtype == np.float32 or (dtype.kind in "ui" and dtype.itemsize <= 2)


def cubic_shift(data: NDArray[np.floating], invalid: NDArray[np.bool_], dx: float, dy: float,
                shape: tuple[int, int], *, out: NDArray[np.float32] | None = None,
                linear: tuple[ArrayLike, ArrayLike] | None = None,
                ) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """Resample `data` at ``(row + dy, col + dx)`` with GDAL's cubic kernel.

    Parameters
    ----------
    data : (bands, H, W) ndarray
        Source pixels (float32, or integers of up to 16 bits, which are
        converted as they are read) covering the support: row ``0`` is source row
        ``cubic_support(dy, h)[0]``, column ``0`` source column
        ``cubic_support(dx, w)[0]``, so ``H = h + 3`` and ``W = w + 3``.
    invalid : (H, W) ndarray of bool
        Invalid source pixels.
    dx, dy : float
        Where output pixel ``(row, col)`` samples the source, in source pixel
        indices: at ``(row + dy, col + dx)``.
    shape : (h, w)
        Output shape.
    out : (bands, h, w) ndarray of float32, optional
        Where to write the result (it must not overlap `data`).
    linear : (gain, offset), optional
        Per-band gain and offset applied to the result, invalid pixels
        included, as ``result * gain + offset`` in float32: a linear
        normalisation done on each strip while it is in cache rather than
        in another pass over the whole window (the same bits).

    Returns
    -------
    data : (bands, h, w) ndarray of float32
        Invalid pixels hold 0.
    invalid : (h, w) ndarray of bool
        True where invalid source pixels carry more than
        :data:`MAX_INVALID_WEIGHT` of the kernel's weight (in absolute
        value). Elsewhere the invalid pixels are left out and the others'
        weights scaled to sum to one (normalised convolution), so scattered
        nodata costs about its own pixels, not the 4 x 4 support of each.

    Examples
    --------
    A ramp moved by a quarter pixel (cubic convolution reproduces a ramp
    exactly):

    >>> ramp = np.tile(np.arange(13, dtype=np.float32), (13, 1))[None]
    >>> out, inv = cubic_shift(ramp, np.zeros((13, 13), bool), 1.25, 1.0, (10, 10))
    >>> out[0, 0, :3].tolist(), bool(inv.any())
    ([1.25, 2.25, 3.25], False)
    """
    h, w = shape
    if data.shape[-2:] != (h + 3, w + 3) or invalid.shape != data.shape[-2:]:
        raise ValueError(f"source must be {(h + 3, w + 3)} pixels for a {shape} output, "
                         f"not {data.shape[-2:]} (mask {invalid.shape})")
    # Integers of up to 16 bits are converted as they are read (float32
    # holds them exactly): a float32 copy of the whole window cost a pass
    # over memory each way.
    src = np.asarray(data)
    if not exact_in_float32(src.dtype):
        src = src.astype(np.float32)
    if src.ndim == 2:
        src = src[None]
    wx, wy = cubic_weights(dx - math.floor(dx)), cubic_weights(dy - math.floor(dy))
    tx = _taps(2, wx, w, axis=1)
    ty = _taps(2, wy, h, axis=0)
    scale = None
    if invalid.any():
        # The weight, signed and absolute, that falls on invalid pixels.
        bad = invalid.astype(np.float32)
        lost, lost_abs = _separable(bad, tx, ty, (h, w)), _separable(
            bad, _taps(2, np.abs(wx), w, axis=1), _taps(2, np.abs(wy), h, axis=0), (h, w))
        inv = lost_abs > MAX_INVALID_WEIGHT
        # Invalid pixels must weigh nothing: zero them (in a copy).
        if src[:, invalid].any():
            src = np.where(invalid, np.float32(0), src)
        scale = np.float32(1) - lost
        scale[inv] = 1
    else:
        inv = np.zeros((h, w), bool)
    # In strips of rows, band by band: the scratch arrays and the strip in
    # hand stay in the core's cache (whole-band passes were memory-bound).
    if out is None:
        out = np.empty((src.shape[0], h, w), np.float32)
    elif out.shape != (src.shape[0], h, w) or out.dtype != np.float32:
        raise ValueError(f"out must be float32 of shape {(src.shape[0], h, w)}")
    if linear is not None:
        gain, offset = (np.broadcast_to(np.asarray(v, np.float32), (src.shape[0],))
                        for v in linear)
    step = max(min(h, _STRIP_ROWS), 1)
    rows = np.empty((step + 3, w), np.float32)
    tmp_rows, tmp = np.empty_like(rows), np.empty((step, w), np.float32)
    for r0 in range(0, h, step):
        n = min(step, h - r0)
        ty_strip = ty if n == h else _taps(2, wy, n, axis=0)
        for b, (band, dst) in enumerate(zip(src, out, strict=True)):
            # Integers go into the first pass as they are: numpy converts
            # them to float32 (exactly) on the way into each multiply,
            # cheaper than a float32 copy of the strip first (0.22 against
            # 0.32 ms a 128-row strip of 1091 px).
            _convolve(band[r0:r0 + n + 3], tx, rows[:n + 3], tmp_rows[:n + 3])
            here = dst[r0:r0 + n]
            _convolve(rows[:n + 3], ty_strip, here, tmp[:n])
            if scale is not None:
                # Normalised convolution: the valid taps' weights sum to one.
                here /= scale[r0:r0 + n]
                here[inv[r0:r0 + n]] = 0
            if linear is not None:
                here *= gain[b]
                here += offset[b]
    return (out if np.ndim(data) == 3 else out[0]), inv


def _separable(band: NDArray[np.float32], tx: list[tuple[float, tuple[slice, ...]]],
               ty: list[tuple[float, tuple[slice, ...]]], shape: tuple[int, int],
               ) -> NDArray[np.float32]:
    # One band through both passes, whole.
    h, w = shape
    rows = np.empty((h + 3, w), np.float32)
    _convolve(band, tx, rows, np.empty_like(rows))
    out = np.empty((h, w), np.float32)
    _convolve(rows, ty, out, np.empty_like(out))
    return out
