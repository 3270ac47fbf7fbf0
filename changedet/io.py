"""Reading inputs and writing outputs: the only module that touches files.

Inputs may be paths (anything GDAL reads), open rasterio datasets, or
in-memory :class:`Raster` objects. Every read returns float32 pixels and a
boolean mask (True = invalid, as numpy.ma) that folds together the nodata
value, the dataset's mask or alpha band, non-finite values and, for warped
reads, pixels that fall outside the source.

Every write goes to a temporary file in the destination folder and is moved
into place only when complete, so an interrupted run never leaves a partial
file and never clobbers an existing one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import tempfile
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np
import rasterio
import rasterio.dtypes
import rasterio.shutil
from affine import Affine
from numpy.typing import ArrayLike, NDArray
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.errors import CRSError, NotGeoreferencedWarning, RasterioError
from rasterio.io import DatasetReader, MemoryFile
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform as warp_transform
from rasterio.windows import Window

from changedet.errors import (
    InputError,
    OutputError,
    OutputExistsError,
    RasterReadError,
    ROIError,
)
from changedet.grid import PIXEL_TRANSFORM, WGS84, Grid, roi_polygon, translation_between
from changedet.process import SharedSetting
from changedet.resample import cubic_shift, cubic_support, exact_in_float32

__all__ = [
    "Raster",
    "RasterSource",
    "ImageInfo",
    "open_raster",
    "image_info",
    "source_name",
    "read_window",
    "read_warped",
    "read_aligned",
    "TileReader",
    "read_preview",
    "Preview",
    "rgb_bands",
    "date_tags",
    "read_roi",
    "raster_memfile",
    "source_label",
    "check_output_path",
    "check_output_paths",
    "atomic_output",
    "write_text",
    "write_geojson",
    "write_class_raster",
    "write_float_raster",
    "write_png",
    "write_image",
    "dumps_geojson",
    "RasterBlockWriter",
    "Scratch",
    "class_overview",
    "class_raster_writer",
    "GeoJSONWriter",
    "package_text",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Raster:
    """An in-memory image with its georeferencing.

    Parameters
    ----------
    data : (bands, H, W) or (H, W) ndarray
        Pixel values, any real dtype.
    transform : Affine
        Pixel to map transform.
    crs : CRS, str or None
        Coordinate reference system (anything ``CRS.from_user_input``
        takes); ``None`` for pixel space.
    nodata : float, optional
        Value marking invalid pixels.
    mask : (H, W) ndarray of bool, optional
        True where pixels are invalid.
    name : str, optional
        A label for messages and metadata.
    """

    data: NDArray[Any]
    transform: Affine = field(default_factory=Affine.identity)
    crs: CRS | str | None = None
    nodata: float | None = None
    mask: NDArray[np.bool_] | None = None
    name: str = "<array>"


RasterSource = str | os.PathLike | DatasetReader | Raster


def source_label(src: RasterSource) -> str:
    """Return how to name an input in outputs and messages: its full path, or its name.

    GDAL's ``vrt://PATH?OPTIONS`` is named by its PATH.
    """
    if isinstance(src, (str, os.PathLike)):
        return _vrt_target(os.fspath(src))
    if isinstance(src, Raster):
        return src.name
    return _vrt_target(str(getattr(src, "name", "<dataset>")))


def _vrt_target(name: str) -> str:
    return name[6:].split("?", 1)[0] if name.startswith("vrt://") else name


def _name(src: RasterSource) -> str:
    if isinstance(src, Raster):
        return src.name
    if isinstance(src, (DatasetReader, WarpedVRT)):
        name = _vrt_target(src.name)
        return os.path.basename(name) or name
    return os.path.basename(_vrt_target(os.fspath(src)))


@contextlib.contextmanager
def open_raster(src: RasterSource) -> Iterator[DatasetReader]:
    """Open an input as a rasterio dataset.

    A path is opened and closed here; an open dataset is passed through and
    left open; a :class:`Raster` is wrapped in an in-memory GeoTIFF.

    Raises
    ------
    RasterReadError
        If the file is missing or GDAL cannot read it.
    InputError
        If the raster has a complex data type or no bands.
    """
    if isinstance(src, DatasetReader):
        _check_dataset(src, _name(src))
        yield src
        return
    if isinstance(src, Raster):
        with raster_memfile(src) as mem, mem.open() as ds:
            yield ds
        return
    if not isinstance(src, (str, os.PathLike)):
        wrap = (" (wrap an array with its georeferencing: changedet.Raster(array, "
                "transform=..., crs=...))" if isinstance(src, np.ndarray) else "")
        raise InputError(f"an input must be a file path, an open rasterio dataset or a "
                         f"changedet.Raster, not {type(src).__name__}{wrap}")
    path = os.fspath(src)
    name = os.path.basename(path) or path
    if is_local_path(path) and not os.path.exists(path):
        raise RasterReadError(f"{path}: no such file")
    with _open_path(path) as ds:
        _check_dataset(ds, name)
        yield ds


def _filters_changed() -> None:
    # What warnings.filterwarnings does after changing the list, so that
    # warnings already seen are judged by the new filters.
    getattr(warnings, "_filters_mutated", lambda: None)()


def _ignore_not_georeferenced() -> tuple[Any, ...]:
    entry = ("ignore", None, NotGeoreferencedWarning, None, 0)
    warnings.filters.insert(0, entry)
    _filters_changed()
    return entry


def _remove_filter(entry: tuple[Any, ...]) -> None:
    # That very entry: one equal to it may be the user's own.
    for i, found in enumerate(warnings.filters):
        if found is entry:
            del warnings.filters[i]
            _filters_changed()
            return


_QUIET = SharedSetting(_ignore_not_georeferenced, _remove_filter)


def quiet_not_georeferenced() -> contextlib.AbstractContextManager[None]:
    """Silence rasterio's warning about images without georeferencing.

    changedet says so itself, once; rasterio would on every handle a block
    opens. ``warnings.catch_warnings`` cannot do it: it saves and restores
    the process's whole filter list, so two threads (a run's blocks, or two
    runs) entering and leaving it at once can drop a filter or leave one
    behind. Instead one filter entry is added when the first user enters
    and that very entry removed when the last one leaves
    (:class:`~changedet.process.SharedSetting`).
    """
    return _QUIET.held()


#: GDAL names that are not files on disk: a driver's subdataset syntax
#: (``NETCDF:"f.nc":var``, ``GPKG:f.gpkg:table``), not a Windows drive letter.
_DRIVER_PREFIX = re.compile(r"^[A-Za-z][A-Za-z0-9_]+:")


def is_local_path(path: str) -> bool:
    """Tell a file on disk from the other names GDAL opens.

    URLs, GDAL's virtual file systems (``/vsizip/``, ``/vsis3/``, ...) and
    subdataset names are not checked for existence here: GDAL says whether
    it can open them.

    Examples
    --------
    >>> is_local_path("before.tif"), is_local_path("C:/data/before.tif")
    (True, True)
    >>> is_local_path("/vsizip/pair.zip/after.tif"), is_local_path('NETCDF:"s.nc":b4')
    (False, False)
    """
    return not ("://" in path or path.startswith("/vsi") or _DRIVER_PREFIX.match(path))


def _open_path(path: str) -> DatasetReader:
    # rasterio.open without its warning on pixel-space files (changedet says
    # so itself, once); GDAL's refusal as a RasterReadError.
    try:
        with quiet_not_georeferenced():
            return rasterio.open(path)
    except RasterioError as exc:
        if os.path.isdir(path):
            raise RasterReadError(f"{path}: is a folder, not an image; give an image file "
                                  "in it") from exc
        raise RasterReadError(f"{path}: cannot be read as a raster: not an image GDAL knows, "
                              f"or truncated or corrupt ({_first_line(exc)})") from exc


def _unreadable(name: str, exc: BaseException) -> RasterReadError:
    # GDAL failed mid-read: the file opened, its pixels did not decode.
    return RasterReadError(f"{name}: could not read pixels, the file may be truncated or "
                           f"corrupt ({_first_line(exc)})")


def _first_line(exc: BaseException) -> str:
    # rasterio wraps GDAL's own message ("Read failed. See previous
    # exception...") around the error that says what went wrong: use that.
    while exc.__cause__ is not None or (exc.__context__ is not None
                                        and "previous exception" in str(exc)):
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _check_dataset(ds: DatasetReader, name: str) -> None:
    if ds.count < 1:
        subs = list(getattr(ds, "subdatasets", None) or [])
        if subs:
            shown = ", ".join(subs[:5]) + (f" and {len(subs) - 5} more" if len(subs) > 5 else "")
            raise InputError(f"{name}: holds {len(subs)} rasters (subdatasets), not one; "
                             f"give one of them as the input, e.g. {shown}")
        raise InputError(f"{name}: has no raster bands")
    for dt in set(ds.dtypes):
        if np.dtype(dt).kind == "c":
            raise InputError(f"{name}: complex pixel type {dt} is not supported; "
                             "convert to amplitude first (e.g. gdal_calc.py)")
        if np.dtype(dt).kind not in "uif":
            raise InputError(f"{name}: pixel type {dt} is not supported")


@contextlib.contextmanager
def raster_memfile(r: Raster) -> Iterator[MemoryFile]:
    """Yield an in-memory GeoTIFF holding a :class:`Raster`, reopenable by its name."""
    data = np.asarray(r.data)
    if data.ndim == 2:
        data = data[np.newaxis]
    if data.ndim != 3 or data.shape[1] < 1 or data.shape[2] < 1:
        raise InputError(f"{r.name}: expected a (bands, H, W) or (H, W) array, "
                         f"got shape {np.shape(r.data)}")
    if data.dtype.kind not in "uif" or data.dtype == np.float16:
        raise InputError(f"{r.name}: pixel type {data.dtype} is not supported")
    if data.dtype == np.int8 or data.dtype == np.bool_:
        data = data.astype(np.int16)
    try:
        crs = CRS.from_user_input(r.crs) if r.crs is not None else None
    except CRSError as exc:
        raise InputError(f"{r.name}: unrecognised CRS {r.crs!r}") from exc
    # MINISBLACK: GDAL would otherwise flag the fourth band of a 4-band byte
    # image as alpha, and an array's bands are all data.
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1],
                   count=data.shape[0], dtype=data.dtype.name, transform=r.transform,
                   crs=crs, nodata=r.nodata, photometric="MINISBLACK")
    with MemoryFile() as mem:
        with quiet_not_georeferenced():
            with mem.open(**profile) as ds:
                ds.write(data)
                if r.mask is not None:
                    m = np.asarray(r.mask, dtype=bool)
                    if m.shape != data.shape[1:]:
                        raise InputError(f"{r.name}: mask shape {m.shape} does not match "
                                         f"image shape {data.shape[1:]}")
                    ds.write_mask(np.where(m, 0, 255).astype(np.uint8))
        yield mem


@dataclass(frozen=True)
class ImageInfo:
    """What changedet needs to know about an input before reading pixels."""

    name: str
    grid: Grid
    bands: tuple[int, ...]
    dtypes: tuple[str, ...]
    nodata: float | None
    block_shape: tuple[int, int]
    alpha: int | None = None

    @property
    def count(self) -> int:
        """Number of data bands (an alpha band is a mask, not data)."""
        return len(self.bands)


def _alpha_band(ds: DatasetReader) -> int | None:
    for i, ci in enumerate(ds.colorinterp, start=1):
        if ci == ColorInterp.alpha:
            return i
    return None


def _check_alpha(ds: DatasetReader, band: int, name: str) -> None:
    # A true alpha band is a mask: almost all 0 or 255 (or the type's max).
    # Writers that flag a fourth data band (often near-infrared) as alpha
    # would otherwise make most of the image transparent.
    step = max(1, max(ds.width, ds.height) // 256)
    sample = ds.read(band, out_shape=(max(1, ds.height // step), max(1, ds.width // step)),
                     resampling=Resampling.nearest)
    top = np.iinfo(sample.dtype).max if sample.dtype.kind in "ui" else 1.0
    if np.isin(sample, (0, top)).mean() < 0.98:
        raise InputError(
            f"{name}: band {band} is flagged as alpha (transparency) but holds image values; "
            f"clear the flag with 'gdal_translate -colorinterp_{band} undefined {name} "
            "fixed.tif' and use fixed.tif")


def source_name(src: RasterSource) -> str | None:
    """Return the name an input goes by in messages, if its dataset's will not do.

    An in-memory :class:`Raster` is opened through a temporary file, whose
    name would mean nothing to the user: its own name is returned. For
    paths and open datasets, None (the dataset's name is right).
    """
    return src.name if isinstance(src, Raster) else None


def image_info(ds: DatasetReader, name: str | None = None) -> ImageInfo:
    """Describe an open dataset (its grid, data bands, types, nodata).

    Raises
    ------
    InputError
        If a band flagged as alpha holds image values rather than a mask.
    """
    alpha = _alpha_band(ds)
    if alpha is not None:
        _check_alpha(ds, alpha, name or _name(ds))
    if ds.crs is None:
        _check_not_placed_otherwise(ds, name or _name(ds))
    return ImageInfo(
        name=name or _name(ds),
        grid=_grid(ds),
        bands=tuple(i for i in range(1, ds.count + 1) if i != alpha),
        dtypes=tuple(ds.dtypes),
        nodata=ds.nodata,
        block_shape=tuple(ds.block_shapes[0]) if ds.block_shapes else (256, ds.width),
        alpha=alpha,
    )


def _check_not_placed_otherwise(ds: DatasetReader, name: str) -> None:
    # No grid, but ground control points or a sensor model (RPCs) place the
    # image: comparing it pixel for pixel would be wrong. Say how to put it
    # on a grid.
    gcps, _ = ds.gcps
    if gcps:
        raise InputError(
            f"{name}: is placed by {len(gcps)} ground control points, not on a grid; warp it "
            f"onto one first (e.g. gdalwarp -r cubic {name} warped.tif, or QGIS's "
            "Georeferencer), then compare the warped file")
    if ds.rpcs:
        raise InputError(
            f"{name}: is placed by a sensor model (RPCs), not on a grid; orthorectify it "
            f"first (e.g. gdalwarp -rpc -r cubic {name} ortho.tif, with a DEM for relief), "
            "then compare the result")


def _grid(ds: DatasetReader) -> Grid:
    # A dataset's own grid; pixel space when it has no CRS.
    if ds.crs is None:
        return Grid(PIXEL_TRANSFORM, None, ds.width, ds.height)
    return Grid(ds.transform, ds.crs, ds.width, ds.height)


def _indexes(ds: DatasetReader, bands: Sequence[int] | None, name: str) -> list[int]:
    if bands is None:
        alpha = _alpha_band(ds)
        return [i for i in range(1, ds.count + 1) if i != alpha]
    bad = [b for b in bands if not 1 <= b <= ds.count]
    if bad:
        raise InputError(f"{name}: has {ds.count} band(s); band(s) {bad} do not exist")
    return list(bands)


def _invalid_from(data: NDArray[Any], masks: NDArray[np.uint8] | None,
                  ) -> NDArray[np.bool_] | None:
    # Invalid where any band is masked (masks None: GDAL says none is) or,
    # for floats, not finite; None when nothing can be.
    invalid = None if masks is None else (masks == 0).any(axis=0)
    if data.dtype.kind == "f":
        bad = ~np.isfinite(data).all(axis=0)
        invalid = bad if invalid is None else invalid | bad
    return invalid


#: Side, in source pixels, of the pieces a decimated read is made of (see
#: :func:`_read_decimated`).
DECIMATE_PIECE_PX = 1024


def _read_decimated(ds: DatasetReader, idx: list[int], window: Window,
                    out_shape: tuple[int, int]) -> tuple[NDArray[np.float32], NDArray[np.uint8]]:
    # GDAL resamples band by band: on a pixel-interleaved file read whole,
    # every band decodes every tile again once the file outgrows the block
    # cache (4 bands: 4 times the work). Pieces of about DECIMATE_PIECE_PX
    # source pixels a side keep a piece's tiles cached while all its bands
    # are read (two files read at once included).
    oh, ow = out_shape
    ry, rx = float(window.height) / oh, float(window.width) / ow
    sy, sx = max(1, int(DECIMATE_PIECE_PX // ry)), max(1, int(DECIMATE_PIECE_PX // rx))
    data = np.empty((len(idx), oh, ow), np.float32)
    masks = np.empty((len(idx), oh, ow), np.uint8)
    for o0 in range(0, oh, sy):
        o1 = min(oh, o0 + sy)
        for p0 in range(0, ow, sx):
            p1 = min(ow, p0 + sx)
            piece = Window(window.col_off + p0 * rx, window.row_off + o0 * ry,
                           (p1 - p0) * rx, (o1 - o0) * ry)
            shape = (len(idx), o1 - o0, p1 - p0)
            data[:, o0:o1, p0:p1] = ds.read(idx, window=piece, out_dtype="float32",
                                            out_shape=shape, resampling=Resampling.average)
            masks[:, o0:o1, p0:p1] = ds.read_masks(idx, window=piece, out_shape=shape)
    return data, masks


def read_window(ds: DatasetReader, window: Window, *, bands: Sequence[int] | None = None,
                name: str | None = None, out_shape: tuple[int, int] | None = None,
                ) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """Read a window of a dataset on its own grid.

    Parameters
    ----------
    out_shape : (h, w), optional
        Read the window decimated to this size, averaging (GDAL uses the
        dataset's overviews when it has them).

    Returns
    -------
    data : (bands, h, w) ndarray of float32
        Pixel values; invalid pixels hold 0.
    invalid : (h, w) ndarray of bool
        True where any band is nodata, masked or not finite.

    Raises
    ------
    RasterReadError
        If GDAL fails while reading (a truncated or corrupt file).
    """
    name = name or _name(ds)
    idx = _indexes(ds, bands, name)
    try:
        if out_shape is None:
            data = ds.read(idx, window=window, out_dtype="float32")
            masks = ds.read_masks(idx, window=window)
        else:
            data, masks = _read_decimated(ds, idx, window, out_shape)
    except RasterioError as exc:
        raise _unreadable(name, exc) from exc
    invalid = _invalid_from(data, masks)  # an array: masks were read
    data[:, invalid] = 0
    return data, invalid


def read_warped(ds: DatasetReader, grid: Grid, *, bands: Sequence[int] | None = None,
                offset_px: tuple[float, float] = (0.0, 0.0),
                pixel_transform: Affine | None = None,
                resampling: Resampling = Resampling.cubic,
                name: str | None = None) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """Resample a dataset onto `grid`, optionally displaced, in one warp.

    Parameters
    ----------
    ds : DatasetReader
        The source image, in any CRS.
    grid : Grid
        Destination grid.
    offset_px : (float, float), optional
        ``(x, y)`` in pixels of `grid`: output pixel ``(col, row)`` takes the
        source's value at grid location ``(col + x, row + y)``. This is how a
        co-registration shift is removed without resampling twice.
    pixel_transform : Affine, optional
        A general version of `offset_px`: output pixel ``(col, row)`` takes
        the source's value at grid location ``pixel_transform @ (col, row)``
        (pixel coordinates of `grid`). Used for a fitted affine alignment;
        `offset_px` is applied after it.
    resampling : Resampling, optional
        GDAL resampling kernel (cubic by default, to keep edges sharp).

    Returns
    -------
    data : (bands, H, W) ndarray of float32
    invalid : (H, W) ndarray of bool
        True outside the source or where the source is invalid.

    Notes
    -----
    Uses a GDAL ``WarpedVRT`` with an alpha band, so that the source's
    nodata, mask band and footprint all end up in `invalid`. Warping is done
    in float32 so a cubic kernel does not round to the source's integer type.
    """
    name = name or _name(ds)
    idx = _indexes(ds, bands, name)
    p = pixel_transform if pixel_transform is not None else Affine.identity()
    dst_transform = grid.transform @ Affine.translation(*offset_px) @ p
    src_alpha = _alpha_band(ds)
    # The warped alpha band says which output pixels have a valid source: it
    # folds in nodata, mask bands and the source's footprint. A source alpha
    # band is carried through as it is; otherwise one is added.
    vrt_opts: dict[str, Any] = dict(
        crs=grid.crs if grid.crs is not None else ds.crs,
        transform=dst_transform, width=grid.width, height=grid.height,
        resampling=resampling, add_alpha=src_alpha is None, dtype="float32",
        # The same values whatever the window asked for (blocks, halos): an
        # exact transformation (GDAL's default interpolates it, to 1/8 px,
        # over chunks that depend on the window; rasterio refuses 0), and
        # the kernel's scale fixed for the whole image (GDAL's default
        # measures it on each chunk).
        tolerance=_EXACT)
    if ds.nodata is None and any(np.dtype(d).kind == "f" for d in ds.dtypes):
        vrt_opts["src_nodata"] = float("nan")
    if grid.crs is None:
        # Pixel space: give GDAL an arbitrary common frame to warp in.
        vrt_opts.update(src_crs="EPSG:3857", crs="EPSG:3857", src_transform=PIXEL_TRANSFORM)
    xscale, yscale = _warp_scale(
        CRS.from_user_input(vrt_opts.get("src_crs", ds.crs)),
        vrt_opts.get("src_transform", ds.transform), (ds.height, ds.width),
        CRS.from_user_input(vrt_opts["crs"]), dst_transform)
    # Source pixels read around each chunk: the widest kernel's reach (3,
    # Lanczos) widened as the scale shrinks it, so no window clips it.
    extra = math.ceil(3 / min(xscale, yscale, 1.0)) + 1
    vrt_opts.update(XSCALE=xscale, YSCALE=yscale, SOURCE_EXTRA=extra)
    # No warning filter needed here: a WarpedVRT with an explicit source
    # transform raises no NotGeoreferencedWarning.
    try:
        with WarpedVRT(ds, **vrt_opts) as vrt:
            data = vrt.read(idx, out_dtype="float32")
            alpha = vrt.read(src_alpha or vrt.count)
    except RasterioError as exc:
        raise RasterReadError(f"{name}: could not read or reproject pixels, the file may "
                              f"be truncated or corrupt ({_first_line(exc)})") from exc
    invalid = (alpha < 255) | ~np.isfinite(data).all(axis=0)
    data[:, invalid] = 0
    return data, invalid


#: Error allowed in the warp's transformation, source pixels: none to speak of.
_EXACT = 1e-9


def _warp_scale(src_crs: CRS, src_transform: Affine, size: tuple[int, int], dst_crs: CRS,
                dst_transform: Affine) -> tuple[float, float]:
    # Destination pixels one source column and one source row span (GDAL's
    # XSCALE and YSCALE: the kernel's taps run over source columns and rows;
    # below 1 it widens to average what it shrinks), measured once, at the
    # source's centre: the same for every window.
    h, w = size
    cols, rows = np.array([w / 2, w / 2 + 1, w / 2]), np.array([h / 2, h / 2, h / 2 + 1])
    t = src_transform
    xs, ys = t.a * cols + t.b * rows + t.c, t.d * cols + t.e * rows + t.f
    if src_crs != dst_crs:
        xs, ys = (np.asarray(v) for v in warp_transform(src_crs, dst_crs, xs, ys))
    inv = ~dst_transform
    dc, dr = inv.a * xs + inv.b * ys + inv.c, inv.d * xs + inv.e * ys + inv.f
    x, y = (max(math.hypot(dc[k] - dc[0], dr[k] - dr[0]), 1e-12) for k in (1, 2))
    return x, y


#: Tiles larger than this (pixels a side) are not cached: a striped file's
#: "tile" is a strip the width of the image.
_MAX_CACHED_TILE = 2048

#: Default bound of a :class:`TileReader`'s decoded tiles, bytes.
TILE_CACHE_BYTES = 128 * 2 ** 20

#: Evicted tiles a TileReader keeps to decode new ones into.
_SPARE_TILES = 4


def _tiles_across(start: int, stop: int, tile: int) -> range:
    # Indexes of the tiles of side `tile` that pixels start..stop-1 lie in.
    return range(start // tile, (stop - 1) // tile + 1) if stop > start else range(0)


class Scratch:
    """Arrays kept from one use to the next, per thread.

    A block's window of each image is some 20 MB of float32; allocated
    afresh for every block, each costs the kernel thousands of page faults
    (it zeroes every new page): half of a run's faults came from these. A thread
    that reads its blocks one after the other through a ``Scratch`` reuses
    the same memory: an array it is given is valid until that thread asks
    for the same name again.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def array(self, name: str, shape: tuple[int, ...], dtype: Any) -> NDArray[Any]:
        """Return an uninitialised array of `shape`, reusing this thread's `name`."""
        arrays = self._local.__dict__.setdefault("arrays", {})
        dtype = np.dtype(dtype)
        size = math.prod(shape)
        buf = arrays.get(name)
        if buf is None or buf.dtype != dtype or buf.size < size:
            buf = arrays[name] = np.empty(size, dtype)
        return buf[:size].reshape(shape)


class TileReader:
    """Windows of one raster assembled from its tiles, each decoded once.

    A block read with a halo touches more tiles than its core holds (a
    1024-pixel block with a 24-pixel halo on 512-pixel tiles decodes 16
    tiles for 4), and its neighbours decode the same tiles again. A
    ``TileReader`` keeps the most recently used decoded tiles, up to
    `max_bytes`, shared by all threads, so blocks visited in order decode
    each tile about once. Each thread reads through its own dataset handle
    (a GDAL handle must not be shared between threads); two threads asking
    for the same tile wait for one decode.

    Files whose blocks are wider or taller than 2048 pixels (the strips of a
    wide untiled image) are read window by window, uncached.

    Parameters
    ----------
    path : str
        Anything ``rasterio.open`` opens (a path, URL or in-memory file).
    bands : sequence of int, optional
        1-based bands to read (default: all data bands).
    name : str, optional
        The input's name in messages.
    max_bytes : int, optional
        Bound on the decoded tiles kept.
    max_pixels : int, optional
        The bound as pixels of a band instead (``max_pixels * pixel_bytes``
        bytes; the bytes a pixel takes are known once the file is open).

    Examples
    --------
    >>> with TileReader("before.tif") as r:                   # doctest: +SKIP
    ...     data, invalid = r.read(Window(0, 0, 1024, 1024))
    """

    def __init__(self, path: str, *, bands: Sequence[int] | None = None,
                 name: str | None = None, max_bytes: int = TILE_CACHE_BYTES,
                 max_pixels: int | None = None) -> None:
        self.path, self.max_bytes = path, int(max_bytes)
        self._local = threading.local()
        self._handles: list[DatasetReader] = []
        self._lock = threading.Lock()
        self._tiles: OrderedDict[tuple[int, int], Future] = OrderedDict()
        self._sizes: dict[tuple[int, int], int] = {}
        self._leases: dict[tuple[int, int], int] = {}
        self._spare: list[NDArray[Any]] = []
        #: Tiles handed over by another reader (adopt), kept until first read.
        self._pinned: set[tuple[int, int]] = set()
        self._bytes = 0
        #: Tiles decoded so far (a tile evicted and read again counts twice).
        self.decoded = 0
        ds = self.dataset()
        self.name = name or _name(ds)
        self.bands = _indexes(ds, bands, self.name)
        self.grid = _grid(ds)
        self.height, self.width = ds.height, ds.width
        th, tw = ds.block_shapes[0]
        self.tile_shape = (int(th), int(tw))
        self.cached = max(th, tw) <= _MAX_CACHED_TILE
        # No mask to read when GDAL says every pixel of every band is valid.
        self._all_valid = all(MaskFlags.all_valid in ds.mask_flag_enums[i - 1]
                              for i in self.bands)
        #: Bytes a cached pixel takes: its bands' values, and its mask.
        types = [np.dtype(ds.dtypes[i - 1]) for i in self.bands]
        #: The bands' common type when float32 holds its every value exactly
        #: (integers of up to 16 bits): `read(native=True)` keeps it.
        self.exact_dtype = types[0] if len(set(types)) == 1 and types[0].kind in "ui" \
            and exact_in_float32(types[0]) else None
        self.pixel_bytes = (sum(t.itemsize for t in types)
                            + (0 if self._all_valid and all(t.kind != "f" for t in types) else 1))
        if max_pixels is not None:
            self.max_bytes = int(max_pixels) * self.pixel_bytes

    def dataset(self) -> DatasetReader:
        """Return this thread's handle on the raster."""
        ds = getattr(self._local, "ds", None)
        if ds is None:
            ds = self._local.ds = _open_path(self.path)
            with self._lock:
                self._handles.append(ds)
        return ds

    def close(self) -> None:
        """Close every thread's handle and drop the cached tiles."""
        with self._lock:
            for ds in self._handles:
                ds.close()
            self._handles.clear()
        self.clear()

    def clear(self) -> None:
        """Drop the cached tiles (tiles being read stay theirs); handles stay open."""
        with self._lock:
            for key in self._pinned:
                self._unpin(key)
            self._pinned.clear()
            for key in [k for k in self._tiles if not self._leases.get(k)]:
                del self._tiles[key]
                self._bytes -= self._sizes.pop(key, 0)
            self._spare.clear()

    def __enter__(self) -> TileReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _decode(self, window: Window, out: NDArray[Any] | None = None,
                ) -> tuple[NDArray[Any], NDArray[np.bool_] | None]:
        ds = self.dataset()
        try:
            data = ds.read(self.bands, window=window, out=out)
            masks = None if self._all_valid else ds.read_masks(self.bands, window=window)
        except RasterioError as exc:
            raise _unreadable(self.name, exc) from exc
        return data, _invalid_from(data, masks)

    def _tile(self, key: tuple[int, int]) -> tuple[NDArray[Any], NDArray[np.bool_] | None]:
        # The decoded tile, leased: it stays cached (and its memory is not
        # reused) until the caller gives it back with _release.
        with self._lock:
            self._leases[key] = self._leases.get(key, 0) + 1
            if key in self._pinned:
                self._pinned.discard(key)
                self._unpin(key)
            pending = self._tiles.get(key)
            owner = pending is None
            if owner:
                pending = self._tiles[key] = Future()
            else:
                self._tiles.move_to_end(key)
        try:
            if not owner:
                return pending.result()
            return self._decode_tile(key, pending)
        except BaseException:
            self._release(key)
            raise

    def _decode_tile(self, key: tuple[int, int], pending: Future,
                     ) -> tuple[NDArray[Any], NDArray[np.bool_] | None]:
        th, tw = self.tile_shape
        r0, c0 = key[0] * th, key[1] * tw
        win = Window(c0, r0, min(tw, self.width - c0), min(th, self.height - r0))
        full = (int(win.height), int(win.width)) == (th, tw)
        with self._lock:
            # A full tile is decoded into the memory of one evicted before:
            # a new 2 MB array for each of thousands of tiles cost the
            # kernel a page fault per 4 kB.
            spare = self._spare.pop() if full and self._spare else None
        try:
            tile = self._decode(win, spare)
        except BaseException as exc:
            with self._lock:
                self._tiles.pop(key, None)
            pending.set_exception(exc)
            raise
        pending.set_result(tile)
        size = tile[0].nbytes + (0 if tile[1] is None else tile[1].nbytes)
        with self._lock:
            self.decoded += 1
            if key in self._tiles:
                self._sizes[key] = size
                self._bytes += size
            # Least recently used first; tiles being decoded or read stay.
            for old in list(self._tiles):
                if self._bytes <= self.max_bytes:
                    break
                if old in self._sizes and not self._leases.get(old):
                    data = self._tiles.pop(old).result()[0]
                    self._bytes -= self._sizes.pop(old)
                    if data.shape[1:] == (th, tw) and len(self._spare) < _SPARE_TILES:
                        self._spare.append(data)
        return tile

    def _release(self, key: tuple[int, int]) -> None:
        with self._lock:
            self._unlease(key)

    def _unpin(self, key: tuple[int, int]) -> None:
        # An adopted tile, first read: it is cached as any other from now
        # (the room it had on top of the cache's size goes with it).
        self.max_bytes -= self._sizes.get(key, 0)
        self._unlease(key)

    def _unlease(self, key: tuple[int, int]) -> None:
        # (The lock held.)
        n = self._leases[key] - 1
        if n:
            self._leases[key] = n
        else:
            del self._leases[key]

    def decoded_tiles(self) -> dict[tuple[int, int], tuple[NDArray[Any], NDArray[np.bool_] | None]]:
        """Return the decoded tiles cached now, by ``(tile row, tile column)`` (for adopt)."""
        with self._lock:
            return {key: tile.result() for key, tile in self._tiles.items()
                    if key in self._sizes}

    def adopt(self, tiles: dict[tuple[int, int], tuple[NDArray[Any], NDArray[np.bool_] | None]],
              ) -> None:
        """Take tiles another reader of the same raster and bands decoded (:meth:`decoded_tiles`).

        Each stays cached until it is first read (or :meth:`clear`), in room
        of its own on top of the cache's size: the estimation's samples
        handed to the blocks, which would otherwise decode them again, and
        the blocks' own tiles cached as before.
        """
        th, tw = self.tile_shape
        with self._lock:
            for key, (data, invalid) in tiles.items():
                rows = min(th, self.height - key[0] * th)
                cols = min(tw, self.width - key[1] * tw)
                if key in self._tiles or data.shape != (len(self.bands), rows, cols):
                    continue
                done: Future = Future()
                done.set_result((data, invalid))
                self._tiles[key] = done
                self._sizes[key] = data.nbytes + (0 if invalid is None else invalid.nbytes)
                self._bytes += self._sizes[key]
                self.max_bytes += self._sizes[key]
                self._leases[key] = self._leases.get(key, 0) + 1
                self._pinned.add(key)

    def _in_turn(self, r0: int, c0: int, h: int, w: int) -> Iterator[tuple[int, int]]:
        # The tiles of a window, each time one that no other thread is
        # decoding if there is one: it is decoded or copied meanwhile,
        # instead of waiting (two threads on neighbouring blocks share the
        # tiles under their halos).
        th, tw = self.tile_shape
        keys = [(tr, tc) for tr in _tiles_across(r0, r0 + h, th)
                for tc in _tiles_across(c0, c0 + w, tw)]
        while keys:
            with self._lock:
                i = next((i for i, k in enumerate(keys)
                          if k not in self._tiles or self._tiles[k].done()), 0)
            yield keys.pop(i)

    def read(self, window: Window, *, scratch: Scratch | None = None, native: bool = False,
             ) -> tuple[NDArray[Any], NDArray[np.bool_]]:
        """Read a window within the raster, as :func:`read_window` does.

        Parameters
        ----------
        window : Window
        scratch : Scratch, optional
            Assemble the window in this thread's scratch array (valid until
            the thread's next read through it).
        native : bool, optional
            Keep the file's type when float32 holds all its values
            (:attr:`exact_dtype`: integers of up to 16 bits), for a caller
            that converts a strip at a time (half the memory for 16 bits).

        Returns
        -------
        data : (bands, h, w) ndarray of float32 (or :attr:`exact_dtype`)
            Invalid pixels hold 0.
        invalid : (h, w) ndarray of bool
        """
        r0, c0 = int(window.row_off), int(window.col_off)
        h, w = int(window.height), int(window.width)
        if r0 < 0 or c0 < 0 or r0 + h > self.height or c0 + w > self.width:
            raise ValueError(f"window {window} is not within {self.name} "
                             f"({self.width} x {self.height})")
        if not self.cached:
            data, invalid = self._decode(window)
            data = data.astype(np.float32, copy=False)
            invalid = np.zeros((h, w), bool) if invalid is None else invalid
        else:
            shape = (len(self.bands), h, w)
            dtype = self.exact_dtype if native and self.exact_dtype is not None else np.float32
            data = np.empty(shape, dtype) if scratch is None else scratch.array(
                f"{id(self)}:{np.dtype(dtype).name}", shape, dtype)
            invalid = np.zeros((h, w), bool)
            th, tw = self.tile_shape
            for tr, tc in self._in_turn(r0, c0, h, w):
                tdata, tinv = self._tile((tr, tc))
                try:
                    # The tile's part in the window, in both frames.
                    y0, y1 = max(r0, tr * th), min(r0 + h, tr * th + tdata.shape[1])
                    x0, x1 = max(c0, tc * tw), min(c0 + w, tc * tw + tdata.shape[2])
                    dst = np.s_[y0 - r0:y1 - r0, x0 - c0:x1 - c0]
                    src = np.s_[y0 - tr * th:y1 - tr * th, x0 - tc * tw:x1 - tc * tw]
                    data[(slice(None),) + dst] = tdata[(slice(None),) + src]
                    if tinv is not None:
                        invalid[dst] = tinv[src]
                finally:
                    self._release((tr, tc))
        if invalid.any():
            data[:, invalid] = 0
        return data, invalid

    def read_padded(self, window: Window, *, scratch: Scratch | None = None,
                    native: bool = False) -> tuple[NDArray[Any], NDArray[np.bool_]]:
        """Read a window that may reach past the raster's edges.

        Pixels beyond an edge repeat the edge's pixels (valid ones stay
        valid): enough for a resampling kernel's support around a pixel
        that lies inside. A window wholly outside is all invalid. With
        `scratch`, as :meth:`read`.
        """
        r0, c0 = int(window.row_off), int(window.col_off)
        h, w = int(window.height), int(window.width)
        if r0 + h <= 0 or c0 + w <= 0 or r0 >= self.height or c0 >= self.width:
            return np.zeros((len(self.bands), h, w), np.float32), np.ones((h, w), bool)
        rr0, cc0 = max(r0, 0), max(c0, 0)
        rr1, cc1 = min(r0 + h, self.height), min(c0 + w, self.width)
        data, invalid = self.read(Window(cc0, rr0, cc1 - cc0, rr1 - rr0), scratch=scratch,
                                  native=native)
        if (rr0, cc0, rr1, cc1) == (r0, c0, r0 + h, c0 + w):
            return data, invalid
        pad = ((rr0 - r0, r0 + h - rr1), (cc0 - c0, c0 + w - cc1))
        return np.pad(data, ((0, 0),) + pad, mode="edge"), np.pad(invalid, pad, mode="edge")


#: How far beyond the source's first or last pixel centre a cubic sample
#: may lie, pixels: a rounding's worth. At 0.37 px the extrapolated values
#: of the 8192 px benchmark pair scored as change all along its edge.
_EXTRAPOLATED_PX = 1e-3


def read_aligned(src: TileReader, grid: Grid, *, pixel_transform: Affine | None = None,
                 resampling: Resampling = Resampling.cubic, scratch: Scratch | None = None,
                 linear: tuple[ArrayLike, ArrayLike] | None = None,
                 ) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """Resample a raster onto `grid`, as :func:`read_warped` does.

    When `grid`'s pixels are the source's moved by a translation (same CRS
    and pixel size; co-registration's shift included) and the kernel is
    cubic, this reads the source window plus the kernel's support and
    applies :func:`changedet.resample.cubic_shift`: the same Keys kernel as
    GDAL's ``cubic``, several times faster than a warp. A pixel is then
    invalid where its sample point lies outside the span of the source's
    pixel centres or any source pixel the kernel weighs is invalid. (GDAL's
    footprint reaches half a pixel further, to the source's edge: there
    the kernel extrapolates from the edge pixel repeated, and the dates
    compared there drew a line of false change along the image's edge.)
    Other cases are warped by GDAL.

    Parameters
    ----------
    src : TileReader
        The source image.
    grid : Grid
        Destination grid.
    pixel_transform : Affine, optional
        Output pixel ``(col, row)`` takes the source's value at grid location
        ``pixel_transform @ (col, row)`` (pixel coordinates of `grid`).
    resampling : Resampling, optional
    scratch : Scratch, optional
        Read and resample in this thread's scratch arrays: the result is
        valid until the thread's next read through it.
    linear : (gain, offset), optional
        Per-band gain and offset applied to the result (invalid pixels
        included), as ``data * gain + offset`` in float32.

    Returns
    -------
    data : (bands, H, W) ndarray of float32
    invalid : (H, W) ndarray of bool
    """
    move = translation_between(src.grid, grid, pixel_transform)
    if move is None or resampling != Resampling.cubic:
        data, invalid = read_warped(src.dataset(), grid, bands=src.bands,
                                    pixel_transform=pixel_transform, resampling=resampling,
                                    name=src.name)
        return (data if linear is None else _apply_linear(data, linear)), invalid
    dx, dy = move
    h, w = grid.height, grid.width
    (r0, r1), (c0, c1) = cubic_support(dy, h), cubic_support(dx, w)
    data, invalid = src.read_padded(Window(c0, r0, c1 - c0, r1 - r0), scratch=scratch,
                                    native=True)
    out, inv = cubic_shift(data, invalid, dx - c0, dy - r0, (h, w), out=None if scratch is None
                           else scratch.array(f"{id(src)}:aligned", (data.shape[0], h, w),
                                              np.float32), linear=linear)
    # Sample points beyond the first or last pixel centre (by more than a
    # rounding's worth) hold 0 (gain and offset applied), as those
    # cubic_shift found invalid.
    rows, cols = np.arange(h) + dy, np.arange(w) + dx
    rows_out = (rows < -_EXTRAPOLATED_PX) | (rows > src.height - 1 + _EXTRAPOLATED_PX)
    cols_out = (cols < -_EXTRAPOLATED_PX) | (cols > src.width - 1 + _EXTRAPOLATED_PX)
    inv[rows_out] = True
    inv[:, cols_out] = True
    zero = np.zeros((out.shape[0], 1, 1), np.float32)
    if linear is not None:
        _apply_linear(zero, linear)
    out[:, rows_out] = zero
    out[:, :, cols_out] = zero
    return out, inv


def _apply_linear(data: NDArray[np.float32], linear: tuple[ArrayLike, ArrayLike],
                  ) -> NDArray[np.float32]:
    # data * gain + offset per band, in place, in float32 (as
    # radiometry.apply_normalisation and cubic_shift's `linear` do it).
    gain, offset = (np.asarray(v, np.float32).reshape(-1, 1, 1) for v in linear)
    data *= gain
    data += offset
    return data


def rgb_bands(ds: DatasetReader) -> tuple[int, ...]:
    """Return the bands to show as red, green and blue (or one grey band).

    Bands flagged red, green and blue (colour interpretation) or named so
    (band descriptions) win; otherwise the first three data bands, the
    order of NAIP, most aerial RGBN products and the usual 3-band exports;
    a 1- or 2-band image is shown in grey from its first band.
    """
    data = [i for i in range(1, ds.count + 1) if i != _alpha_band(ds)]
    found: dict[str, int] = {}
    for i in data:
        ci = ds.colorinterp[i - 1]
        desc = (ds.descriptions[i - 1] or "").strip().lower()
        for colour in ("red", "green", "blue"):
            if colour not in found and (ci == getattr(ColorInterp, colour) or desc == colour):
                found[colour] = i
    if len(found) == 3:
        return (found["red"], found["green"], found["blue"])
    return tuple(data[:3]) if len(data) >= 3 else (data[0],)


class Preview(NamedTuple):
    """A decimated picture of an image on a grid (see :func:`read_preview`)."""

    #: (bands, h, w) float32 pixel values; invalid pixels hold 0.
    data: NDArray[np.float32]
    #: (h, w) bool, True outside the image or where it is nodata.
    invalid: NDArray[np.bool_]
    #: Preview pixels per grid pixel (at most 1).
    scale: float


def read_preview(ds: DatasetReader, grid: Grid, *, bands: Sequence[int] | None = None,
                 max_size: int = 1024, offset_px: tuple[float, float] = (0.0, 0.0),
                 resampling: Resampling = Resampling.average, name: str | None = None,
                 ) -> Preview:
    """Read a decimated picture of a dataset on `grid`, for display.

    Parameters
    ----------
    ds : DatasetReader
        The image, in any CRS.
    grid : Grid
        The extent to show (e.g. a result's grid); the preview covers it
        exactly, at a coarser pixel if `grid` is larger than `max_size`.
    bands : sequence of int, optional
        1-based bands to read (default :func:`rgb_bands`).
    max_size : int, optional
        Longest side of the preview in pixels; a smaller grid is read at its
        own resolution.
    offset_px : (float, float), optional
        As in :func:`read_warped`: removes a co-registration shift so the
        preview lines up with the result.
    resampling : Resampling, optional
        Averaging by default, so decimation does not alias.

    Returns
    -------
    Preview
        ``data`` (bands, h, w) float32 with invalid pixels 0, ``invalid``
        (h, w) bool, and ``scale``, preview pixels per `grid` pixel (<= 1).

    Notes
    -----
    One GDAL ``WarpedVRT`` straight onto the coarse grid: memory is the
    preview only, whatever the size of the image (GDAL warps in chunks).
    """
    if max_size < 1:
        raise ValueError(f"max_size must be a positive number of pixels, not {max_size!r}")
    name = name or _name(ds)
    idx = list(bands) if bands is not None else list(rgb_bands(ds))
    idx = _indexes(ds, idx, name)
    scale = min(1.0, max_size / max(grid.width, grid.height))
    w = max(1, round(grid.width * scale))
    h = max(1, round(grid.height * scale))
    coarse = Grid(grid.transform @ Affine.scale(grid.width / w, grid.height / h),
                  grid.crs, w, h)
    # Offsets are in pixels of `grid`; read_warped applies them in `coarse`
    # pixels, so convert.
    off = (offset_px[0] * w / grid.width, offset_px[1] * h / grid.height)
    data, invalid = read_warped(ds, coarse, bands=idx, offset_px=off,
                                resampling=resampling, name=name)
    return Preview(data, invalid, w / grid.width)


#: Tags that may hold an acquisition date, most specific first.
_DATE_TAGS = ("ACQUISITIONDATETIME", "ACQUISITION_DATETIME", "ACQUISITIONDATE",
              "ACQUISITION_DATE", "DATE_ACQUIRED", "SENSING_TIME", "DATETIME",
              "TIFFTAG_DATETIME")


def date_tags(ds: DatasetReader) -> dict[str, str]:
    """Metadata items that may hold the acquisition date, in order of trust.

    Looks in the default and ``IMAGERY`` metadata domains for the usual
    names (``ACQUISITIONDATETIME``, ``ACQUISITION_DATE``, ``DATE_ACQUIRED``,
    ``TIFFTAG_DATETIME``...). Parsing them is the caller's business.
    """
    found: dict[str, str] = {}
    for ns in (None, "IMAGERY"):
        try:
            tags = ds.tags(ns=ns) if ns else ds.tags()
        except RasterioError:
            continue
        upper = {k.upper(): v for k, v in tags.items()}
        for key in _DATE_TAGS:
            if key in upper and key not in found and str(upper[key]).strip():
                found[key] = str(upper[key]).strip()
    return {k: found[k] for k in _DATE_TAGS if k in found}


def read_roi(path: str | os.PathLike) -> tuple[dict[str, Any], CRS]:
    """Read a region of interest from a GeoJSON file.

    Accepts a geometry, a Feature or a FeatureCollection; all polygons are
    united. Coordinates are WGS84 lon/lat (RFC 7946) unless the file carries
    a legacy ``crs`` member naming another CRS.

    Returns
    -------
    geometry : dict
        GeoJSON-like (multi)polygon.
    crs : CRS
        The CRS its coordinates are in.

    Raises
    ------
    ROIError
        If the file is missing, not JSON, or holds no polygon.
    """
    import shapely
    from shapely.geometry import GeometryCollection, mapping, shape

    name = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except FileNotFoundError as exc:
        raise ROIError(f"{name}: no such file") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ROIError(f"{name}: not a readable GeoJSON file ({_first_line(exc)})") from exc
    if not isinstance(obj, dict) or "type" not in obj:
        raise ROIError(f"{name}: not a GeoJSON object")
    crs = WGS84
    legacy = obj.get("crs")
    if isinstance(legacy, dict):
        crs_name = (legacy.get("properties") or {}).get("name")
        try:
            crs = CRS.from_user_input(crs_name)
        except (CRSError, TypeError) as exc:
            raise ROIError(f"{name}: unrecognised crs member {crs_name!r}") from exc
        if crs.to_epsg() == 4326 or "CRS84" in str(crs_name):
            crs = WGS84
    if obj["type"] == "FeatureCollection":
        geoms = [f.get("geometry") for f in obj.get("features") or [] if isinstance(f, dict)]
    elif obj["type"] == "Feature":
        geoms = [obj.get("geometry")]
    else:
        geoms = [obj]
    try:
        shapes = [shape(g) for g in geoms if g]
    except (AttributeError, KeyError, TypeError, ValueError, IndexError) as exc:
        raise ROIError(f"{name}: malformed geometry ({_first_line(exc)})") from exc
    # Polygons, also those in a GeometryCollection.
    polys = [g for s in shapes for g in shapely.get_parts(s)
             if g.geom_type in ("Polygon", "MultiPolygon") and not g.is_empty]
    if not polys:
        raise ROIError(f"{name}: holds no polygon")
    try:
        # One check and repair of them all (union_all inside).
        geom = roi_polygon(mapping(GeometryCollection(polys)), crs)
    except ROIError as exc:
        raise ROIError(f"{name}: {exc}".replace(": the region of interest", ":")) from None
    return mapping(geom), crs


# -- outputs ---------------------------------------------------------------

#: Longest file or folder name most file systems take, in bytes.
_MAX_NAME_BYTES = 255


def _temp_prefix(path: Path) -> str:
    # A hidden temporary beside `path`, named after it: at most 128 bytes of
    # its name (whole characters), so that a long but legal name (255 bytes)
    # stays legal with the temporary's additions (a random part and
    # ".part.tif": under 30 bytes).
    head = os.fsencode(path.name)[:128].decode(errors="ignore") if os.name != "nt" \
        else path.name[:64]
    return f".{head}."


def check_output_path(path: str | os.PathLike, *, overwrite: bool = False,
                      inputs: Iterable[Any] = ()) -> Path:
    """Check that `path` can be written, before any work is done.

    Raises
    ------
    OutputExistsError
        If `path` exists and `overwrite` is false.
    OutputError
        If `path` is one of the `inputs`, is a folder, or its folder is
        missing or not writable.
    """
    p = Path(path)
    too_long = [part for part in p.parts if len(os.fsencode(part)) > _MAX_NAME_BYTES]
    if too_long:
        raise OutputError(f"{p}: the name {too_long[0][:40]}... is longer than "
                          f"{_MAX_NAME_BYTES} bytes, more than file systems allow; "
                          "choose a shorter one")
    for src in inputs:
        if isinstance(src, (str, os.PathLike)) and is_local_path(os.fspath(src)):
            if os.path.abspath(src) == os.path.abspath(p) or (
                    p.exists() and Path(src).exists() and p.samefile(src)):
                raise OutputError(f"{p}: is also an input; choose another output path")
    if p.is_dir():
        raise OutputError(f"{p}: is a folder, not a file")
    if p.exists() and not overwrite:
        raise OutputExistsError(f"{p}: already exists; use --overwrite to replace it "
                                f"(overwrite=True in Python)")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"{p}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{p}: folder {parent} is not writable")
    return p


def check_output_paths(paths: Iterable[str | os.PathLike | None], *, overwrite: bool = False,
                       inputs: Iterable[Any] = ()) -> None:
    """Check a run's outputs (None entries skipped): distinct, and each writable.

    Raises
    ------
    OutputError
        If two outputs are the same file, or as :func:`check_output_path`.
    OutputExistsError
        As :func:`check_output_path`.
    """
    given = [p for p in paths if p is not None]
    seen: set[str] = set()
    for p in given:
        if os.path.abspath(p) in seen:
            raise OutputError(f"{p}: the same path is given for two outputs; give each "
                              "its own")
        seen.add(os.path.abspath(p))
    inputs = list(inputs)
    for path in given:
        check_output_path(path, overwrite=overwrite, inputs=inputs)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, overwrite: bool = False,
                  inputs: Iterable[Any] = ()) -> Iterator[str]:
    """Yield a temporary path beside `path`; move it into place on success.

    The temporary file is removed if the block raises, so a failed or
    interrupted write leaves neither a partial file nor a changed `path`.
    """
    p = check_output_path(path, overwrite=overwrite, inputs=inputs)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(p), suffix=".part", dir=p.parent or ".")
    os.close(fd)
    try:
        yield tmp
        if p.exists() and not overwrite:
            raise OutputExistsError(f"{p}: appeared while changedet was running; "
                                    "use --overwrite to replace it")
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def _open_atomic(path: str | os.PathLike, mode: str, *, overwrite: bool,
                 inputs: Iterable[Any]) -> Iterator[IO[Any]]:
    """Yield an open temporary file moved to `path` once written and synced."""
    try:
        with atomic_output(path, overwrite=overwrite, inputs=inputs) as tmp:
            text = {} if "b" in mode else {"encoding": "utf-8", "newline": "\n"}
            with open(tmp, mode, **text) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
    except OSError as exc:
        if isinstance(exc, OutputError):
            raise
        raise OutputError(f"{path}: could not write ({exc.strerror or exc})") from exc


