import numpy as np
import pytest
from scipy import stats

from changedet.thresholds import (
    apply_threshold,
    select_threshold,
    threshold_chi2,
    threshold_fixed,
    threshold_ki,
    threshold_otsu,
)


def test_chi2_thresholds_match_tail_probabilities():
    t = threshold_chi2(4, p_seed=1e-6, p_grow=1e-2)
    assert stats.chi2.sf(t.high ** 2, 4) == pytest.approx(1e-6)
    assert stats.chi2.sf(t.low ** 2, 4) == pytest.approx(1e-2)


def test_no_change_population_gives_almost_nothing():
    rng = np.random.default_rng(0)
    score = np.sqrt(rng.chisquare(3, (1000, 1000))).astype(np.float32)
    mask = apply_threshold(score, threshold_chi2(3))
    assert mask.sum() < 20  # a million no-change pixels


def test_otsu_always_splits():
    rng = np.random.default_rng(0)
    score = np.sqrt(rng.chisquare(3, (200, 200))).astype(np.float32)
    assert apply_threshold(score, threshold_otsu(score)).mean() > 0.1


def test_hysteresis_grows_from_seeds_only():
    score = np.zeros((20, 20), np.float32)
    score[2:6, 2:6] = 5.0       # weak everywhere: not kept
    score[10:15, 10:15] = 5.0
    score[12, 12] = 9.0         # one strong seed: the whole blob is kept
    t = threshold_chi2(3)
    m = apply_threshold(score, t)
    assert m[10:15, 10:15].all() and not m[2:6, 2:6].any()


def test_hysteresis_connects_diagonally_as_the_pipeline_does():
    score = np.zeros((12, 12), np.float32)
    score[2, 2] = 9.0                           # a seed
    score[3, 3] = score[4, 4] = 5.0             # a diagonal run of weak pixels
    score[8:10, 8:10] = 5.0                     # weak, alone
    m = apply_threshold(score, threshold_chi2(3))
    assert m[2, 2] and m[3, 3] and m[4, 4]
    assert not m[8:10, 8:10].any()


def test_invalid_pixels_do_not_bridge_a_seed_to_weak_change():
    score = np.zeros((5, 9), np.float32)
    score[2, 1] = 9.0
    score[2, 2:8] = 5.0
    inv = np.zeros((5, 9), bool)
    inv[:, 4] = True
    m = apply_threshold(score, threshold_chi2(3), inv)
    assert m[2, 1:4].all() and not m[2, 4:].any()


def test_invalid_pixels_are_never_change():
    score = np.full((10, 10), 100.0, np.float32)
    inv = np.zeros((10, 10), bool)
    inv[:5] = True
    m = apply_threshold(score, threshold_fixed(1.0), inv)
    assert not m[:5].any() and m[5:].all()


def test_select_threshold():
    s = np.ones((4, 4), np.float32)
    assert select_threshold(s, dof=3).method == "chi2"
    assert select_threshold(s, dof=3, method=2.5).high == 2.5
    with pytest.raises(ValueError, match="auto"):
        select_threshold(s, dof=3, method="max")
    assert not apply_threshold(s, threshold_otsu(s)).any()  # constant: nothing


def test_ki_splits_a_mixture_between_its_modes():
    rng = np.random.default_rng(1)
    s = np.concatenate([np.sqrt(rng.chisquare(3, 200_000)), rng.normal(12, 2, 4000)])
    t = threshold_ki(s.astype(np.float32))
    assert 4.5 < t.high < 9
    assert t.method == "ki"


def test_ki_and_otsu_find_nothing_without_change_when_guarded():
    rng = np.random.default_rng(2)
    score = np.sqrt(rng.chisquare(3, (400, 400))).astype(np.float32)
    for method in ("otsu", "ki"):
        raw = select_threshold(score, dof=3, method=method, guarded=False)
        assert apply_threshold(score, raw).sum() > 100, method   # always "finds" something
        t = select_threshold(score, dof=3, method=method)
        assert t.method == f"{method}+guard"
        assert not apply_threshold(score, t).any(), method


def test_guarded_histogram_threshold_still_grows_real_change():
    rng = np.random.default_rng(3)
    score = np.sqrt(rng.chisquare(3, (200, 200))).astype(np.float32)
    score[50:80, 50:80] = rng.normal(9, 2, (30, 30))
    t = select_threshold(score, dof=3, method="ki")
    m = apply_threshold(score, t)
    assert m[50:80, 50:80].mean() > 0.95
    assert m.sum() < 30 * 30 * 1.1


def test_threshold_metadata_is_plain():
    assert threshold_chi2(3).to_dict()["method"] == "chi2"
    assert threshold_otsu(np.zeros(4)).to_dict() == {"method": "otsu", "low": None, "high": None}


@pytest.mark.parametrize("threshold", [threshold_fixed(1.0), threshold_chi2(3)])
def test_threshold_masks_are_two_arrays(threshold):
    from changedet.thresholds import threshold_masks

    score = np.full((4, 4), 50.0, np.float32)
    cand, seeds = threshold_masks(score, threshold)
    assert cand.all() and seeds.all()
    cand[0, 0] = False
    assert seeds[0, 0]
