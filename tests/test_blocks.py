"""Block-wise processing gives exactly the in-memory result."""

import json
import warnings

import numpy as np
import pytest
import rasterio
from scipy import ndimage
from shapely import wkb

import changedet
from changedet.runner import layout
from changedet.synthetic import SceneObject, Sensor, Sun, quantise, rect, render, textured_ground
from tests.conftest import write_tif

SHAPE = (301, 437)  # odd on purpose


def _scene():
    """Structures on block seams (64, 100, 128 px), at the raster's edges,
    at a four-block corner, and one far larger than a block's halo."""
    rng = np.random.default_rng(7)
    s = 2
    ground = textured_ground((SHAPE[0] * s, SHAPE[1] * s), "pavement", rng=rng,
                             texture=0.02, grain=4.0)
    static = [SceneObject(rect(20, 20, 30, 25), "roof_grey"),
              SceneObject(rect(300, 230, 40, 30), "roof_red")]
    new = [
        SceneObject(rect(90, 40, 24, 20), "white"),         # across col 100 and 128
        SceneObject(rect(56, 120, 20, 18), "blue"),         # across col 64, row 128
        SceneObject(rect(120, 92, 22, 20), "metal"),        # corner of four 128-blocks
        SceneObject(rect(417, 150, 20, 30), "red"),         # on the right edge
        SceneObject(rect(200, 283, 30, 18), "white"),       # on the bottom edge
        SceneObject(rect(180, 140, 200, 120), "concrete"),  # larger than any halo
    ]
    gone = [SceneObject(rect(250, 20, 30, 40), "roof_green"),  # across 256
            SceneObject(rect(0, 200, 26, 24), "roof_red")]      # on the left edge
    before = render(ground, static + gone, sun=Sun(), sensor=Sensor(noise=0.006),
                    pixel_size=0.5, supersample=s, rng=rng)
    after = render(ground, static + new, sun=Sun(), sensor=Sensor(
        gain=(1.1, 1.05, 1.0, 1.0), offset=(0.02, 0.02, 0.03, 0), noise=0.008, shift=(1.3, -0.6)),
        pixel_size=0.5, supersample=s, rng=rng)
    return quantise(before, "uint16", full_scale=1.0), quantise(after, "uint16", full_scale=1.0)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    d = tmp_path_factory.mktemp("blocks")
    b, a = _scene()
    return write_tif(d / "before.tif", b), write_tif(d / "after.tif", a)


@pytest.fixture(scope="module")
def reference(scene):
    return changedet.detect(*scene, block_size=4096, threads=1)


def _features(result):
    return sorted((wkb.dumps(g, hex=True), json.dumps(p, sort_keys=True))
                  for g, p in zip(result.geometries, result.properties, strict=True))


def test_reference_finds_all_eight_structures(reference):
    assert len(reference) == 8
    assert sorted(p["change"] for p in reference.properties) == ["appeared"] * 6 + \
        ["disappeared"] * 2
    big = max(reference.properties, key=lambda p: p["area_m2"])
    assert big["area_m2"] == pytest.approx(200 * 120 * 0.25, rel=0.1)


