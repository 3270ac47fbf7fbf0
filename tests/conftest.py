"""Shared fixtures: small synthetic tiles written to tmp_path, and the real data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS

from changedet.synthetic import Sensor, Sun, random_pair

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_tiles"
# ../shared/data from the project root; CHANGEDET_SHARED_DATA points elsewhere
# (e.g. from a git worktree that sits one level deeper).
SHARED_DATA = Path(os.environ.get("CHANGEDET_SHARED_DATA", ROOT.parent / "shared" / "data"))

#: A 0.5 m UTM grid (zone 51N, near Pyongyang) used by most synthetic tiles.
UTM = CRS.from_epsg(32651)
ORIGIN = (738180.0, 4322620.0)
PIXEL = 0.5


def utm_transform(pixel: float = PIXEL, origin: tuple[float, float] = ORIGIN) -> Affine:
    return Affine(pixel, 0, origin[0], 0, -pixel, origin[1])


def write_tif(path: Path, data: np.ndarray, *, transform: Affine | None = None,
              crs: CRS | str | None = UTM, nodata: float | None = None,
              mask: np.ndarray | None = None, **extra) -> Path:
    """Write (bands, H, W) or (H, W) data as a tiled GeoTIFF."""
    data = data if data.ndim == 3 else data[np.newaxis]
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1],
                   count=data.shape[0], dtype=data.dtype.name, crs=crs,
                   transform=transform if transform is not None else utm_transform(),
                   nodata=nodata)
    if data.shape[1] % 16 == 0 and data.shape[2] % 16 == 0:
        profile.update(tiled=True, blockxsize=min(256, data.shape[2]),
                       blockysize=min(256, data.shape[1]))
    if data.shape[0] == 4 and data.dtype == np.uint8:
        # Red, green, blue and near-infrared, flagged as NAIP flags them
        # (rasterio's default would make the fourth band alpha).
        profile["photometric"] = "RGB"
    profile.update(extra)
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
        if mask is not None:
            ds.write_mask(np.where(mask, 0, 255).astype("uint8"))
    return path


#: Nuisances of a realistic pair a few days apart: gain, offset, haze, blur,
#: noise, a sub-pixel shift, a slight change of sun.
NUISANCE_AFTER = Sensor(gain=(1.12, 1.08, 1.03, 1.0), offset=(0.02, 0.025, 0.04, 0.0),
                        haze=0.06, blur=0.75, noise=0.01, shift=(2.4, -1.3))


def flat_pair(seed: int = 0, *, n_appeared: int = 2, n_disappeared: int = 1,
              bands: int = 3, dtype: str = "uint8", shape=(256, 256),
              sensor_after: Sensor = NUISANCE_AFTER, **kw):
    """A pair whose structures are flat (no shadows): truth = footprints."""
    return random_pair(shape, bands=bands, seed=seed, n_appeared=n_appeared,
                       n_disappeared=n_disappeared, sizes_m=(10.0, 22.0), heights_m=(0.0, 0.0),
                       sun_before=Sun(150, 55), sun_after=Sun(152, 54),
                       sensor_after=sensor_after, dtype=dtype, **kw)


def lawn_pair(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Four bands (R, G, B, NIR), float32, 160 px: a lawn dries; a grey roof is built on it.

    The lawn is rows and columns 20-110, the roof 60-90.
    """
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    h, w = 160, 160
    paving = np.array([100, 98, 94, 110], np.float32)
    grass = np.array([20, 41, 15, 115], np.float32)
    dry = np.array([48, 51, 28, 79], np.float32)
    tex = ndimage.gaussian_filter(rng.normal(0, 1, (h, w)), 1.0).astype(np.float32)
    tex = 1 + 0.25 * tex / tex.std()
    b = np.empty((4, h, w), np.float32)
    b[:] = paving[:, None, None]
    b[:, 20:110, 20:110] = grass[:, None, None]
    a = b.copy()
    a[:, 20:110, 20:110] = dry[:, None, None]
    b *= tex
    a *= tex
    a[:, 60:90, 60:90] = np.array([71, 71, 76, 79], np.float32)[:, None, None]  # grey roof
    return tuple(im + rng.normal(0, 1.5, im.shape).astype(np.float32) for im in (b, a))


@pytest.fixture
def pair_files(tmp_path):
    """Write a flat synthetic pair as GeoTIFFs; returns (before, after, pair)."""

    def make(seed: int = 0, **kw):
        p = flat_pair(seed, **kw)
        b = write_tif(tmp_path / f"before_{seed}.tif", p.before)
        a = write_tif(tmp_path / f"after_{seed}.tif", p.after)
        return b, a, p

    return make


@pytest.fixture(scope="session")
def sample_tiles() -> Path:
    if not (SAMPLE / "square_before.tif").exists():
        pytest.fail("sample_tiles/ is missing; run scripts/make_sample_tiles.py")
    return SAMPLE


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (it is not shipped)")
    return SHARED_DATA


def pixel_polygons_to_map(geoms, transform: Affine):
    from shapely.affinity import affine_transform

    coeffs = [transform.a, transform.b, transform.d, transform.e, transform.c, transform.f]
    return [affine_transform(g, coeffs) for g in geoms]
