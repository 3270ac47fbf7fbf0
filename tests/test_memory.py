"""Memory does not grow with the raster (peak RSS of a subprocess); how runs use memory."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import changedet
from tests.conftest import write_tif

MAKE = textwrap.dedent("""
    import resource, sys
    import numpy as np, rasterio
    from affine import Affine
    from scipy import ndimage
    import changedet
    from changedet.series import track_series

    n, out, dates = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    rng = np.random.default_rng(0)
    tile = ndimage.gaussian_filter(rng.random((3, 256, 256), dtype=np.float32), (0, 2, 2))
    profile = dict(driver="GTiff", width=n, height=n, count=3, dtype="uint16",
                   crs="EPSG:32633", transform=Affine(0.5, 0, 5e5, 0, -0.5, 5e6),
                   tiled=True, blockxsize=256, blockysize=256, compress="deflate")
    paths = [f"{out}/site_202{k}0601.tif" for k in range(dates)]
    for k, path in enumerate(paths):
        with rasterio.open(path, "w", **profile) as ds:
            for _, win in ds.block_windows(1):
                data = tile * 20000 + 8000
                r, c = int(win.row_off) // 256, int(win.col_off) // 256
                if k and (r + c * k) % 5 == 0:
                    data[:, 100:140, 90:150] += 12000 * k  # structures come and go
                ds.write(data.astype("uint16"), window=win)
    def peak_kb():
        # VmHWM is this process's own peak; ru_maxrss also counts the peak
        # of the parent it was forked from (pytest's), which can hide ours.
        try:
            with open("/proc/self/status") as f:
                return [int(l.split()[1]) for l in f if l.startswith("VmHWM:")][0]
        except (OSError, IndexError):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    before = peak_kb()
""")

DIFF = """
s = changedet.diff(paths[0], paths[1], f"{out}/c.geojson", block_size=256, threads=2)
print(s.count, before, peak_kb())
"""

SERIES = """
s = track_series(paths, block_size=256, threads=2)
print(len(s), before, peak_kb())
"""


def _run(n, tmp_path, run=DIFF, dates=2):
    out = tmp_path / f"{n}_{dates}"
    out.mkdir()
    # GDAL's block cache is capped below what either size fills, so it is
    # the same at both sizes: at 64 MB the small raster left it part empty
    # and the big one filled it, ~45 MB of apparent growth that is bounded
    # (the test then failed on about one run in three).
    r = subprocess.run([sys.executable, "-c", MAKE + run, str(n), str(out), str(dates)],
                       capture_output=True, text=True, check=True,
                       env={"GDAL_CACHEMAX": "16", "PATH": "/usr/bin:/bin"})
    count, _, peak = (int(v) for v in r.stdout.split())
    return count, peak / 1024  # MB


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_raster(tmp_path):
    # Both sizes exceed what the parameters are estimated on (samples of
    # about 1024^2 px, and co-registration's central 2048 px), whose peak is
    # the run's; so any growth is the block stage's.
    small_count, small = _run(2304, tmp_path)
    big_count, big = _run(4608, tmp_path)   # 4 times the pixels
    assert big_count > 3 * small_count      # the big one really was processed
    # An in-memory pipeline holds several float32 copies of both images; one
    # float32 copy of ONE band of one image grows by (4608^2 - 2304^2) x 4 B
    # = 61 MB.
    one_band = (4608 ** 2 - 2304 ** 2) * 4 / 2 ** 20
    assert big - small < one_band, (small, big)


@pytest.mark.slow
def test_series_peak_memory_does_not_grow_with_the_images(tmp_path):
    small_count, small = _run(2304, tmp_path, SERIES, dates=3)
    big_count, big = _run(4608, tmp_path, SERIES, dates=3)
    assert big_count > 3 * small_count
    # Two dates held in memory as float32 (as the series did before it went
    # block by block: 0.7 GB at 2304^2, 1.8 GB at 4608^2) would grow by
    # 2 dates x 3 bands x 61 MB; one band of one date is 61 MB.
    one_band = (4608 ** 2 - 2304 ** 2) * 4 / 2 ** 20
    assert big - small < one_band, (small, big)


def _hugepage_advice():
    from changedet.runner import _hugepage_switch

    switch = _hugepage_switch()
    if switch is None:
        pytest.skip("this numpy has no huge-page switch")
    state = switch(True)
    switch(state)
    return bool(state)


def test_runs_go_without_hugepage_advice_and_restore_it(monkeypatch):
    from changedet.runner import _hugepage_switch, small_pages

    monkeypatch.delenv("NUMPY_MADVISE_HUGEPAGE", raising=False)
    switch = _hugepage_switch()
    if switch is None:
        pytest.skip("this numpy has no huge-page switch")
    old = switch(True)
    try:
        with small_pages():
            assert _hugepage_advice() is False
            with small_pages():              # runs nested (or on two threads)
                assert _hugepage_advice() is False
            assert _hugepage_advice() is False   # until the last one ends
        assert _hugepage_advice() is True
        monkeypatch.setenv("NUMPY_MADVISE_HUGEPAGE", "1")   # the user's choice wins
        with small_pages():
            assert _hugepage_advice() is True
    finally:
        switch(old)


def test_runs_fix_malloc_thresholds(monkeypatch, tmp_path):
    import changedet.runner as runner

    calls = []

    def fake(name, argtypes):
        if name != "mallopt":
            return None
        return lambda param, value: calls.append((param, value)) or 1

    monkeypatch.setattr(runner, "_libc_function", fake)
    monkeypatch.setattr(runner, "_startup_environ", lambda: {})
    b, a = (write_tif(tmp_path / f"{n}.tif", np.full((3, 64, 64), 100, np.uint16))
            for n in "ba")
    changedet.diff(b, a, tmp_path / "c.geojson", coreg="none")
    # mmap threshold (-3) 32 MB, trim threshold (-1) 64 MB: glibc's ceilings.
    assert calls == [(-3, 32 * 2 ** 20), (-1, 64 * 2 ** 20)]
    calls.clear()
    monkeypatch.setenv("CHANGEDET_MALLOPT", "0")          # the host's own malloc set-up
    assert runner.steady_malloc() is False and calls == []
    monkeypatch.delenv("CHANGEDET_MALLOPT")
    monkeypatch.setattr(runner, "_libc_function", lambda name, argtypes: None)  # not glibc
    assert runner.steady_malloc() is False


@pytest.mark.parametrize("env", [{}, {"MALLOC_TRIM_THRESHOLD_": "1000000"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"}])
def test_malloc_is_left_alone_if_the_process_started_tuned(env):
    import os
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    code = ("import os; from changedet.runner import steady_malloc; "
            "os.environ['MALLOC_TOP_PAD_'] = '1'; "   # set later: not what glibc read
            "print(steady_malloc())")
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env},
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ("False" if env else "True")


def test_an_overwritten_startup_environment_falls_back_to_os_environ(monkeypatch):
    import builtins
    import io as stdio

    import changedet.runner as runner

    real_open = builtins.open

    def fake_open(path, *args, **kwargs):
        if path == "/proc/self/environ":     # as setproctitle leaves it: no PATH
            return stdio.BytesIO(b"python worker.py\0\0")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    assert runner._startup_environ()["MALLOC_TRIM_THRESHOLD_"] == "65536"
