"""Accuracy benchmark: changedet against labelled change, synthetic and real.

Prints one table per data set (methods side by side, the plain baseline
first) and a summary against the targets of issue 4::

    .venv/bin/python scripts/bench_accuracy.py            # everything
    .venv/bin/python scripts/bench_accuracy.py --sets synthetic levir
    .venv/bin/python scripts/bench_accuracy.py --methods cva structure

Metrics
-------
- pixel precision, recall and F1 of "changed" (any class), per pair, then
  the mean over the pairs of a set ("F1") and the F1 of all pixels pooled
  ("F1 pool");
- object recall: a true object (8-connected component of the truth) is
  found when predictions cover at least 30 % of it;
- false-alarm polygons per km2: predicted polygons (8-connected components
  of the prediction) that touch no true change pixel, per km2 of image;
- no-change pairs: how many predicted polygons they hold (should be 0);
- with `--auc`: the pixel ROC AUC of the default score against the labels
  (does the score rank changed pixels above the rest at all?).

The sparse Landsat labels (Nanjing, Taizhou) are scored on labelled pixels
only; objects and polygon counts mean nothing there and are left blank.

The plain baseline is change-vector magnitude + Otsu on the raw pixels: no
co-registration, no normalisation, no clean-up; each 8-connected component
of its mask is a polygon.

The real PNG pairs carry no georeferencing: each is wrapped in a
:class:`changedet.Raster` on a made-up UTM grid (EPSG:32615) at its nominal
pixel size, so minimum mapping units in square metres mean what they say.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from affine import Affine
from PIL import Image
from scipy import ndimage
from scipy.stats import rankdata
from skimage.filters import threshold_otsu

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import changedet  # noqa: E402
from changedet.errors import ChangeDetWarning  # noqa: E402
from changedet.pipeline import AUTO_METHOD  # noqa: E402
from changedet.scores import SCORE_METHODS  # noqa: E402

BASELINE = "baseline (CVA+Otsu)"

DATA = Path(os.environ.get("CHANGEDET_SHARED_DATA", ROOT.parent / "shared" / "data"))
CRS_FAKE = "EPSG:32615"
EIGHT = np.ones((3, 3), bool)

#: Share of a true object that predictions must cover for it to count as found.
OBJECT_COVER = 0.3


@dataclass
class Case:
    """One labelled pair."""

    name: str
    before: np.ndarray            # (bands, H, W)
    after: np.ndarray
    truth: np.ndarray             # (H, W) bool, True = changed
    pixel_size: float             # metres
    labelled: np.ndarray | None = None   # (H, W) bool, sparse labels: True = scored
    transform: Affine | None = None
    crs: object = CRS_FAKE
    meta: dict = field(default_factory=dict)

    @property
    def area_km2(self) -> float:
        h, w = self.truth.shape
        return h * w * self.pixel_size ** 2 / 1e6

    def raster(self, which: str) -> changedet.Raster:
        data = self.before if which == "before" else self.after
        t = self.transform or Affine(self.pixel_size, 0, 500_000.0, 0, -self.pixel_size,
                                     3_300_000.0)
        if data.shape[0] == 4 and data.dtype == np.uint8:
            # An in-memory 4-band uint8 GeoTIFF gets GDAL's RGBA default and
            # changedet refuses its "alpha" band; the values fit uint16 unchanged.
            data = data.astype(np.uint16)
        return changedet.Raster(data, t, self.crs, name=f"{self.name}:{which}")


# --------------------------------------------------------------------------- data


def _rgb(path: Path) -> np.ndarray:
    return np.moveaxis(np.asarray(Image.open(path).convert("RGB")), -1, 0)


def _gray(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"))


def load_synthetic(seeds: int = 4) -> list[Case]:
    """Scenarios of :func:`changedet.synthetic.scenario_pair`, `seeds` of each.

    Every pair has its own layout (seed), so one unlucky layout does not
    count once per scenario.
    """
    from changedet.synthetic import SCENARIOS, scenario_pair

    cases = []
    for i, sc in enumerate(SCENARIOS):
        for k in range(seeds):
            p = scenario_pair(sc, seed=1000 + 100 * i + k)
            truth = p.truth.copy()
            cases.append(Case(f"synthetic/{sc}/{k}", p.before, p.after, truth > 0,
                              p.pixel_size, meta={"classes": truth}))
    return cases


def load_levir(root: Path = DATA / "levir_cd") -> list[Case]:
    """LEVIR-CD crops: A (before), B (after), label (255 = building change); 0.5 m."""
    cases = []
    for lab in sorted((root / "label").glob("*.png")):
        b, a = _rgb(root / "A" / lab.name), _rgb(root / "B" / lab.name)
        if b.shape != a.shape:
            continue
        cases.append(Case(f"levir/{lab.stem}", b, a, _gray(lab) > 127, 0.5))
    return cases


def load_sztaki(root: Path = DATA / "sztaki_airchange") -> list[Case]:
    """SZTAKI AirChange: im1 (before), im2 (after), gt (> 127 = change); 1.5 m."""
    cases = []
    for gt in sorted(root.glob("**/gt.png"), key=lambda p: str(p)):
        d = gt.parent
        name = "sztaki/" + str(d.relative_to(root))
        cases.append(Case(name, _rgb(d / "im1.png"), _rgb(d / "im2.png"), _gray(gt) > 127, 1.5))
    return cases


def load_landsat(root: Path = DATA / "landsat_nanjing_taizhou") -> list[Case]:
    """Landsat Nanjing and Taizhou, 6 bands, 30 m; sparse labels."""
    import rasterio

    pairs = {"Nanjing": ("LT51200382000124BJC00_Nanjing", "LT51200382002193BJC00_Nanjing"),
             "Taizhou": ("2000TM", "2003TM")}
    cases = []
    for site, (b_name, a_name) in pairs.items():
        d = root / site
        if not d.is_dir():
            continue
        with rasterio.open(d / b_name) as ds:
            b, t, crs = ds.read(), ds.transform, ds.crs
        with rasterio.open(d / a_name) as ds:
            a = ds.read()
        changed = _gray(d / "change.bmp") > 127
        unchanged = _gray(d / "unchanged.bmp") > 127
        cases.append(Case(f"landsat/{site}", b, a, changed, 30.0,
                          labelled=changed | unchanged, transform=t, crs=crs))
    return cases


# ------------------------------------------------------------------------ metrics


@dataclass
class Scores:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    objects: int = 0
    found: int = 0
    false_polygons: int = 0
    polygons: int = 0
    area_km2: float = 0.0
    seconds: float = 0.0
    directed: int = 0
    direction_ok: int = 0

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else float("nan")

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else float("nan")

    @property
    def f1(self) -> float:
        d = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / d if d else float("nan")


def score_case(case: Case, classes: np.ndarray) -> Scores:
    """Compare a predicted class raster (0 = no change) with the truth of `case`."""
    truth = case.truth
    pred = classes > 0
    s = Scores(area_km2=case.area_km2)
    if case.labelled is not None:
        sel = case.labelled
        s.tp = int((pred & truth & sel).sum())
        s.fp = int((pred & ~truth & sel).sum())
        s.fn = int((~pred & truth & sel).sum())
        return s
    s.tp = int((pred & truth).sum())
    s.fp = int((pred & ~truth).sum())
    s.fn = int((~pred & truth).sum())
    tl, nt = ndimage.label(truth, EIGHT)
    if nt:
        size = np.bincount(tl.ravel(), minlength=nt + 1)[1:]
        cover = np.bincount(tl[pred], minlength=nt + 1)[1:]
        found = cover >= OBJECT_COVER * size
        s.objects, s.found = nt, int(found.sum())
        true_cls = case.meta.get("classes")
        if true_cls is not None:
            # Direction: the commonest predicted class over each found object.
            for i in np.flatnonzero(found) + 1:
                m = tl == i
                votes = np.bincount(classes[m], minlength=4)[1:]
                s.directed += 1
                s.direction_ok += int(np.argmax(votes) + 1 == np.bincount(true_cls[m]).argmax())
    pl, npred = ndimage.label(pred, EIGHT)
    s.polygons = npred
    if npred:
        hits = np.bincount(pl[truth], minlength=npred + 1)[1:]
        s.false_polygons = int((hits == 0).sum())
    return s


# ------------------------------------------------------------------------ methods


def baseline(case: Case) -> np.ndarray:
    """Plain change-vector magnitude + Otsu on raw pixels; no clean-up."""
    d = case.after.astype(np.float32) - case.before.astype(np.float32)
    mag = np.sqrt((d * d).sum(axis=0))
    return (mag > threshold_otsu(mag)).astype(np.uint8) * 3  # "changed", no direction


def changedet_method(method: str, **options) -> Callable[[Case], np.ndarray]:
    def run(case: Case) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ChangeDetWarning)
            res = changedet.detect(case.raster("before"), case.raster("after"), method=method,
                                   **options)
        # Class raster: 0 none, 1 appeared, 2 disappeared, 3 changed (255 nodata -> 0).
        return np.where(res.classes == 255, 0, res.classes).astype(np.uint8)

    return run


# ------------------------------------------------------------------------- report


@dataclass
class Row:
    label: str
    per_case: list[tuple[Case, Scores]]

    def mean_f1(self) -> float:
        vals = [s.f1 for c, s in self.per_case if c.truth.any()]
        vals = [v for v in vals if not math.isnan(v)]
        return float(np.mean(vals)) if vals else float("nan")

    def pooled(self) -> Scores:
        t = Scores()
        for _, s in self.per_case:
            for k in ("tp", "fp", "fn", "objects", "found", "false_polygons", "polygons",
                      "area_km2", "seconds", "directed", "direction_ok"):
                setattr(t, k, getattr(t, k) + getattr(s, k))
        return t

    def no_change_polygons(self) -> int | None:
        nc = [s.polygons for c, s in self.per_case if not c.truth.any()]
        return sum(nc) if nc else None


def evaluate(cases: list[Case], methods: dict[str, Callable[[Case], np.ndarray]],
             ) -> list[Row]:
    rows = []
    for label, fn in methods.items():
        per = []
        for c in cases:
            t0 = time.perf_counter()
            pred = fn(c)
            s = score_case(c, pred)
            s.seconds = time.perf_counter() - t0
            per.append((c, s))
        rows.append(Row(label, per))
    return rows


def _fmt(v: float, spec: str = ".3f") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def print_table(title: str, rows: list[Row], *, sparse: bool = False) -> None:
    n = len(rows[0].per_case) if rows else 0
    print(f"\n## {title} ({n} pairs)\n")
    directed = any(r.pooled().directed for r in rows)
    head = ["method", "P", "R", "F1 mean", "F1 pool"]
    if not sparse:
        head += ["obj recall", "false poly/km2", "polys on no-change"]
    if directed:
        head += ["direction ok"]
    head += ["s/pair"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        p = r.pooled()
        cells = [r.label, _fmt(p.precision), _fmt(p.recall), _fmt(r.mean_f1()), _fmt(p.f1)]
        if not sparse:
            nc = r.no_change_polygons()
            cells += [_fmt(p.found / p.objects if p.objects else float("nan")),
                      _fmt(p.false_polygons / p.area_km2, ".1f"),
                      "-" if nc is None else str(nc)]
        if directed:
            cells.append(_fmt(p.direction_ok / p.directed if p.directed else float("nan")))
        cells.append(_fmt(p.seconds / max(n, 1), ".2f"))
        print("| " + " | ".join(cells) + " |")


def print_per_case(rows: list[Row]) -> None:
    print("\nper pair F1 (false polygons):")
    names = [c.name for c, _ in rows[0].per_case]
    print("pair".ljust(28) + "".join(r.label[:14].rjust(16) for r in rows))
    for i, name in enumerate(names):
        cells = []
        for r in rows:
            s = r.per_case[i][1]
            cells.append(f"{_fmt(s.f1, '.2f')} ({s.false_polygons})".rjust(16))
        print(name[:28].ljust(28) + "".join(cells))


def print_summary(results: dict[str, list[Row]], label: str) -> None:
    """The issue's targets, for the method labelled `label`."""
    print(f"\n## Targets ({label})\n")
    print("| target | measured | met |")
    print("|---|---|---|")

    def row(target: str, value: float, ok: bool, spec: str = ".3f") -> None:
        print(f"| {target} | {_fmt(value, spec)} | {'yes' if ok else 'NO'} |")

    syn = next((rs for name, rs in results.items() if name.startswith("Synthetic")), None)
    if syn:
        r = next(x for x in syn if x.label == label)
        p = r.pooled()
        row("synthetic F1 (mean over pairs) >= 0.9", r.mean_f1(), r.mean_f1() >= 0.9)
        rec = p.found / max(p.objects, 1)
        row("synthetic object recall >= 0.95", rec, rec >= 0.95)
        fpk = p.false_polygons / p.area_km2
        row("synthetic false polygons / km2 <= 2", fpk, fpk <= 2, ".1f")
        nc = r.no_change_polygons() or 0
        row("polygons on no-change pairs = 0", nc, nc == 0, "d")
    real = [rs for name, rs in results.items() if name.startswith(("LEVIR", "SZTAKI"))]
    if real:
        def pooled(lab: str) -> tuple[float, float]:
            cases = [(c, s) for rs in real for x in rs if x.label == lab for c, s in x.per_case]
            f1 = [s.f1 for c, s in cases if c.truth.any() and not math.isnan(s.f1)]
            fp = sum(s.false_polygons for _, s in cases) / sum(s.area_km2 for _, s in cases)
            return float(np.mean(f1)) if f1 else float("nan"), fp
        base_f1, base_fp = pooled(BASELINE)
        f1, fp = pooled(label)
        row(f"LEVIR+SZTAKI mean F1 >= 2 x baseline ({base_f1:.3f})", f1, f1 >= 2 * base_f1)
        row(f"LEVIR+SZTAKI false polygons / km2 <= baseline / 10 ({base_fp / 10:.1f})", fp,
            fp <= base_fp / 10, ".1f")


