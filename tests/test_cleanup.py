import numpy as np
import pytest
from scipy import ndimage

from changedet.cleanup import (
    clean_mask,
    delineate,
    dilate_square,
    fill_small_holes,
    label_components,
    remove_small_components,
)


def test_opening_removes_slivers_and_keeps_blocks():
    m = np.zeros((50, 50), bool)
    m[5, 5:45] = True          # 1-px sliver
    m[10:12, 5:45] = True      # 2-px sliver
    m[20:40, 20:40] = True     # a block
    out = clean_mask(m, pixel_area_m2=0.25, min_area_m2=0)
    assert not out[:15].any()
    assert out[20:40, 20:40].all()


def test_minimum_mapping_unit_in_square_metres():
    m = np.zeros((60, 60), bool)
    m[5:15, 5:15] = True       # 100 px = 25 m2 at 0.5 m
    m[30:45, 30:45] = True     # 225 px = 56.25 m2
    out = clean_mask(m, pixel_area_m2=0.25, min_area_m2=30)
    assert not out[5:15, 5:15].any() and out[30:45, 30:45].all()
    out = clean_mask(m, pixel_area_m2=1.0, min_area_m2=30)  # 1 m pixels
    assert out[5:15, 5:15].all()


def test_objects_at_the_edge_are_not_eroded():
    m = np.zeros((30, 30), bool)
    m[:10, :10] = True
    out = clean_mask(m, pixel_area_m2=1, min_area_m2=0, close_radius=2)
    assert out[:10, :10].all() and out.sum() == 100


def test_small_holes_are_filled_large_ones_kept():
    m = np.ones((40, 40), bool)
    m[5:7, 5:7] = False        # 4 px hole
    m[20:30, 20:30] = False    # 100 px hole
    out = fill_small_holes(m, 10)
    assert out[5:7, 5:7].all() and not out[20:30, 20:30].any()


def test_components_are_8_connected():
    m = np.zeros((5, 5), bool)
    m[1, 1] = m[2, 2] = True
    labels, n = label_components(m)
    assert n == 1
    assert remove_small_components(m, 3).sum() == 0


def test_delineate_trims_the_blur_halo():
    score = np.zeros((40, 40), np.float32)
    score[10:30, 10:30] = 20.0
    score[9, 10:30] = score[30, 10:30] = 6.0    # halo below half the median
    mask = score > 4
    out = delineate(score, mask)
    assert out[10:30, 10:30].all() and not out[9].any() and not out[30].any()


def test_clean_mask_does_not_modify_input():
    m = np.zeros((20, 20), bool)
    m[5, 5] = True
    before = m.copy()
    clean_mask(m, pixel_area_m2=1)
    assert np.array_equal(m, before)


def test_a_structure_and_its_shadow_are_one_polygon():
    # A roof and the shadow it casts, separated by a 2-px penumbra that
    # scored too low: closing joins them, so the shadow is no polygon of its own.
    m = np.zeros((60, 60), bool)
    m[10:30, 10:30] = True      # roof
    m[32:40, 10:30] = True      # its shadow, 2 px away
    labels, n = label_components(clean_mask(m, pixel_area_m2=0.25, min_area_m2=30))
    assert n == 1


@pytest.mark.parametrize("radius", [0, 1, 3, 8])
def test_dilate_square_equals_the_maximum_filter(radius):
    rng = np.random.default_rng(radius)
    for shape in [(1, 1), (5, 40), (37, 23), (120, 97)]:
        for density in (0.0, 0.002, 0.05, 0.5):
            mask = rng.random(shape) < density
            expect = ndimage.maximum_filter(mask.view(np.uint8), size=2 * radius + 1) > 0
            got = dilate_square(mask, radius)
            assert got.dtype == bool and got.shape == mask.shape
            np.testing.assert_array_equal(got, expect)
