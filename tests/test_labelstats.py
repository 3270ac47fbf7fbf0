"""Per-label statistics on the labelled pixels only equal scipy's on the whole array."""

import numpy as np
import pytest
from scipy import ndimage

from changedet import labelstats
from changedet.labelstats import first_pixel, labelled_maximum, labelled_median


@pytest.mark.parametrize("seed", range(20))
def test_same_answers_as_scipy_on_whole_array(seed):
    rng = np.random.default_rng(seed)
    h, w = rng.integers(1, 60, 2)
    labels = (rng.random((h, w)) < rng.random()) * rng.integers(0, 8, (h, w))
    labels.flat[rng.integers(labels.size)] = rng.integers(1, 8)   # at least one label
    values = rng.normal(size=(h, w)).astype(np.float32)
    idx = np.arange(1, 9)
    present = np.isin(idx, labels)
    np.testing.assert_array_equal(labelled_median(values, labels, idx)[present],
                                  np.asarray(ndimage.median(values, labels, idx))[present])
    np.testing.assert_array_equal(labelled_maximum(values, labels, idx)[present],
                                  np.asarray(ndimage.maximum(values, labels, idx))[present])
    rows_cols = np.arange(h * w).reshape(h, w)
    np.testing.assert_array_equal(first_pixel(labels, idx)[present],
                                  np.asarray(ndimage.minimum(rows_cols, labels, idx))[present])
    among = rng.random((h, w)) < 0.5
    np.testing.assert_array_equal(first_pixel(labels, idx, among=among),
                                  first_pixel(np.where(among, labels, 0), idx))


def test_absent_labels_are_marked():
    labels = np.array([[0, 2], [2, 0]])
    values = np.array([[5.0, 1.0], [3.0, 9.0]])
    assert np.isnan(labelled_median(values, labels, [1])[0])
    assert labelled_median(values, labels, [2])[0] == 2.0
    assert labelled_maximum(values, labels, [1, 2]).tolist() == [0.0, 3.0]
    assert first_pixel(labels, [1, 2]).tolist() == [-1, 1]


def test_no_labels_at_all():
    labels = np.zeros((3, 3), int)
    assert np.isnan(labelled_median(np.ones((3, 3)), labels, [1, 2])).all()
    assert first_pixel(labels, [1]).tolist() == [-1]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint16])
@pytest.mark.parametrize("n_labels", [1, 2, 7, 300])
def test_large_medians_by_partition_equal_scipy(dtype, n_labels, monkeypatch):
    # With many pixels a label the medians are found another way: the
    # very same numbers (odd and even counts, ties, labels absent).
    rng = np.random.default_rng(n_labels)
    shape = (500, 500)
    labels = rng.integers(1, n_labels + 1, shape) * (rng.random(shape) < 0.6)
    if n_labels > 2:
        labels[labels == 2] = 0   # absent
    values = (rng.normal(size=shape) * 50 + 200).astype(dtype)
    values[::7] = values[0, 0]   # ties
    idx = np.arange(1, n_labels + 3)
    present = np.isin(idx, labels)
    assert np.count_nonzero(labels) >= 100_000
    monkeypatch.setattr(labelstats, "_PIXELS_PER_LABEL", 10 ** 9)   # scipy's way
    want = labelled_median(values, labels, idx)
    monkeypatch.undo()
    got = labelled_median(values, labels, idx)
    np.testing.assert_array_equal(got[present],
                                  np.asarray(ndimage.median(values, labels, idx))[present])
    np.testing.assert_array_equal(got, want)
    assert np.isnan(got[~present]).all()
