import numpy as np
import pytest
from scipy import ndimage

from changedet.coreg import Shift, estimate_shift, matching_image
from changedet.grid import Grid
from changedet.synthetic import Sensor, Sun, quantise, random_pair
from tests.conftest import utm_transform


def shifted_pair(dx, dy, *, bands=3, dtype="uint8", seed=3, gain=1.0, offset=0.0):
    """The same static scene twice, the second displaced by (dx, dy) pixels."""
    p = random_pair((256, 256), bands=bands, seed=seed, n_static=8, n_appeared=0,
                    n_disappeared=0, heights_m=(4, 10), sun_before=Sun(), sun_after=Sun(),
                    sensor_after=Sensor(shift=(dx, dy), gain=(gain,) * 4,
                                        offset=(offset,) * 4), dtype="float32")
    return quantise(p.before, dtype), quantise(p.after, dtype)


@pytest.mark.parametrize("dx, dy", [(0.0, 0.0), (3.4, -2.7), (-7.25, 4.5), (0.3, 0.6),
                                    (-12.8, -9.1)])
def test_known_shift_comes_back(dx, dy):
    b, a = shifted_pair(dx, dy, dtype="float32")
    s = estimate_shift(b, a)
    assert s.reliable
    assert s.x == pytest.approx(dx, abs=0.05)
    assert s.y == pytest.approx(dy, abs=0.05)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
@pytest.mark.parametrize("bands", [1, 3, 4])
def test_dtypes_and_bands(dtype, bands):
    b, a = shifted_pair(1.6, -0.4, bands=bands, dtype=dtype)
    s = estimate_shift(b, a)
    assert (s.x, s.y) == pytest.approx((1.6, -0.4), abs=0.05)


def test_sign_convention_matches_the_documented_corner_example():
    # A bright square's corner at col 100, row 50 in before sits at col 103,
    # row 47 in after: the shift is (+3, -3).
    b = np.zeros((200, 200), np.float32)
    b[50:90, 100:150] = 1
    b = ndimage.gaussian_filter(b, 1) + ndimage.gaussian_filter(
        np.random.default_rng(0).random((200, 200)), 3).astype(np.float32)
    a = np.roll(b, (-3, 3), axis=(0, 1))
    s = estimate_shift(b, a)
    assert (s.x, s.y) == pytest.approx((3, -3), abs=0.05)


def test_gain_and_offset_do_not_move_the_answer():
    b, a = shifted_pair(2.2, 1.1, dtype="float32")
    s0 = estimate_shift(b, a)
    _, a2 = shifted_pair(2.2, 1.1, dtype="float32", gain=1.4, offset=0.1)
    s1 = estimate_shift(b, a2)
    assert abs(s1.x - s0.x) < 0.1 and abs(s1.y - s0.y) < 0.1


@pytest.mark.parametrize("kind", ["noise", "constant"])
def test_featureless_pairs_are_unreliable(kind):
    rng = np.random.default_rng(1)
    if kind == "noise":
        b, a = rng.random((256, 256)), rng.random((256, 256))
    else:
        b = a = np.full((256, 256), 7.0)
    s = estimate_shift(b, a)
    assert not s.reliable
    assert s.reliability < 0.2


def test_invalid_pixels_are_ignored():
    b, a = shifted_pair(1.5, 2.0, dtype="float32")
    inv = np.zeros(b.shape[1:], bool)
    inv[:, :60] = True
    a = a.copy()
    a[:, inv] = 1000.0  # garbage under the mask must not matter
    s = estimate_shift(b, a, invalid_after=inv)
    assert (s.x, s.y) == pytest.approx((1.5, 2.0), abs=0.15)


def test_shift_in_map_units_is_east_north():
    g = Grid(utm_transform(0.5), None, 10, 10)
    assert Shift(x=2.0, y=-4.0).to_map(g) == (1.0, 2.0)


def test_matching_image_ignores_gain_and_offset():
    rng = np.random.default_rng(0)
    img = ndimage.gaussian_filter(rng.random((3, 64, 64)), (0, 2, 2)).astype(np.float32)
    np.testing.assert_allclose(matching_image(img), matching_image(img * 3 + 5), atol=1e-4)