def write_text(path: str | os.PathLike, chunks: Iterable[str], *, overwrite: bool = False,
               inputs: Iterable[Any] = ()) -> None:
    """Write text chunks to `path` atomically (see :func:`atomic_output`)."""
    with _open_atomic(path, "w", overwrite=overwrite, inputs=inputs) as f:
        _write_chunks(f, chunks)


def write_png(image: NDArray[np.uint8], path: str | os.PathLike, *, overwrite: bool = False,
              inputs: Iterable[Any] = (), text: dict[str, str] | None = None) -> None:
    """Write an ``(H, W, 3)`` uint8 RGB picture as a PNG, atomically.

    `text` becomes PNG ``tEXt`` chunks (e.g. ``{"Software": "changedet"}``).
    """
    from PIL import Image, PngImagePlugin

    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {arr.shape} {arr.dtype}")
    info = PngImagePlugin.PngInfo()
    for k, v in (text or {}).items():
        info.add_text(k, v)
    with _open_atomic(path, "wb", overwrite=overwrite, inputs=inputs) as f:
        Image.fromarray(arr, "RGB").save(f, format="PNG", optimize=True, pnginfo=info)


def _write_chunks(f: IO[str], chunks: Iterable[str]) -> None:
    for chunk in chunks:
        f.write(chunk)


