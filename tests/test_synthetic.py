import numpy as np

from changedet.synthetic import Sun, random_pair, rect, shadow_of


def test_same_seed_same_pair():
    a = random_pair((64, 64), seed=5, n_vehicles=3)
    b = random_pair((64, 64), seed=5, n_vehicles=3)
    np.testing.assert_array_equal(a.before, b.before)
    np.testing.assert_array_equal(a.after, b.after)
    np.testing.assert_array_equal(a.truth, b.truth)


def test_truth_raster_matches_footprints():
    p = random_pair((128, 128), seed=2, n_appeared=2, n_disappeared=1, sizes_m=(8, 12))
    total = sum(g.area for g in p.appeared + p.disappeared)
    assert abs(int((p.truth > 0).sum()) - total) < 0.1 * total
    assert set(np.unique(p.truth)) <= {0, 1, 2}


def test_shadow_falls_away_from_the_sun():
    # Sun in the south-east: the shadow of a 10 m tower falls north-west
    # (up and to the left in pixel coordinates).
    fp = rect(50, 50, 4, 4)
    sh = shadow_of(fp, 10.0, Sun(azimuth=135, elevation=45), pixel_size=1.0)
    minx, miny, _, _ = sh.bounds
    assert minx < 50 - 6 and miny < 50 - 6
