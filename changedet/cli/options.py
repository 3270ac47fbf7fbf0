"""Options shared by changedet's commands, and how errors reach the user."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import click

from changedet.cleanup import DEFAULT_MIN_AREA_M2
from changedet.coreg import COREG_MODES
from changedet.errors import ChangeDetError, ChangeDetWarning
from changedet.pipeline import DETECT_METHODS
from changedet.thresholds import THRESHOLD_METHODS

__all__ = [
    "FiniteFloat",
    "FileName",
    "verbosity_opt",
    "overwrite_opt",
    "output_opt",
    "bands_opt",
    "roi_opt",
    "bbox_opt",
    "coreg_opt",
    "method_opt",
    "threshold_opt",
    "scale_opts",
    "check_scale",
    "Progress",
    "min_area_opt",
    "rgb_opt",
    "progress_reporter",
    "quiet",
    "configure_logging",
    "handle_errors",
]

F = TypeVar("F", bound=Callable[..., Any])


def _count_verbosity(ctx: click.Context, param: click.Parameter, value: int) -> int:
    ctx.ensure_object(dict)
    ctx.obj[param.name] = value
    return value


def verbosity_opt(f: F) -> F:
    """``-v/--verbose`` and ``-q/--quiet``, both counted."""
    f = click.option("-q", "--quiet", count=True, callback=_count_verbosity,
                     expose_value=False, help="Say less on stderr (warnings off with -q).")(f)
    f = click.option("-v", "--verbose", count=True, callback=_count_verbosity,
                     expose_value=False,
                     help="Say more on stderr: -v each stage as a line (instead of the "
                          "progress bar), -vv debugging and tracebacks.")(f)
    return f


class FileName(click.Path):
    """A file that a standard stream cannot stand for: ``-`` is a usage error.

    (``-`` is standard output only where GeoJSON is written: ``-o -``.)

    Parameters
    ----------
    what : str
        What the file holds, for the message ("the class raster").
    read : bool, optional
        Whether the file is read (an input) rather than written.
    """

    name = "file"

    def __init__(self, what: str, *, read: bool = False) -> None:
        super().__init__(dir_okay=False)
        self.what, self.read = what, read

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        """Convert as click.Path does, and refuse ``-``."""
        if value == "-":
            stream = "come from standard input" if self.read else "go to standard output"
            self.fail(f"{self.what} cannot {stream}: give a file name", param, ctx)
        return super().convert(value, param, ctx)


overwrite_opt = click.option(
    "--overwrite", is_flag=True, default=False,
    help="Replace output files that already exist.")

output_opt = click.option(
    "-o", "--output", type=click.Path(dir_okay=False), default=None,
    help="Output GeoJSON file (default, or -: standard output).")


def _parse_bands(ctx: click.Context, param: click.Parameter, value: str | None,
                 ) -> list[int] | None:
    if value is None:
        return None
    try:
        bands = [int(v) for v in value.replace(" ", "").split(",") if v]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of band numbers "
                                 "(e.g. 1,2,3)") from None
    if not bands or any(b < 1 for b in bands):
        raise click.BadParameter("band numbers start at 1 (e.g. 1,2,3)")
    return bands


bands_opt = click.option(
    "--bands", callback=_parse_bands, default=None, metavar="LIST",
    help="Bands to use from both images, 1-based, e.g. 1,2,3 (default: all).")

roi_opt = click.option(
    "--roi", type=FileName("the region of interest", read=True), default=None,
    metavar="ROI.geojson",
    help="Process and report only inside this polygon (GeoJSON, WGS84 lon/lat or "
         "the CRS its 'crs' member names).")

bbox_opt = click.option(
    "--bbox", type=float, nargs=4, default=None, metavar="W S E N",
    help="Process and report only inside these lon/lat bounds.")

coreg_opt = click.option(
    "--coreg", type=click.Choice(COREG_MODES), default="global", show_default=True,
    help="Co-registration: remove a global sub-pixel shift of the after image, an affine "
         "fitted to a grid of tie points (local), or nothing.")


method_opt = click.option(
    "--method", type=click.Choice(DETECT_METHODS), default="auto", show_default=True,
    help="Change score: auto (the default the accuracy benchmark supports), cva "
         "(change-vector magnitude), logratio, irmad (IR-MAD chi-square) or structure "
         "(change of local structure).")


#: Largest threshold accepted: far above any score, and within float32.
_MAX_THRESHOLD = 1e30


def _parse_threshold(ctx: click.Context, param: click.Parameter, value: str) -> str | float:
    if value in THRESHOLD_METHODS:
        return value
    try:
        number = float(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is neither one of {', '.join(THRESHOLD_METHODS)} nor a number") from None
    if not number >= 0:
        raise click.BadParameter("a threshold must be a non-negative number")
    if number > _MAX_THRESHOLD:
        raise click.BadParameter(f"{value} is not a usable threshold: scores are in "
                                 f"no-change standard deviations (the default is about 4-6)")
    return number


threshold_opt = click.option(
    "--threshold", callback=_parse_threshold, default="auto", show_default=True,
    metavar="[auto|chi2|otsu|ki|NUMBER]",
    help="Threshold on the change score (in no-change standard deviations): auto "
         "(chi-square hysteresis), chi2, otsu or ki (Kittler-Illingworth; both only "
         "grow change from seeds the no-change model finds improbable), or a number.")


def scale_opts(f: F) -> F:
    """``--threads``, ``--block-size``, ``--scheduler`` and ``--workers``."""
    f = click.option("--workers", type=click.IntRange(min=1), default=None, metavar="N",
                     help="Start a local Dask cluster of N worker processes for the "
                          "block stage (needs the 'dask' extra).")(f)
    f = click.option("--scheduler", default=None, metavar="ADDRESS",
                     help="Run the block stage on the Dask cluster at ADDRESS "
                          "(e.g. tcp://10.0.0.5:8786); the workers must be able to read "
                          "the input paths.")(f)
    f = click.option("--block-size", type=click.IntRange(min=64), default=1024,
                     show_default=True, metavar="PX",
                     help="Side of the blocks processed at a time; results do not depend "
                          "on it, memory does.")(f)
    f = click.option("--threads", type=click.IntRange(min=1), default=None, metavar="N",
                     help="Threads for the block stage (default: all cores).")(f)
    return f


def check_scale(scheduler: str | None, workers: int | None) -> None:
    """Refuse ``--scheduler`` with ``--workers`` (a usage error)."""
    if scheduler and workers:
        raise click.UsageError("give --scheduler or --workers, not both")


class Progress:
    """Progress on a terminal.

    One line a stage; for counted steps (blocks, dates), done/total, elapsed
    and an estimate of the time left.

    Silent when `enabled` is false. Use :func:`progress_reporter` to get one
    that is on only when it should be.
    """

    def __init__(self, enabled: bool = True, stream: Any = None) -> None:
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self._stage_start = time.monotonic()
        self._open = False

    def __call__(self, stage: str, done: int, total: int) -> None:
        """Show that `stage` is at step `done` of `total`."""
        if not self.enabled:
            return
        now = time.monotonic()
        if total <= 1:
            self.close()
            if stage != "done":
                self.stream.write(f"{stage}...\n")
                self.stream.flush()
            self._stage_start = now
            return
        if done == 0:           # a counted stage announced at its start
            self.close()
            self._stage_start = now
        elapsed = now - self._stage_start
        left = f"~{_duration(elapsed / done * (total - done))} left" if done else "starting"
        self.stream.write(f"\r{stage} {done}/{total} ({100 * done // total}%), "
                          f"{_duration(elapsed)} elapsed, {left} ")
        self.stream.flush()
        self._open = True
        if done >= total:
            self.close()

    def close(self) -> None:
        """End the progress line, if one is showing."""
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class FiniteFloat(click.FloatRange):
    """A float within a range, and finite: ``inf`` and ``nan`` are usage errors."""

    name = "finite number"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        """Convert as FloatRange does, and refuse ``inf`` and ``nan``."""
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


min_area_opt = click.option(
    "--min-area", type=FiniteFloat(min=0), default=DEFAULT_MIN_AREA_M2,
    show_default=True, metavar="M2",
    help="Minimum mapping unit in square metres; smaller changes are dropped.")


def _parse_rgb(ctx: click.Context, param: click.Parameter, value: str | None,
               ) -> list[int] | None:
    bands = _parse_bands(ctx, param, value)
    if bands is not None and len(bands) not in (1, 3):
        raise click.BadParameter("give three bands for red, green, blue (e.g. 3,2,1) or one "
                                 "for grey")
    return bands


rgb_opt = click.option(
    "--rgb", callback=_parse_rgb, default=None, metavar="R,G,B",
    help="Bands shown as red, green, blue in pictures, e.g. 3,2,1 (default: bands "
         "flagged or named red/green/blue, else the first three).")


def _verbosity() -> tuple[int, int]:
    # (-v count, -q count) of the running command; (0, 0) outside one.
    ctx = click.get_current_context(silent=True)
    obj = (ctx.find_object(dict) or {}) if ctx else {}
    return obj.get("verbose", 0), obj.get("quiet", 0)


def quiet() -> bool:
    """Return whether ``-q`` was given: the one-line summaries are then not printed."""
    return _verbosity()[1] > 0


def progress_reporter(stream: Any = None) -> Progress | None:
    """Return a ``progress(stage, done, total)`` callable for the library, or None.

    Progress goes to stderr, only when it is a terminal and neither ``-q``
    nor ``-v`` was given: logs and pipes stay clean.
    """
    stream = stream if stream is not None else sys.stderr
    verbose, quiet_ = _verbosity()
    isatty = getattr(stream, "isatty", None)
    # -v logs each stage on its own line already; a status line would garble it.
    if quiet_ or verbose or not (callable(isatty) and isatty()):
        return None
    return Progress(enabled=True, stream=stream)


class _StderrFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.name == "py.warnings":
            return f"Warning: {msg}"
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.title()}: {msg}"
        return msg


def _show_warning(message: Warning | str, category: type[Warning], filename: str,
                  lineno: int, file: Any = None, line: str | None = None) -> None:
    # One line, the user's language: no file, line number or class name.
    text = str(message).strip().splitlines()
    logging.getLogger("py.warnings").warning("%s", text[0] if text else category.__name__)


def configure_logging(verbose: int, quiet: int) -> None:
    """Send changedet's log and warnings to stderr at the asked level."""
    level = logging.WARNING - 10 * verbose + 10 * quiet
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_StderrFormatter())
    for name in ("changedet", "py.warnings"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(max(level, logging.DEBUG))
        logger.propagate = False


def _gdal_quiet(quiet: int) -> contextlib.AbstractContextManager[Any]:
    # GDAL prints its own warnings about a file ("Warning 1: TIFFReadDirectory
    # ...") from threads rasterio's handler does not cover: with -q they go to
    # the null device (GDAL's CPL_LOG). GDAL reads CPL_LOG once per process,
    # when it first has something to print: right for one command per
    # process; a program that calls main() again keeps the first choice.
    if not quiet:
        return contextlib.nullcontext()
    import rasterio

    return rasterio.Env(CPL_LOG=os.devnull)


def handle_errors(f: F) -> F:
    """Turn library errors into one line on stderr and exit code 1.

    A :class:`ChangeDetError` is the user's to fix, and its message says how.
    Anything else is a bug in changedet: say so in one line, and show the
    traceback only with ``-vv``.
    """

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        obj = ctx.find_object(dict) or {}
        verbose, quiet = obj.get("verbose", 0), obj.get("quiet", 0)
        configure_logging(verbose, quiet)
        try:
            # The command line shows changedet's warnings (on stderr, through
            # logging); a caller's warning filters must not turn them into
            # failures.
            with warnings.catch_warnings(), _gdal_quiet(quiet):
                warnings.simplefilter("always", ChangeDetWarning)
                warnings.showwarning = _show_warning
                return f(*args, **kwargs)
        except ChangeDetError as exc:
            if verbose >= 2:
                traceback.print_exc()
            raise click.ClickException(str(exc)) from None
        except MemoryError:
            raise click.ClickException(
                "out of memory; try a smaller region with --roi or --bbox") from None
        except KeyboardInterrupt:
            click.echo("Interrupted; no output was written.", err=True)
            ctx.exit(130)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            if verbose >= 2:
                traceback.print_exc()
            raise click.ClickException(
                f"internal error ({type(exc).__name__}: {exc}); please report it with the "
                "output of the same command run with -vv") from None

    return wrapper  # type: ignore[return-value]
