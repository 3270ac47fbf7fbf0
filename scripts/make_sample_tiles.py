"""Render the demo pair in sample_tiles/: a public square at two dates.

A synthetic 0.5 m, 3-band scene laid out like a large public square (a
granite plaza with a podium in front of a building on the west side,
government buildings to the north and south, a road on the east), placed in
UTM zone 51N near 39.019 N 125.753 E. Between the dates:

- a large object appears on the plaza next to the podium;
- a row of eight smaller structures goes up beside the south building;
- a pavilion in the north-east of the plaza is removed;

and, as in a real pair a week apart, the after image is displaced by a few
pixels, the sun has moved (shadows change), haze, gain and noise differ, and
the cars on the road are elsewhere.

Deterministic: the same script writes the same files, byte for byte.

    $ python scripts/make_sample_tiles.py [OUTDIR]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.warp import transform, transform_geom
from shapely.geometry import Point, mapping

from changedet.synthetic import (
    SceneObject,
    Sensor,
    Sun,
    quantise,
    rect,
    render,
    textured_ground,
)

PIXEL = 0.5                     # metres
WIDTH, HEIGHT = 640, 512        # pixels: 320 m x 256 m
CRS = "EPSG:32651"              # WGS 84 / UTM zone 51N
CENTRE_LONLAT = (125.7530, 39.0190)
SHIFT = (2.6, -1.8)             # after vs before, pixels (x right, y down)
SEED = 20261127


def m(x: float) -> float:
    """Metres to pixels."""
    return x / PIXEL


def grid_transform() -> Affine:
    """Upper-left anchored 0.5 m grid centred near the square."""
    xs, ys = transform("EPSG:4326", CRS, [CENTRE_LONLAT[0]], [CENTRE_LONLAT[1]])
    left = round((xs[0] - WIDTH * PIXEL / 2) / 10) * 10
    top = round((ys[0] + HEIGHT * PIXEL / 2) / 10) * 10
    return Affine(PIXEL, 0, left, 0, -PIXEL, top)


def ground(rng: np.random.Generator, s: int) -> np.ndarray:
    """Plaza, road and lawns on the supersampled canvas."""
    shape = (HEIGHT * s, WIDTH * s)
    plaza = textured_ground(shape, "granite", rng=rng, texture=0.018, grain=2.0 * s,
                            slab=m(4.0) * s)
    road = textured_ground(shape, "asphalt", rng=rng, texture=0.01, grain=1.0 * s)
    lawn = textured_ground(shape, "grass", rng=rng, texture=0.03, grain=1.5 * s)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]] / (s * 1.0)
    out = plaza
    is_road = xx >= m(290)
    out[:, is_road] = road[:, is_road]
    lane = is_road & (np.abs(xx - m(305)) < 0.5) & ((yy % m(12)) < m(6))
    out[:, lane] = 0.7
    is_lawn = ((yy < m(14)) | (yy > m(242))) & (xx > m(60)) & (xx < m(285))
    out[:, is_lawn] = lawn[:, is_lawn]
    return out


def static_objects() -> list[SceneObject]:
    """Everything present at both dates."""
    objs = [
        # West: a large hall with a green tiled roof, and the podium before it.
        SceneObject(rect(m(-10), m(30), m(55), m(200)), "roof_green", height=24.0),
        SceneObject(rect(m(52), m(98), m(12), m(60)), "concrete", height=5.0),
        # North and south: government buildings.
        SceneObject(rect(m(80), m(-20), m(190), m(30)), "roof_grey", height=16.0),
        SceneObject(rect(m(80), m(246), m(190), m(30)), "roof_grey", height=16.0),
    ]
    # Two lines of trees along the lawns.
    for i in range(9):
        for y in (m(18), m(236)):
            cx, r = m(95 + 22 * i), m(3.2)
            tree = Point(cx, y).buffer(r, quad_segs=8)
            objs.append(SceneObject(tree, "tree", height=8.0, texture=0.03, kind="tree"))
    return objs


def appeared() -> list[SceneObject]:
    """What is new after."""
    big = SceneObject(rect(m(80), m(110), m(26), m(36)), "white", height=9.0,
                      kind="large object by the podium")
    row = [SceneObject(rect(m(110 + 13 * i), m(220), m(8), m(5)), "blue" if i % 2 else "red",
                       height=3.0, kind="structure in the row")
           for i in range(8)]
    return [big, *row]


def disappeared() -> list[SceneObject]:
    """What is gone after."""
    return [SceneObject(rect(m(225), m(45), m(16), m(12)), "roof_red", height=7.0,
                        kind="removed pavilion")]


def vehicles(rng: np.random.Generator, n_road: int, n_plaza: int) -> list[SceneObject]:
    """Cars on the road (both directions) and a few on the plaza."""
    cars = ["white", "dark", "red", "blue", "metal", "white", "dark"]
    out = []
    for _ in range(n_road):
        x = m(rng.choice([295.0, 311.0])) + rng.uniform(-m(1), m(1))
        y = rng.uniform(m(5), m(245))
        out.append(SceneObject(rect(x, y, m(1.8), m(4.5)), cars[int(rng.integers(len(cars)))],
                               height=1.5, texture=0.01, kind="vehicle"))
    for _ in range(n_plaza):
        x, y = rng.uniform(m(120), m(270)), rng.uniform(m(160), m(200))
        out.append(SceneObject(rect(x, y, m(4.5), m(1.8)), cars[int(rng.integers(len(cars)))],
                               height=1.5, texture=0.01, kind="vehicle"))
    return out


def main(outdir: str = "sample_tiles") -> None:
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    s = 4
    g = ground(rng, s)
    static = static_objects()
    before_objs = static + disappeared() + vehicles(rng, 10, 2)
    after_objs = static + appeared() + vehicles(rng, 10, 2)
    before = render(g, before_objs, sun=Sun(152.0, 52.0), pixel_size=PIXEL, supersample=s,
                    sensor=Sensor(blur=0.6, noise=0.008), rng=rng)
    after = render(g, after_objs, sun=Sun(155.0, 51.0), pixel_size=PIXEL, supersample=s,
                   sensor=Sensor(gain=(1.12, 1.08, 1.02), offset=(0.01, 0.015, 0.03),
                                 haze=0.07, blur=0.75, noise=0.010, shift=SHIFT), rng=rng)
    t = grid_transform()
    profile = dict(driver="GTiff", width=WIDTH, height=HEIGHT, count=3, dtype="uint8",
                   crs=CRS, transform=t, tiled=True, blockxsize=256, blockysize=256,
                   compress="deflate", predictor=2, interleave="pixel", photometric="RGB")
    for name, img, date in (("square_before.tif", before, "2026-10-08"),
                            ("square_after.tif", after, "2026-10-15")):
        with rasterio.open(out / name, "w", **profile) as ds:
            ds.write(quantise(img, "uint8", full_scale=0.85))
            ds.update_tags(TIFFTAG_DATETIME=f"{date.replace('-', ':')} 02:30:00",
                           ACQUISITION_DATE=date,
                           DESCRIPTION="synthetic demo scene rendered by "
                                       "scripts/make_sample_tiles.py")
    features = []
    pixel_to_map = [t.a, t.b, t.d, t.e, t.c, t.f]
    from shapely.affinity import affine_transform

    truth = [(o, "appeared") for o in appeared()] + [(o, "disappeared") for o in disappeared()]
    for i, (obj, change) in enumerate(truth, start=1):
        geom = affine_transform(obj.footprint, pixel_to_map)
        lonlat = transform_geom(CRS, "EPSG:4326", mapping(geom))
        coords = [[[round(x, 7), round(y, 7)] for x, y in ring]
                  for ring in lonlat["coordinates"]]
        features.append({"type": "Feature", "id": i,
                         "geometry": {"type": "Polygon", "coordinates": coords},
                         "properties": {"change": change, "what": obj.kind,
                                        "area_m2": round(geom.area, 2)}})
    fc = {"type": "FeatureCollection", "features": features}
    (out / "square_truth.geojson").write_text(json.dumps(fc, indent=1) + "\n")
    print(f"wrote {out}/square_before.tif, square_after.tif, square_truth.geojson")


if __name__ == "__main__":
    main(*sys.argv[1:])
