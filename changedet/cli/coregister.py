"""``changedet coregister``: how far is the after image displaced, and align it."""

from __future__ import annotations

import json

import click
import rasterio

from changedet import io
from changedet.align import coregister as coregister_images
from changedet.cli.options import (
    FileName,
    bands_opt,
    handle_errors,
    overwrite_opt,
    quiet,
    verbosity_opt,
)


@click.command(short_help="Measure and remove the displacement of the after image.")
@click.argument("before", metavar="BEFORE")
@click.argument("after", metavar="AFTER")
@click.option("--local", is_flag=True, default=False,
              help="Fit an affine to a grid of tie points (rotation, scale, shear) instead of "
                   "one global shift.")
@click.option("-o", "--output", type=FileName("the aligned image"), default=None,
              metavar="ALIGNED.tif",
              help="Write AFTER resampled onto BEFORE's grid (the overlap), aligned, as a "
                   "Cloud-Optimized GeoTIFF of AFTER's data type.")
@click.option("--tie-points", "tie_points", type=FileName("the tie points"),
              default=None,
              metavar="TP.geojson",
              help="Write the matched windows as GeoJSON points with their shift (dx, dy "
                   "in pixels), reliability and whether they agree with the fit.")
@click.option("--json", "as_json", is_flag=True, default=False,
              help="Print what was found as one JSON object on standard output.")
@bands_opt
@overwrite_opt
@verbosity_opt
@handle_errors
def coregister(before: str, after: str, local: bool, output: str | None,
               tie_points: str | None, as_json: bool, bands: list[int] | None,
               overwrite: bool) -> None:
    """Measure how far AFTER's content is displaced relative to BEFORE.

    The shift is in BEFORE's pixels, x to the right and y down (shift_px),
    and in map units, x east and y north (shift_m): a corner at column 100,
    row 50 in BEFORE that sits at column 103.4, row 47.3 in AFTER is
    x = +3.4, y = -2.7 px. AFTER may be in any CRS and pixel size; it is
    compared on BEFORE's grid. With no reliable match (water, cloud, too
    little overlap) the command says so and exits with code 1.

    \b
    Examples:
    $ changedet coregister before.tif after.tif
    $ changedet coregister before.tif after.tif --json
    $ changedet coregister before.tif after.tif --local -o aligned.tif --tie-points tp.geojson
    """  # noqa: D301 - \b must stay a backspace: click's no-rewrap marker
    io.check_output_paths((output, tie_points), overwrite=overwrite, inputs=[before, after])

    with rasterio.Env():
        result = coregister_images(before, after, mode="local" if local else "global",
                                   bands=bands)
        if output:
            result.write_aligned(output, overwrite=overwrite)
    if tie_points:
        result.write_tie_points(tie_points, overwrite=overwrite)
    info = result.to_dict()
    if as_json:
        click.echo(json.dumps(info, allow_nan=False))
    elif not quiet():
        s, a = result.shift, result.alignment
        metres = (f" ({info['shift_m']['x']:+.3f} m east, {info['shift_m']['y']:+.3f} m north)"
                  if "shift_m" in info else "")
        model = (f"; affine from {info['tie_point_inliers']} of {info['tie_points']} tie points, "
                 f"rotation {info['rotation_deg']:+.4f} deg, RMSE {a.rmse:.3f} px"
                 if a.model == "affine" else "")
        note = f"; {a.note}" if a.note else ""
        click.echo(f"shift {s.x:+.3f}, {s.y:+.3f} px{metres}, "
                   f"{'reliable' if s.reliable else 'NOT reliable'} (agreement score "
                   f"{s.reliability:.2f} of 1)"
                   f"{model}{note}{'; wrote ' + output if output else ''}", err=True)
