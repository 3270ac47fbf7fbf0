"""Running the block stage: on a thread pool here, or as tasks on a Dask cluster.

Blocks are read with a halo, processed by
:func:`changedet.blocks.process_window`, and handed back in block order, so
outputs are the same whatever finishes first. Groups of change too large
for their block's halo are processed again afterwards in a window grown to
hold them, and those larger than :data:`MAX_GROWN_WINDOW` in tiles whose
pieces are joined. Memory stays bounded: at most ``2 * threads`` blocks are in
flight at once, and the tiles decoded for them are shared through a cache
sized for a stripe of blocks (see :func:`layout`), whatever the raster's
size.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import importlib
import os
import threading
import warnings
from array import array
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import rasterio
from numpy.typing import NDArray
from rasterio.enums import Resampling
from rasterio.features import geometry_mask
from rasterio.windows import Window
from threadpoolctl import threadpool_limits

from changedet import io
from changedet.blocks import (
    SAFE_MARGIN,
    ChangeObject,
    Edges,
    Footprint,
    Piece,
    Plan,
    boxes_meet,
    join_pieces,
    process_window,
)
from changedet.coreg import window_transform
from changedet.errors import LargeChangeWarning
from changedet.process import FILTER_SWAPS, SharedSetting
from changedet.radiometry import RadiometricFit, apply_normalisation

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "STRIPE_PIXELS",
    "stripe_blocks",
    "Block",
    "Sources",
    "BlockOutput",
    "layout",
    "Readers",
    "cache_pixels",
    "release_free_memory",
    "small_pages",
    "steady_malloc",
    "read_block",
    "run_block",
    "run_blocks",
    "Sink",
]

#: Side of a block's core, pixels.
DEFAULT_BLOCK_SIZE = 1024

#: Default halo, pixels: structures up to about this size are finished in
#: the first pass; larger ones a block cuts, in the second. Every pixel of a
#: halo is read, resampled and scored again by the neighbouring block:
#: 96 px made a 1024 px block's window 41 % larger than its core, 48 px
#: 20 % (7 % faster end to end), 24 px 10 %: on the 8192 px benchmark
#: pair 7.2 s against 7.6 s (12.6 CPU-s against 13.2), with 3000
#: structures 43.9 s against 47.1 s (more of them go to the second pass:
#: 860 MB at peak against 790), the flood the same; the same polygons.
#: (Never below the plan's own need, Plan.halo: about 18 px.)
DEFAULT_HALO = 24

#: GDAL's block cache during the block stage, MB, unless the user sets
#: GDAL_CACHEMAX: the decoded tiles are kept by the runner's TileReaders,
#: and GDAL's cache would only hold second copies of them.
BLOCK_GDAL_CACHE_MB = 16

#: Largest side of the window grown for an oversized change (or the side of
#: a block with its halo, if larger); beyond it the change is processed in
#: tiles of this side (margins of an eighth), and its pieces joined (a
#: warning says so). A window of 2048 px that a change fills peaks at about
#: 400 MB (95 bytes a pixel with four bands).
MAX_GROWN_WINDOW = 2048

#: Windows of that largest size the second pass holds at once, whatever the
#: threads (its grown windows and its tiles together): two keep both cores
#: of a small machine busy on a flood (82 -> 47 s) for about 1.1 GiB, and
#: more cores do not multiply the memory.
LARGE_WINDOWS_IN_FLIGHT = 2


@dataclass(frozen=True)
class Block:
    """A core window of the processing grid, and the halo'd window read for it."""

    core: Window
    window: Window
    edges: Edges


@dataclass(frozen=True)
class Sources:
    """Where to read the two images: anything ``rasterio.open`` opens.

    Picklable, so Dask workers can open the files themselves.
    """

    before: str
    after: str
    before_name: str
    after_name: str
    origin: tuple[int, int]


@dataclass
class BlockOutput:
    """What a block sends back: its core's score and validity, its objects."""

    core: Window
    score: NDArray[np.float32]
    invalid: NDArray[np.bool_]
    objects: list[ChangeObject] = field(default_factory=list)
    deferred: NDArray[np.int64] = field(default_factory=lambda: np.zeros((0, 6), np.int64))


#: Widest column stripe blocks are visited in, pixels: a stripe's rows of
#: blocks share tiles, and its width bounds the tiles to cache whatever the
#: raster's. The tiles under a seam between stripes are decoded twice (on
#: the 8192 px benchmark pair, stripes of 4096 px decoded 64 tiles of 512
#: twice), so stripes are as wide as this allows.
STRIPE_PIXELS = 8192


