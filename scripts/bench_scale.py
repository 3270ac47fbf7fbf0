"""Scale benchmark: time and peak memory against the cost of reading the data.

Generates big before/after pairs (4-band uint16, tiled 512 x 512, deflate),
then measures, each in a fresh process so peak RSS is its own:

(a) the read floor: read every block of both files once;
(b) ``changedet diff`` end to end (GeoJSON + class raster), block-wise;
(c) a naive whole-array pipeline: read both images whole as float32,
    standardise, CVA magnitude, Otsu, label, polygonize.

and checks that the block-wise result equals the in-memory one on a pair
that fits. Prints a table.

    $ python scripts/bench_scale.py [--sizes 8192 20000] [--workdir /tmp/cd-scale]
      [--threads 2] [--repeat 3] [--flood 8192] [--many 300 1000] [--keep]

``--many K`` also runs the first size's pair with K structures of 12-120 px
scattered over it (a city's worth of change).

``--flood N`` also runs an N x N pair where one change (a "flood") covers
40 % of the raster, larger than any window, and checks that its polygon
has the flooded area.

The after image is the before image's texture displaced by (1.37, -0.62)
pixels (an exact Fourier shift of a periodic texture), with other gain and
offset, noise, and a rectangle "structure" every few tiles.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

SHIFT = (1.37, -0.62)
TILE = 512


def make_pair(n: int, folder: Path, every: int = 11) -> tuple[Path, Path]:
    """Write before/after GeoTIFFs of n x n pixels, block by block.

    A structure appears in one tile of `every` (1: in every tile).
    """
    import rasterio
    from affine import Affine
    from scipy import ndimage

    tag = f"{n}" if every == 11 else f"{n}_every{every}"
    before, after = folder / f"before_{tag}.tif", folder / f"after_{tag}.tif"
    if before.exists() and after.exists():
        return before, after
    rng = np.random.default_rng(0)
    base = ndimage.gaussian_filter(rng.random((4, TILE, TILE), dtype=np.float32), (0, 2, 2),
                                   mode="wrap")
    base = (base - base.mean()) / base.std()
    spec = np.fft.fft2(base)
    ky = np.fft.fftfreq(TILE)[:, None]
    kx = np.fft.fftfreq(TILE)[None, :]
    moved = np.fft.ifft2(spec * np.exp(-2j * np.pi * (kx * SHIFT[0] + ky * SHIFT[1]))).real
    profile = dict(driver="GTiff", width=n, height=n, count=4, dtype="uint16",
                   crs="EPSG:32633", transform=Affine(0.5, 0, 500000, 0, -0.5, 5000000),
                   tiled=True, blockxsize=TILE, blockysize=TILE, compress="deflate",
                   photometric="RGB", BIGTIFF="IF_SAFER")
    gain = np.array([1.1, 1.05, 0.95, 1.0], np.float32)[:, None, None]
    with rasterio.open(before, "w", **profile) as b_ds, \
            rasterio.open(after, "w", **profile) as a_ds:
        for _, win in b_ds.block_windows(1):
            h, w = int(win.height), int(win.width)
            r, c = int(win.row_off) // TILE, int(win.col_off) // TILE
            noise = rng.normal(0, 0.03, (2, 4, h, w)).astype(np.float32)
            b = base[:, :h, :w] * 3000 + 20000 + noise[0] * 3000
            a = (moved[:, :h, :w] * 3000 + 20000) * gain + 500 + noise[1] * 3000
            if (r * 7 + c * 3) % every == 0 and h > 200 and w > 200:
                a[:, 60:140, 80:200] = 45000          # a structure appeared
            b_ds.write(np.clip(b, 0, 65535).astype(np.uint16), window=win)
            a_ds.write(np.clip(a, 0, 65535).astype(np.uint16), window=win)
    return before, after


def make_flood_pair(n: int, folder: Path) -> tuple[Path, Path, float]:
    """A pair where one change covers most of the raster: a "flood".

    The after image is the before image (same texture, new noise) except
    inside an ellipse of semi-axes 0.42 n and 0.3 n, with a wavy edge,
    where it is dark water. Returns the paths and the flood's area in m2.
    """
    import rasterio
    from affine import Affine
    from scipy import ndimage

    before, after = folder / f"before_flood_{n}.tif", folder / f"after_flood_{n}.tif"
    rng = np.random.default_rng(1)
    base = ndimage.gaussian_filter(rng.random((4, TILE, TILE), dtype=np.float32), (0, 2, 2),
                                   mode="wrap")
    base = (base - base.mean()) / base.std()
    profile = dict(driver="GTiff", width=n, height=n, count=4, dtype="uint16",
                   crs="EPSG:32633", transform=Affine(0.5, 0, 500000, 0, -0.5, 5000000),
                   tiled=True, blockxsize=TILE, blockysize=TILE, compress="deflate",
                   photometric="RGB", BIGTIFF="IF_SAFER")
    cy, cx, ry, rx = n / 2, n / 2, 0.3 * n, 0.42 * n
    area = 0
    with rasterio.open(before, "w", **profile) as b_ds, \
            rasterio.open(after, "w", **profile) as a_ds:
        for _, win in b_ds.block_windows(1):
            h, w = int(win.height), int(win.width)
            y, x = np.mgrid[int(win.row_off):int(win.row_off) + h,
                            int(win.col_off):int(win.col_off) + w].astype(np.float32)
            theta = np.arctan2((y - cy) / ry, (x - cx) / rx)
            wavy = 1 + 0.06 * np.sin(7 * theta) + 0.03 * np.sin(19 * theta)
            water = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 < wavy ** 2
            area += int(water.sum())
            noise = rng.normal(0, 0.03, (2, 4, h, w)).astype(np.float32)
            b = base[:, :h, :w] * 3000 + 20000 + noise[0] * 3000
            a = base[:, :h, :w] * 3000 + 20000 + noise[1] * 3000
            a = np.where(water, 6000 + noise[1] * 1000, a)
            b_ds.write(np.clip(b, 0, 65535).astype(np.uint16), window=win)
            a_ds.write(np.clip(a, 0, 65535).astype(np.uint16), window=win)
    return before, after, area * 0.25


def make_many_pair(n: int, count: int, folder: Path) -> tuple[Path, Path]:
    """The n x n pair with `count` structures of 12-120 px on a side scattered over it.

    Rectangles at random places (some overlap, some cross the blocks'
    seams), half bright and half dark, written into make_pair's after
    image: a city's worth of change rather than one structure every few
    tiles.
    """
    import rasterio

    before, plain = make_pair(n, folder)
    after = folder / f"after_{n}_many{count}.tif"
    if after.exists():
        return before, after
    rng = np.random.default_rng(1)
    corner = rng.integers(0, n, (count, 2))
    far = corner + rng.integers(12, 120, (count, 2))
    with rasterio.open(plain) as src, rasterio.open(after, "w", **src.profile) as dst:
        for _, win in src.block_windows(1):
            a = src.read(window=win)
            r0, c0 = int(win.row_off), int(win.col_off)
            lo = np.maximum(corner - (r0, c0), 0)
            hi = np.minimum(far - (r0, c0), a.shape[1:])
            for i in np.flatnonzero((lo < hi).all(axis=1)):
                a[:, lo[i, 0]:hi[i, 0], lo[i, 1]:hi[i, 1]] = 45000 if i % 2 else 5000
            dst.write(a, window=win)
    return before, after


FLOOD = """
import json, sys, warnings, changedet
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    s = changedet.diff(sys.argv[1], sys.argv[2], sys.argv[3] + "/f.geojson",
                       mask=sys.argv[3] + "/f.tif", overwrite=True, threads=int(sys.argv[4]))
