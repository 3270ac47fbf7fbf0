"""cubic_shift against known answers and against GDAL's own cubic warp."""

import math

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT

from changedet.resample import cubic_shift, cubic_support, cubic_weights
from tests.conftest import UTM, utm_transform, write_tif


def _shift(src, invalid, dx, dy, shape):
    # Output pixel (row, col) samples src at (row + dy, col + dx): slice the
    # kernel's support out of src and shift it, as io.read_aligned does.
    (r0, r1), (c0, c1) = cubic_support(dy, shape[0]), cubic_support(dx, shape[1])
    assert r0 >= 0 and c0 >= 0 and r1 <= src.shape[-2] and c1 <= src.shape[-1]
    return cubic_shift(src[..., r0:r1, c0:c1], invalid[r0:r1, c0:c1], dx - c0, dy - r0, shape)


def _smooth(shape=(64, 64)):
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    return (100 + 50 * np.sin(xx / 5.0) * np.cos(yy / 7.0) + 0.3 * xx).astype(np.float32)


@pytest.mark.parametrize("frac", [0.0, 0.1, 0.25, 0.5, 0.7, 0.999])
def test_cubic_weights_sum_to_one_and_mirror(frac):
    w = cubic_weights(frac)
    assert w.shape == (4,) and w.dtype == np.float32
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-6)
    # The sample's first moment is frac: the kernel reproduces a ramp.
    assert float(w @ np.array([-1, 0, 1, 2], np.float32)) == pytest.approx(frac, abs=1e-6)
    np.testing.assert_allclose(cubic_weights(1.0 - frac)[::-1], w, atol=1e-6)


def test_cubic_weights_known_values():
    assert cubic_weights(0.0).tolist() == [0.0, 1.0, 0.0, 0.0]
    np.testing.assert_allclose(cubic_weights(0.5), [-0.0625, 0.5625, 0.5625, -0.0625])
    # Keys (a = -0.5) at 0.25 by hand.
    np.testing.assert_allclose(cubic_weights(0.25),
                               [-0.0703125, 0.8671875, 0.2265625, -0.0234375], atol=1e-7)


@pytest.mark.parametrize("offset, size, expected", [
    (2.3, 10, (1, 14)), (0.0, 5, (-1, 7)), (3.0, 1, (2, 6)), (-0.5, 4, (-2, 5)),
    (-2.0, 3, (-3, 3)),
])
def test_cubic_support(offset, size, expected):
    assert cubic_support(offset, size) == expected
    start, stop = expected
    assert stop - start == size + 3


@pytest.mark.parametrize("dx, dy", [(3, 2), (1, 7), (6.0, 1.0)])
def test_integer_shift_is_an_exact_copy(dx, dy):
    rng = np.random.default_rng(1)
    src = rng.normal(size=(2, 48, 48)).astype(np.float32)
    out, inv = _shift(src, np.zeros((48, 48), bool), dx, dy, (30, 32))
    assert out.dtype == np.float32 and out.shape == (2, 30, 32)
    r, c = int(dy), int(dx)
    np.testing.assert_array_equal(out, src[:, r:r + 30, c:c + 32])
    assert not inv.any()


@pytest.mark.parametrize("dx, dy", [(1.25, 1.0), (2.5, 3.75), (4.9, 1.05), (1.0, 2.3)])
def test_linear_ramp_is_reproduced_at_fractional_shifts(dx, dy):
    yy, xx = np.mgrid[0:48, 0:48].astype(np.float32)
    src = 3 * xx - 2 * yy + 5
    out, inv = _shift(src[None], np.zeros((48, 48), bool), dx, dy, (30, 30))
    rows, cols = np.mgrid[0:30, 0:30]
    np.testing.assert_allclose(out[0], 3 * (cols + dx) - 2 * (rows + dy) + 5, atol=1e-4)
    assert not inv.any()


