"""Co-registration benchmark: changedet against scikit-image and AROSICS.

Prints one table (set, method, n, RMSE px, max err px, time s) for:

- ``translation``: 512 x 512 synthetic pairs (changedet.synthetic) with known
  sub-pixel shifts from 0 to +-40 px, gain/offset and haze, noise, about
  10 % of the area changed (buildings added and removed) and a different
  blur. Error: distance between the shift found and the true one.
- ``affine``: 1024 x 1024 synthetic pairs rotated 0.3 degrees and scaled
  1.001 about the centre on top of a shift. Error: RMS over every pixel of
  the tile of the difference between the fitted and the true displacement.
- ``joplin``: the real post-tornado tiles (EPSG:4326) onto the pre mosaic
  (EPSG:26915), with known shifts added to the post image's georeferencing;
  ``levir`` and ``sztaki``: the shared PNG pairs on a made-up UTM grid
  (0.5 m, 1.5 m) with known shifts applied to the after image. The true
  shift of a real pair is unknown, so the error is how far each method's
  answer moves from its own answer on the unshifted pair, minus the shift
  applied (the tile RMS for local fits).
- ``speed``: an 8192 x 8192 and a 10000 x 10000 3-band uint8 GeoTIFF pair
  (1/f texture with an exact Fourier sub-pixel shift), through
  ``changedet.coregister`` (reading windows from the files) and then
  ``write_aligned``; scikit-image on the same pair held in memory.

Times are wall-clock seconds per pair (the mean over the set); the machine
may be shared, so read them as rough. scikit-image's
``phase_cross_correlation(upsample_factor=100)`` runs on the band means on
the before grid (for joplin, the post image warped there beforehand, not
timed). changedet's times on the synthetic and PNG sets are for
``estimate_alignment`` on arrays; on joplin and speed for ``coregister`` on
files.

AROSICS runs where it can be installed, in its own virtual environment
(``--arosics PYTHON``, default /tmp/arosics-venv/bin/python), from GeoTIFFs
written to a temporary folder; its time includes its own reading. On this
machine ``pip install arosics`` fails: it pulls the GDAL Python bindings
from PyPI as a source package whose build needs ``gdal-config`` (libgdal-dev),
which is not installed. What worked: a venv made with Debian's Python and
``--system-site-packages`` (python3-gdal 3.6.2), ``numpy<2`` (Debian's GDAL
bindings are built against numpy 1), and, because the current geoarray and
py_tools_ds need GDAL >= 3.7/3.8, ``pip install --no-deps arosics==1.10.2
geoarray==0.15.11 py_tools_ds==0.21.1`` plus their other dependencies.
AROSICS reports the correction to apply, the negative of changedet's shift;
its local results are turned into an affine by least squares on the points
it does not flag as outliers.

    $ python scripts/bench_coreg.py [--quick] [--no-speed] [--no-real]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning
from scipy import fft

import changedet
from changedet import io
from changedet.coreg import Alignment, apply_alignment, estimate_alignment, fit_affine
from changedet.synthetic import Sensor, Sun, random_pair

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CHANGEDET_SHARED_DATA", ROOT.parent / "shared" / "data"))
UTM = "EPSG:32615"
WORK = Path(tempfile.gettempdir()) / "changedet-bench-coreg"

Fit = Callable[[np.ndarray, np.ndarray], "Affine | None"]


@dataclass
class Row:
    set: str
    method: str
    errors: list[float]
    seconds: list[float]
    note: str = ""
    refused: int = 0

    def line(self) -> str:
        e = np.asarray(self.errors, float)
        note = ", ".join(x for x in (f"{self.refused} flagged unreliable / refused"
                                     if self.refused else "", self.note) if x)
        rmse = f"{math.sqrt(np.mean(e ** 2)):.3f}" if e.size else "-"
        worst = f"{e.max():.3f}" if e.size else "-"
        t = f"{np.mean(self.seconds):.2f}" if self.seconds else "-"
        return (f"| {self.set:<12} | {self.method:<40} | {e.size:>3} | {rmse:>7} | {worst:>7} "
                f"| {t:>7} | {note}")


HEADER = ("| set          | method                                   |   n | RMSE px | max err "
          "|  time s | note\n|--------------|------------------------------------------|-----|"
          "---------|---------|---------|-----")


def tile_rmse(fitted: Affine, truth: Affine, shape: tuple[int, int]) -> float:
    """RMS over the tile of the difference of two displacement fields (pixels)."""
    rows, cols = np.mgrid[0:shape[0]:4, 0:shape[1]:4] + 0.5
    fx, fy = Alignment(pixel_transform=fitted).displacement(cols, rows)
    tx, ty = Alignment(pixel_transform=truth).displacement(cols, rows)
    return float(np.sqrt(np.mean((fx - tx) ** 2 + (fy - ty) ** 2)))


def timed(f: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    t = time.perf_counter()
    out = f(*args, **kwargs)
    return out, time.perf_counter() - t


# -- methods on arrays --------------------------------------------------------------

def changedet_fit(mode: str) -> Fit:
    def fit(b: np.ndarray, a: np.ndarray) -> Affine:
        al = estimate_alignment(b, a, mode=mode)
        return al.pixel_transform if al.reliable else None
    return fit


def skimage_fit(b: np.ndarray, a: np.ndarray) -> Affine:
    from skimage.registration import phase_cross_correlation

    shift, _, _ = phase_cross_correlation(np.asarray(b, np.float64).mean(axis=0),
                                          np.asarray(a, np.float64).mean(axis=0),
                                          upsample_factor=100)
    # skimage returns the shift that registers `a` on `b`: the displacement is its negative.
    return Affine.translation(-float(shift[1]), -float(shift[0]))


# -- AROSICS, in its own environment ---------------------------------------------------

_AROSICS_RUNNER = r'''
import json, sys, time, warnings
warnings.simplefilter("ignore")
from arosics import COREG, COREG_LOCAL
out = []
for job in json.loads(sys.stdin.read()):
    t = time.perf_counter()
    try:
        if job["mode"] == "global":
            cr = COREG(job["ref"], job["tgt"], ws=(job.get("ws", 256),) * 2,
                       max_shift=job["max_shift"], q=True, nodata=(0, 0))
            cr.calculate_spatial_shifts()
            res = {"x": -cr.x_shift_px, "y": -cr.y_shift_px}
        else:
            crl = COREG_LOCAL(job["ref"], job["tgt"], grid_res=job["grid_res"],
                              window_size=(128, 128), max_shift=job["max_shift"], q=True,
                              CPUs=2, nodata=(0, 0))
            tab = crl.CoRegPoints_table
            ok = (tab["OUTLIER"] == False) & (tab["X_SHIFT_PX"] != -9999)  # noqa: E712
            res = {"col": (tab["X_IM"][ok] + 0.5).tolist(), "row": (tab["Y_IM"][ok] + 0.5).tolist(),
                   "dx": (-tab["X_SHIFT_PX"][ok]).tolist(), "dy": (-tab["Y_SHIFT_PX"][ok]).tolist()}
    except Exception as exc:  # AROSICS refuses some pairs; report, do not stop
        res = {"error": f"{type(exc).__name__}: {exc}"[:200]}
    res["seconds"] = time.perf_counter() - t
    out.append(res)
print(json.dumps(out))
'''


class Arosics:
    """Runs AROSICS jobs in a subprocess; ``available`` says whether it imports."""

    def __init__(self, python: str) -> None:
        self.python = python
        self.why = ""
        if not Path(python).exists():
            self.why = f"{python} does not exist (see this script's docstring)"
        else:
            r = subprocess.run([python, "-W", "ignore", "-c", "import arosics"],
                               capture_output=True, text=True)
            if r.returncode:
                self.why = "arosics does not import: " + (r.stderr.strip().splitlines()
                                                          or ["?"])[-1]

    @property
    def available(self) -> bool:
        return not self.why

    def run(self, jobs: list[dict], timeout: float = 1800) -> list[dict]:
        try:
            r = subprocess.run([self.python, "-c", _AROSICS_RUNNER], input=json.dumps(jobs),
                               capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return [{"error": f"gave up after {timeout:.0f} s", "seconds": timeout}] * len(jobs)
        if r.returncode:
            return [{"error": r.stderr.strip().splitlines()[-1][:200], "seconds": 0.0}] * len(jobs)
        return json.loads(r.stdout.strip().splitlines()[-1])


def arosics_transform(res: dict, local: bool) -> Affine | None:
    if "error" in res:
        return None
    if not local:
        return Affine.translation(res["x"], res["y"])
    if len(res["col"]) < 3:
        return None
    transform, _, _ = fit_affine(res["col"], res["row"], res["dx"], res["dy"], threshold=1e9)
    return transform


def write_pair(folder: Path, i: int, b: np.ndarray, a: np.ndarray, pixel: float = 0.5,
               ) -> tuple[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, img in (("b", b), ("a", a)):
        img = np.asarray(img)
        if img.dtype.kind == "f":
            # 0 is AROSICS's nodata: keep valid values above it.
            scale = 250.0 if img.max() <= 1.5 else 1.0
            img = np.clip(np.rint(img * scale), 0, 255).astype(np.uint8)
            img[:, (img > 0).any(axis=0)] = np.maximum(img[:, (img > 0).any(axis=0)], 1)
        p = folder / f"{name}{i}.tif"
        with rasterio.open(p, "w", driver="GTiff", width=img.shape[2], height=img.shape[1],
                           count=img.shape[0], dtype=img.dtype.name, crs=UTM,
                           transform=Affine(pixel, 0, 400000, 0, -pixel, 4000000)) as ds:
            ds.write(img)
        paths.append(str(p))
    return paths[0], paths[1]


# -- the sets ---------------------------------------------------------------------

def translation_set(n: int) -> Iterator[tuple[np.ndarray, np.ndarray, Affine]]:
    rng = np.random.default_rng(7)
    for i in range(n):
        d = rng.uniform(-3, 3, 2) if i % 2 == 0 else rng.uniform(-40, 40, 2)
        after = Sensor(gain=(1.25, 1.15, 0.9, 1.0), offset=(0.04, 0.03, 0.06, 0.0), haze=0.12,
                       blur=1.1, noise=0.015, shift=(float(d[0]), float(d[1])))
        p = random_pair((512, 512), bands=3, seed=100 + i, n_static=16, n_appeared=4,
                        n_disappeared=3, sizes_m=(10, 28), heights_m=(3, 10), sun_before=Sun(),
                        sun_after=Sun(), sensor_before=Sensor(blur=0.5, noise=0.01),
                        sensor_after=after, dtype="uint16")
        yield p.before, p.after, Affine.translation(*p.shift)


def affine_truth(shape: tuple[int, int], shift: tuple[float, float]) -> Affine:
    h, w = shape
    return (Affine.translation(*shift) @ Affine.translation(w / 2, h / 2)
            @ Affine.rotation(0.3) @ Affine.scale(1.001) @ Affine.translation(-w / 2, -h / 2))


def affine_set(n: int) -> Iterator[tuple[np.ndarray, np.ndarray, Affine]]:
    rng = np.random.default_rng(11)
    for i in range(n):
        p = random_pair((1024, 1024), bands=3, seed=200 + i, n_static=60, n_appeared=10,
                        n_disappeared=8, sizes_m=(10, 28), heights_m=(3, 10),
                        sensor_after=Sensor(gain=(1.2, 1.1, 0.9, 1), offset=(0.05, 0.03, 0.02, 0),
                                            haze=0.1, blur=0.9, noise=0.012), dtype="float32")
        truth = affine_truth((1024, 1024), (float(rng.uniform(-5, 5)), float(rng.uniform(-5, 5))))
        after, _ = apply_alignment(p.after, Alignment(pixel_transform=~truth))
        yield p.before, after, truth


def run_synthetic(name: str, pairs: list, methods: dict[str, Fit], arosics: Arosics,
                  local: bool, max_shift: int) -> list[Row]:
    rows = []
    for label, fit in methods.items():
        errs, secs, refused = [], [], 0
        for b, a, truth in pairs:
            t, s = timed(fit, b, a)
            secs.append(s)
            if t is None:
                refused += 1
            else:
                errs.append(tile_rmse(t, truth, b.shape[1:]))
        rows.append(Row(name, label, errs, secs, refused=refused))
    rows += run_arosics(name, pairs, arosics, local, max_shift)
    return rows


def run_arosics(name: str, pairs: list, arosics: Arosics, local: bool, max_shift: int,
                ) -> list[Row]:
    label = f"AROSICS {'COREG_LOCAL' if local else 'COREG'}"
    if not arosics.available:
        return [Row(name, label, [], [], f"not run: {arosics.why}")]
    jobs = []
    for i, (b, a, _) in enumerate(pairs):
        ref, tgt = write_pair(WORK / name, i, b, a)
        jobs.append({"ref": ref, "tgt": tgt, "mode": "local" if local else "global",
                     "max_shift": max_shift, "grid_res": 64})
    errs, secs, failed = [], [], []
    for (b, _, truth), res in zip(pairs, arosics.run(jobs), strict=True):
        t = arosics_transform(res, local)
        secs.append(res["seconds"])
        if t is None:
            failed.append(res.get("error", "too few points"))
        else:
            errs.append(tile_rmse(t, truth, b.shape[1:]))
    note = f"e.g. {failed[0]}" if failed else ""
    return [Row(name, label, errs, secs, note, refused=len(failed))]


# -- real pairs with applied shifts ---------------------------------------------------------

SHIFTS = [(0.3, -0.6), (2.5, 1.25), (-7.75, 4.4), (15.2, -11.6)]


def _read_png(path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as ds:
            return ds.read()


def png_pairs() -> Iterator[tuple[str, np.ndarray, np.ndarray, float]]:
    for a in sorted((DATA / "levir_cd" / "A").glob("*.png")):
        yield "levir", _read_png(a), _read_png(DATA / "levir_cd" / "B" / a.name), 0.5
    for im1 in sorted((DATA / "sztaki_airchange").glob("*/*/im1.png")):
        yield "sztaki", _read_png(im1), _read_png(im1.with_name("im2.png")), 1.5


def raster(data: np.ndarray, pixel: float, name: str) -> changedet.Raster:
    return changedet.Raster(data, Affine(pixel, 0, 400000, 0, -pixel, 4000000), UTM, name=name)


def coregister_fit(mode: str) -> Callable[[changedet.Raster, changedet.Raster], Affine | None]:
    def fit(b: changedet.Raster, a: changedet.Raster) -> Affine:
        r = changedet.coregister(b, a, mode=mode, strict=False)
        return r.pixel_transform() if r.reliable else None
    return fit


def _png_fit(fit: Callable | None, b: np.ndarray, a: np.ndarray, pixel: float,
             ) -> tuple[Affine | None, float]:
    if fit is None:
        return timed(skimage_fit, b, a)
    return timed(fit, raster(b, pixel, "b"), raster(a, pixel, "a"))


def run_png(sets: dict[str, list], arosics: Arosics) -> list[Row]:
    rows = []
    for name, pairs in sets.items():
        for label, fit in (("changedet global (coregister)", coregister_fit("global")),
                           ("changedet local (coregister)", coregister_fit("local")),
                           ("skimage pcc upsample 100", None)):
            errs, secs, refused = [], [], 0
            for b, a, pixel in pairs:
                shape = b.shape[1:]

                base, _ = _png_fit(fit, b, a, pixel)
                for d in SHIFTS:
                    moved, _ = apply_alignment(a, Alignment(pixel_transform=Affine.translation(
                        -d[0], -d[1])))
                    t, s = _png_fit(fit, b, moved, pixel)
                    secs.append(s)
                    if base is None or t is None:
                        refused += 1
                    else:
                        errs.append(tile_rmse(t, Affine.translation(*d) @ base, shape))
            rows.append(Row(name, label, errs, secs, refused=refused))
        if arosics.available:
            jobs, truths = [], []
            for i, (b, a, pixel) in enumerate(pairs):
                for j, d in enumerate([(0.0, 0.0), *SHIFTS]):
                    moved, _ = apply_alignment(a, Alignment(pixel_transform=Affine.translation(
                        -d[0], -d[1])))
                    ref, tgt = write_pair(WORK / name, 10 * i + j, b, moved, pixel)
                    jobs.append({"ref": ref, "tgt": tgt, "mode": "global", "max_shift": 24,
                                 "grid_res": 64})
                    truths.append((i, d, b.shape[1:]))
            res = arosics.run(jobs)
            errs, secs, failed = [], [], 0
            for k in range(0, len(res), len(SHIFTS) + 1):
                base = arosics_transform(res[k], False)
                for m in range(1, len(SHIFTS) + 1):
                    t = arosics_transform(res[k + m], False)
                    secs.append(res[k + m]["seconds"])
                    _, d, shape = truths[k + m]
                    if base is None or t is None:
                        failed += 1
                    else:
                        errs.append(tile_rmse(t, Affine.translation(*d) @ base, shape))
            rows.append(Row(name, "AROSICS COREG", errs, secs, refused=failed))
        else:
            rows.append(Row(name, "AROSICS COREG", [], [], f"not run: {arosics.why}"))
    return rows


def joplin() -> tuple[changedet.Raster, changedet.Raster]:
    from rasterio.merge import merge

    def mosaic(folder: Path, name: str) -> changedet.Raster:
        sources = [rasterio.open(f) for f in sorted(folder.glob("*.tif"))]
        try:
            data, transform = merge(sources)
            return changedet.Raster(data, transform, sources[0].crs, nodata=0, name=name)
        finally:
            for s in sources:
                s.close()

    root = DATA / "joplin" / "input"
    return mosaic(root / "pre", "joplin_pre"), mosaic(root / "post", "joplin_post")


def moved_raster(r: changedet.Raster, grid: changedet.Grid, d: tuple[float, float],
                 ) -> changedet.Raster:
    """`r` with its georeferencing moved so its content moves `d` pixels of `grid`."""
    from rasterio.warp import transform as reproject_points

    t = grid.transform
    cx, cy = t @ (grid.width / 2, grid.height / 2)
    mx, my = t @ (grid.width / 2 + d[0], grid.height / 2 + d[1])
    (x0, x1), (y0, y1) = reproject_points(grid.crs, r.crs, [cx, mx], [cy, my])
    return changedet.Raster(r.data, Affine.translation(x1 - x0, y1 - y0) @ r.transform, r.crs,
                            nodata=r.nodata, name=r.name)


def _joplin_fit(fit: Callable | None, pre: changedet.Raster, post: changedet.Raster,
                b: np.ndarray, grid: changedet.Grid) -> tuple[Affine | None, float]:
    if fit is not None:
        return timed(fit, pre, post)
    with io.open_raster(post) as ds:
        a, _ = io.read_warped(ds, grid)  # not timed: skimage needs one grid
    return timed(skimage_fit, b, a)


def run_joplin(arosics: Arosics) -> list[Row]:
    pre, post = joplin()
    with io.open_raster(pre) as ds:
        grid = io.image_info(ds).grid
        b, _ = io.read_window(ds, rasterio.windows.Window(0, 0, grid.width, grid.height))
    rows = []
    centre = (grid.width / 2, grid.height / 2)

    def at_centre(t: Affine | None) -> str:
        if t is None:
            return "unshifted pair: no reliable answer"
        dx, dy = Alignment(pixel_transform=t).displacement(*centre)
        return f"unshifted pair: x {float(dx):+.2f} y {float(dy):+.2f} px at the centre"

    for label, fit in (("changedet global (coregister)", coregister_fit("global")),
                       ("changedet local (coregister)", coregister_fit("local")),
                       ("skimage pcc upsample 100", None)):
        errs, secs, refused = [], [], 0

        base, _ = _joplin_fit(fit, pre, post, b, grid)
        for d in SHIFTS:
            t, s = _joplin_fit(fit, pre, moved_raster(post, grid, d), b, grid)
            secs.append(s)
            if base is None or t is None:
                refused += 1
            else:
                errs.append(tile_rmse(t, Affine.translation(*d) @ base, grid.shape))
        rows.append(Row("joplin", label, errs, secs, at_centre(base), refused=refused))
    if not arosics.available:
        rows.append(Row("joplin", "AROSICS COREG", [], [], f"not run: {arosics.why}"))
        return rows
    WORK.mkdir(parents=True, exist_ok=True)
    # AROSICS needs both images in one projection: give it the post image
    # warped onto the pre grid (cubic), as a user would with gdalwarp.
    jobs = []
    for j, d in enumerate([(0.0, 0.0), *SHIFTS]):
        with io.open_raster(moved_raster(post, grid, d)) as ds:
            a, inv = io.read_warped(ds, grid)
        a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        a[:, inv] = 0
        ref, tgt = write_pair(WORK / "joplin", j, b.astype(np.uint8), a, 0.6)
        # Its default 256-px window at the centre (the tornado's path) finds no match.
        jobs.append({"ref": ref, "tgt": tgt, "mode": "global", "max_shift": 24, "grid_res": 64,
                     "ws": 1024})
    res = arosics.run(jobs)
    base = arosics_transform(res[0], False)
    errs, secs, refused = [], [], 0
    for d, r in zip(SHIFTS, res[1:], strict=True):
        t = arosics_transform(r, False)
        secs.append(r["seconds"])
        if base is None or t is None:
            refused += 1
        else:
            errs.append(tile_rmse(t, Affine.translation(*d) @ base, grid.shape))
    rows.append(Row("joplin", "AROSICS COREG ws 1024, post pre-warped", errs, secs,
                    at_centre(base),
                    refused=refused))
    return rows


# -- speed --------------------------------------------------------------------------

def big_pair(n: int, shift: tuple[float, float]) -> tuple[Path, Path]:
    """An n x n 3-band uint8 GeoTIFF pair of 1/f texture, the after image shifted exactly."""
    WORK.mkdir(parents=True, exist_ok=True)
    paths = WORK / f"big_b{n}.tif", WORK / f"big_a{n}_{shift[0]}_{shift[1]}.tif"
    if all(p.exists() for p in paths):
        return paths
    rng = np.random.default_rng(n)
    spec = fft.rfft2(rng.standard_normal((n, n), dtype=np.float32), workers=-1)
    fy = fft.fftfreq(n).astype(np.float32)[:, None]
    fx = fft.rfftfreq(n).astype(np.float32)[None, :]
    f = np.hypot(fy, fx)
    spec *= np.exp(-(f / 0.25) ** 2) / np.maximum(f, 1 / 256)
    profile = dict(driver="GTiff", width=n, height=n, count=3, dtype="uint8", crs=UTM,
                   transform=Affine(0.5, 0, 400000, 0, -0.5, 4000000), tiled=True,
                   blockxsize=512, blockysize=512, compress="DEFLATE", BIGTIFF="IF_SAFER")
    for path, d in zip(paths, ((0.0, 0.0), shift), strict=True):
        ramp = np.exp(-2j * np.pi * (fx * d[0] + fy * d[1])).astype(np.complex64)
        img = fft.irfft2(spec * ramp, s=(n, n), workers=-1)
        img = (img - img.mean()) / img.std()
        with rasterio.open(path, "w", **profile) as ds:
            for band, (gain, off) in enumerate(((40, 128), (36, 133), (44, 123)), start=1):
                ds.write(np.clip(img * gain + off, 0, 255).astype(np.uint8), band)
        del img
    return paths


def run_speed(arosics: Arosics, quick: bool) -> list[Row]:
    rows = []
    shift = (3.37, -2.71)
    for n, mode in ((8192, "global"), (10000, "local")):
        b, a = big_pair(n, shift)
        truth = Affine.translation(*shift)
        name = f"speed {n}^2"
        r, s = timed(changedet.coregister, b, a, mode=mode)
        tp = r.alignment.tie_points
        rows.append(Row(name, f"changedet {mode}: coregister()",
                        [tile_rmse(r.pixel_transform(), truth, (n, n))], [s],
                        f"{len(tp)} windows/tie points, {int(tp.inlier.sum())} inliers"))
        out = WORK / f"aligned{n}.tif"
        _, s2 = timed(r.write_aligned, out, overwrite=True)
        rows.append(Row(name, f"changedet {mode}: + write_aligned()", [], [s2],
                        "one cubic warp, block by block, to a COG"))
        if not quick and mode == "global":
            with rasterio.open(b) as db, rasterio.open(a) as da:
                bb, aa = db.read(), da.read()
            t, s3 = timed(skimage_fit, bb, aa)
            del bb, aa
            rows.append(Row(name, "skimage pcc upsample 100 (in memory)",
                            [tile_rmse(t, truth, (n, n))], [s3], "reading not timed"))
        if arosics.available and not quick:
            job = {"ref": str(b), "tgt": str(a), "mode": mode, "max_shift": 10,
                   "grid_res": max(64, n // 45)}
            res = arosics.run([job], timeout=300)[0]
            t = arosics_transform(res, mode == "local")
            rows.append(Row(name, f"AROSICS {'COREG_LOCAL' if mode == 'local' else 'COREG'}",
                            [] if t is None else [tile_rmse(t, truth, (n, n))],
                            [res["seconds"]], res.get("error", "")))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer pairs, no large references")
    ap.add_argument("--no-speed", action="store_true")
    ap.add_argument("--no-real", action="store_true")
    ap.add_argument("--arosics", default="/tmp/arosics-venv/bin/python",
                    help="a Python with arosics installed")
    args = ap.parse_args()
    arosics = Arosics(args.arosics)
    rows: list[Row] = []
    global_methods = {"changedet global": changedet_fit("global"),
                      "changedet local": changedet_fit("local"),
                      "skimage pcc upsample 100": skimage_fit}
    pairs = list(translation_set(4 if args.quick else 16))
    rows += run_synthetic("translation", pairs, global_methods, arosics, False, 48)
    pairs = list(affine_set(2 if args.quick else 4))
    rows += run_synthetic("affine", pairs, {"changedet local": changedet_fit("local"),
                                            "changedet global": changedet_fit("global"),
                                            "skimage pcc upsample 100": skimage_fit},
                          arosics, True, 10)
    del pairs
    if not args.no_real:
        if DATA.is_dir():
            sets: dict[str, list] = {}
            for name, b, a, pixel in png_pairs():
                sets.setdefault(name, []).append((b, a, pixel))
            if args.quick:
                sets = {k: v[:3] for k, v in sets.items()}
            rows += run_png(sets, arosics)
            rows += run_joplin(arosics)
        else:
            rows.append(Row("real", "-", [], [], f"skipped: {DATA} is absent"))
    if not args.no_speed:
        rows += run_speed(arosics, args.quick)
    print(HEADER)
    for r in rows:
        print(r.line())
    print(f"\nAROSICS: {'ran from ' + arosics.python if arosics.available else arosics.why}")


if __name__ == "__main__":
    sys.exit(main())