def dumps_geojson(collection: dict[str, Any]) -> Iterator[str]:
    """Serialise a FeatureCollection, one feature a line, deterministically.

    Members other than ``features`` come first, then the features, so a
    large collection can be written as it is produced.
    """
    head = {k: v for k, v in collection.items() if k != "features"}
    text = json.dumps(head, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    yield text[:-1] + ',"features":['
    for i, feat in enumerate(collection.get("features", [])):
        yield ("\n" if i == 0 else ",\n") + json.dumps(
            feat, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    yield "\n]}\n"


def write_geojson(collection: dict[str, Any], path: str | os.PathLike, *,
                  overwrite: bool = False, inputs: Iterable[Any] = ()) -> None:
    """Write a GeoJSON FeatureCollection atomically."""
    write_text(path, dumps_geojson(collection), overwrite=overwrite, inputs=inputs)


@contextlib.contextmanager
def _raster_output(path: str | os.PathLike, *, overwrite: bool,
                   inputs: Iterable[Any]) -> Iterator[str]:
    """:func:`atomic_output` that reports GDAL and OS failures as OutputError."""
    try:
        with atomic_output(path, overwrite=overwrite, inputs=inputs) as tmp:
            with quiet_not_georeferenced():
                yield tmp
    except RasterioError as exc:
        raise OutputError(f"{path}: could not write raster ({_first_line(exc)})") from exc
    except OSError as exc:
        if isinstance(exc, OutputError):
            raise
        raise OutputError(f"{path}: could not write ({exc.strerror or exc})") from exc


def _write_cog(array: NDArray[Any], grid: Grid, path: str | os.PathLike, *, nodata: float | None,
               overwrite: bool, inputs: Iterable[Any], tags: dict[str, str] | None = None,
               predictor: int = 2, resampling: str = "NEAREST") -> None:
    with RasterBlockWriter(path, grid, dtype=array.dtype.name, nodata=nodata,
                           overwrite=overwrite, inputs=inputs, tags=tags, predictor=predictor,
                           overview_resampling=resampling) as out:
        out.write(Window(0, 0, grid.width, grid.height), array)


def _cast(data: NDArray[np.float32], dtype: np.dtype) -> NDArray[Any]:
    if dtype.kind == "f":
        return data.astype(dtype, copy=False)
    info = np.iinfo(dtype)
    return np.clip(np.rint(data), info.min, info.max).astype(dtype)


def write_image(blocks: Iterable[tuple[Window, NDArray[np.floating], NDArray[np.bool_]]],
                grid: Grid, path: str | os.PathLike, *, count: int, dtype: str | np.dtype,
                nodata: float | None = None, overwrite: bool = False,
                inputs: Iterable[Any] = (), tags: dict[str, str] | None = None) -> None:
    """Write a multi-band image, block by block, as a Cloud-Optimized GeoTIFF.

    Parameters
    ----------
    blocks : iterable of (Window, (count, h, w) ndarray, (h, w) ndarray of bool)
        Windows of `grid` that together cover it, their values and invalid
        masks (True = invalid).
    grid : Grid
        Where the image lies.
    count, dtype : int, str
        Bands and data type written; integer types are rounded and clipped.
    nodata : float, optional
        Value written where pixels are invalid. Without one, invalid pixels
        are 0 and an internal mask band marks them (GDAL: 0 = invalid).

    Notes
    -----
    Memory: one block. The blocks go to a tiled GeoTIFF beside `path`, which
    GDAL's COG driver then copies (with DEFLATE and overviews) to the
    temporary file that replaces `path` when complete.
    """
    dt = np.dtype(dtype)
    with RasterBlockWriter(path, grid, dtype=dt.name, nodata=nodata, count=count,
                           overwrite=overwrite, inputs=inputs, tags=tags,
                           predictor=3 if dt.kind == "f" else 2,
                           overview_resampling="AVERAGE") as out:
        for window, data, invalid in blocks:
            values = _cast(data, dt)
            values[:, invalid] = 0 if nodata is None else nodata
            out.write(window, values, invalid=invalid if nodata is None else None)


def class_overview(classes: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """One overview level of a class raster: each 2 x 2 pixels become one.

    A coarse pixel is change if any pixel under it is (the change class
    most of them have; on a tie the first of appeared, disappeared,
    changed), else no change if any is valid, else nodata. Made level from
    level, a change stays visible however far out the map is zoomed (a
    majority vote would drop every structure smaller than the coarse pixel).

    Parameters
    ----------
    classes : (2h, 2w) ndarray of uint8
        0 no change, 1 appeared, 2 disappeared, 3 changed, 255 nodata.

    Returns
    -------
    (h, w) ndarray of uint8

    Examples
    --------
    >>> class_overview(np.array([[0, 0, 255, 255], [0, 1, 255, 255]], np.uint8))
    array([[  1, 255]], dtype=uint8)
    """
    h, w = classes.shape
    out = np.zeros((h // 2, w // 2), np.uint8)
    # Most of a class raster is 0: reduce only the box that is not.
    rows, cols = np.flatnonzero(classes.any(axis=1)), np.flatnonzero(classes.any(axis=0))
    if rows.size:
        r0, r1 = rows[0] // 2, rows[-1] // 2 + 1
        c0, c1 = cols[0] // 2, cols[-1] // 2 + 1
        out[r0:r1, c0:c1] = _class_overview(classes[2 * r0:2 * r1, 2 * c0:2 * c1])
    return out


def _class_overview(classes: NDArray[np.uint8]) -> NDArray[np.uint8]:
    q = [classes[i::2, j::2] for i in (0, 1) for j in (0, 1)]
    lowest = np.minimum(np.minimum(q[0], q[1]), np.minimum(q[2], q[3]))
    if not ((classes >= 1) & (classes <= 3)).any():
        return lowest  # only 0 and nodata: 0 wherever one is valid
    best = np.zeros(lowest.shape, np.uint8)
    most = np.zeros(lowest.shape, np.uint8)
    for value in (1, 2, 3):
        n = sum((v == value).view(np.uint8) for v in q)
        better = n > most
        best[better], most[better] = value, n[better]
    return np.where(most > 0, best, lowest)


def class_raster_writer(path: str | os.PathLike, grid: Grid, *, overwrite: bool = False,
                        inputs: Iterable[Any] = ()) -> RasterBlockWriter:
    """Open a :class:`RasterBlockWriter` for the class raster, 0 where not written.

    Values: 0 no change, 1 appeared, 2 disappeared, 3 changed, 255 nodata;
    uint8, the overviews made by :func:`class_overview`.
    """
    return RasterBlockWriter(
        path, grid, dtype="uint8", nodata=255, overwrite=overwrite, inputs=inputs,
        predictor=1, sparse=True, reduce=class_overview,
        tags={"CLASSES": "0=no change,1=appeared,2=disappeared,3=changed,255=nodata"})


def write_class_raster(classes: NDArray[np.uint8], grid: Grid, path: str | os.PathLike, *,
                       overwrite: bool = False, inputs: Iterable[Any] = ()) -> None:
    """Write the class raster as a Cloud-Optimized GeoTIFF (see :func:`class_raster_writer`)."""
    if classes.shape != grid.shape:
        raise ValueError(f"classes shape {classes.shape} does not match grid {grid.shape}")
    with class_raster_writer(path, grid, overwrite=overwrite, inputs=inputs) as out:
        out.write(Window(0, 0, grid.width, grid.height),
                  np.ascontiguousarray(classes, dtype=np.uint8))


def write_float_raster(values: NDArray[np.float32], grid: Grid, path: str | os.PathLike, *,
                       overwrite: bool = False, inputs: Iterable[Any] = ()) -> None:
    """Write a float32 raster (e.g. the change score) as a COG, NaN = nodata."""
    if values.shape != grid.shape:
        raise ValueError(f"values shape {values.shape} does not match grid {grid.shape}")
    _write_cog(np.ascontiguousarray(values, dtype=np.float32), grid, path,
               nodata=math.nan, overwrite=overwrite, inputs=inputs, predictor=3,
               resampling="AVERAGE")


class RasterBlockWriter:
    """A single-band raster written window by window, published as a COG.

    Windows go to a tiled, compressed temporary GeoTIFF beside the target;
    :meth:`commit` turns it into a Cloud-Optimized GeoTIFF (also a temporary
    file) and moves that into place. Nothing appears at `path` unless the
    whole raster was written; :meth:`abort` (or an exception inside a
    ``with`` block) removes every temporary file. Safe to call from several
    threads: writes are serialised.

    Parameters
    ----------
    path : path
        Destination.
    grid : Grid
        Grid of the raster.
    dtype : str
        Pixel type.
    nodata : float or None
        Nodata value.
    fill : float
        Initial value of every pixel.
    overwrite : bool
        Whether an existing `path` may be replaced.
    inputs : iterable
        Paths that must not be overwritten.
    tags : dict, optional
        Metadata tags.
    sparse : bool, optional
        Pixels never written are 0 (`fill` must be 0), whatever `nodata`:
        a raster that is mostly 0 is then written only where it is not.
        (GDAL reads a tile never written as the file's nodata value, so the
        temporary file carries none; the published raster does.)
    reduce : callable, optional
        With `sparse`: make the overviews with this instead of GDAL's
        `overview_resampling`: called on a (2h, 2w) window of one level
        (a single band; odd edges padded with `nodata`), it returns the
        (h, w) window of the next. Each level is made from the one before,
        window by window.
    """

    def __init__(self, path: str | os.PathLike, grid: Grid, *, dtype: str,
                 nodata: float | None, count: int = 1, fill: float = 0,
                 overwrite: bool = False, inputs: Iterable[Any] = (),
                 tags: dict[str, str] | None = None, predictor: int = 1,
                 overview_resampling: str = "NEAREST", sparse: bool = False,
                 reduce: Callable[[NDArray[Any]], NDArray[Any]] | None = None) -> None:
        import threading

        if sparse and fill != 0:
            raise ValueError("a sparse raster is 0 where it is not written: fill must be 0")
        self.path = check_output_path(path, overwrite=overwrite, inputs=inputs)
        self.grid, self.overwrite = grid, overwrite
        self._predictor, self._ovr = predictor, overview_resampling
        self._dtype, self._tags = np.dtype(dtype), dict(tags or {})
        self._nodata = nodata if sparse else None
        self._reduce, self._pad = reduce, 0 if nodata is None else nodata
        self._touched: set[tuple[int, int]] = set()
        if reduce is not None and (count != 1 or not sparse):
            # The levels are made only where tiles were written, the rest
            # taken as 0: true of a sparse raster only.
            raise ValueError("overviews by a reduce function are made for one band of a "
                             "sparse raster only")
        self._lock = threading.Lock()
        fd, self._tmp = tempfile.mkstemp(prefix=_temp_prefix(self.path), suffix=".part.tif",
                                         dir=self.path.parent)
        os.close(fd)
        profile = dict(driver="GTiff", width=grid.width, height=grid.height, count=count,
                       dtype=dtype, crs=grid.crs, transform=grid.transform,
                       nodata=None if sparse else nodata,
                       tiled=True, blockxsize=_TILE, blockysize=_TILE, compress="DEFLATE",
                       zlevel=1, predictor=predictor, BIGTIFF="IF_SAFER",
                       SPARSE_OK=(fill == 0))
        try:
            # A pixel-space grid's transform (x = column, y = -row) is what
            # rasterio warns GDAL may not save: changedet has said so already.
            with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), quiet_not_georeferenced():
                self._ds = rasterio.open(self._tmp, "w+", **profile)
            if fill != 0:
                self._fill(fill, dtype)
            if tags:
                self._ds.update_tags(**tags)
        except (RasterioError, OSError) as exc:
            self.abort()
            raise OutputError(f"{self.path}: could not create raster ({_first_line(exc)})") \
                from exc

    def _fill(self, value: float, dtype: str) -> None:
        for _, win in self._ds.block_windows(1):
            self._ds.write(np.full((self._ds.count, int(win.height), int(win.width)), value,
                                   dtype), window=win)

    def write(self, window: Window, array: NDArray[Any],
              invalid: NDArray[np.bool_] | None = None) -> None:
        """Write `array` ((h, w) or (count, h, w)) at `window`.

        With `invalid`, also the dataset's mask band there (True = invalid).
        """
        with self._lock:
            self._touch(window)
            if array.ndim == 2:
                self._ds.write(array, 1, window=window)
            else:
                self._ds.write(array, window=window)
            if invalid is not None:
                self._ds.write_mask(np.where(invalid, 0, 255).astype(np.uint8), window=window)

    def update(self, window: Window, func: Any) -> None:
        """Read `window`, replace it with ``func(current)``, all under the lock."""
        with self._lock:
            self._touch(window)
            current = self._ds.read(1, window=window)
            self._ds.write(func(current), 1, window=window)

    def _touch(self, window: Window) -> None:
        # Note the tiles a write reaches: the overviews are made only there.
        r0, c0 = int(window.row_off), int(window.col_off)
        r1, c1 = r0 + int(window.height), c0 + int(window.width)
        self._touched.update((r, c) for r in _tiles_across(r0, r1, _TILE)
                             for c in _tiles_across(c0, c1, _TILE))

    def commit(self) -> None:
        """Publish the raster at its path as a COG, atomically."""
        ds, self._ds = self._ds, None
        levels: list[str] = []
        try:
            count = ds.count
            ds.close()
            overviews = "AUTO" if min(self.grid.shape) > 512 else "NONE"
            # Inside _raster_output: a failure making the levels (a full
            # disk) is an OutputError naming the raster, as one copying it.
            with _raster_output(self.path, overwrite=self.overwrite, inputs=()) as out:
                if self._reduce is not None and overviews == "AUTO":
                    self._overviews(levels)  # (the levels carry no grid: warnings quiet)
                # A sparse raster gets its nodata value on the way (a VRT):
                # declared on the temporary file, it would fill its unwritten
                # tiles. The VRT also lends the COG driver our own overviews.
                src = self._tmp if self._nodata is None and not levels else _publish_vrt(
                    self._tmp, self.grid, count, self._dtype, self._nodata, self._tags, levels)
                rasterio.shutil.copy(
                    src, out, driver="COG", compress="DEFLATE", num_threads="ALL_CPUS",
                    predictor=self._predictor, blocksize=512, BIGTIFF="IF_SAFER",
                    overview_resampling=self._ovr, overviews=overviews)
        finally:
            for tmp in (self._tmp, *levels):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)

    def _overviews(self, levels: list[str]) -> None:
        # Levels halving until both sides are 512 or less, as GDAL's COG
        # driver stops, but rounded up (GDAL rounds down, which can make one
        # level fewer): each coarse pixel covers exactly 2 x 2 finer ones,
        # the last odd row and column included. Each from the one before with
        # `reduce`, as sparse temporary GeoTIFFs beside the raster, their
        # paths appended to `levels` (the caller removes them); only where
        # tiles were written (elsewhere every level is 0).
        src, (h, w), touched = self._tmp, self.grid.shape, self._touched
        while h > _TILE or w > _TILE:
            fd, dst = tempfile.mkstemp(prefix=_temp_prefix(self.path), suffix=".ovr.tif",
                                       dir=self.path.parent)
            os.close(fd)
            levels.append(dst)
            h, w = (h + 1) // 2, (w + 1) // 2
            touched = _reduce_level(src, dst, (h, w), touched, self._dtype, self._reduce,
                                    self._pad)
            src = dst

    def abort(self) -> None:
        """Drop everything written; the destination is untouched."""
        ds, self._ds = getattr(self, "_ds", None), None
        if ds is not None:
            with contextlib.suppress(Exception):
                ds.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)

    def __enter__(self) -> RasterBlockWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


#: Tile side of the temporary rasters and their overview levels, pixels.
_TILE = 512


def _reduce_level(src: str, dst: str, shape: tuple[int, int], touched: set[tuple[int, int]],
                  dtype: np.dtype, reduce: Callable[[NDArray[Any]], NDArray[Any]],
                  pad: float) -> set[tuple[int, int]]:
    # Write the (h, w) level `dst` made from the level `src` by `reduce`,
    # tile by tile, where `src` has tiles written (`touched`: (row, col) of
    # its tiles); return the tiles of `dst` written.
    h, w = shape
    t = _TILE
    written: set[tuple[int, int]] = set()
    with rasterio.open(src) as fine, rasterio.open(
            dst, "w", driver="GTiff", width=w, height=h, count=1, dtype=dtype.name,
            tiled=True, blockxsize=t, blockysize=t, compress="DEFLATE", zlevel=1,
            SPARSE_OK=True) as out:
        for tr, tc in sorted({(r // 2, c // 2) for r, c in touched}):
            r0, c0 = 2 * t * tr, 2 * t * tc
            win = Window(c0, r0, min(2 * t, fine.width - c0), min(2 * t, fine.height - r0))
            data = fine.read(1, window=win)
            if data.shape[0] % 2 or data.shape[1] % 2:
                data = np.pad(data, ((0, data.shape[0] % 2), (0, data.shape[1] % 2)),
                              constant_values=pad)
            coarse = reduce(data)
            if coarse.any():
                out.write(coarse.astype(dtype, copy=False), 1, window=Window(
                    t * tc, t * tr, coarse.shape[1], coarse.shape[0]))
                written.add((tr, tc))
    return written


def _publish_vrt(path: str, grid: Grid, count: int, dtype: np.dtype, nodata: float | None,
                 tags: dict[str, str], overviews: Sequence[str] = ()) -> str:
    # A VRT of the raster at `path` that declares `nodata` (the file itself
    # has none) and the given overview files, with the grid and tags the
    # published raster must carry.
    # (html.escape: xml.sax.saxutils imports urllib.request, 30 ms at the
    # end of every run that writes a class raster.)
    from html import escape

    gdal_type = rasterio.dtypes.typename_fwd[rasterio.dtypes.dtype_rev[dtype.name]]
    head = [f'<VRTDataset rasterXSize="{grid.width}" rasterYSize="{grid.height}">']
    if grid.crs is not None:
        head.append(f"<SRS>{escape(grid.crs.to_wkt())}</SRS>")
    head.append("<GeoTransform>{}</GeoTransform>".format(
        ", ".join(repr(float(v)) for v in grid.transform.to_gdal())))
    if tags:
        head.append("<Metadata>" + "".join(
            f'<MDI key="{escape(k)}">{escape(v)}</MDI>' for k, v in tags.items())
            + "</Metadata>")
    if nodata is None:
        declared = ""
    else:
        declared = "<NoDataValue>{}</NoDataValue>".format(
            "nan" if math.isnan(nodata) else repr(float(nodata)))
    for band in range(1, count + 1):
        levels = "".join(
            f'<Overview><SourceFilename relativeToVRT="0">{escape(ovr)}</SourceFilename>'
            f"<SourceBand>{band}</SourceBand></Overview>" for ovr in overviews)
        head.append(
            f'<VRTRasterBand dataType="{gdal_type}" band="{band}">{declared}<SimpleSource>'
            f'<SourceFilename relativeToVRT="0">{escape(path)}</SourceFilename>'
            f"<SourceBand>{band}</SourceBand></SimpleSource>{levels}</VRTRasterBand>")
    return "".join(head) + "</VRTDataset>"


class GeoJSONWriter:
    """Stream a FeatureCollection: members first, features as they come.

    Writes to `path` atomically (a temporary file moved into place by
    :meth:`close`) or to an open text `stream` such as stdout. The
    collection's ``bbox`` is written last, once known. Memory does not grow
    with the number of features.
    """

    def __init__(self, path: str | os.PathLike | None, head: dict[str, Any], *,
                 stream: IO[str] | None = None, overwrite: bool = False,
                 inputs: Iterable[Any] = ()) -> None:
        if (path is None) == (stream is None):
            raise ValueError("give a path or a stream")
        self._path = path
        # A file is written as every other output is (see _open_atomic):
        # closing the stack publishes it, aborting drops it.
        self._stack = contextlib.ExitStack()
        if path is None:
            self._f: IO[str] = stream  # type: ignore[assignment]
        else:
            self._f = self._stack.enter_context(
                _open_atomic(path, "w", overwrite=overwrite, inputs=inputs))
        self.count = 0
        self._bounds = [np.inf, np.inf, -np.inf, -np.inf]
        #: Longitude range in [0, 360), when given: lon/lat features.
        self._east: list[float] | None = None
        text = json.dumps({"type": "FeatureCollection", **head}, ensure_ascii=False,
                          separators=(",", ":"), allow_nan=False)
        self._write(text[:-1] + ',"features":[')

    def _write(self, text: str) -> None:
        try:
            self._f.write(text)
        except OSError as exc:
            self.abort()
            raise OutputError(f"{self._path or 'output'}: could not write "
                              f"({exc.strerror or exc})") from exc

    def write(self, feature: dict[str, Any], bounds: Sequence[float],
              east: Sequence[float] | None = None) -> None:
        """Append one feature whose geometry has the given bounds.

        For lon/lat features, `east` is also their longitude range in [0,
        360) (:func:`changedet.geojson.east_extent`), so that a collection
        across the antimeridian gets a bbox with west > east.
        """
        text = json.dumps(feature, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        self._write(("\n" if self.count == 0 else ",\n") + text)
        self.count += 1
        b = self._bounds
        b[0], b[1] = min(b[0], bounds[0]), min(b[1], bounds[1])
        b[2], b[3] = max(b[2], bounds[2]), max(b[3], bounds[3])
        if east is not None:
            e = self._east = self._east or [np.inf, -np.inf]
            e[0], e[1] = min(e[0], east[0]), max(e[1], east[1])

    def close(self, decimals: int = 7) -> None:
        """Finish the collection (with its bbox) and publish the file."""
        from changedet.geojson import lonlat_bbox

        tail = "\n]"
        if self.count:
            box = self._bounds if self._east is None else lonlat_bbox(self._bounds, self._east)
            tail += ',"bbox":' + json.dumps([round(float(v), decimals) + 0.0 for v in box],
                                            separators=(",", ":"))
        self._write(tail + "}\n")
        if self._path is None:
            self._f.flush()
            return
        self._stack.close()

    def abort(self) -> None:
        """Drop a partial file; the destination is untouched."""
        self._stack.__exit__(_Aborted, _Aborted(), None)


class _Aborted(Exception):
    # Thrown into a GeoJSONWriter's atomic file to drop it.
    pass


def package_text(relpath: str) -> str:
    """Text of a file shipped inside the changedet package (e.g. vendored JS)."""
    from importlib.resources import files

    return files("changedet").joinpath(relpath).read_text(encoding="utf-8")