@pytest.mark.parametrize("dx, dy", [(1.3, 1.7), (2.25, 1.6), (5.5, 3.1), (1.0, 4.4)])
def test_fractional_shift_matches_gdal_cubic(tmp_path, dx, dy):
    img = _smooth()
    path = write_tif(tmp_path / "smooth.tif", img)
    h, w = 40, 40
    # XSCALE/YSCALE = 1: left to itself, GDAL's unmasked cubic path widens
    # the kernel by its estimate of the source window's size (48/49 here),
    # which blurs a little; the kernel proper is the one compared.
    with rasterio.open(path) as ds, WarpedVRT(
            ds, crs=UTM, transform=utm_transform() @ Affine.translation(dx, dy),
            width=w, height=h, resampling=Resampling.cubic, XSCALE="1", YSCALE="1") as vrt:
        gdal = vrt.read(1)
    out, inv = _shift(img, np.zeros(img.shape, bool), dx, dy, (h, w))
    assert not inv.any()
    np.testing.assert_allclose(out[3:-3, 3:-3], gdal[3:-3, 3:-3], rtol=0,
                               atol=1e-5 * float(np.ptp(img)))
    # The shift did something: not the unshifted pixels.
    r, c = math.floor(dy), math.floor(dx)
    assert np.abs(out - img[r:r + h, c:c + w]).max() > 0.1


def _support_mask(n, shift, bad):
    # Outputs along one axis whose non-zero weights reach source index `bad`.
    s = np.arange(n) + shift
    if shift == math.floor(shift):
        return s == bad
    base = np.floor(s)
    return (base - 1 <= bad) & (bad <= base + 2)


@pytest.mark.parametrize("dx, dy, count", [
    (2.5, 1.5, 4),    # half a pixel both ways: the 2 x 2 pixels around it (0.32 each)
    (2.3, 1.7, 1),    # the nearest sample only (0.87 x 0.87; the next, 0.87 x 0.24)
    (2.5, 2.0, 2),    # half a pixel in x only: the two pixels sharing it (0.56 each)
    (2.06, 2.0, 1),   # a small shift: only the sample nearest to it (0.95)
    (3.0, 2.0, 1),    # integer: a copy
])
def test_invalid_pixel_invalidates_the_samples_it_weighs_most_in(dx, dy, count):
    # An invalid pixel makes invalid only the samples where it carries more
    # than MAX_INVALID_WEIGHT of the kernel (in absolute value); the others
    # leave it out and renormalise, so scattered nodata does not spread to
    # each pixel's 4 x 4 support.
    from changedet.resample import MAX_INVALID_WEIGHT

    src = _smooth((40, 40))
    invalid = np.zeros((40, 40), bool)
    invalid[18, 15] = True
    out, inv = _shift(src, invalid, dx, dy, (30, 30))
    wy = np.zeros(30)
    wx = np.zeros(30)
    for w_axis, shift, bad in ((wy, dy, 18), (wx, dx, 15)):
        s0 = np.arange(30) + shift
        k = bad - (np.floor(s0).astype(int) - 1)        # tap index of the pixel
        ok = (k >= 0) & (k <= 3)
        w_axis[ok] = [abs(float(cubic_weights(f)[j]))
                      for f, j in zip(s0[ok] - np.floor(s0[ok]), k[ok], strict=True)]
    expected = np.outer(wy, wx) > MAX_INVALID_WEIGHT
    assert inv.sum() == count
    np.testing.assert_array_equal(inv, expected)
    assert (out[inv] == 0).all()
    # The invalid pixel's value reaches no output, valid or not.
    garbage = src.copy()
    garbage[18, 15] = 1e6
    out2, inv2 = _shift(garbage, invalid, dx, dy, (30, 30))
    np.testing.assert_array_equal(inv2, inv)
    np.testing.assert_array_equal(out2, out)
    # Samples it does not reach are as without it, bit for bit.
    clean, _ = _shift(src, np.zeros_like(invalid), dx, dy, (30, 30))
    reached = np.outer(wy, wx) > 0
    np.testing.assert_array_equal(out[~reached], clean[~reached])


def test_samples_beside_an_invalid_pixel_renormalise_the_kernel():
    # Cubic convolution reproduces a plane exactly; left out and the other
    # weights renormalised, an invalid pixel moves the valid samples it
    # weighs in by less than a third of a pixel's step of the plane (and
    # the others not at all).
    yy, xx = np.mgrid[0:40, 0:40].astype(np.float32)
    plane = 3 * xx + 2 * yy + 10
    invalid = np.zeros((40, 40), bool)
    invalid[18, 15] = invalid[5, 30] = True
    out, inv = _shift(plane, invalid, 2.3, 1.7, (30, 30))
    s_rows, s_cols = np.mgrid[0:30, 0:30].astype(np.float32)
    truth = 3 * (s_cols + 2.3) + 2 * (s_rows + 1.7) + 10
    step = math.hypot(3, 2)
    err = np.abs(out - truth)[~inv]
    assert err.max() < step / 3
    assert (err < 1e-3).mean() > 0.95
    assert 0 < inv.sum() <= 4


