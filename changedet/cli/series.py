"""``changedet series``: many dates in, each change once with when it was seen."""

from __future__ import annotations

import os
import sys
from collections import Counter

import click
import rasterio

from changedet import io
from changedet.cli.options import (
    bands_opt,
    check_scale,
    coreg_opt,
    handle_errors,
    min_area_opt,
    output_opt,
    overwrite_opt,
    progress_reporter,
    quiet,
    scale_opts,
    threshold_opt,
    verbosity_opt,
)
from changedet.errors import OutputError
from changedet.series import track_series


def _parse_dates(ctx: click.Context, param: click.Parameter, value: str | None,
                 ) -> list[str] | None:
    if value is None:
        return None
    dates = [v.strip() for v in value.split(",") if v.strip()]
    if not dates:
        raise click.BadParameter("give comma-separated dates, e.g. 2019-05-01,2020-06-12")
    return dates


@click.command(short_help="Follow changes over a series of dates.")
@click.argument("images", nargs=-1, required=True, metavar="IMAGE1 IMAGE2 [IMAGE3 ...]")
@output_opt
@click.option("--dates", callback=_parse_dates, default=None, metavar="D1,D2,...",
              help="One date per image, in the order given (YYYY-MM-DD, YYYY-MM or YYYY). "
                   "Default: each file's metadata, else a date in its name (e.g. _20090818).")
@min_area_opt
@bands_opt
@coreg_opt
@threshold_opt
@scale_opts
@overwrite_opt
@verbosity_opt
@handle_errors
def series(images: tuple[str, ...], output: str | None, dates: list[str] | None,
           min_area: float, bands: list[int] | None, coreg: str, threshold: str | float,
           threads: int | None, block_size: int, scheduler: str | None, workers: int | None,
           overwrite: bool) -> None:
    """Find what changed across IMAGES (two or more dates) and when.

    Every image is co-registered to the earliest one, changes are found
    between consecutive dates, and each structure is followed across them:
    it is written once, with `first_seen` and `last_seen` dates,
    `absent_before` (the last date without it, if any) and `absent_after`
    (the first date it is gone, if any). `change` is appeared (still there at
    the end), disappeared (there from the start, then gone), transient
    (appeared, then gone) or changed (in place). Each pair of consecutive
    dates is processed block by block, as `changedet diff` does, so memory
    does not grow with the images.

    \b
    Examples:
    $ changedet series naip/*.tif -o naip_changes.geojson
    $ changedet series a.tif b.tif c.tif --dates 2021-03,2022-03,2023-03 -o site.geojson
    """  # noqa: D301 - \b must stay a backspace: click's no-rewrap marker
    if len(images) < 2:
        raise click.UsageError("give at least two images")
    check_scale(scheduler, workers)
    if output == "-":
        output = None   # the usual spelling of standard output
    if output:
        if any(os.path.abspath(output) == os.path.abspath(p) for p in images):
            raise OutputError(f"{output}: is also an input; choose another output path")
        io.check_output_path(output, overwrite=overwrite, inputs=images)
    progress = progress_reporter()
    try:
        with rasterio.Env():
            result = track_series(list(images), dates=dates, bands=bands, coreg=coreg,
                                  min_area=min_area, threshold=threshold, progress=progress,
                                  block_size=block_size, threads=threads, scheduler=scheduler,
                                  workers=workers)
    finally:
        if progress is not None:
            progress.close()
    fc = result.to_geojson()
    if output:
        io.write_geojson(fc, output, overwrite=overwrite, inputs=list(images))
    else:
        for chunk in io.dumps_geojson(fc):
            sys.stdout.write(chunk)
        sys.stdout.flush()

    if not quiet():
        for step in result.steps:
            click.echo(f"{step['from']} → {step['to']}: {step['appeared']} appeared, "
                       f"{step['disappeared']} disappeared, {step['changed']} changed "
                       f"({step['changed_percent']:g} % of the area)", err=True)
        counts = Counter(p["change"] for p in result.properties)
        parts = ", ".join(f"{counts[k]} {k}" for k in
                          ("appeared", "disappeared", "transient", "changed") if counts[k])
        click.echo(f"{len(result)} structure(s) over {len(result.dates)} dates"
                   f"{': ' + parts if parts else ''}"
                   f"{'; wrote ' + output if output else ''}", err=True)