def stripe_blocks(width: int, block_size: int, max_pixels: int | None = None) -> int:
    """Return the blocks in a stripe: as few equal stripes as are at most `max_pixels` wide.

    (One block when a block is wider.)

    Default `max_pixels`: :data:`STRIPE_PIXELS`.

    Examples
    --------
    >>> stripe_blocks(8192, 1024), stripe_blocks(20000, 1024), stripe_blocks(9000, 4096)
    (8, 7, 2)
    >>> stripe_blocks(16384, 1000)          # 6000 px: nine would be 9000
    6
    """
    across = -(-width // block_size)
    per = max(1, (STRIPE_PIXELS if max_pixels is None else max_pixels) // block_size)
    stripes = max(1, -(-across // per))
    return max(1, -(-across // stripes))


def layout(shape: tuple[int, int], block_size: int, halo: int,
           stripe: int | None = None) -> list[Block]:
    """Tile a ``(height, width)`` grid into blocks.

    Blocks come stripe by stripe (columns of `stripe` blocks, left to right;
    default :func:`stripe_blocks`), row by row within a stripe: consecutive
    blocks then share most of the tiles their halos read.
    """
    h, w = shape
    stripe = stripe_blocks(w, block_size) if stripe is None else stripe
    out = []
    for s0 in range(0, w, block_size * stripe):
        for r0 in range(0, h, block_size):
            for c0 in range(s0, min(w, s0 + block_size * stripe), block_size):
                r1, c1 = min(r0 + block_size, h), min(c0 + block_size, w)
                wr0, wc0 = max(0, r0 - halo), max(0, c0 - halo)
                wr1, wc1 = min(h, r1 + halo), min(w, c1 + halo)
                window = Window(wc0, wr0, wc1 - wc0, wr1 - wr0)
                out.append(Block(Window(c0, r0, c1 - c0, r1 - r0), window,
                                 _edges(window, shape)))
    return out


def _edges(window: Window, shape: tuple[int, int]) -> Edges:
    r0, c0 = int(window.row_off), int(window.col_off)
    return Edges(top=r0 == 0, left=c0 == 0, bottom=r0 + int(window.height) == shape[0],
                 right=c0 + int(window.width) == shape[1])


class Readers:
    """The two images opened for a run's blocks, their decoded tiles shared.

    Parameters
    ----------
    sources : Sources
    plan : Plan
    cache_pixels : int, optional
        Pixels (per band) of each image's decoded tiles to keep (see
        :class:`changedet.io.TileReader`); 0 keeps only the tile in use.
    """

    def __init__(self, sources: Sources, plan: Plan, cache_pixels: int = 0) -> None:
        #: Where each thread assembles its blocks (see read_block).
        self.scratch = io.Scratch()
        self.before = io.TileReader(sources.before, bands=plan.bands, name=sources.before_name,
                                    max_pixels=cache_pixels)
        try:
            self.after = io.TileReader(sources.after, bands=plan.bands,
                                       name=sources.after_name, max_pixels=cache_pixels)
        except BaseException:
            self.before.close()
            raise

    def close(self) -> None:
        """Close both images."""
        self.before.close()
        self.after.close()

    def recache(self, pixels: int) -> None:
        """Drop the decoded tiles and keep at most `pixels` (per band) of each image's from now."""
        for reader in (self.before, self.after):
            reader.clear()
            reader.max_bytes = int(pixels) * reader.pixel_bytes

    def __enter__(self) -> Readers:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _hugepage_switch() -> Callable[[bool], bool] | None:
    # numpy's switch for its huge-page advice (returns the previous setting);
    # private, so looked up where each numpy version keeps it.
    for name in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        switch = getattr(module, "_set_madvise_hugepage", None)
        if switch is not None:
            return switch
    return None


_SET_HUGEPAGE = _hugepage_switch()
_SMALL_PAGES = None if _SET_HUGEPAGE is None else SharedSetting(
    lambda: _SET_HUGEPAGE(False), _SET_HUGEPAGE)   # its undo: set back what it returned


def small_pages() -> contextlib.AbstractContextManager[None]:
    """Keep numpy from asking for transparent huge pages while a run lasts.

    numpy advises the kernel to back each array of 4 MB or more with 2 MB
    pages (``madvise(MADV_HUGEPAGE)``), which pays off for arrays that live
    long. A run allocates and frees thousands of short-lived ones (each
    block's bands and temporaries), and where the kernel compacts memory to
    find a huge page at the first touch (transparent huge pages'
    ``defrag`` set to ``madvise``, the default of many distributions) while
    the page cache is full of the rasters just read, those faults cost more
    than the arithmetic: 2.2-2.8 s of system time on the 8192 x 8192
    benchmark pair, 1.0 s without (1.2-1.9 s of its 8 s). The setting
    before is restored when the last run in progress ends
    (:class:`~changedet.process.SharedSetting`); a
    ``NUMPY_MADVISE_HUGEPAGE`` the user set wins.
    """
    if "NUMPY_MADVISE_HUGEPAGE" in os.environ or _SMALL_PAGES is None:
        return contextlib.nullcontext()
    return _SMALL_PAGES.held()


#: glibc malloc's thresholds while changedet runs, bytes: arrays smaller
#: than the first come from malloc's heaps, which keep up to the second of
#: free memory for the next ones (see :func:`steady_malloc`).
MALLOC_MMAP_THRESHOLD = 32 * 2 ** 20
MALLOC_TRIM_THRESHOLD = 64 * 2 ** 20

# mallopt's parameter numbers (glibc's malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def steady_malloc() -> bool:
    """Fix glibc malloc's mmap and trim thresholds where its own heuristic ends.

    glibc serves an allocation from the kernel (mmap) when it is larger
    than a threshold, and hands free memory back past another; both start
    low (128 kB) and rise as the process frees large arrays, up to 32 MB
    and 64 MB. A run allocates and frees thousands of arrays of 0.5-20 MB
    (tiles, strips, each block's bands); until the thresholds have risen,
    and whenever a heap is trimmed, each is new memory that the kernel
    zero-fills a 4 kB page at a time. Set from the start at
    :data:`MALLOC_MMAP_THRESHOLD` and :data:`MALLOC_TRIM_THRESHOLD`, the
    8192 x 8192 benchmark pair took about 320,000 page faults instead of
    440,000 (1.1 s of system time instead of 1.4) and 0.25 s less, with
    the same peak memory.

    The setting holds for the rest of the process (glibc cannot be put back
    to its heuristic, which would have reached these values after the first
    32 MB array freed). Nothing is done elsewhere than glibc; nor when the
    user has tuned malloc (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``,
    ``MALLOC_TOP_PAD_``, ``MALLOC_MMAP_MAX_`` or malloc tunables in
    ``GLIBC_TUNABLES``, in the environment the process started with); nor
    when ``CHANGEDET_MALLOPT=0`` (for a host process that sets malloc up
    itself).

    Returns
    -------
    bool
        Whether the thresholds were set.
    """
    if os.environ.get("CHANGEDET_MALLOPT") == "0":
        return False
    env = _startup_environ()
    if any(name in env for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
                                    "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")) \
            or "glibc.malloc." in env.get("GLIBC_TUNABLES", ""):
        return False
    mallopt = _libc_function("mallopt", (ctypes.c_int, ctypes.c_int))
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD)
                and mallopt(_M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD))


def _startup_environ() -> dict[str, str]:
    # The environment the process started with, which glibc read its malloc
    # settings from: os.environ may have changed since (dask.distributed
    # sets MALLOC_TRIM_THRESHOLD_ there for the workers it starts). Where
    # that is unreadable, or was overwritten (setproctitle reuses its
    # memory: no PATH left), os.environ, which errs towards leaving malloc be.
    try:
        with open("/proc/self/environ", "rb") as f:
            raw = f.read()
    except OSError:
        return dict(os.environ)
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
    env = {name: value for name, _, value in pairs}
    return env if "PATH" in env else dict(os.environ)


def release_free_memory() -> None:
    """Hand memory freed so far back to the system (glibc only; elsewhere nothing).

    The estimation stage frees a few hundred MB of samples on the calling
    thread; glibc keeps them in that thread's heap, which the block
    threads' own heaps never reuse, so they would count twice in the
    process's peak.
    """
    trim = _libc_function("malloc_trim", (ctypes.c_size_t,))
    if trim is not None:
        trim(0)


@functools.cache
def _libc_function(name: str, argtypes: tuple[Any, ...]) -> Any:
    # A glibc function (None elsewhere), looked up once: find_library runs
    # ldconfig in a subprocess (1.5 ms), and the second pass trims after
    # each window.
    try:
        func = getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None
    func.argtypes = list(argtypes)
    return func


def cache_pixels(plan: Plan, block_size: int, halo: int, stripe: int | None = None) -> int:
    """Tile cache per image, in pixels, that lets each tile be decoded about once.

    Two rows of halo'd blocks across a stripe (of `stripe` blocks, default
    :func:`stripe_blocks`): the rows of tiles the current row of blocks
    shares with the next stay cached until it comes.
    """
    if stripe is None:
        stripe = stripe_blocks(plan.grid.width, block_size)
    w = min(plan.grid.width, block_size * stripe) + 2 * halo
    h = min(plan.grid.height, block_size) + 2 * halo
    return 2 * w * h


def read_block(sources: Sources, plan: Plan, window: Window, readers: Readers | None = None,
               *, reuse: bool = False,
               ) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.bool_]]:
    """Read a window of both images, the after image aligned and normalised.

    Parameters
    ----------
    readers : Readers, optional
        The images opened for the run (default: opened for this window).
    reuse : bool, optional
        Read into the thread's scratch arrays of `readers` (the before
        image's window is then valid until the thread's next such read):
        for blocks of one size read one after the other.

    Returns
    -------
    before, after : (bands, h, w) ndarray of float32
    invalid : (h, w) ndarray of bool
        Invalid in either image, or outside the region of interest.
    """
    if readers is None:
        with Readers(sources, plan) as own:
            return read_block(sources, plan, window, own)
    r0, c0 = int(window.row_off), int(window.col_off)
    grid = plan.grid.window_grid(window)
    src_window = Window(c0 + sources.origin[1], r0 + sources.origin[0],
                        window.width, window.height)
    p = plan.pixel_transform
    local = None if p is None else window_transform(p, c0, r0)
    # Runs in worker threads: rasterio's NotGeoreferencedWarning for
    # pixel-space inputs is silenced by run_blocks for the whole run.
    scratch = readers.scratch if reuse else None
    b, inv_b = readers.before.read(src_window, scratch=scratch)
    # A gain and offset are applied as the after image is resampled, a strip
    # at a time (0.23 CPU-s less on the 8192^2 benchmark pair than another
    # pass over each block); other fits after.
    fit = plan.fit
    linear = (fit.gain, fit.offset) if isinstance(fit, RadiometricFit) else None
    a, inv_a = io.read_aligned(readers.after, grid, pixel_transform=local,
                               resampling=Resampling[plan.resampling], scratch=scratch,
                               linear=linear)
    invalid = inv_b | inv_a
    if plan.roi is not None:
        with FILTER_SWAPS:
            outside = geometry_mask([plan.roi], out_shape=grid.shape, transform=grid.transform)
        invalid |= outside
    if linear is None:
        # `a` is ours: normalise it in place rather than holding a second copy.
        apply_normalisation(a, fit, out=a)
    return b, a, invalid


def _inside(rows: NDArray[np.int64], cols: NDArray[np.int64], win: Window) -> NDArray[np.bool_]:
    r0, c0 = int(win.row_off), int(win.col_off)
    return ((rows >= r0) & (rows < r0 + int(win.height))
            & (cols >= c0) & (cols < c0 + int(win.width)))


def _box(win: Window) -> tuple[int, int, int, int]:
    # A window as row0, col0, row1, col1 (end exclusive).
    r0, c0 = int(win.row_off), int(win.col_off)
    return r0, c0, r0 + int(win.height), c0 + int(win.width)


def run_block(sources: Sources, plan: Plan, block: Block, readers: Readers | None = None,
              ) -> BlockOutput:
    """Process one block: the unit of work sent to a thread or a Dask worker."""
    # Blocks come one after the other on a thread: read into its scratch
    # arrays (the readers of a Dask task are its own).
    b, a, invalid = read_block(sources, plan, block.window, readers, reuse=readers is not None)
    r0, c0 = int(block.window.row_off), int(block.window.col_off)

    def in_core(anchors: NDArray[np.int64], bbox: NDArray[np.int64]) -> NDArray[np.bool_]:
        return _inside(anchors[:, 0], anchors[:, 1], block.core)

    res = process_window(b, a, invalid, plan, row_off=r0, col_off=c0, edges=block.edges,
                         select=in_core)
    core = (slice(int(block.core.row_off) - r0, int(block.core.row_off + block.core.height) - r0),
            slice(int(block.core.col_off) - c0, int(block.core.col_off + block.core.width) - c0))
    inc = res.incomplete
    # Defer the groups this block answers for (their first seed is in its
    # core) and every other group it cuts that reaches into its core: the
    # block holding a group's anchor may see it cut while the one holding
    # its first seed sees it whole but leaves it to the anchor's block.
    # The second pass emits each object once, by anchor.
    deferred = inc[_inside(inc[:, 0], inc[:, 1], block.core)
                   | boxes_meet(inc[:, 2:], _box(block.core))]
    return BlockOutput(block.core, res.score[core].copy(), invalid[core].copy(), res.objects,
                       deferred)


class Sink:
    """Where block outputs go (arrays in memory, or files).

    :func:`run_blocks` hands each block's output to :meth:`block`, then its
    objects to :meth:`objects`, in block order (and the second pass's
    objects to :meth:`objects` too, a region or a set of tiles at a time).
    A sink implements :meth:`block` and :meth:`object`, and may override
    :meth:`objects` to take a list at once.
    """

    def block(self, out: BlockOutput) -> None:  # pragma: no cover - interface
        """Take a block's score and validity (its core)."""
        raise NotImplementedError

    def object(self, obj: ChangeObject) -> None:  # pragma: no cover - interface
        """Take one object."""
        raise NotImplementedError

    def objects(self, objs: list[ChangeObject]) -> None:
        """Take a block's objects, in order (default: one by one)."""
        for obj in objs:
            self.object(obj)


def _in_order(items: list[Block], submit: Callable[[Block], Any], in_flight: int,
              ) -> Iterator[BlockOutput]:
    # Results in submission order, with at most `in_flight` submitted and
    # not yet handed on; on an error the ones pending are cancelled.
    pending: deque = deque()
    it = iter(items)
    for item in it:
        pending.append(submit(item))
        if len(pending) >= in_flight:
            break
    while pending:
        fut = pending.popleft()
        nxt = next(it, None)
        if nxt is not None:
            pending.append(submit(nxt))
        try:
            yield fut.result()
        except BaseException:
            for f in pending:
                f.cancel()
            raise


def _ordered(items: list[Block], func: Callable[[Block], BlockOutput], threads: int,
             ) -> Iterator[BlockOutput]:
    # On a thread pool (or here, for one thread).
    if threads <= 1:
        for item in items:
            yield func(item)
        return
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="changedet") as pool:
        yield from _in_order(items, lambda item: pool.submit(func, item), 2 * threads)