@pytest.mark.parametrize("block_size, threads, stripe_px", [
    (64, 1, None), (100, 2, None), (128, 2, None), (257, 1, None),
    (64, 2, 150),      # stripes of 2 blocks (128 px): seams between them, the cache across
])
def test_blockwise_equals_in_memory(scene, reference, block_size, threads, stripe_px,
                                    monkeypatch):
    if stripe_px is not None:
        import changedet.runner as runner
        monkeypatch.setattr(runner, "STRIPE_PIXELS", stripe_px)
        assert runner.stripe_blocks(SHAPE[1], block_size) < -(-SHAPE[1] // block_size)
    r = changedet.detect(*scene, block_size=block_size, threads=threads)
    np.testing.assert_array_equal(r.classes, reference.classes)
    np.testing.assert_array_equal(r.score, reference.score)
    assert _features(r) == _features(reference)


def test_scores_below_the_threshold_need_not_be_exact(scene, reference, monkeypatch):
    # Blocks skip the nuisance search where the plain score cannot reach the
    # threshold. Searching every candidate of the 1 % tail instead (as
    # before that shortcut) must find the very same classes and outlines.
    from changedet.thresholds import Threshold

    monkeypatch.setattr(Threshold, "lowest", property(lambda self: 0.0))
    searched = changedet.detect(*scene, block_size=4096, threads=1)
    np.testing.assert_array_equal(searched.classes, reference.classes)
    assert sorted(g.wkb for g in searched.geometries) == \
        sorted(g.wkb for g in reference.geometries)
    low = reference.threshold.low
    above = searched.score > low
    np.testing.assert_array_equal(reference.score > low, above)
    np.testing.assert_array_equal(reference.score[above], searched.score[above])
    assert (reference.score != searched.score).any()


def test_the_large_structure_needs_the_second_pass(reference):
    # With 64-pixel blocks and the default halo, the 200 x 120 px structure
    # cannot be finished by the block that holds its first pixel.
    from changedet.runner import DEFAULT_HALO

    blocks = layout(SHAPE, 64, DEFAULT_HALO)
    r0, c0 = 140, 180
    anchor_block = next(b for b in blocks if b.core.row_off <= r0 < b.core.row_off + 64
                        and b.core.col_off <= c0 < b.core.col_off + 64)
    assert anchor_block.window.col_off + anchor_block.window.width < c0 + 200


def test_streamed_files_equal_the_in_memory_result(scene, reference, tmp_path):
    out, mask, score = tmp_path / "c.geojson", tmp_path / "m.tif", tmp_path / "s.tif"
    summary = changedet.diff(*scene, out, mask=mask, score=score, block_size=64, threads=2)
    assert summary.count == len(reference)
    fc = json.loads(out.read_text())
    assert sorted(json.dumps(f["geometry"]) for f in fc["features"]) == \
        sorted(json.dumps(f["geometry"]) for f in reference.features)
    assert [f["id"] for f in fc["features"]] == list(range(1, len(reference) + 1))
    assert fc["bbox"] == reference.to_geojson()["bbox"]
    with rasterio.open(mask) as ds:
        np.testing.assert_array_equal(ds.read(1), reference.classes)
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
    with rasterio.open(score) as ds:
        np.testing.assert_array_equal(ds.read(1), reference.score)


@pytest.mark.parametrize("block_size", [64, 512])
def test_streamed_class_raster_with_nodata_equals_the_in_memory_one(tmp_path, block_size):
    # The class raster is written sparsely (only nodata and objects): blocks
    # wholly valid, partly and wholly nodata, and objects beside nodata must
    # come out as in memory, with the nodata value and tags declared. (A
    # block is rewritten only in boxes around its nodata: 512 px blocks
    # hold several.)
    b, a = _scene()
    invalid = np.zeros(SHAPE, bool)
    invalid[:70, :90] = True          # a corner: whole blocks of nodata
    invalid[150:, 300:310] = True     # a strip through blocks holding structures
    before = write_tif(tmp_path / "b.tif", b, mask=invalid)
    after = write_tif(tmp_path / "a.tif", a)
    reference = changedet.detect(before, after, block_size=4096, threads=1)
    assert (reference.classes[invalid] == 255).all()
    assert {1, 2} <= set(np.unique(reference.classes).tolist())
    mask = tmp_path / "m.tif"
    changedet.diff(before, after, tmp_path / "c.geojson", mask=mask, block_size=block_size,
                   threads=2)
    with rasterio.open(mask) as ds:
        np.testing.assert_array_equal(ds.read(1), reference.classes)
        assert ds.nodata == 255 and ds.crs == reference.crs
        assert ds.transform == reference.transform
        assert ds.tags()["CLASSES"].startswith("0=no change")
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif", "b.tif", "c.geojson", "m.tif"]


def test_nodata_boxes_hold_every_nodata_pixel_and_little_else():
    from changedet.pipeline import _boxes_of

    mask = np.zeros((700, 600), bool)
    mask[:3, :] = True                  # a shifted image's edges: a frame
    mask[:, -2:] = True
    mask[400, 100] = True               # a lone pixel
    cover = np.zeros_like(mask)
    boxes = _boxes_of(mask)
    for r0, r1, c0, c1 in boxes:
        assert mask[r0:r1, c0:c1].any()
        cover[r0:r1, c0:c1] = True
    assert cover[mask].all()
    # The frame's squares: 3 rows or 2 columns each, the corner's 256 x 256.
    assert cover.sum() < 3 * 600 + 2 * 700 + 256 * 256
    assert (400, 401, 100, 101) in boxes
    assert _boxes_of(np.zeros((5, 5), bool)) == []


def test_streamed_class_raster_overviews_show_every_change(tmp_path):
    # A raster large enough for overviews, written sparsely by blocks: each
    # level is class_overview of the level below, as for the whole array,
    # and every change is still there at the coarsest.
    from changedet.io import class_overview

    b, a = (np.tile(v, (1, 4, 2)) for v in _scene())   # 1204 x 874, the scene eight times
    # A frame of nodata, as a shifted image's edges leave (blocks rewrite
    # only boxes around it), and a patch inside.
    invalid = np.zeros(b.shape[1:], bool)
    invalid[:3], invalid[:, -2:], invalid[500:540, 700:760] = True, True, True
    before = write_tif(tmp_path / "b.tif", b, mask=invalid)
    after = write_tif(tmp_path / "a.tif", a)
    mask = tmp_path / "m.tif"
    summary = changedet.diff(before, after, tmp_path / "c.geojson", mask=mask, block_size=256)
    assert summary.count >= 40
    with rasterio.open(mask) as ds:
        classes = ds.read(1)
        assert ds.overviews(1) == [2, 4] and ds.nodata == 255
    assert (classes[invalid] == 255).all() and (classes[~invalid] != 255).all()
    level = classes
    for i in range(2):
        level = class_overview(np.pad(level, ((0, level.shape[0] % 2), (0, level.shape[1] % 2)),
                                      constant_values=255))
        with rasterio.open(mask, OVERVIEW_LEVEL=i) as ov:
            np.testing.assert_array_equal(ov.read(1), level)
    assert {1, 2} <= set(np.unique(level).tolist())
    assert ndimage.label(np.isin(level, (1, 2, 3)))[1] >= summary.count - 1


def test_streamed_output_is_deterministic(scene, tmp_path):
    for name in ("a", "b"):
        changedet.diff(*scene, tmp_path / f"{name}.geojson", mask=tmp_path / f"{name}.tif",
                       block_size=100, threads=2)
    assert (tmp_path / "a.geojson").read_bytes() == (tmp_path / "b.geojson").read_bytes()
    assert (tmp_path / "a.tif").read_bytes() == (tmp_path / "b.tif").read_bytes()


def test_failure_mid_run_leaves_no_output(scene, tmp_path, monkeypatch):
    import changedet.runner as runner

    calls = {"n": 0}
    real = runner.run_block

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError("disk went away")
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "run_block", failing)
    out, mask = tmp_path / "c.geojson", tmp_path / "m.tif"
    with pytest.raises(OSError, match="disk went away"):
        changedet.diff(*scene, out, mask=mask, block_size=64, threads=1)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("stripe", [None, 1, 2, 3])
