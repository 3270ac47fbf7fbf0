import numpy as np
from scipy import ndimage

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


# --- scenarios: pairs with known truth and one family of nuisances each ---

import pytest  # noqa: E402

import changedet  # noqa: E402
from changedet.synthetic import PHENOLOGY, SCENARIOS, scenario_pair  # noqa: E402
from tests.conftest import utm_transform  # noqa: E402

SMALL = dict(shape=(192, 192), n_static=3, n_appeared=2, n_disappeared=1, n_vehicles=6)


def _raster(data, name):
    # uint16: an in-memory 4-band uint8 GeoTIFF would be read as RGBA.
    return changedet.Raster(data.astype(np.uint16), utm_transform(), "EPSG:32651", name=name)


def test_scenarios_are_reproducible_and_hold_their_truth():
    a = scenario_pair("all", seed=3, **SMALL)
    b = scenario_pair("all", seed=3, **SMALL)
    np.testing.assert_array_equal(a.after, b.after)
    assert a.scenario == "all" and a.before.shape == (4, 192, 192)
    total = sum(g.area for g in a.appeared + a.disappeared)
    assert abs(int((a.truth > 0).sum()) - total) < 0.1 * total
    n = scenario_pair("nochange", seed=3, **SMALL)
    assert not n.truth.any() and not n.appeared and not n.disappeared


def test_unknown_scenario_lists_the_choices():
    with pytest.raises(ValueError, match="phenology"):
        scenario_pair("monsoon")
    assert set(SCENARIOS) >= {"clean", "sun", "phenology", "nochange"}


def test_phenology_changes_vegetation_only():
    p = scenario_pair("phenology", seed=2, **SMALL)
    c = scenario_pair("clean", seed=2, **SMALL)
    np.testing.assert_array_equal(p.before, c.before)
    red, nir = c.after[0].astype(float), c.after[3].astype(float)
    veg = (nir - red) / (nir + red + 1) > 0.3
    d = np.abs(p.after.astype(float) - c.after.astype(float)).sum(axis=0)
    assert np.median(d[veg]) > 20 and np.median(d[~veg]) < 8
    assert set(PHENOLOGY) >= {"grass", "crop_green"}


def test_sun_moves_the_shadows():
    s = scenario_pair("sun", seed=4, **SMALL)
    c = scenario_pair("clean", seed=4, **SMALL)
    dark_s = s.after[:3].sum(axis=0) < 0.5 * np.median(s.after[:3].sum(axis=0))
    dark_c = c.after[:3].sum(axis=0) < 0.5 * np.median(c.after[:3].sum(axis=0))
    assert (dark_s != dark_c).mean() > 0.01


def test_a_pair_with_no_change_gives_an_empty_feature_collection():
    p = scenario_pair("nochange", seed=5, **SMALL)
    result = changedet.detect(_raster(p.before, "b"), _raster(p.after, "a"))
    fc = result.to_geojson()
    assert fc["type"] == "FeatureCollection" and fc["features"] == []


@pytest.mark.parametrize("scenario", ["sun", "phenology", "all"])
def test_new_and_removed_structures_are_found_despite_the_nuisances(scenario):
    p = scenario_pair(scenario, seed=6, **SMALL)
    result = changedet.detect(_raster(p.before, "b"), _raster(p.after, "a"))
    found = (result.classes > 0) & (result.classes < 255)
    truth_labels, n = ndimage.label(p.truth > 0, np.ones((3, 3), bool))
    for i in range(1, n + 1):
        assert found[truth_labels == i].mean() > 0.5, (scenario, i)
    # No polygon away from the truth: moving shadows, the season and cars
    # are not change, and a new building's shadow is not a polygon of its own.
    near = ndimage.binary_dilation(p.truth > 0, iterations=6)
    labels, m = ndimage.label(found, np.ones((3, 3), bool))
    assert all(near[labels == j].any() for j in range(1, m + 1))
    assert m == n
