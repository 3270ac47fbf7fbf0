"""Real labelled pairs from ../shared/data: fast checks that changedet beats the plain baseline.

The full comparison is scripts/bench_accuracy.py; these only guard against
regressions, on one pair each, with margins wide enough not to pin numbers.
"""

import sys

import numpy as np
import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
bench = pytest.importorskip("bench_accuracy")

pytestmark = pytest.mark.realdata


def _case(cases, name):
    found = [c for c in cases if c.name == name]
    if not found:
        pytest.skip(f"{name} is not in the shared data")
    return found[0]


def test_sztaki_far_fewer_false_polygons_and_better_precision(shared_data):
    case = _case(bench.load_sztaki(shared_data / "sztaki_airchange"), "sztaki/Szada/2")
    base = bench.score_case(case, bench.baseline(case))
    ours = bench.score_case(case, bench.changedet_method("auto")(case))
    assert ours.false_polygons * 20 < base.false_polygons
    assert ours.precision > 2 * base.precision
    assert ours.f1 > 0.15


def test_landsat_sparse_labels_scored_on_labelled_pixels_only(shared_data):
    case = _case(bench.load_landsat(shared_data / "landsat_nanjing_taizhou"),
                 "landsat/Taizhou")
    ours = bench.score_case(case, bench.changedet_method("auto")(case))
    base = bench.score_case(case, bench.baseline(case))
    assert ours.tp + ours.fp + ours.fn <= int(case.labelled.sum())
    assert ours.f1 > base.f1 and ours.precision > 0.8


def test_levir_no_change_tile_gives_few_polygons(shared_data):
    case = _case(bench.load_levir(shared_data / "levir_cd"), "levir/train_386_0512_0768")
    assert not case.truth.any()
    classes = bench.changedet_method("auto")(case)
    base = bench.baseline(case)
    n_ours = len(np.unique(bench.ndimage.label(classes > 0, bench.EIGHT)[0])) - 1
    n_base = len(np.unique(bench.ndimage.label(base > 0, bench.EIGHT)[0])) - 1
    assert n_ours * 20 < n_base
