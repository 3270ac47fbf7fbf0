"""``changedet diff``: two images in, change polygons out."""

from __future__ import annotations

import os
import sys
from collections import Counter

import click
import rasterio

from changedet import io
from changedet.cleanup import DEFAULT_MIN_AREA_M2
from changedet.cli.options import (
    bands_opt,
    bbox_opt,
    coreg_opt,
    handle_errors,
    method_opt,
    output_opt,
    overwrite_opt,
    roi_opt,
    threshold_opt,
    verbosity_opt,
)
from changedet.errors import OutputError
from changedet.pipeline import detect


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
@method_opt
@threshold_opt
@click.option("--simplify", type=click.FloatRange(min=0), default=0.0, show_default=True,
              metavar="M", help="Simplify polygon outlines to this tolerance in metres "
                                "(0 keeps pixel edges).")
@overwrite_opt
@verbosity_opt
@handle_errors
def diff(before: str, after: str, output: str | None, mask_path: str | None,
         score_path: str | None, min_area: float, roi: str | None,
         bbox: tuple[float, float, float, float] | None, bands: list[int] | None,
         coreg: str, method: str, threshold: str | float, simplify: float,
         overwrite: bool) -> None:
    """Find what changed between BEFORE and AFTER and write it as GeoJSON.

    BEFORE and AFTER are two images of the same place (GeoTIFF or anything
    GDAL reads, any CRS, pixel size and extent). AFTER is reprojected onto
    BEFORE's grid, co-registered and radiometrically normalised; the
    changes larger than --min-area become polygons in WGS84 lon/lat, each
    labelled appeared, disappeared or changed.

    \b
    Examples:
    $ changedet diff before.tif after.tif -o changes.geojson
    $ changedet diff before.tif after.tif --mask classes.tif --min-area 50 > changes.geojson
    $ changedet diff before.tif after.tif --bbox 125.75 39.01 125.76 39.02 -o square.geojson
    """
    if roi and bbox:
        raise click.UsageError("give --roi or --bbox, not both")
    inputs = [before, after]
    outputs = [p for p in (output, mask_path, score_path) if p]
    if len({os.path.abspath(p) for p in outputs}) < len(outputs):
        raise OutputError("the same path is given for two outputs; give each its own")
    # Refuse before working for minutes, not after.
    for path in outputs:
        io.check_output_path(path, overwrite=overwrite, inputs=inputs)

    with rasterio.Env():
        result = detect(before, after, bands=bands, roi=roi, bbox=bbox, coreg=coreg,
                        method=method, threshold=threshold, min_area=min_area,
                        simplify=simplify)
    fc = result.to_geojson()
    if output:
        io.write_geojson(fc, output, overwrite=overwrite, inputs=inputs)
    else:
        for chunk in io.dumps_geojson(fc):
            sys.stdout.write(chunk)
        sys.stdout.flush()
    if mask_path:
        result.write_mask(mask_path, overwrite=overwrite)
    if score_path:
        result.write_score(score_path, overwrite=overwrite)

    counts = Counter(p["change"] for p in result.properties)
    parts = ", ".join(f"{counts[k]} {k}" for k in ("appeared", "disappeared", "changed")
                      if counts[k])
    s = result.shift
    shift = f"shift {s.x:+.2f}, {s.y:+.2f} px" if s.reliable else "no reliable shift"

    if click.get_current_context().find_object(dict).get("quiet", 0) == 0:
        click.echo(f"{len(result)} change(s){': ' + parts if parts else ''}; {shift}"
                   f"{'; wrote ' + output if output else ''}", err=True)
