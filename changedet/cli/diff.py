"""``changedet diff``: two images in, change polygons out."""

from __future__ import annotations

import sys

import click
import rasterio

from changedet.cleanup import DEFAULT_MIN_AREA_M2
from changedet.cli.options import (
    bands_opt,
    bbox_opt,
    coreg_opt,
    handle_errors,
    Progress,
    output_opt,
    overwrite_opt,
    roi_opt,
    scale_opts,
    threshold_opt,
    verbosity_opt,
)
from changedet.pipeline import diff as changedet_diff


@click.command(short_help="Find what changed between two images.")
@click.argument("before", metavar="BEFORE")
@click.argument("after", metavar="AFTER")
@output_opt
@click.option("--mask", "mask_path", type=click.Path(dir_okay=False), default=None,
              metavar="MASK.tif",
              help="Also write the class raster (uint8 COG: 0 none, 1 appeared, "
                   "2 disappeared, 3 changed, 255 nodata).")
@click.option("--score", "score_path", type=click.Path(dir_okay=False), default=None,
              metavar="SCORE.tif", help="Also write the change score (float32 COG).")
@click.option("--min-area", type=click.FloatRange(min=0), default=DEFAULT_MIN_AREA_M2,
              show_default=True, metavar="M2",
              help="Minimum mapping unit in square metres; smaller changes are dropped.")
@roi_opt
@bbox_opt
@bands_opt
@coreg_opt
@threshold_opt
@click.option("--simplify", type=click.FloatRange(min=0), default=0.0, show_default=True,
              metavar="M", help="Simplify polygon outlines to this tolerance in metres "
                                "(0 keeps pixel edges).")
@scale_opts
@overwrite_opt
@verbosity_opt
@handle_errors
def diff(before: str, after: str, output: str | None, mask_path: str | None,
         score_path: str | None, min_area: float, roi: str | None,
         bbox: tuple[float, float, float, float] | None, bands: list[int] | None,
         coreg: str, threshold: str | float, simplify: float, threads: int | None,
         block_size: int, scheduler: str | None, workers: int | None,
         overwrite: bool) -> None:
    """Find what changed between BEFORE and AFTER and write it as GeoJSON.

    BEFORE and AFTER are two images of the same place (GeoTIFF or anything
    GDAL reads, any CRS, pixel size and extent). AFTER is reprojected onto
    BEFORE's grid, co-registered and radiometrically normalised; the
    changes larger than --min-area become polygons in WGS84 lon/lat, each
    labelled appeared, disappeared or changed. Rasters of any size are
    processed block by block in bounded memory.

    \b
    Examples:
    $ changedet diff before.tif after.tif -o changes.geojson
    $ changedet diff before.tif after.tif --mask classes.tif --min-area 50 > changes.geojson
    $ changedet diff before.tif after.tif --bbox 125.75 39.01 125.76 39.02 -o square.geojson
    $ changedet diff big_before.tif big_after.tif -o c.geojson --scheduler tcp://head:8786
    """
    if roi and bbox:
        raise click.UsageError("give --roi or --bbox, not both")
    if scheduler and workers:
        raise click.UsageError("give --scheduler or --workers, not both")
    obj = click.get_current_context().find_object(dict) or {}
    quiet = obj.get("quiet", 0) > 0
    progress = Progress(enabled=not quiet and sys.stderr.isatty())
    with rasterio.Env():
        summary = changedet_diff(
            before, after, output, mask=mask_path, score=score_path,
            stream=None if output else sys.stdout, overwrite=overwrite, bands=bands, roi=roi,
            bbox=bbox, coreg=coreg, threshold=threshold, min_area=min_area, simplify=simplify,
            block_size=block_size, threads=threads, scheduler=scheduler, workers=workers,
            progress=progress)
    if not quiet:
        parts = ", ".join(f"{summary.counts[k]} {k}" for k in ("appeared", "disappeared",
                                                               "changed")
                          if summary.counts.get(k))
        s = summary.shift
        shift = f"shift {s.x:+.2f}, {s.y:+.2f} px" if s.reliable else "no reliable shift"
        click.echo(f"{summary.count} change(s){': ' + parts if parts else ''}; {shift}"
                   f"{'; wrote ' + output if output else ''}", err=True)
