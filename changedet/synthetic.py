"""Synthetic before/after scenes with known truth, for tests and benchmarks.

A scene is a textured ground (paving, grass, roads) with objects on it
(buildings, structures, trees, vehicles), each a polygon in pixel
coordinates with a material and a height. Objects with a height cast
shadows from a given sun position. Rendering is supersampled, so edges have
realistic partial pixels; then come the sensor's blur, gain, offset, haze,
noise, sub-pixel shift and quantisation.

Everything here is pure numpy on arrays; it writes no files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, get_args

import numpy as np
from affine import Affine
from numpy.typing import NDArray
from rasterio.features import rasterize
from scipy import ndimage
from shapely import affinity
from shapely.geometry import Polygon, box
from shapely.geometry.base import BaseGeometry

__all__ = [
    "MATERIALS",
    "SHADOW_TINT",
    "SceneObject",
    "Sun",
    "Sensor",
    "SyntheticPair",
    "rect",
    "shadow_of",
    "textured_ground",
    "render",
    "quantise",
    "random_pair",
    "with_shift",
    "PHENOLOGY",
    "Scenario",
    "SCENARIOS",
    "scenario_pair",
]

#: Reflectance of common materials in (red, green, blue, near-infrared).
MATERIALS: dict[str, tuple[float, float, float, float]] = {
    "granite": (0.50, 0.49, 0.47, 0.52),
    "pavement": (0.40, 0.39, 0.37, 0.43),
    "concrete": (0.55, 0.54, 0.52, 0.56),
    "asphalt": (0.11, 0.11, 0.12, 0.14),
    "grass": (0.08, 0.16, 0.06, 0.45),
    "tree": (0.05, 0.11, 0.04, 0.38),
    "soil": (0.30, 0.25, 0.20, 0.33),
    "roof_grey": (0.28, 0.28, 0.30, 0.31),
    "roof_green": (0.12, 0.22, 0.16, 0.24),
    "roof_red": (0.36, 0.17, 0.12, 0.34),
    "white": (0.78, 0.78, 0.77, 0.74),
    "blue": (0.10, 0.20, 0.38, 0.24),
    "red": (0.55, 0.10, 0.10, 0.40),
    "dark": (0.06, 0.06, 0.07, 0.08),
    "metal": (0.62, 0.64, 0.66, 0.60),
    # Vegetation late in the season: less chlorophyll (red up, NIR down).
    "dry_grass": (0.19, 0.20, 0.11, 0.31),
    "crop_green": (0.06, 0.14, 0.05, 0.52),
    "crop_ripe": (0.24, 0.22, 0.11, 0.40),
    "tree_autumn": (0.12, 0.12, 0.05, 0.32),
    "wet_soil": (0.21, 0.18, 0.14, 0.24),
}

#: How each material looks a season later (materials not listed stay).
PHENOLOGY: dict[str, str] = {
    "grass": "dry_grass",
    "crop_green": "crop_ripe",
    "tree": "tree_autumn",
}

#: What survives in shadow: skylight, weaker and bluer than direct sun.
SHADOW_TINT: tuple[float, float, float, float] = (0.28, 0.31, 0.40, 0.26)


@dataclass(frozen=True)
class SceneObject:
    """Something standing on the ground.

    Attributes
    ----------
    footprint : shapely Polygon
        Outline in output pixel coordinates (x = column, y = row).
    material : str or tuple of floats
        A key of :data:`MATERIALS` or reflectances per band.
    height : float
        Height in metres; objects taller than 0 cast shadows.
    texture : float
        Standard deviation of the roof's fine texture (reflectance units).
    kind : str
        Free label (``"building"``, ``"vehicle"``, ``"tree"`` ...).
    """

    footprint: Polygon
    material: str | tuple[float, ...] = "roof_grey"
    height: float = 0.0
    texture: float = 0.015
    kind: str = "building"


@dataclass(frozen=True)
class Sun:
    """Sun position: azimuth clockwise from north and elevation, degrees."""

    azimuth: float = 150.0
    elevation: float = 55.0


@dataclass(frozen=True)
class Sensor:
    """How the scene becomes pixel values.

    ``value = gain * (reflectance * (1 - haze) + haze * airlight) + offset``,
    blurred with a Gaussian PSF, displaced by `shift` (pixels, x right,
    y down), plus Gaussian noise.
    """

    gain: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    offset: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0)
    haze: float = 0.0
    airlight: tuple[float, ...] = (0.62, 0.68, 0.80, 0.55)
    blur: float = 0.6
    noise: float = 0.008
    shift: tuple[float, float] = (0.0, 0.0)


def rect(x: float, y: float, w: float, h: float, angle: float = 0.0) -> Polygon:
    """Make a rectangle with upper-left corner (x, y), size w x h, rotated about its centre."""
    r = box(x, y, x + w, y + h)
    return affinity.rotate(r, angle, origin="center") if angle else r


def _material(m: str | Sequence[float], bands: int) -> NDArray[np.float32]:
    vals = MATERIALS[m] if isinstance(m, str) else tuple(m)
    if len(vals) < bands:
        raise ValueError(f"material has {len(vals)} bands, {bands} needed")
    return np.asarray(vals[:bands], dtype=np.float32)


def shadow_of(footprint: Polygon, height: float, sun: Sun, pixel_size: float) -> BaseGeometry:
    """Ground shadow of a (convex) object of `height` metres under `sun`.

    The shadow falls away from the sun, ``height / tan(elevation)`` metres
    long; in pixel coordinates north is up (y decreases).
    """
    if height <= 0:
        return Polygon()
    length = height / math.tan(math.radians(sun.elevation)) / pixel_size
    az = math.radians(sun.azimuth)
    dx, dy = -math.sin(az) * length, math.cos(az) * length
    moved = affinity.translate(footprint, dx, dy)
    return footprint.union(moved).convex_hull


def textured_ground(shape: tuple[int, int], material: str | Sequence[float], *, bands: int = 3,
                    rng: np.random.Generator, texture: float = 0.02, grain: float = 1.5,
                    slab: float | None = None) -> NDArray[np.float32]:
    """Ground of one material with a fine random texture and optional slab joints.

    Parameters
    ----------
    shape : (H, W)
        Size in pixels (of the supersampled canvas when used by `render`).
    texture : float
        Standard deviation of the texture in reflectance units.
    grain : float
        Correlation length of the texture in pixels.
    slab : float, optional
        Spacing of darker paving joints, in pixels.

    Returns
    -------
    (bands, H, W) ndarray of float32
    """
    base = _material(material, bands)
    tex = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), grain)
    tex *= texture / max(float(tex.std()), 1e-6)
    out = base[:, None, None] * (1 + tex / max(float(base.mean()), 1e-3))[None]
    if slab:
        yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
        joints = ((yy % slab) < 1) | ((xx % slab) < 1)
        out[:, joints] *= 0.85
    return out.astype(np.float32)


def _paint(canvas: NDArray[np.float32], geom: BaseGeometry, value: NDArray[np.float32] | float,
           scale: int) -> NDArray[np.bool_]:
    if geom.is_empty:
        return np.zeros(canvas.shape[1:], bool)
    m = rasterize([geom], out_shape=canvas.shape[1:], transform=Affine.scale(1 / scale),
                  fill=0, default_value=1, dtype="uint8").astype(bool)
    if isinstance(value, np.ndarray) and value.ndim == 3:
        canvas[:, m] = value[:, m]
    else:
        canvas[:, m] *= np.asarray(value, dtype=np.float32).reshape(-1, 1)
    return m


def render(ground: NDArray[np.float32], objects: Sequence[SceneObject], *, sun: Sun = Sun(),
           sensor: Sensor = Sensor(), pixel_size: float = 0.5, supersample: int = 4,
           rng: np.random.Generator) -> NDArray[np.float32]:
    """Render a scene to sensor values.

    Parameters
    ----------
    ground : (bands, H*s, W*s) ndarray of float32
        Ground reflectance on the supersampled canvas (``s = supersample``).
    objects : sequence of SceneObject
        Painted in order, over the shadows of all of them.
    sun, sensor : Sun, Sensor
        Illumination and acquisition.
    pixel_size : float
        Metres per output pixel (for shadow lengths).

    Returns
    -------
    (bands, H, W) ndarray of float32
        Sensor values, nominally 0-1.
    """
    bands, sh, sw = ground.shape
    s = supersample
    canvas = ground.copy()
    tint = np.asarray(SHADOW_TINT[:bands], np.float32)
    shadows = [shadow_of(o.footprint, o.height, sun, pixel_size) for o in objects]
    shadow_mask = np.zeros((sh, sw), bool)
    for geom in shadows:
        if not geom.is_empty:
            shadow_mask |= rasterize([geom], out_shape=(sh, sw), transform=Affine.scale(1 / s),
                                     fill=0, default_value=1, dtype="uint8").astype(bool)
    canvas[:, shadow_mask] *= tint[:, None]
    for obj in objects:
        colour = _material(obj.material, bands)
        tex = rng.standard_normal((sh, sw)).astype(np.float32) * obj.texture
        value = colour[:, None, None] * (1 + tex / max(float(colour.mean()), 1e-3))[None]
        m = _paint(canvas, obj.footprint, value.astype(np.float32), s)
        # Taller neighbours shade lower objects; an object never shades itself.
        for other, geom in zip(objects, shadows, strict=True):
            if (other is not obj and other.height > obj.height and not geom.is_empty
                    and geom.intersects(obj.footprint)):
                shade = m & rasterize([geom], out_shape=(sh, sw), transform=Affine.scale(1 / s),
                                      fill=0, default_value=1, dtype="uint8").astype(bool)
                canvas[:, shade] *= tint[:, None]
    img = canvas.reshape(bands, sh // s, s, sw // s, s).mean(axis=(2, 4))
    air = np.asarray(sensor.airlight[:bands], np.float32)[:, None, None]
    img = img * (1 - sensor.haze) + sensor.haze * air
    img = img * np.asarray(sensor.gain[:bands], np.float32)[:, None, None]
    img = img + np.asarray(sensor.offset[:bands], np.float32)[:, None, None]
    if sensor.blur > 0:
        img = ndimage.gaussian_filter(img, (0, sensor.blur, sensor.blur), mode="nearest")
    dx, dy = sensor.shift
    if dx or dy:
        img = ndimage.shift(img, (0, dy, dx), order=3, mode="nearest")
    if sensor.noise > 0:
        img = img + rng.normal(0, sensor.noise, img.shape).astype(np.float32)
    return img.astype(np.float32)


def quantise(img: NDArray[np.floating], dtype: str | np.dtype = "uint8", *,
             full_scale: float = 1.0) -> NDArray:
    """Scale 0..`full_scale` to the range of an integer dtype (floats pass through)."""
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return img.astype(dt)
    top = float(np.iinfo(dt).max)
    return np.clip(np.rint(img / full_scale * top), 0, top).astype(dt)


@dataclass(frozen=True)
class SyntheticPair:
    """A rendered before/after pair with its truth.

    Attributes
    ----------
    before, after : (bands, H, W) ndarray
        The two images, `after` displaced by ``sensor.shift``.
    truth : (H, W) ndarray of uint8
        0 unchanged, 1 appeared, 2 disappeared (footprints on the before grid).
    appeared, disappeared : list of Polygon
        Footprints of the true changes, in before-grid pixel coordinates.
    shift : (float, float)
        Displacement of `after` (x right, y down, pixels).
    scenario : str
        Name of the scenario that made it (:func:`scenario_pair`), if any.
    pixel_size : float
        Metres per pixel.
    """

    before: NDArray
    after: NDArray
    truth: NDArray[np.uint8]
    appeared: list[Polygon] = field(default_factory=list)
    disappeared: list[Polygon] = field(default_factory=list)
    shift: tuple[float, float] = (0.0, 0.0)
    scenario: str = ""
    pixel_size: float = 0.5


def _truth_raster(shape: tuple[int, int], appeared: Sequence[Polygon],
                  disappeared: Sequence[Polygon]) -> NDArray[np.uint8]:
    shapes = [(g, 1) for g in appeared] + [(g, 2) for g in disappeared]
    if not shapes:
        return np.zeros(shape, np.uint8)
    return rasterize(shapes, out_shape=shape, fill=0, dtype="uint8")


def _place(rng: np.random.Generator, shape: tuple[int, int], size: tuple[float, float],
           taken: list[Polygon], margin: float, angle: float = 0.0,
           tries: int = 200) -> Polygon | None:
    h, w = shape
    for _ in range(tries):
        x = rng.uniform(margin, w - margin - size[0])
        y = rng.uniform(margin, h - margin - size[1])
        cand = rect(x, y, size[0], size[1], angle)
        if all(cand.distance(t) > margin for t in taken):
            return cand
    return None


#: Roof materials buildings are drawn from.
_ROOFS = ("roof_grey", "roof_red", "roof_green", "white", "blue", "concrete", "metal")


def _building(rng: np.random.Generator, shape: tuple[int, int], size: tuple[float, float],
              taken: list[Polygon], margin: float, heights_m: tuple[float, float],
              ) -> SceneObject | None:
    # A building of `size` pixels placed clear of `taken` (which it joins),
    # with a random roof and height; None when there is no room.
    fp = _place(rng, shape, size, taken, margin)
    if fp is None:
        return None
    taken.append(fp)
    return SceneObject(fp, _ROOFS[int(rng.integers(len(_ROOFS)))],
                       height=float(rng.uniform(*heights_m)))


def random_pair(shape: tuple[int, int] = (256, 256), *, bands: int = 3, seed: int = 0,
                pixel_size: float = 0.5, n_static: int = 4, n_appeared: int = 2,
                n_disappeared: int = 1, sizes_m: tuple[float, float] = (8.0, 25.0),
                heights_m: tuple[float, float] = (0.0, 0.0), n_vehicles: int = 0,
                sun_before: Sun = Sun(), sun_after: Sun = Sun(),
                sensor_before: Sensor = Sensor(), sensor_after: Sensor = Sensor(),
                dtype: Literal["uint8", "uint16", "float32"] | str = "uint8",
                ground: str = "pavement") -> SyntheticPair:
    """Make a random urban scene at two dates with known structures added and removed.

    Parameters
    ----------
    shape : (H, W)
        Output size in pixels.
    bands : int
        1 to 4 (red, green, blue, near-infrared).
    seed : int
        Seed; the same arguments give the same pair.
    pixel_size : float
        Metres per pixel.
    n_static, n_appeared, n_disappeared : int
        Buildings present at both dates, only after, only before.
    sizes_m : (float, float)
        Range of structure side lengths in metres.
    heights_m : (float, float)
        Range of structure heights in metres (0 = flat, no shadow).
    n_vehicles : int
        Cars placed independently at each date (they are not change).
    sun_before, sun_after : Sun
        Sun positions (shadows move between dates).
    sensor_before, sensor_after : Sensor
        Radiometry and geometry of each acquisition; the shift of the pair
        is ``sensor_after.shift`` minus ``sensor_before.shift``.
    dtype : str
        Output type; integers are scaled from reflectance 0-1.

    Returns
    -------
    SyntheticPair
    """
    rng = np.random.default_rng(seed)
    s = 4
    h, w = shape
    canvas_shape = (h * s, w * s)
    px = lambda m: m / pixel_size  # noqa: E731
    ground_img = textured_ground(canvas_shape, ground, bands=bands, rng=rng,
                                 texture=0.02, grain=3.0 * s, slab=px(3.0) * s)
    margin = px(2.0)
    taken: list[Polygon] = []

    def structure() -> SceneObject | None:
        size = (px(rng.uniform(*sizes_m)), px(rng.uniform(*sizes_m)))
        return _building(rng, shape, size, taken, margin, heights_m)

    static = [o for o in (structure() for _ in range(n_static)) if o]
    new = [o for o in (structure() for _ in range(n_appeared)) if o]
    gone = [o for o in (structure() for _ in range(n_disappeared)) if o]

    def vehicles() -> list[SceneObject]:
        out = []
        cars = ["white", "dark", "red", "blue", "metal"]
        for _ in range(n_vehicles):
            fp = _place(rng, shape, (px(4.5), px(1.8)), taken, 1.0,
                        angle=float(rng.choice([0.0, 90.0])))
            if fp is not None:
                out.append(SceneObject(fp, cars[int(rng.integers(len(cars)))], height=1.5,
                                       texture=0.01, kind="vehicle"))
        return out

    before_objs = static + gone + vehicles()
    after_objs = static + new + vehicles()
    rel = (sensor_after.shift[0] - sensor_before.shift[0],
           sensor_after.shift[1] - sensor_before.shift[1])
    before = render(ground_img, before_objs, sun=sun_before, sensor=sensor_before,
                    pixel_size=pixel_size, supersample=s, rng=rng)
    after = render(ground_img, after_objs, sun=sun_after, sensor=sensor_after,
                   pixel_size=pixel_size, supersample=s, rng=rng)
    appeared = [o.footprint for o in new]
    disappeared = [o.footprint for o in gone]
    return SyntheticPair(
        before=quantise(before, dtype), after=quantise(after, dtype),
        truth=_truth_raster(shape, appeared, disappeared),
        appeared=appeared, disappeared=disappeared, shift=rel)


def with_shift(sensor: Sensor, dx: float, dy: float) -> Sensor:
    """Return a copy of `sensor` displaced by (dx, dy) pixels."""
    return replace(sensor, shift=(dx, dy))


Scenario = Literal["clean", "radiometry", "sun", "phenology", "vehicles", "shift", "all",
                   "nochange"]
SCENARIOS: tuple[str, ...] = get_args(Scenario)


def _ground_pair(shape: tuple[int, int], patches: Sequence[tuple[Polygon, str]], *, bands: int,
                 rng: np.random.Generator, scale: int, season: bool,
                 ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    # One texture, two material maps: a patch keeps its texture and outline
    # between the dates, only its material follows PHENOLOGY when `season`.
    h, w = shape
    tex = ndimage.gaussian_filter(rng.standard_normal((h, w)).astype(np.float32), 3.0 * scale)
    tex /= max(float(tex.std()), 1e-6)
    fine = ndimage.gaussian_filter(rng.standard_normal((h, w)).astype(np.float32), 0.7 * scale)
    fine /= max(float(fine.std()), 1e-6)
    grounds = []
    for date in (0, 1):
        out = np.empty((bands, h, w), np.float32)
        out[:] = _material("pavement", bands)[:, None, None]
        amp = np.full((h, w), 0.05, np.float32)
        for geom, mat in patches:
            m = rasterize([geom], out_shape=(h, w), transform=Affine.scale(1 / scale), fill=0,
                          default_value=1, dtype="uint8").astype(bool)
            name = PHENOLOGY.get(mat, mat) if (season and date == 1) else mat
            out[:, m] = _material(name, bands)[:, None]
            amp[m] = 0.12
        # Relative texture: coarse patchiness plus a fine grain, the same at both dates.
        out *= (1 + amp * (0.6 * tex + 0.4 * fine))[None]
        grounds.append(out)
    return grounds[0], grounds[1]


def scenario_pair(scenario: Scenario, *, seed: int = 0, shape: tuple[int, int] = (384, 384),
                  bands: int = 4, pixel_size: float = 0.5, n_static: int = 8,
                  n_appeared: int = 3, n_disappeared: int = 2,
                  sizes_m: tuple[float, float] = (8.0, 30.0),
                  heights_m: tuple[float, float] = (3.0, 12.0), n_vehicles: int = 12,
                  dtype: Literal["uint8", "uint16", "float32"] | str = "uint8") -> SyntheticPair:
    """Render a semi-urban scene at two dates with one family of nuisances, and its truth.

    The scene is paving crossed by two asphalt roads, with patches of
    grass, crops and bare soil, trees,
    buildings of several sizes and heights (each casting a shadow), and
    cars. Between the dates, `n_appeared` structures are built and
    `n_disappeared` demolished (none for ``"nochange"``); the truth is their
    footprints. On top come the nuisances of the scenario:

    ``"clean"``
        None beyond sensor noise and blur.
    ``"radiometry"``
        Per-band gain and offset, haze, more noise in the after image.
    ``"sun"``
        The sun moves (azimuth 140 -> 215 degrees, elevation 62 -> 38), so
        every shadow swings and lengthens.
    ``"phenology"``
        A season passes: grass dries, crops ripen, trees turn.
    ``"vehicles"``
        Three times as many cars, parked anew at each date.
    ``"shift"``
        The after image is displaced by a sub-pixel amount (0.45, -0.3) px.
    ``"all"``
        All of the above together.
    ``"nochange"``
        All of the above, and no structure built or removed.

    Parameters
    ----------
    scenario : str
        One of :data:`SCENARIOS`.
    seed : int
        Same arguments, same pair.
    shape : (H, W)
        Size in pixels.
    bands : int
        3 (red, green, blue) or 4 (and near-infrared).
    pixel_size : float
        Metres per pixel.
    n_static, n_appeared, n_disappeared : int
        Buildings at both dates, built, demolished.
    sizes_m, heights_m : (float, float)
        Ranges of building lengths and heights, metres (widths are 1 to 1.6
        times less than lengths: the default smallest, 8 m x 5 m, is above
        changedet's 30 m2 minimum mapping unit).
    n_vehicles : int
        Cars at each date (tripled by ``"vehicles"``).
    dtype : str
        Output type; integers are scaled from reflectance 0-1.

    Returns
    -------
    SyntheticPair

    Raises
    ------
    ValueError
        If `scenario` is unknown.

    Examples
    --------
    >>> p = scenario_pair("sun", seed=1, shape=(160, 160), n_static=2, n_appeared=1,
    ...                   n_disappeared=0)
    >>> p.before.shape, p.scenario, len(p.appeared)
    ((4, 160, 160), 'sun', 1)
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario must be one of {SCENARIOS}, not {scenario!r}")
    every = scenario in ("all", "nochange")
    rng = np.random.default_rng(seed)
    s = 2  # supersampling: partial pixels at edges, at a quarter of the cost of 4
    h, w = shape
    px = lambda m: m / pixel_size  # noqa: E731

    patches: list[tuple[Polygon, str]] = []
    # Roads: asphalt strips across the scene (dark, and unchanged).
    for k in range(2):
        width = px(rng.uniform(6, 9))
        at = rng.uniform(0.2, 0.8) * (h if k == 0 else w)
        road = rect(-10, at, w + 20, width) if k == 0 else rect(at, -10, width, h + 20)
        patches.append((road, "asphalt"))
    for _ in range(int(rng.integers(3, 6))):
        pw, ph = px(rng.uniform(25, 70)), px(rng.uniform(25, 70))
        x, y = rng.uniform(-pw / 3, w - pw / 2), rng.uniform(-ph / 3, h - ph / 2)
        patches.append((rect(x, y, pw, ph), str(rng.choice(["grass", "grass", "crop_green",
                                                              "soil"]))))
    season = scenario == "phenology" or every
    g_before, g_after = _ground_pair((h * s, w * s), patches, bands=bands, rng=rng, scale=s,
                                     season=season)

    taken: list[Polygon] = []
    lo, hi = np.log(sizes_m[0]), np.log(sizes_m[1])

    def structure() -> SceneObject | None:
        side = px(float(np.exp(rng.uniform(lo, hi))))
        aspect = float(rng.uniform(1.0, 1.6))
        size = (side, side / aspect) if rng.random() < 0.5 else (side / aspect, side)
        return _building(rng, shape, size, taken, px(4.0), heights_m)

    static = [o for o in (structure() for _ in range(n_static)) if o]
    changes = scenario != "nochange"
    new = [o for o in (structure() for _ in range(n_appeared if changes else 0)) if o]
    gone = [o for o in (structure() for _ in range(n_disappeared if changes else 0)) if o]
    trees = []
    for _ in range(int(rng.integers(6, 12))):
        r = px(rng.uniform(2.0, 4.0))
        fp = _place(rng, shape, (2 * r, 2 * r), taken, px(1.0))
        if fp is not None:
            taken.append(fp)
            c = fp.centroid
            trees.append(SceneObject(c.buffer(r, quad_segs=8), "tree",
                                     height=float(rng.uniform(5, 10)), texture=0.03,
                                     kind="tree"))
    trees_after = [replace(t, material=PHENOLOGY["tree"]) if season else t for t in trees]

    cars = ["white", "dark", "red", "blue", "metal"]
    n_cars = n_vehicles * (3 if scenario in ("vehicles", "all", "nochange") else 1)

    def vehicles() -> list[SceneObject]:
        out = []
        for _ in range(n_cars):
            fp = _place(rng, shape, (px(4.5), px(1.8)), taken, 1.0,
                        angle=float(rng.choice([0.0, 90.0, 35.0])))
            if fp is not None:
                out.append(SceneObject(fp, cars[int(rng.integers(len(cars)))], height=1.5,
                                       texture=0.01, kind="vehicle"))
        return out

    sun_b = Sun(140.0, 62.0)
    sun_a = Sun(215.0, 38.0) if scenario == "sun" or every else sun_b
    sensor_b = Sensor(blur=0.6, noise=0.008)
    sensor_a = Sensor(blur=0.6, noise=0.008)
    if scenario == "radiometry" or every:
        gain = tuple(float(v) for v in rng.uniform(0.8, 1.25, 4))
        offset = tuple(float(v) for v in rng.uniform(-0.02, 0.05, 4))
        sensor_a = replace(sensor_a, gain=gain, offset=offset, haze=0.08, blur=0.75,
                           noise=0.012)
    if scenario == "shift" or every:
        sensor_a = replace(sensor_a, shift=(0.45, -0.3))

    before = render(g_before, static + gone + trees + vehicles(), sun=sun_b, sensor=sensor_b,
                    pixel_size=pixel_size, supersample=s, rng=rng)
    after = render(g_after, static + new + trees_after + vehicles(), sun=sun_a,
                   sensor=sensor_a, pixel_size=pixel_size, supersample=s, rng=rng)
    appeared = [o.footprint for o in new]
    disappeared = [o.footprint for o in gone]
    return SyntheticPair(
        before=quantise(before, dtype), after=quantise(after, dtype),
        truth=_truth_raster(shape, appeared, disappeared), appeared=appeared,
        disappeared=disappeared, shift=sensor_a.shift, scenario=scenario,
        pixel_size=pixel_size)