def _ordered_dask(items: list[Block], sources: Sources, plan: Plan, client: Any,
                  ) -> Iterator[BlockOutput]:
    # As tasks on a Dask cluster, the plan sent to the workers once.
    n_workers = max(1, len(client.scheduler_info().get("workers", {})))
    plan_f = client.scatter(plan, broadcast=True)
    yield from _in_order(
        items, lambda item: client.submit(run_block, sources, plan_f, item, pure=False),
        2 * n_workers)


def _merge_boxes(boxes: list[tuple[int, int, int, int]], pad: int,
                 ) -> list[tuple[int, int, int, int]]:
    # Union boxes that overlap once padded, until none do.
    merged = [list(b) for b in boxes]
    changed = True
    while changed:
        changed = False
        out: list[list[int]] = []
        for b in merged:
            for o in out:
                if (b[0] - pad < o[2] and o[0] - pad < b[2]
                        and b[1] - pad < o[3] and o[1] - pad < b[3]):
                    o[0], o[1] = min(o[0], b[0]), min(o[1], b[1])
                    o[2], o[3] = max(o[2], b[2]), max(o[3], b[3])
                    changed = True
                    break
            else:
                out.append(b)
        merged = out
    return sorted(tuple(b) for b in merged)  # type: ignore[misc]