def pixel_auc(score: np.ndarray, truth: np.ndarray) -> float:
    """ROC AUC of a score against a boolean truth (Mann-Whitney U; ties averaged)."""
    s, t = score.ravel(), truth.ravel().astype(bool)
    n1 = int(t.sum())
    n0 = t.size - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[t].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def print_auc(title: str, cases: list[Case]) -> None:
    """Does the default score rank changed pixels above unchanged ones at all?"""
    ours, raw = [], []
    for case in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ChangeDetWarning)
            res = changedet.detect(case.raster("before"), case.raster("after"))
        scored = case.labelled if case.labelled is not None else np.ones_like(case.truth, bool)
        d = case.after.astype(np.float32) - case.before.astype(np.float32)
        ours.append(pixel_auc(np.nan_to_num(res.score)[scored], case.truth[scored]))
        raw.append(pixel_auc(np.sqrt((d * d).sum(axis=0))[scored], case.truth[scored]))
    print(f"\n{title}: pixel ROC AUC of the score against the labels (0.5 = chance), median "
          f"(range) over {len(cases)} pairs: changedet {np.nanmedian(ours):.2f} "
          f"({np.nanmin(ours):.2f}-{np.nanmax(ours):.2f}), raw CVA magnitude "
          f"{np.nanmedian(raw):.2f} ({np.nanmin(raw):.2f}-{np.nanmax(raw):.2f})")


