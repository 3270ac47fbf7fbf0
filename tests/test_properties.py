"""Property-based tests: whatever arrays come in, a valid result or a ChangeDetError.

Random shapes, band counts, dtypes, nodata and NaN patterns, constant images
and pure noise go through the core array functions and through ``detect``.
Derandomised, so CI sees the same examples every run.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage

import changedet
from changedet.cleanup import clean_mask
from changedet.coreg import estimate_shift
from changedet.errors import ChangeDetError, ChangeDetWarning
from changedet.pipeline import DETECT_METHODS
from changedet.radiometry import fit_normalisation
from changedet.scores import SCORE_METHODS, fit_score, score_change
from changedet.thresholds import apply_threshold, select_threshold
from tests.conftest import utm_transform

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])

DTYPES = ["uint8", "uint16", "int16", "float32", "float64"]


@st.composite
def images(draw, *, min_side=8, max_side=48):
    """A (bands, H, W) array of some dtype and content, and an invalid mask."""
    bands = draw(st.integers(1, 4))
    h = draw(st.integers(min_side, max_side))
    w = draw(st.integers(min_side, max_side))
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    kind = draw(st.sampled_from(["texture", "constant", "noise", "zeros", "extreme"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if kind == "texture":
        data = ndimage.gaussian_filter(rng.random((bands, h, w)), (0, 1.5, 1.5)) * 200 + 20
    elif kind == "constant":
        data = np.full((bands, h, w), draw(st.floats(0, 200)))
    elif kind == "noise":
        data = rng.random((bands, h, w)) * 200
    elif kind == "zeros":
        data = np.zeros((bands, h, w))
    else:
        data = rng.choice([0.0, 255.0], (bands, h, w))
    data = data.astype(dtype)
    invalid = np.zeros((h, w), bool)
    pattern = draw(st.sampled_from(["none", "block", "speckle", "all", "row"]))
    if pattern == "block":
        invalid[: h // 2, : w // 3] = True
    elif pattern == "speckle":
        invalid = rng.random((h, w)) < 0.2
    elif pattern == "all":
        invalid[:] = True
    elif pattern == "row":
        invalid[h // 2] = True
    if dtype.kind == "f" and draw(st.booleans()):
        data[:, invalid] = np.nan
        if draw(st.booleans()):
            data[0, 0, 0] = np.inf
    return data, invalid


def _quiet(func, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ChangeDetWarning)
        return func(*args, **kwargs)


@st.composite
def pairs(draw):
    """A before image and an after image: unrelated, the same, or the same
    with a block changed (and its own nodata pattern)."""
    b, inv_b = draw(images(min_side=16, max_side=64))
    relation = draw(st.sampled_from(["changed", "changed", "same", "unrelated"]))
    if relation == "unrelated":
        a, inv_a = draw(images(min_side=16, max_side=64))
        a = np.resize(a, b.shape).astype(a.dtype)
        inv_a = np.resize(inv_a, inv_b.shape)
    else:
        a, inv_a = b.copy(), np.zeros_like(inv_b)
        if relation == "changed":
            h, w = b.shape[1:]
            r0, c0 = draw(st.integers(0, h - 8)), draw(st.integers(0, w - 8))
            hi = np.iinfo(a.dtype).max if a.dtype.kind in "ui" else 1000.0
            a[:, r0:r0 + 8, c0:c0 + 8] = hi // 2 if a.dtype.kind in "ui" else hi
    return b, inv_b, a, inv_a


@SETTINGS
@given(pairs(), st.sampled_from(DETECT_METHODS))
def test_detect_returns_a_valid_result_or_a_changedet_error(pair, method):
    b, inv_b, a, inv_a = pair
    before = changedet.Raster(b, utm_transform(), "EPSG:32651", mask=inv_b)
    after = changedet.Raster(a, utm_transform(), "EPSG:32651", mask=inv_a)
    try:
        r = _quiet(changedet.detect, before, after, min_area=1.0, threads=1, method=method)
    except ChangeDetError:
        return
    assert r.classes.shape == b.shape[1:]
    assert set(np.unique(r.classes)) <= {0, 1, 2, 3, 255}
    invalid = r.classes == 255
    assert np.isnan(r.score[invalid]).all()
    assert np.isfinite(r.score[~invalid]).all()
    for g, p in zip(r.geometries, r.properties, strict=True):
        assert shapely.is_valid(g) and not g.is_empty
        assert p["pixels"] > 0 and p["change"] in ("appeared", "disappeared", "changed")
    for f in r.features:
        assert f["geometry"]["type"] in ("Polygon", "MultiPolygon")


@SETTINGS
@given(images(min_side=4), images(min_side=4), st.sampled_from(SCORE_METHODS))
def test_core_functions_never_fail_on_odd_arrays(first, second, method):
    (b, inv), (a, _) = first, second
    a = np.resize(a, b.shape).astype(np.float32)
    b = np.nan_to_num(b.astype(np.float32), nan=0, posinf=0, neginf=0)
    a = np.nan_to_num(a, nan=0, posinf=0, neginf=0)
    if inv.all():
        inv = inv.copy()
        inv[0, 0] = False
    fit = fit_normalisation(b, a, inv)
    assert np.all(np.isfinite(fit.gain)) and np.all(np.isfinite(fit.offset))
    params = fit_score(method, b, a, inv)
    s = score_change(b, a, params)
    assert s.shape == b.shape[1:] and np.isfinite(s).all() and (s >= 0).all()
    t = select_threshold(s, dof=params.dof, invalid=inv)
    mask = apply_threshold(s, t, inv)
    assert not mask[inv].any()
    cleaned = clean_mask(mask, pixel_area_m2=0.25, min_area_m2=1)
    assert cleaned.shape == mask.shape and not (cleaned & ~(mask | ndimage.binary_dilation(
        mask, iterations=3))).any()
    shift = estimate_shift(b, a, invalid_before=inv)
    assert np.isfinite(shift.x) and np.isfinite(shift.y) and 0 <= shift.reliability <= 1


@pytest.mark.parametrize("value", [0, 1, 255])
def test_constant_pair_gives_no_change_and_no_crash(value):
    data = np.full((3, 40, 40), value, np.uint8)
    r = changedet.Raster(data, utm_transform(), "EPSG:32651")
    try:
        result = _quiet(changedet.detect, r, r)
    except ChangeDetError:
        return
    assert len(result) == 0