def run_blocks(sources: Sources, plan: Plan, sink: Sink, *,
               block_size: int = DEFAULT_BLOCK_SIZE, halo: int | None = None,
               threads: int | None = None, client: Any = None,
               progress: Callable[[str, int, int], None] | None = None,
               tiles: tuple[dict[Any, Any], dict[Any, Any]] | None = None) -> None:
    """Process every block and hand the outputs to `sink`, in block order.

    Parameters
    ----------
    sources : Sources
        The two images.
    plan : Plan
        Global parameters.
    sink : Sink
        Receives ``sink.block(BlockOutput)`` for each block in order, then
        ``sink.objects([ChangeObject, ...])`` with its objects.
    block_size, halo : int, optional
        Core side and halo of the blocks, pixels (default halo:
        :data:`DEFAULT_HALO`).
    threads : int, optional
        Threads for the local path (default: all cores).
    client : dask.distributed.Client, optional
        Run the blocks as tasks on this cluster instead.
    progress : callable, optional
        ``progress("blocks", done, total)``; then, if changes cut by the
        blocks' seams are processed again, ``progress(SEAMS_STAGE, done,
        total)`` and, for changes too large for a window,
        ``progress(TILES_STAGE, done, total)`` (its total grows as the
        tiles are found).
    tiles : (dict, dict), optional
        Tiles of the before and after images already decoded (see
        :meth:`changedet.io.TileReader.decoded_tiles`): the local path reads
        those within reach of the blocks instead of decoding them again.
        The dicts are emptied.
    """
    if block_size < 64:
        raise ValueError("block_size must be at least 64 pixels")
    with io.quiet_not_georeferenced():
        # Each block thread opens the images; for images without
        # georeferencing rasterio warns on every open.
        _run_blocks(sources, plan, sink, block_size=block_size,
                    halo=DEFAULT_HALO if halo is None else halo, threads=threads,
                    client=client, progress=progress, tiles=tiles)