def iter_sets(names: list[str]) -> Iterator[tuple[str, list[Case]]]:
    for name in names:
        if name == "synthetic":
            yield "Synthetic scenarios (0.5 m, 4 bands)", load_synthetic()
        elif name == "levir":
            yield "LEVIR-CD crops (0.5 m)", load_levir()
        elif name == "sztaki":
            yield "SZTAKI AirChange (1.5 m)", load_sztaki()
        elif name == "landsat":
            yield "Landsat Nanjing/Taizhou (30 m, sparse labels)", load_landsat()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", nargs="+", default=["synthetic", "levir", "sztaki", "landsat"])
    default_methods = ["auto"] + [m for m in SCORE_METHODS if m != AUTO_METHOD]
    ap.add_argument("--methods", nargs="+", default=default_methods,
                    help="changedet methods, each optionally with :threshold "
                         "(e.g. cva irmad:ki structure:4.5); 'auto' is the default method")
    ap.add_argument("--per-pair", action="store_true", help="also print per-pair F1")
    ap.add_argument("--auc", action="store_true",
                    help="also print the pixel ROC AUC of the default score per set")
    args = ap.parse_args(argv)
    methods: dict[str, Callable[[Case], np.ndarray]] = {BASELINE: baseline}
    for spec in args.methods:
        # "method" or "method:threshold", e.g. "structure:ki".
        name, _, thr = spec.partition(":")
        value = float(thr) if thr.replace(".", "", 1).isdigit() else thr
        opts = {"threshold": value} if thr else {}
        methods[spec] = changedet_method(name, **opts)
    results: dict[str, list[Row]] = {}
    for title, cases in iter_sets(args.sets):
        if not cases:
            print(f"\n## {title}: no data (set CHANGEDET_SHARED_DATA)")
            continue
        rows = evaluate(cases, methods)
        results[title] = rows
        print_table(title, rows, sparse=cases[0].labelled is not None)
        if args.per_pair:
            print_per_case(rows)
        if args.auc:
            print_auc(title, cases)
        sys.stdout.flush()
    summary = "auto" if "auto" in methods else args.methods[0]
    print_summary(results, summary)
    print(f"\n'auto' is {AUTO_METHOD} with the default threshold (chi-square hysteresis).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