def test_layout_covers_the_grid_once(stripe):
    blocks = layout((301, 437), 100, 20, stripe)
    cover = np.zeros((301, 437), int)
    for b in blocks:
        cover[int(b.core.row_off):int(b.core.row_off + b.core.height),
              int(b.core.col_off):int(b.core.col_off + b.core.width)] += 1
        assert b.window.row_off == max(0, b.core.row_off - 20)
    assert (cover == 1).all()


def _small_windows(monkeypatch, limit, halo=None):
    # Windows of at most `limit` px, so that small scenes go through the
    # tiles; with windows this small, the halo is the tiles' margin.
    import changedet.runner as runner

    monkeypatch.setattr(runner, "MAX_GROWN_WINDOW", limit)
    if halo is not None:
        monkeypatch.setattr(runner, "DEFAULT_HALO", halo)


@pytest.mark.parametrize("limit, halo", [(150, 96), (270, 48)], ids=["halo-96", "halo-48"])
def test_a_region_too_large_for_one_window_is_processed_in_tiles(scene, reference,
                                                                 monkeypatch, limit, halo):
    import changedet.runner as runner

    # Windows of at most 256 px (tiles with 64 px cores and 96 px margins),
    # or 270 px with a 48 px halo (174 px cores, 48 px margins): the
    # second pass's region around the 200 x 120 px structure is too large
    # for one, so it goes through tiles; one of them holds the structure
    # whole, so the result is exactly the in-memory one, and no piece is
    # joined. (Other sizes cut it in every tile, or hold the region whole:
    # the warning or `calls` below would say so.)
    _small_windows(monkeypatch, limit, halo)
    calls = []
    real = runner._resolve_in_tiles
    monkeypatch.setattr(runner, "_resolve_in_tiles",
                        lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    with warnings.catch_warnings():
        warnings.simplefilter("error", changedet.LargeChangeWarning)
        r = changedet.detect(*scene, block_size=64, threads=1)
    assert calls
    np.testing.assert_array_equal(r.classes, reference.classes)
    assert _features(r) == _features(reference)


def _pair(tmp_path, shape, objects, faint=(), seed=3):
    # `objects`: (x, y, w, h, material) appearing; `faint`: (row0, col0,
    # row1, col1, per-band offset) added to the after image (change too
    # faint to hold a seed).
    rng = np.random.default_rng(seed)
    s = 2
    ground = textured_ground((shape[0] * s, shape[1] * s), "pavement", rng=rng,
                             texture=0.15, grain=4.0)
    new = [SceneObject(rect(*o[:4]), o[4]) for o in objects]
    before = render(ground, [], sun=Sun(), sensor=Sensor(noise=0.006), pixel_size=0.5,
                    supersample=s, rng=rng)
    after = render(ground, new, sun=Sun(), sensor=Sensor(noise=0.006), pixel_size=0.5,
                   supersample=s, rng=rng)
    for r0, c0, r1, c1, delta in faint:
        after[:, r0:r1, c0:c1] = before[:, r0:r1, c0:c1] + np.asarray(
            delta, np.float32).reshape(-1, 1, 1)
    return (write_tif(tmp_path / "b.tif", quantise(before, "uint16", full_scale=1.0)),
            write_tif(tmp_path / "a.tif", quantise(after, "uint16", full_scale=1.0)))


def _bar_pair(tmp_path):
    return _pair(tmp_path, (260, 1100), [(60, 100, 950, 30, "white")])


def _lost_and_extra(r, reference):
    got, ref = r.classes.astype(bool), reference.classes.astype(bool)
    return int((ref & ~got).sum()), int((got & ~ref).sum())


def test_a_change_its_anchor_block_cuts_is_found_by_default(tmp_path):
    # A 40 x 110 px change starting 6 px below row 1024: the block holding
    # its first pixel sees it cut, the block holding its first seed sees it
    # whole but left it to the first. It used to be lost.
    b, a = _pair(tmp_path, (1200, 200), [(80, 1030, 40, 110, "white")])
    reference = changedet.detect(b, a, block_size=4096, threads=1)
    r = changedet.detect(b, a, threads=1)
    assert len(reference) == 1
    assert _features(r) == _features(reference)


def test_a_region_among_many_changes_is_settled_in_one_window(tmp_path, monkeypatch):
    # An L-shaped change that a block seam cuts, a change beside it that
    # reaches beyond the first window around it, and 80 px squares all
    # around, 50 px apart. Its group fits a window of 450 px. The second
    # pass used to count as the region's own every cut group that met the
    # span it had grown to: the squares cut by each new window's edge made
    # it grow again, to the limit, and the region went through tiles (on
    # an 8192 px pair with 3000 structures: 160 s, 7 changes joined from
    # pieces; now 42 s, each change exactly as one window gives it).
    import changedet.runner as runner

    changes = [(450, 300, 120, 30, "white"), (450, 330, 30, 90, "white"),   # the L
               (540, 360, 90, 50, "white")]        # its corner inside the L's box

    def clear(x, y):
        return x + 140 <= 440 or x >= 640 or y + 140 <= 290 or y >= 430

    squares = [(x, y, 80, 80, "red") for x in range(10, 810, 130) for y in range(10, 810, 130)
               if clear(x, y)]
    b, a = _pair(tmp_path, (900, 900), changes + squares)
    reference = changedet.detect(b, a, block_size=4096, threads=1)
    _small_windows(monkeypatch, 450)
    windows, tiles = [], []
    real_window, real_tiles = runner._window_in_budget, runner._resolve_in_tiles
    monkeypatch.setattr(runner, "_window_in_budget",
                        lambda *a, **k: windows.append(a[4]) or real_window(*a, **k))
    monkeypatch.setattr(runner, "_resolve_in_tiles",
                        lambda *a, **k: tiles.append(a[0]) or real_tiles(*a, **k))
    steps = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", changedet.LargeChangeWarning)
        r = changedet.detect(b, a, block_size=256, threads=1,
                             progress=lambda *step: steps.append(step))
    assert len(reference) == len(squares) + 2
    assert not tiles
    assert len(windows) == 2                # the first window, and one grown to hold the change
    # The second pass shows that it runs (one region: announced once).
    assert [s for s in steps if s[0] == runner.SEAMS_STAGE] == [(runner.SEAMS_STAGE, 0, 1)]
    np.testing.assert_array_equal(r.classes, reference.classes)
    assert _features(r) == _features(reference)


def test_tiles_follow_a_group_through_tiles_where_it_leaves_no_object(tmp_path, monkeypatch):
    # A long change joined by a chain of specks (each below the minimum
    # mapping unit) to a small change far away: the tiles between hold only
    # the specks, and the small change used to be lost.

    objects = ([(20, 100, 450, 30, "white")]
               + [(x, 118, 6, 6, "red") for x in range(478, 1290, 14)]
               + [(1300, 126, 40, 20, "red")])
    b, a = _pair(tmp_path, (260, 1400), objects)
    reference = changedet.detect(b, a, block_size=4096, threads=1)
    _small_windows(monkeypatch, 450)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", changedet.LargeChangeWarning)
        r = changedet.detect(b, a, block_size=64, threads=1)
    assert len(reference) == 2 and len(r) == 2
    lost, extra = _lost_and_extra(r, reference)
    assert lost == 0 and extra < 0.005 * reference.classes.astype(bool).sum()


def test_tiles_on_threads_give_the_one_thread_result(tmp_path, monkeypatch):
    # The tiles are processed a wave at a time on the threads, their results
    # taken in queue order: the same tiles, objects, pieces and order as on
    # one thread. The regions handed to the tiles are cut down to a pixel so
    # that the tiles are found a wave after another, and reading is slowed
    # so that tiles are in flight together, within the pixels of
    # LARGE_WINDOWS_IN_FLIGHT largest windows however many threads (four
    # threads and a budget of one window: without it they held 376 080 px).
    import threading
    import time

    import changedet.runner as runner

    # A cross of two bars larger than any window, a small change beside it.
    objects = [(40, 330, 900, 30, "white"), (480, 30, 30, 640, "white"),
               (700, 120, 40, 20, "red")]
    b, a = _pair(tmp_path, (700, 1000), objects)
    _small_windows(monkeypatch, 450)
    real, in_tiles = runner._resolve_in_tiles, threading.Event()
    waves, lock = [], threading.Lock()
    inside, most, pixels, most_pixels = [0], [0], [0], [0]

    def from_a_pixel(regions, *args, **kwargs):
        in_tiles.set()
        try:
            return real([(r0, c0, r0 + 1, c0 + 1) for r0, c0, _, _ in regions], *args, **kwargs)
        finally:
            in_tiles.clear()

    class Pool(runner.ThreadPoolExecutor):
        def map(self, fn, items):
            items = list(items)
            if in_tiles.is_set():
                waves.append(len(items))
            return super().map(fn, items)

    def slow_read(sources, plan, win, *args, **kwargs):
        # Tiles in flight at once (the blocks before are not counted).
        if not in_tiles.is_set():
            return read(sources, plan, win, *args, **kwargs)
        with lock:
            inside[0] += 1
            pixels[0] += int(win.width) * int(win.height)
            most[0], most_pixels[0] = max(most[0], inside[0]), max(most_pixels[0], pixels[0])
        time.sleep(0.02)
        try:
            return read(sources, plan, win, *args, **kwargs)
        finally:
            with lock:
                inside[0] -= 1
                pixels[0] -= int(win.width) * int(win.height)

    read = runner.read_block
    monkeypatch.setattr(runner, "_resolve_in_tiles", from_a_pixel)
    monkeypatch.setattr(runner, "ThreadPoolExecutor", Pool)
    monkeypatch.setattr(runner, "read_block", slow_read)
    runs = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", changedet.LargeChangeWarning)
        for threads, windows in ((1, 2), (2, 2), (4, 1)):
            monkeypatch.setattr(runner, "LARGE_WINDOWS_IN_FLIGHT", windows)
            waves.clear()
            most[0] = most_pixels[0] = 0
            out = tmp_path / f"{threads}.geojson"
            r = changedet.detect(b, a, block_size=64, threads=threads)
            changedet.diff(b, a, out, block_size=64, threads=threads)
            runs[threads] = (r, out.read_bytes(), list(waves), most[0], most_pixels[0])
    (one, one_bytes, one_waves, one_most, _) = runs[1]
    assert len(one) >= 2 and one_most == 1
    assert len(one_waves) > 2 and max(one_waves) > 1     # found wave after wave
    assert runs[2][3] >= 2                                # tiles in flight together
    assert runs[2][4] <= 2 * 450 * 450 and runs[4][4] <= 450 * 450
    for threads in (2, 4):
        r, geojson, got_waves, _, _ = runs[threads]
        assert got_waves == one_waves
        np.testing.assert_array_equal(r.classes, one.classes)
        assert [g.wkb for g in r.geometries] == [g.wkb for g in one.geometries]
        assert r.properties == one.properties
        assert geojson == one_bytes


@pytest.mark.parametrize("close_radius, faint, small, bar_y", [
    # Faint change (above the low threshold, no seed) along the bar: it
    # touches tiles' edges, where it counts as change; it used to be
    # reported as a change of its own.
    (1, (196, 400, 206, 620, (0.048, 0, 0)), None, 60),
    # The same next to the bar and a small change, which a tile's closing
    # joins to the bar: the bar used to be dropped whole, as the small
    # change, reported before, lay within it.
    (2, (93, 419, 110, 560, (0.048, 0, 0)), (530, 113, 40, 20, "white"), 60),
    # The same upside down, default clean-up: the small change, reported
    # before, came first in the joined bar, which was then dropped whole.
    (1, (181, 419, 198, 560, (0.048, 0, 0)), (530, 159, 40, 20, "white"), 200),
], ids=["faint-alone", "faint-joins-small-change", "small-change-first"])
def test_faint_change_at_tiles_edges_neither_adds_nor_removes(tmp_path, monkeypatch,
                                                               close_radius, faint, small,
                                                               bar_y):

    objects = [(60, bar_y, 950, 30, "white")] + ([small] if small else [])
    b, a = _pair(tmp_path, (300, 1100), objects, faint=[faint])
    reference = changedet.detect(b, a, block_size=2048, threads=1, close_radius=close_radius)
    _small_windows(monkeypatch, 450)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", changedet.LargeChangeWarning)
        r = changedet.detect(b, a, block_size=64, threads=1, close_radius=close_radius)
    assert len(r) == len(reference) == len(objects)
    lost, extra = _lost_and_extra(r, reference)
    assert lost < 0.005 * reference.classes.astype(bool).sum()
    big = max(r.properties, key=lambda p: p["pixels"])
    ref = max(reference.properties, key=lambda p: p["pixels"])
    # A tile may join the faint change and the small one to the bar (a
    # documented approximation: 6 % more pixels in the second case).
    assert big["pixels"] == pytest.approx(ref["pixels"], rel=0.1)


def test_a_change_longer_than_the_grown_window_is_reported_whole(tmp_path, monkeypatch):
    # A 950 px bar with windows of at most 450 px: no window holds it, so it
    # is joined from tiles' pieces. It used to be cut at the window's edge
    # (3190 of its 7125 m2 were reported).

    b, a = _bar_pair(tmp_path)
    reference = changedet.detect(b, a, block_size=2048, threads=1)
    _small_windows(monkeypatch, 450)
    steps = []
    with pytest.warns(changedet.LargeChangeWarning, match="1 change.s. in it joined"):
        r = changedet.detect(b, a, block_size=64, threads=1,
                             progress=lambda *step: steps.append(step))
    assert len(reference) == 1 and len(r) == 1
    # The tiles show their progress: their count grows as the bar is followed.
    from changedet.runner import TILES_STAGE

    tiles = [(done, total) for stage, done, total in steps if stage == TILES_STAGE]
    assert tiles[0][0] == 0 and tiles[-1][0] == tiles[-1][1] >= 3
    assert [d for d, _ in tiles] == sorted(d for d, _ in tiles)
    (p,), (q,) = r.properties, reference.properties
    assert p["area_m2"] == pytest.approx(950 * 30 * 0.25, rel=0.1)
    assert p["area_m2"] == pytest.approx(q["area_m2"], rel=0.01)
    assert p["change"] == q["change"] == "appeared"
    assert r.geometries[0].geom_type == "Polygon"
    assert r.geometries[0].symmetric_difference(reference.geometries[0]).area < \
        0.01 * reference.geometries[0].area
    # Each tile trims the bar's blurred edge by its own view of the bar's
    # score: a few pixels along the edge differ, no more.
    changed, ref = r.classes.astype(bool), reference.classes.astype(bool)
    assert (changed != ref).sum() < 0.005 * ref.sum()


def test_a_joined_change_is_streamed_whole(tmp_path, monkeypatch):

    b, a = _bar_pair(tmp_path)
    _small_windows(monkeypatch, 450)
    with pytest.warns(changedet.LargeChangeWarning):
        memory = changedet.detect(b, a, block_size=64, threads=2)
        changedet.diff(b, a, tmp_path / "c.geojson", mask=tmp_path / "m.tif", block_size=64,
                       threads=2)
    fc = json.loads((tmp_path / "c.geojson").read_text())
    assert len(fc["features"]) == 1
    assert fc["features"][0]["properties"] == memory.properties[0]
    with rasterio.open(tmp_path / "m.tif") as ds:
        np.testing.assert_array_equal(ds.read(1), memory.classes)


@pytest.mark.realdata
def test_dense_change_in_small_blocks_equals_one_block(shared_data):
    # A tornado tile with --threshold otsu: candidates everywhere join into
    # groups as large as the tile. Found there: two buildings lost with
    # 256 px blocks, because the second pass left them to an anchor block
    # that had seen them joined to an incomplete group and never emitted them.
    import warnings

    root = shared_data / "joplin" / "input"
    pre, post = root / "pre" / "tile_1361-10160.tif", root / "post" / "tile_32524-5137.tif"
    if not (pre.exists() and post.exists()):
        pytest.skip("the Joplin tiles are not in the shared data")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # co-registration is unreliable on this pair
        one = changedet.detect(pre, post, threshold="otsu", block_size=4096)
        small = changedet.detect(pre, post, threshold="otsu", block_size=256)
    assert len(one) > 100
    assert len(small) == len(one)
    np.testing.assert_array_equal(small.classes, one.classes)


def _piece(row, col, shape, change=1, confidence=1.0, score=2.0, seeded=True):
    from changedet.blocks import Piece

    mask = np.ones(shape, bool)
    return Piece(row_off=row, col_off=col, shape=shape, packed=np.packbits(mask),
                 anchor=(row, col), change=change, confidence=confidence,
                 pixels=int(mask.sum()), score_sum=score * mask.sum(), score_max=score,
                 seed_packed=np.packbits(mask & seeded))


def test_join_pieces_joins_what_touches_and_drops_what_was_reported():
    from types import SimpleNamespace

    from affine import Affine
    from rasterio.crs import CRS

    from changedet.blocks import ChangeObject, Footprint, join_pieces
    from changedet.grid import Grid

    grid = Grid(Affine(0.5, 0, 1000, 0, -0.5, 2000), CRS.from_epsg(32633), 100, 100)
    plan = SimpleNamespace(grid=grid, simplify=0.0)
    left = _piece(0, 0, (10, 10), change=1, score=2.0)
    right = _piece(0, 10, (10, 10), change=2, confidence=0.5, score=4.0)   # shares an edge
    corner = _piece(10, 20, (5, 5), change=1, score=2.0)    # meets `right` at a corner only
    apart = _piece(50, 50, (5, 5))
    on_whole = _piece(80, 80, (3, 3))       # another tile held this change whole
    half_on = _piece(60, 60, (8, 4))        # ... and the top 2 rows of this one
    # ... and the top half of this one: the seeds left are within SEED_REACH
    # of it (its own, seen through its blurred edge), so nothing is left.
    fringe = _piece(70, 70, (4, 4))
    reported_before = _piece(30, 30, (4, 4))   # three quarters on a change reported before
    seedless = _piece(40, 0, (6, 6), seeded=False)
    whole = [ChangeObject(anchor=(80, 80), row_off=80, col_off=80, mask=np.ones((3, 3), bool),
                          change=1, properties={}, geometry=None),
             ChangeObject(anchor=(59, 60), row_off=59, col_off=60, mask=np.ones((3, 4), bool),
                          change=1, properties={}, geometry=None),
             ChangeObject(anchor=(69, 70), row_off=69, col_off=70, mask=np.ones((3, 4), bool),
                          change=1, properties={}, geometry=None)]
    reported = [Footprint(30, 30, (3, 4), np.packbits(np.ones((3, 4), bool))),
                Footprint(50, 50, (1, 1), np.packbits(np.ones((1, 1), bool)))]
    out = join_pieces([apart, corner, on_whole, right, reported_before, left, half_on,
                       seedless, fringe], plan, whole=whole, reported=reported)
    assert [o.anchor for o in out] == [(0, 0), (50, 51), (62, 60)]
    assert out[1].properties["pixels"] == 24    # less the pixel reported before
    assert out[2].properties["pixels"] == 24    # less the 2 rows held whole
    joined = out[0]
    p = joined.properties
    assert p["pixels"] == 225 and p["area_m2"] == 225 * 0.25
    assert joined.geometry.area == pytest.approx(225 * 0.25)
    assert p["change"] == "appeared"              # 125 px appeared against 100 disappeared
    assert p["confidence"] == 1.0
    assert p["score_mean"] == round((100 * 2 + 100 * 4 + 25 * 2) / 225, 3)
    assert p["score_max"] == 4.0
    minx, miny, maxx, maxy = joined.geometry.bounds
    assert (minx, maxy, maxx, miny) == (1000, 2000, 1000 + 25 * 0.5, 2000 - 15 * 0.5)
    cover = np.zeros((100, 100), int)
    for r, c, m in joined.masks():
        cover[r:r + m.shape[0], c:c + m.shape[1]] += m
    assert cover.sum() == 225 and cover.max() == 1
    assert cover[:10, :20].all() and cover[10:15, 20:25].all()


def test_second_pass_windows_in_flight_stay_within_the_pixel_budget():
    import threading
    import time

    from changedet.runner import _PixelBudget

    budget = _PixelBudget(100)
    inside, peak, lock = [0], [0], threading.Lock()

    def window(pixels):
        with budget.hold(pixels):
            with lock:
                inside[0] += pixels
                peak[0] = max(peak[0], inside[0])
            time.sleep(0.02)
            with lock:
                inside[0] -= pixels

    sizes = [60, 60, 30, 150, 10, 40]     # 150: alone over budget, still runs (alone)
    threads = [threading.Thread(target=window, args=(n,)) for n in sizes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in threads)
    # Never two windows over the budget together (60 + 60 would be 120; the
    # 150 px window with any other, over 150); the 150 px one alone is 150.
    assert peak[0] in range(0, 101) or peak[0] == 150
    assert budget.used == 0


def test_threads_leave_the_warning_filters_as_they_were(tmp_path):
    # Plain images (no georeferencing): every handle a block thread opens
    # would warn; the filter that silences it must not outlive the runs,
    # also when two runs overlap on two threads (with catch_warnings in
    # each, a filter was left behind in 2 of 3 tries of 15 runs each).
    import threading

    from PIL import Image

    rng = np.random.default_rng(0)
    img = rng.integers(60, 120, (300, 300, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "x.png")
    img[100:140, 100:160] = 250
    Image.fromarray(img).save(tmp_path / "y.png")
    found = []

    def runs():
        for _ in range(8):
            r = changedet.detect(tmp_path / "x.png", tmp_path / "y.png", block_size=64,
                                 threads=2, coreg="none")
            found.append(len(r))

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.filterwarnings("ignore", category=changedet.PixelSpaceWarning)
        before = list(warnings.filters)
        workers = [threading.Thread(target=runs) for _ in range(2)]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        assert len(found) == 16 and min(found) >= 1
        assert warnings.filters == before


def test_the_second_pass_starts_with_a_window_of_tile_cache(scene, reference, monkeypatch):
    # The stripes' tiles are of little use to the second pass and took the
    # flood pair's peak from 700 to 980 MB: it keeps a window's worth.
    import changedet.runner as runner

    seen = []
    orig = runner._resolve_deferred

    def spy(deferred, sources, plan, sink, halo, readers, first_pass, limit, *rest):
        for r in (readers.before, readers.after):
            seen.append((len(r._tiles), r.max_bytes, limit * limit * r.pixel_bytes))
        return orig(deferred, sources, plan, sink, halo, readers, first_pass, limit, *rest)

    monkeypatch.setattr(runner, "_resolve_deferred", spy)
    r = changedet.detect(*scene, block_size=64, threads=2)
    assert len(seen) == 2                      # the big structure needed the second pass
    assert all(n == 0 and kept <= window for n, kept, window in seen)
    assert _features(r) == _features(reference)


def _one_box_and_split(monkeypatch, run):
    # `run()` with every window's groups in one box, then split into as
    # many boxes as the partition allows; also how many boxes each used and
    # the pieces each window returned, in order.
    import changedet.blocks as blocks
    import changedet.runner as runner

    calls, pieces = [], []
    real_box, real_window = blocks._process_box, runner.process_window

    def window(*a, **k):
        res = real_window(*a, **k)
        pieces.append([(p.anchor, p.pixels, p.score_sum, p.change, p.packed.tobytes())
                       for p in res.pieces])
        return res

    monkeypatch.setattr(blocks, "_process_box", lambda *a, **k: calls.append(1) or
                        real_box(*a, **k))
    monkeypatch.setattr(runner, "process_window", window)
    out = []
    for split in (10 ** 12, 0):
        monkeypatch.setattr(blocks, "_SPLIT_PIXELS", split)
        calls.clear()
        pieces.clear()
        out.append((run(), len(calls), list(pieces)))
    return out


def _courtyard(tmp_path):
    # A ring-shaped structure with a small one in its courtyard, and two
    # far apart: split by halves, the ring and the shed would fall in
    # different boxes, and the courtyard, a hole below the minimum area
    # only with the shed's pixels in it, was no longer filled.
    rng = np.random.default_rng(3)
    s = 2
    ground = textured_ground((400, 1200), "pavement", rng=rng, texture=0.02, grain=4.0)
    new = [SceneObject(rect(230, 30, 140, 140).difference(rect(260, 60, 80, 80)), "white"),
           SceneObject(rect(296, 94, 12, 12), "red"),
           SceneObject(rect(20, 90, 40, 40), "blue"),
           SceneObject(rect(540, 90, 40, 40), "metal")]
    before = render(ground, [], sun=Sun(), sensor=Sensor(noise=0.006), pixel_size=0.5,
                    supersample=s, rng=rng)
    after = render(ground, new, sun=Sun(), sensor=Sensor(noise=0.008), pixel_size=0.5,
                   supersample=s, rng=rng)
    return (write_tif(tmp_path / "b.tif", quantise(before, "uint16", full_scale=1.0)),
            write_tif(tmp_path / "a.tif", quantise(after, "uint16", full_scale=1.0)))


@pytest.mark.parametrize("case", ["in-memory", "blocks", "tiles", "courtyard"])
def test_groups_in_separate_boxes_give_the_one_box_result(scene, monkeypatch, tmp_path, case):
    # A window's groups are processed in boxes of their own (a block with
    # scattered changes then costs their boxes, not the whole window): the
    # very same objects, pieces and classes as one box holding them all.
    pair, options = scene, {}
    if case == "tiles":
        _small_windows(monkeypatch, 270)     # pieces of the large structure, joined
    if case == "courtyard":
        pair, options = _courtyard(tmp_path), {"min_area": 1580}

    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", changedet.LargeChangeWarning)
            return changedet.detect(*pair, block_size={"blocks": 257, "tiles": 64}.get(
                case, 4096), threads=1, **options)

    (one, one_calls, one_pieces), (split, split_calls, split_pieces) = \
        _one_box_and_split(monkeypatch, run)
    assert split_calls > one_calls
    assert any(one_pieces) == (case == "tiles")
    assert split_pieces == one_pieces
    np.testing.assert_array_equal(split.classes, one.classes)
    assert _features(split) == _features(one)
    assert [g.wkb for g in split.geometries] == [g.wkb for g in one.geometries]   # same order
    if case == "courtyard":
        # The ring with its courtyard filled (140 x 140 px), the shed in it.
        assert max(p["pixels"] for p in split.properties) == pytest.approx(140 * 140, rel=0.02)


def test_work_boxes_hold_each_group_once_and_split_scattered_ones():
    from changedet.blocks import _work_boxes

    rng = np.random.default_rng(0)
    # 40 groups of 5-20 px scattered over 1000 x 1000 px, and a cluster of
    # 10 touching ones.
    corner = rng.integers(0, 980, (40, 2))
    size = rng.integers(5, 20, (40, 2))
    scattered = np.concatenate([corner, corner + size], axis=1)
    cluster = np.array([[500 + 10 * i, 500, 510 + 10 * i, 530] for i in range(10)])
    bbox = np.concatenate([scattered, cluster])
    which = np.arange(len(bbox))
    boxes = _work_boxes(bbox, which, 5, (1000, 1000))
    held = np.concatenate([idx for idx, _ in boxes])
    assert sorted(held.tolist()) == which.tolist()
    for idx, (r0, c0, r1, c1) in boxes:
        assert (np.maximum(bbox[idx, :2] - 5, 0) >= (r0, c0)).all()
        assert (np.minimum(bbox[idx, 2:] + 5, 1000) <= (r1, c1)).all()
    assert len(boxes) > 10
    assert sum((r1 - r0) * (c1 - c0) for _, (r0, c0, r1, c1) in boxes) < 0.2 * 1000 * 1000
    # A group in another's box (a shed in a courtyard) stays with it.
    ring = np.array([[100, 100, 240, 240], [146, 146, 158, 158], [900, 20, 940, 60],
                     [20, 900, 60, 940]])
    boxes = _work_boxes(ring, np.arange(4), 5, (1000, 1000))
    assert len(boxes) == 3 and any(set(idx.tolist()) == {0, 1} for idx, _ in boxes)
    # One group, or a dense few alone: one box.
    assert len(_work_boxes(bbox[:1], np.arange(1), 5, (1000, 1000))) == 1
    assert len(_work_boxes(cluster, np.arange(10), 5, (1000, 1000))) == 1


def test_block_threads_never_swap_the_warning_filters_at_once(scene, reference, monkeypatch):
    # rasterio's shapes and rasterize wrap themselves in
    # warnings.catch_warnings, which saves the process's filter list and
    # puts it back on leaving: two threads inside at once could leave
    # rasterio's simplefilter("ignore") behind, silencing every warning in
    # the user's process. Entering is slowed here so that any overlap shows.
    import threading
    import time

    from rasterio.warp import transform_geom
    from shapely.geometry import box, mapping

    inside, most, lock = [0], [0], threading.Lock()
    real = warnings.catch_warnings

    class Counted(real):
        def __enter__(self):
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            time.sleep(0.005)
            return super().__enter__()

        def __exit__(self, *exc):
            with lock:
                inside[0] -= 1
            return super().__exit__(*exc)

    west, south, east, north = reference.grid.bounds
    roi = transform_geom(reference.crs, "EPSG:4326",
                         mapping(box(west + 4, south + 4, east - 4, north - 4)))
    monkeypatch.setattr(warnings, "catch_warnings", Counted)
    r = changedet.detect(*scene, block_size=64, threads=2, roi=roi)
    monkeypatch.undo()
    assert len(r) >= 5          # polygons made on both threads
    assert most[0] == 1


@pytest.mark.parametrize("seed", range(12))
def test_group_boxes_and_first_pixels_are_those_of_the_labelled_groups(seed):
    # process_window finds each group's box and first pixel from its live
    # pixels; they must be find_objects' and first_pixel's on the groups,
    # at the window's edges too (where the dilation is cut).
    from changedet.blocks import _group_extents
    from changedet.cleanup import CONNECTIVITY, dilate_square
    from changedet.labelstats import first_pixel

    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(5, 90, 2))
    live = rng.random((h, w)) < rng.choice([0.002, 0.02, 0.2])
    live[rng.integers(h), rng.integers(w)] = True
    k = int(rng.integers(0, 6))
    glabels, ng = ndimage.label(dilate_square(live, k), structure=CONNECTIVITY)
    bbox, first = _group_extents(live, glabels, ng, k)
    want = np.array([[s[0].start, s[1].start, s[0].stop, s[1].stop]
                     for s in ndimage.find_objects(glabels)]).reshape(-1, 4)
    np.testing.assert_array_equal(bbox, want)
    np.testing.assert_array_equal(first, first_pixel(glabels, np.arange(1, ng + 1)))


@pytest.mark.parametrize("seed", range(10))
def test_components_are_scipys(seed):
    # Boxes that meet are processed together: the components of their graph,
    # numbered as scipy's connected_components numbers them.
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from changedet.blocks import components

    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    m = int(rng.integers(0, 3 * n))
    i, j = rng.integers(0, n, m), rng.integers(0, n, m)
    if seed % 3 == 0:                      # long chains, in either direction
        order = rng.permutation(n)
        i, j = order[:-1], order[1:]
    want = connected_components(coo_matrix((np.ones(i.size, bool), (i, j)), shape=(n, n)),
                                directed=False)[1]
    np.testing.assert_array_equal(components(n, i, j), want)


def test_blocks_read_the_estimations_tiles_rather_than_decode_them(scene, reference,
                                                                   monkeypatch):
    # A small pair is estimated on all of it: every tile (here a strip of
    # three rows) it decoded is handed to the blocks, whose first pass then
    # decodes none (the second pass, for the changes cut by seams, decodes
    # its windows' as before), and finds the same.
    import changedet.runner as runner

    decoded = []
    close = runner.Readers.close

    def counting_close(self):
        decoded.append((self.before.decoded, self.after.decoded))
        close(self)

    monkeypatch.setattr(runner.Readers, "close", counting_close)
    r = changedet.detect(*scene, block_size=128, threads=1)
    np.testing.assert_array_equal(r.classes, reference.classes)
    np.testing.assert_array_equal(r.score, reference.score)
    assert _features(r) == _features(reference)
    monkeypatch.setattr(runner, "_adopt", lambda *args: None)
    plain = changedet.detect(*scene, block_size=128, threads=1)
    assert _features(plain) == _features(reference)
    with rasterio.open(scene[0]) as ds:
        strips = -(-ds.height // ds.block_shapes[0][0])
    assert [b - a for a, b in zip(*decoded, strict=True)] == [strips, strips]