def _run_blocks(sources: Sources, plan: Plan, sink: Sink, *, block_size: int, halo: int,
                threads: int | None, client: Any,
                progress: Callable[[str, int, int], None] | None,
                tiles: tuple[dict[Any, Any], dict[Any, Any]] | None = None) -> None:
    halo = max(halo, plan.halo)
    blocks = layout(plan.grid.shape, block_size, halo)
    threads = threads or os.cpu_count() or 1
    with contextlib.ExitStack() as stack:
        if "GDAL_CACHEMAX" not in os.environ:
            stack.enter_context(rasterio.Env(GDAL_CACHEMAX=BLOCK_GDAL_CACHE_MB * 2 ** 20))
        if threads > 1:
            # numpy's BLAS (a tensordot per block) would start its own thread
            # per core inside each of ours (the blocks', or the second
            # pass's): oversubscribed, it runs ten times slower than on one.
            stack.enter_context(threadpool_limits(limits=1, user_api="blas"))
        release_free_memory()
        readers = stack.enter_context(Readers(sources, plan,
                                              cache_pixels(plan, block_size, halo)))
        if tiles is not None:
            if client is None:
                _adopt(readers, sources, plan, tiles, halo)
            for held in tiles:
                held.clear()
        if client is not None:
            outputs = _ordered_dask(blocks, sources, plan, client)
        else:
            outputs = _ordered(blocks, lambda blk: run_block(sources, plan, blk, readers),
                               threads)
        deferred: list[NDArray[np.int64]] = []
        # Anchors of the objects emitted, as row * width + col: the second
        # pass recomputes whole regions and must not emit them again.
        emitted = array("q")
        # Where they lie, for changes too large for any window: their
        # pieces are told from these by their pixels (1 bit each: an eighth
        # of the change's area in bytes).
        reported: list[Footprint] = []
        width = plan.grid.width
        for i, out in enumerate(outputs, start=1):
            sink.block(out)
            sink.objects(out.objects)
            for obj in out.objects:
                emitted.append(_anchor_key(obj, width))
                reported.extend(Footprint.of(obj))
            if len(out.deferred):
                deferred.append(out.deferred)
            if progress is not None:
                progress("blocks", i, len(blocks))
        if deferred:
            # The second pass's windows lie anywhere and are up to `limit`
            # across: the stripes' tiles are of little use to them, and
            # kept (up to 150 MB an image) they pushed the flood pair's peak
            # from 700 to 980 MB. A window's worth is kept instead, for a
            # region re-read larger as it grows.
            limit = max(MAX_GROWN_WINDOW, block_size + 2 * halo)
            readers.recache(min(limit * limit, cache_pixels(plan, block_size, halo)))
            _resolve_deferred(np.concatenate(deferred), sources, plan, sink, halo, readers,
                              np.sort(np.asarray(emitted)), limit, threads, reported,
                              progress)