fc = json.load(open(sys.argv[3] + "/f.geojson"))
areas = sorted(f["properties"]["area_m2"] for f in fc["features"])
print("RESULT", s.count)
print("LARGEST", areas[-1] if areas else 0)
print("JOINED", sum("joined" in str(w.message) for w in caught))
"""


READ_FLOOR = """
import sys, rasterio
for path in sys.argv[1:3]:
    with rasterio.open(path) as ds:
        for _, win in ds.block_windows(1):
            ds.read(window=win)
"""

CHANGEDET = """
import sys, changedet
s = changedet.diff(sys.argv[1], sys.argv[2], sys.argv[3] + "/c.geojson",
                   mask=sys.argv[3] + "/c.tif", overwrite=True, threads=int(sys.argv[4]))
print("RESULT", s.count)
"""

NAIVE = """
import sys, numpy as np, rasterio
from rasterio.features import shapes
from scipy import ndimage
from skimage.filters import threshold_otsu
with rasterio.open(sys.argv[1]) as ds:
    b = ds.read(out_dtype="float32"); transform = ds.transform
with rasterio.open(sys.argv[2]) as ds:
    a = ds.read(out_dtype="float32")
b = (b - b.mean(axis=(1, 2), keepdims=True)) / b.std(axis=(1, 2), keepdims=True)
a = (a - a.mean(axis=(1, 2), keepdims=True)) / a.std(axis=(1, 2), keepdims=True)
mag = np.sqrt(((a - b) ** 2).sum(axis=0))
mask = mag > threshold_otsu(mag[::4, ::4])
labels, n = ndimage.label(mask)
polys = [g for g, v in shapes(labels.astype("int32"), mask=mask, transform=transform)]
print("RESULT", len(polys))
"""

# Peak RSS from /proc/self/status VmHWM where there is one: Linux carries
# ru_maxrss across fork and exec, so a child would report its parent's peak
# (this script's, after the in-memory equality check) if that was higher.
WRAPPER = """
import resource, sys, time, runpy
code = open(sys.argv[1]).read()
sys.argv = sys.argv[1:]
t = time.perf_counter()
exec(compile(code, "bench", "exec"), {"__name__": "__main__"})
print("TIME", time.perf_counter() - t)
try:
    with open("/proc/self/status") as f:
        hwm = [int(l.split()[1]) for l in f if l.startswith("VmHWM:")][0]