def test_scattered_nodata_costs_about_its_own_pixels():
    # 5 % of pixels invalid at random under a small shift: about 5 % of the
    # samples, not the 55 % that a whole 4 x 4 support made.
    rng = np.random.default_rng(0)
    src = _smooth((203, 203))
    invalid = rng.random((203, 203)) < 0.05
    _, inv = cubic_shift(src, invalid, 0.06, 0.01, (200, 200))
    assert 0.04 < inv.mean() < 0.06


def test_two_dimensional_input_gives_two_dimensional_output():
    src = _smooth((20, 20))
    out3, inv3 = cubic_shift(src[None, :13, :13], np.zeros((13, 13), bool), 1.4, 1.2, (10, 10))
    out2, inv2 = cubic_shift(src[:13, :13], np.zeros((13, 13), bool), 1.4, 1.2, (10, 10))
    assert out3.shape == (1, 10, 10) and out2.shape == (10, 10)
    np.testing.assert_array_equal(out2, out3[0])
    np.testing.assert_array_equal(inv2, inv3)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16"])
@pytest.mark.parametrize("with_invalid", [False, True])
def test_small_integers_give_the_bits_of_their_float32_copy(dtype, with_invalid):
    # Integers of up to 16 bits are converted a strip at a time (600 rows:
    # three strips), not copied whole: the same bits as the float32 copy.
    rng = np.random.default_rng(3)
    info = np.iinfo(dtype)
    src = rng.integers(info.min, info.max, (3, 603, 40), endpoint=True).astype(dtype)
    invalid = np.zeros((603, 40), bool)
    if with_invalid:
        invalid[rng.random((603, 40)) < 0.03] = True
    got, got_inv = cubic_shift(src, invalid, 1.37, 0.62, (600, 37))
    want, want_inv = cubic_shift(src.astype(np.float32), invalid, 1.37, 0.62, (600, 37))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got_inv, want_inv)


def test_input_is_not_mutated():
    src = _smooth((20, 20))[None, :13, :13].copy()
    invalid = np.zeros((13, 13), bool)
    invalid[5, 5] = True
    before = src.copy()
    cubic_shift(src, invalid, 0.5, 0.5, (10, 10))
    np.testing.assert_array_equal(src, before)
    assert invalid.sum() == 1


@pytest.mark.parametrize("data_shape, mask_shape", [
    ((1, 12, 13), (12, 13)),    # one row short
    ((1, 13, 13), (13, 12)),    # mask of another shape
    ((1, 10, 10), (10, 10)),    # no room for the support
])
def test_wrong_shape_raises(data_shape, mask_shape):
    with pytest.raises(ValueError, match="source must be"):
        cubic_shift(np.zeros(data_shape, np.float32), np.zeros(mask_shape, bool),
                    0.5, 0.5, (10, 10))


@pytest.mark.parametrize("h", [1, 63, 64, 65, 200])
def test_strips_give_the_whole_array_result(h, monkeypatch):
    import changedet.resample as resample

    rng = np.random.default_rng(h)
    data = rng.normal(1000, 100, (3, h + 3, 53)).astype(np.float32)
    invalid = rng.random((h + 3, 53)) < 0.01
    whole = cubic_shift(data, invalid, 0.37, 2.81, (h, 50))
    monkeypatch.setattr(resample, "_STRIP_ROWS", 64)
    strips = cubic_shift(data, invalid, 0.37, 2.81, (h, 50))
    monkeypatch.setattr(resample, "_STRIP_ROWS", 10 ** 6)
    once = cubic_shift(data, invalid, 0.37, 2.81, (h, 50))
    for a, b in ((whole, strips), (strips, once)):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_empty_output_is_empty():
    out, inv = cubic_shift(np.zeros((2, 3, 8), np.float32), np.zeros((3, 8), bool), 0.5, 0.5,
                           (0, 5))
    assert out.shape == (2, 0, 5) and inv.shape == (0, 5)