def _adopt(readers: Readers, sources: Sources, plan: Plan,
           tiles: tuple[dict[Any, Any], dict[Any, Any]], halo: int) -> None:
    # Hand the readers the tiles within reach of the blocks (the window with
    # its halo and the resampling's reach, on the before image's pixels;
    # the after image is on them up to a shift): one outside would be held
    # to the end, unread.
    r0, c0 = sources.origin
    h, w = plan.grid.shape
    reach = halo + 8
    for reader, held in zip((readers.before, readers.after), tiles, strict=True):
        th, tw = reader.tile_shape
        reader.adopt({key: tile for key, tile in held.items()
                      if (key[0] + 1) * th > r0 - reach and key[0] * th < r0 + h + reach
                      and (key[1] + 1) * tw > c0 - reach and key[1] * tw < c0 + w + reach})


def _anchor_key(obj: ChangeObject, width: int) -> int:
    # An object's identity across windows: its first pixel, row * width + col.
    return obj.anchor[0] * width + obj.anchor[1]


def _resolve_deferred(deferred: NDArray[np.int64], sources: Sources, plan: Plan, sink: Sink,
                      halo: int, readers: Readers, first_pass: NDArray[np.int64],
                      limit: int, threads: int, reported: list[Footprint],
                      progress: Callable[[str, int, int], None] | None = None) -> None:
    """Second pass: groups too large for their block, in grown windows.

    A region is processed whole, and its objects emitted unless the first
    pass emitted them (`first_pass`: their sorted anchors, as ``row * width
    + col``): an object's pixels and attributes are the same in any window
    that holds its group, so its anchor identifies it. (Whether a group's
    box fits its anchor block does not tell: there, seedless candidates
    reaching the block's edge may have joined it to a group that was not
    complete, and nobody emitted it.)
    """
    h, w = plan.grid.shape
    emitted: set[int] = set()   # keys, as first_pass's, of this pass's objects

    def unseen(objs: list[ChangeObject]) -> list[ChangeObject]:
        # Those not emitted yet (by the first pass or another region).
        out = []
        for obj in objs:
            key = _anchor_key(obj, w)
            if key not in emitted and not _holds_key(first_pass, key):
                emitted.add(key)
                out.append(obj)
                reported.extend(Footprint.of(obj))
        return out

    boxes = [tuple(int(v) for v in d[2:]) for d in deferred]
    regions = _merge_boxes(boxes, halo)  # type: ignore[arg-type]
    budget = _PixelBudget(LARGE_WINDOWS_IN_FLIGHT * limit * limit)

    def settle(region: tuple[int, int, int, int]) -> tuple[list[ChangeObject], bool]:
        # The region's objects, once a window holds every group that meets
        # the region; or the region itself, too large for one window.
        r0, c0, r1, c1 = region
        while True:
            win = Window(max(0, c0 - halo), max(0, r0 - halo),
                         min(w, c1 + halo) - max(0, c0 - halo),
                         min(h, r1 + halo) - max(0, r0 - halo))
            if max(win.width, win.height) > limit:
                return [], True
            objects, inc, _ = _window_in_budget(sources, plan, readers, budget, win)
            # Only groups that meet the region itself must be whole: one cut
            # by this window that meets only the span grown around it is
            # another region's (or none's). Counted, in a field of changes
            # each window's edge cut new ones and the span grew to the limit.
            touching = inc[boxes_meet(inc[:, 2:], region)]
            if not len(touching):
                return objects, False
            # A group cut by the window goes on beyond it: grow towards it
            # by the region's size at least, not by a halo at a time (a large
            # change would take dozens of ever larger windows); within
            # `limit` while what is known of the groups fits.
            g0, g1 = int(touching[:, 2].min()), int(touching[:, 3].min())
            g2, g3 = int(touching[:, 4].max()), int(touching[:, 5].max())
            room = limit - 2 * halo
            rows = _grow((r0, r1), (g0, g2), (int(win.row_off), int(win.row_off + win.height)),
                         room, h, halo)
            cols = _grow((c0, c1), (g1, g3), (int(win.col_off), int(win.col_off + win.width)),
                         room, w, halo)
            if (rows[0], cols[0], rows[1], cols[1]) == (r0, c0, r1, c1):
                return [], True     # at the limit and still cut
            (r0, r1), (c0, c1) = rows, cols

    # Regions on the threads, their objects emitted in region order (so the
    # output does not depend on which finishes first).
    too_big: list[tuple[int, int, int, int]] = []
    _report(progress, SEAMS_STAGE, 0, len(regions))
    with ThreadPoolExecutor(max_workers=max(threads, 1),
                            thread_name_prefix="changedet-second") as pool:
        for i, (region, (objects, big)) in enumerate(
                zip(regions, pool.map(settle, regions), strict=True), start=1):
            if big:
                too_big.append(region)
            sink.objects(unseen(objects))
            _report(progress, SEAMS_STAGE, i, len(regions))
        if too_big:
            # On the same threads (and their handles on the images).
            known = np.union1d(first_pass, np.fromiter(emitted, np.int64, len(emitted)))
            _resolve_in_tiles(too_big, sources, plan, sink, halo, readers, known, limit,
                              reported, pool, budget, progress)