except (OSError, IndexError):
    hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print("RSS", hwm / 1024)
"""


def run(code: str, *args: str) -> dict[str, float]:
    """Run `code` in a fresh Python; return its wall time, peak RSS and result."""
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(textwrap.dedent(code))
    try:
        out = subprocess.run([sys.executable, "-c", WRAPPER, f.name, *args],
                             capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr else "failed"}
    vals: dict[str, float] = {}
    for line in out.stdout.splitlines():
        key, _, value = line.partition(" ")
        if key in ("TIME", "RSS", "RESULT", "LARGEST", "JOINED"):
            vals[key] = float(value)
    return vals


def check_equal(folder: Path) -> str:
    """Block-wise vs one block on a 2048^2 pair: identical classes and polygons?

    A structure in every tile, so blocks of 300 cut many of them.
    """
    import changedet

    b, a = make_pair(2048, folder, every=1)
    one = changedet.detect(b, a, block_size=4096)
    many = changedet.detect(b, a, block_size=300)
    same = (np.array_equal(one.classes, many.classes)
            and sorted(g.wkb for g in one.geometries) == sorted(g.wkb for g in many.geometries))
    return f"2048^2 pair, blocks of 300 vs one block: {len(one)} polygons, " \
           f"{'identical' if same else 'DIFFERENT'}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[8192, 20000])
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "cd-scale"))
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--naive-max", type=int, default=8192,
                    help="largest size the naive pipeline is run on (it needs ~80 B/px)")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs of the read floor and of diff, alternated (medians are reported: "
                         "on a shared or virtual machine single runs vary by 20 %% or more)")
    ap.add_argument("--flood", type=int, nargs="*", default=[],
                    help="also run a pair of this size where one change covers most of the "
                         "raster (larger than any window: processed in tiles and joined)")
    ap.add_argument("--many", type=int, nargs="*", default=[],
                    metavar="COUNT", help="also run the first size's pair with COUNT "
                    "structures of 12-120 px scattered over it (many changes, many cut by "
                    "the blocks' seams)")
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        print(check_equal(work), flush=True)
        for n in args.sizes:
            t = time.perf_counter()
            b, a = make_pair(n, work)
            print(f"generated {n} x {n} x 4 pair in {time.perf_counter() - t:.0f} s "
                  f"({(b.stat().st_size + a.stat().st_size) / 2**30:.2f} GiB on disk)",
                  flush=True)
            out = work / f"out_{n}"
            out.mkdir(exist_ok=True)
            floors, diffs = [], []
            for _ in range(max(args.repeat, 1)):
                floors.append(run(READ_FLOOR, str(b), str(a)))
                diffs.append(run(CHANGEDET, str(b), str(a), str(out), str(args.threads)))
            floor = _median(floors)
            rows.append((n, "read floor", floor, floor))
            rows.append((n, "changedet diff", _median(diffs), floor))
            if n <= args.naive_max:
                rows.append((n, "naive whole-array", run(NAIVE, str(b), str(a)), floor))
            else:
                rows.append((n, "naive whole-array",
                             {"error": f"not run: needs about {80 * n * n / 2**30:.0f} GiB"},
                             floor))
            for r in rows[-3:]:
                print(_row(*r), flush=True)
        for count in args.many:
            n = args.sizes[0]
            b, a = make_many_pair(n, count, work)
            out = work / f"out_{n}_many{count}"
            out.mkdir(exist_ok=True)
            floor = run(READ_FLOOR, str(b), str(a))
            many = run(CHANGEDET, str(b), str(a), str(out), str(args.threads))
            rows.append((n, f"read floor ({count} structures)", floor, floor))
            rows.append((n, f"changedet diff ({count} structures)", many, floor))
            for r in rows[-2:]:
                print(_row(*r), flush=True)
        for n in args.flood:
            b, a, area = make_flood_pair(n, work)
            out = work / f"out_flood_{n}"
            out.mkdir(exist_ok=True)
            floor = run(READ_FLOOR, str(b), str(a))
            flood = run(FLOOD, str(b), str(a), str(out), str(args.threads))
            rows.append((n, "read floor (flood pair)", floor, floor))
            rows.append((n, "changedet diff (flood pair)", flood, floor))
            for r in rows[-2:]:
                print(_row(*r), flush=True)
            if "LARGEST" in flood:
                print(f"flood {n}: true area {area:.0f} m2, largest polygon "
                      f"{flood['LARGEST']:.0f} m2 ({flood['LARGEST'] / area:.4f} of it), "
                      f"joined-change warnings: {int(flood['JOINED'])}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(f"Wall times: median of {max(args.repeat, 1)} runs (range); the naive pipeline runs "
          "once; peak RSS: the largest of the runs.")
    print("| size | pipeline | wall s | x read floor | peak RSS MiB | polygons |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(_row(*r))
    print(json.dumps({"threads": args.threads, "cpu_count": os.cpu_count()}))


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    """Median wall time of `runs` (with its range), their largest peak RSS, the first result."""
    failed = [r for r in runs if "error" in r]
    if failed:
        return failed[0]
    times = sorted(r["TIME"] for r in runs)
    out = dict(runs[0])
    out.update(TIME=float(np.median(times)), MIN=times[0], MAX=times[-1],
               RSS=max(r["RSS"] for r in runs))
    return out


def _row(n: int, name: str, vals: dict[str, float], floor: dict[str, float]) -> str:
    if "error" in vals:
        return f"| {n} | {name} | - | - | - | {vals['error']} |"
    ratio = vals["TIME"] / floor["TIME"] if floor.get("TIME") else float("nan")
    res = int(vals["RESULT"]) if "RESULT" in vals else ""
    spread = f" ({vals['MIN']:.1f}-{vals['MAX']:.1f})" if vals.get("MAX", 0) > vals.get(
        "MIN", 0) else ""
    return (f"| {n} | {name} | {vals['TIME']:.1f}{spread} | {ratio:.2f} | {vals['RSS']:.0f} "
            f"| {res} |")


if __name__ == "__main__":
    main()
