"""Tests of changedet.features helpers."""

import numpy as np
import pytest

from changedet.features import low_percentile


@pytest.mark.skipif(int(np.__version__.split(".")[0]) < 2,
                    reason="numpy 1 promotes float32 scalars differently (NEP 50)")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("q", [0.0, 0.01, 0.05, 0.5, 3.0])
def test_low_percentile_is_numpys_bit_for_bit(dtype, q):
    rng = np.random.default_rng(7)
    for n in (10, 5_000, 600_001, 1_048_576):
        for values in (rng.gamma(2, 300, n), rng.integers(0, 40, n),  # many ties
                       np.sort(rng.normal(size=n))[::-1]):           # sorted, descending
            values = values.astype(dtype)
            kept = values.copy()
            assert low_percentile(values, q) == float(np.percentile(values, q))
            np.testing.assert_array_equal(values, kept)  # not modified


def test_low_percentile_falls_back_where_its_bound_cannot_hold():
    rng = np.random.default_rng(8)
    values = rng.random(1_000_000)
    values[rng.integers(0, values.size, 3)] = np.nan
    assert np.isnan(low_percentile(values, 0.05))
    ints = rng.integers(0, 60_000, 1_000_000).astype(np.uint16)
    assert low_percentile(ints, 0.5) == float(np.percentile(ints, 0.5))
    # Higher percentiles too, where the probe's bound lies near the top.
    assert low_percentile(values[~np.isnan(values)], 60) == float(
        np.percentile(values[~np.isnan(values)], 60))