def _window_in_budget(sources: Sources, plan: Plan, readers: Readers, budget: _PixelBudget,
                      window: Window, **options: Any,
                      ) -> tuple[list[ChangeObject], NDArray[np.int64], list[Piece]]:
    """Process a second-pass window, holding its pixels of `budget` while its arrays live.

    Returns its objects, incomplete groups and pieces
    (:class:`changedet.blocks.WindowResult`; the second pass needs no
    score). `options` go to :func:`changedet.blocks.process_window`.
    """
    with budget.hold(int(window.width) * int(window.height)):
        b, a, invalid = read_block(sources, plan, window, readers)
        res = process_window(b, a, invalid, plan, row_off=int(window.row_off),
                             col_off=int(window.col_off), edges=_edges(window, plan.grid.shape),
                             **options)
        found = res.objects, res.incomplete, res.pieces
        del b, a, invalid, res
        # A window here is several hundred MB, freed in pieces glibc keeps.
        release_free_memory()
    return found


class _PixelBudget:
    """Windows in flight on the threads, their pixels bounded.

    A window waits while others hold more than the budget with it; one
    window alone always runs. So the second pass's threads never hold more
    than the budget's worth of windows, however large and many they are,
    and however many threads there are.
    """

    def __init__(self, pixels: int) -> None:
        self.pixels, self.used = pixels, 0
        self.cond = threading.Condition()

    @contextlib.contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        with self.cond:
            self.cond.wait_for(lambda: self.used == 0 or self.used + pixels <= self.pixels)
            self.used += pixels
        try:
            yield
        finally:
            with self.cond:
                self.used -= pixels
                self.cond.notify_all()


