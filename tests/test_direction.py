import numpy as np
from scipy import ndimage

from changedet.cleanup import label_components
from changedet.direction import class_raster, classify_direction


def _ground(seed):
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.normal(100, 8, (3, 96, 96)), (0, 1, 1)).astype(np.float32)


def test_appeared_disappeared_and_changed_in_place():
    before = _ground(0)
    after = before + np.random.default_rng(1).normal(0, 1, before.shape).astype(np.float32)
    after[:, 10:30, 10:30] = 200          # a bright roof appears
    before[:, 50:70, 10:30] = 40          # a dark building is removed
    before[:, 50:70, 60:80] = 180         # a roof changes colour in place
    after[:, 50:70, 60:80] = 60
    truth = np.zeros((96, 96), bool)
    truth[10:30, 10:30] = truth[50:70, 10:30] = truth[50:70, 60:80] = True
    labels, n = label_components(truth)
    d = classify_direction(before, after, labels, n)
    by_place = {labels[20, 20]: 1, labels[60, 20]: 2, labels[60, 70]: 3}
    for lab, expected in by_place.items():
        assert d.classes[lab - 1] == expected, (lab, d.contrast_before, d.contrast_after)
    assert d.confidence[labels[20, 20] - 1] > 0.5


def test_class_raster_marks_nodata():
    labels = np.array([[0, 1], [2, 0]], np.int32)
    inv = np.array([[False, False], [False, True]])
    out = class_raster(labels, np.array([1, 2], np.uint8), inv)
    np.testing.assert_array_equal(out, [[0, 1], [2, 255]])


def test_no_objects():
    d = classify_direction(np.zeros((3, 8, 8)), np.zeros((3, 8, 8)),
                           np.zeros((8, 8), np.int32), 0)
    assert d.classes.size == 0


def test_direction_of_built_and_demolished_structures_in_a_scene():
    import changedet
    from changedet.synthetic import scenario_pair
    from tests.conftest import utm_transform

    # Known answers on one scene with a sub-pixel shift; the accuracy
    # benchmark measures direction over all scenarios ("direction ok").
    p = scenario_pair("shift", seed=8, shape=(256, 256), n_static=4, n_appeared=2,
                      n_disappeared=2, n_vehicles=6)

    def raster(d, name):
        return changedet.Raster(d.astype(np.uint16), utm_transform(), "EPSG:32651", name=name)

    result = changedet.detect(raster(p.before, "b"), raster(p.after, "a"))
    for footprints, expected in ((p.appeared, 1), (p.disappeared, 2)):
        for fp in footprints:
            c = fp.centroid
            assert result.classes[int(c.y), int(c.x)] == expected, (expected, fp.bounds)
    conf = [q["confidence"] for q in result.properties]
    assert all(0 <= v <= 1 for v in conf) and np.median(conf) > 0.5


def test_an_object_without_valid_edge_pixels_is_changed_quietly():
    # The flood benchmark's tiles cut objects whose edge ring lies in
    # invalid pixels: their mean edge contrast is 0 / 0, which numpy
    # reported to the user as a RuntimeWarning from scipy.
    import warnings

    before = _ground(2)
    after = before.copy()
    after[:, 10:30, 10:30] = 200
    after[:, 50:70, 50:70] = 200
    truth = np.zeros((96, 96), bool)
    truth[10:30, 10:30] = truth[50:70, 50:70] = True
    labels, n = label_components(truth)
    invalid = np.zeros((96, 96), bool)
    invalid[5:35, 5:35] = True              # the first object's edge ring (its outline
    invalid[11:29, 11:29] = False           # either side), and more
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d = classify_direction(before, after, labels, n, invalid=invalid)
    assert d.classes[labels[20, 20] - 1] == 3       # no edge to judge: changed
    assert d.classes[labels[60, 60] - 1] == 1       # the other one is judged