def _grow(region: tuple[int, int], groups: tuple[int, int], window: tuple[int, int],
          room: int, size: int, least: int) -> tuple[int, int]:
    """Grow a region's span along one axis to hold its cut groups, and more.

    `region` and `groups` (the cut groups' span) are ``(start, stop)``;
    `window` is the span of the window that cut them. A side where a group
    reaches the window's edge grows by the region's length (at least
    `least`): the group goes on beyond it, and growing a halo at a time
    would take dozens of ever larger windows. The growth beyond what the
    groups need is trimmed so the span stays within `room` (when what they
    need fits).
    """
    lo, hi = min(region[0], groups[0]), max(region[1], groups[1])
    step = max(region[1] - region[0], least)
    want_lo = lo - step if groups[0] < window[0] + SAFE_MARGIN else lo
    want_hi = hi + step if groups[1] > window[1] - SAFE_MARGIN else hi
    want_lo, want_hi = max(want_lo, 0), min(want_hi, size)
    if want_hi - want_lo > room and hi - lo <= room:
        extra = room - (hi - lo)
        up = min(lo - want_lo, extra if want_hi == hi else extra // 2)
        want_lo, want_hi = lo - up, min(want_hi, hi + extra - up)
    return want_lo, want_hi


def _resolve_in_tiles(regions: list[tuple[int, int, int, int]], sources: Sources, plan: Plan,
                      sink: Sink, halo: int, readers: Readers, emitted: NDArray[np.int64],
                      limit: int, reported: list[Footprint], pool: Executor,
                      budget: _PixelBudget,
                      progress: Callable[[str, int, int], None] | None = None) -> None:
    """Regions too large for one window: processed in tiles, the pieces of what they cut joined.

    Tiles are read with a margin of an eighth of `limit` (at least the
    halo), their cores as large as keeps the windows within it: changes up
    to about that margin are held whole by some tile. A tile emits the
    objects it holds whole that reach into its core, exactly as any window
    would (once, however many tiles hold them); the objects it cuts give
    pieces (:class:`changedet.blocks.Piece`), and every tile that such a
    group reaches is processed in turn, until none leads further. The
    pieces are then joined (:func:`changedet.blocks.join_pieces`).

    The tiles queued are processed on `pool`'s threads a wave at a time,
    within `budget`, their results taken in queue order: the tiles visited,
    their order and the output are those of one thread.
    """
    h, w = plan.grid.shape
    margin = max(limit // 8, halo)
    core = max(limit - 2 * margin, 64)
    queue: deque[tuple[int, int]] = deque()
    seen: set[tuple[int, int]] = set()

    def reach(r0: int, c0: int, r1: int, c1: int) -> None:
        # Queue the tiles whose cores meet rows r0:r1, cols c0:c1.
        for ti in range(max(r0, 0) // core, (min(r1, h) - 1) // core + 1):
            for tj in range(max(c0, 0) // core, (min(c1, w) - 1) // core + 1):
                if (ti, tj) not in seen:
                    seen.add((ti, tj))
                    queue.append((ti, tj))

    def process(tile: tuple[int, int],
                ) -> tuple[list[ChangeObject], list[Piece], NDArray[np.int64]]:
        # A tile's whole objects, its pieces, and the boxes of the groups
        # it cuts that reach into its core.
        ti, tj = tile
        cr0, cc0 = ti * core, tj * core
        cr1, cc1 = min(cr0 + core, h), min(cc0 + core, w)
        wr0, wc0 = max(0, cr0 - margin), max(0, cc0 - margin)
        win = Window(wc0, wr0, min(w, cc1 + margin) - wc0, min(h, cr1 + margin) - wr0)

        def meets_tile(anchors: NDArray[np.int64], bbox: NDArray[np.int64],
                       ) -> NDArray[np.bool_]:
            # Every group held whole that reaches into the core: a tile that
            # sees it cut gives pieces of it, which this object replaces.
            return boxes_meet(bbox, (cr0, cc0, cr1, cc1))

        objects, inc, cut = _window_in_budget(
            sources, plan, readers, budget, win, select=meets_tile,
            core=(cr0 - wr0, cc0 - wc0, cr1 - wr0, cc1 - wc0))
        return objects, cut, inc[boxes_meet(inc[:, 2:], (cr0, cc0, cr1, cc1))][:, 2:6]

    for region in regions:
        reach(*region)
    whole: dict[int, ChangeObject] = {}
    pieces: list[Piece] = []
    done = 0
    _report(progress, TILES_STAGE, 0, len(seen))
    while queue:
        wave = list(queue)
        queue.clear()
        for objects, cut, follow in pool.map(process, wave):
            # Follow every group cut there that reaches into the core,
            # whether or not it left pixels there (a chain of specks below
            # the minimum area can join two changes).
            for g in follow:
                reach(int(g[0]) - 1, int(g[1]) - 1, int(g[2]) + 1, int(g[3]) + 1)
            for obj in objects:
                # Several tiles may hold an object whole: the same object.
                whole.setdefault(_anchor_key(obj, w), obj)
            pieces.extend(cut)
            done += 1
            _report(progress, TILES_STAGE, done, len(seen))   # tiles known so far
    joined = join_pieces(pieces, plan, whole=list(whole.values()), reported=reported)
    new = [o for key, o in whole.items() if not _holds_key(emitted, key)]
    sink.objects(sorted(new + joined, key=lambda o: o.anchor))
    if joined:
        warnings.warn(
            f"an area of change larger than {limit} pixels across was processed in tiles of "
            f"{core} pixels and {len(joined)} change(s) in it joined from pieces: they are "
            "complete, but their outline along the edge, their score and direction are as "
            "each tile saw them (not exactly what one window would give); for exact results "
            "use blocks larger than the area (--block-size)",
            LargeChangeWarning, stacklevel=2)


#: Progress stages of the second pass: changes cut by the blocks' seams,
#: each region of them processed again in a window; changes too large for
#: one, followed through tiles (their total grows as they are found).
SEAMS_STAGE = "changes across seams"
TILES_STAGE = "large changes, tiles"


def _report(progress: Callable[[str, int, int], None] | None, stage: str, done: int,
            total: int) -> None:
    # A stage of one step is announced once, at its start.
    if progress is not None and (done == 0 or total > 1):
        progress(stage, done, total)


def _holds_key(keys: NDArray[np.int64], key: int) -> bool:
    i = int(np.searchsorted(keys, key))
    return i < keys.size and int(keys[i]) == key
