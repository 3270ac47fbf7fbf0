"""``changedet diff``: two images in, change polygons (and pictures) out."""

from __future__ import annotations

import os
import sys
import warnings

import click
import rasterio

from changedet import io
from changedet.cli.options import (
    FileName,
    FiniteFloat,
    bands_opt,
    bbox_opt,
    check_scale,
    coreg_opt,
    handle_errors,
    method_opt,
    min_area_opt,
    output_opt,
    overwrite_opt,
    progress_reporter,
    quiet,
    rgb_opt,
    roi_opt,
    scale_opts,
    threshold_opt,
    verbosity_opt,
)
from changedet.errors import ChangeDetWarning
from changedet.pipeline import DiffSummary
from changedet.pipeline import diff as changedet_diff


@click.command(short_help="Find what changed between two images.")
@click.argument("before", metavar="BEFORE")
@click.argument("after", metavar="AFTER")
@output_opt
@click.option("--mask", "mask_path", type=FileName("the class raster"), default=None,
              metavar="MASK.tif",
              help="Also write the class raster (uint8 COG: 0 none, 1 appeared, "
                   "2 disappeared, 3 changed, 255 nodata).")
@click.option("--score", "score_path", type=FileName("the score raster"), default=None,
              metavar="SCORE.tif", help="Also write the change score (float32 COG).")
@click.option("--quicklook", "quicklook_path", type=FileName("the picture"),
              default=None,
              metavar="OUT.png",
              help="Also draw a picture: before | after | after with the changes outlined "
                   "(legend, scale bar, north arrow).")
@click.option("--report", "report_path", type=FileName("the report"), default=None,
              metavar="OUT.html",
              help="Also write a self-contained HTML report (pictures, a map of the "
                   "changes, a table, the run metadata); it works offline.")
@rgb_opt
@min_area_opt
@roi_opt
@bbox_opt
@bands_opt
@coreg_opt
@method_opt
@threshold_opt
@click.option("--simplify", type=FiniteFloat(min=0), default=0.0, show_default=True,
              metavar="M", help="Simplify polygon outlines to this tolerance in metres "
                                "(0 keeps pixel edges).")
@scale_opts
@overwrite_opt
@verbosity_opt
@handle_errors
def diff(before: str, after: str, output: str | None, mask_path: str | None,
         score_path: str | None, quicklook_path: str | None, report_path: str | None,
         rgb: list[int] | None, min_area: float, roi: str | None,
         bbox: tuple[float, float, float, float] | None, bands: list[int] | None,
         coreg: str, method: str, threshold: str | float, simplify: float,
         threads: int | None,
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
    $ changedet diff before.tif after.tif -o changes.geojson --quicklook look.png --report r.html
    $ changedet diff naip_2018.tif naip_2020.tif --rgb 4,1,2 --quicklook false_colour.png
    $ changedet diff big_before.tif big_after.tif -o c.geojson --scheduler tcp://head:8786
    """  # noqa: D301 - \b must stay a backspace: click's no-rewrap marker
    if roi and bbox:
        raise click.UsageError("give --roi or --bbox, not both")
    check_scale(scheduler, workers)
    if output == "-":
        output = None   # the usual spelling of standard output
    # diff() checks every output, pictures included, before it works; the
    # pictures' bands are checked here, so a bad --rgb costs nothing.
    pictures = bool(quicklook_path or report_path)
    _check_suffixes({output: (".geojson", ".json"), mask_path: (".tif", ".tiff"),
                     score_path: (".tif", ".tiff"), quicklook_path: (".png",),
                     report_path: (".html", ".htm")})
    if rgb is not None:
        if pictures:
            from changedet.quicklook import check_rgb

            with rasterio.Env():
                check_rgb(rgb, before, after)
        else:
            warnings.warn("--rgb only chooses the bands of --quicklook and --report "
                          "pictures; without either it does nothing", ChangeDetWarning,
                          stacklevel=1)
    progress = progress_reporter()
    try:
        with rasterio.Env():
            summary = changedet_diff(
                before, after, output, mask=mask_path, score=score_path,
                stream=None if output else sys.stdout, overwrite=overwrite,
                extra_outputs=[p for p in (quicklook_path, report_path) if p],
                collect=pictures, bands=bands, roi=roi, bbox=bbox, coreg=coreg,
                method=method, threshold=threshold, min_area=min_area, simplify=simplify,
                block_size=block_size, threads=threads, scheduler=scheduler, workers=workers,
                progress=progress)
    finally:
        if progress is not None:
            progress.close()
    if pictures:
        drawn: list[str] = []
        try:
            _write_pictures(summary, before, after, quicklook_path, report_path, rgb=rgb,
                            geojson_name=os.path.basename(output) if output else
                            "changes.geojson", overwrite=overwrite, drawn=drawn)
        except KeyboardInterrupt:
            # The results are written and whole by now: say so, rather than
            # "no output was written".
            done = ", ".join(p for p in (output, mask_path, score_path, *drawn) if p)
            missing = [p for p in (quicklook_path, report_path) if p and p not in drawn]
            click.echo(f"Interrupted while drawing the pictures; {done or 'the GeoJSON'} "
                       f"written, not {', '.join(missing)}.", err=True)
            raise click.exceptions.Exit(130) from None
    if not quiet():
        counts = summary.counts
        parts = ", ".join(f"{counts[k]} {k}" for k in ("appeared", "disappeared", "changed")
                          if counts.get(k))
        s = summary.shift
        shift = ("co-registration off" if coreg == "none" else
                 f"shift {s.x:+.2f}, {s.y:+.2f} px" if s.reliable else "no reliable shift")
        click.echo(f"{summary.count} change(s){': ' + parts if parts else ''}; {shift}"
                   f"{'; wrote ' + output if output else ''}", err=True)


def _check_suffixes(expected: dict[str | None, tuple[str, ...]]) -> None:
    # What is written is what the option says (a PNG for --quicklook, a
    # GeoTIFF for --mask), whatever the name: warn when the name says
    # otherwise, since viewers go by it.
    kinds = {".png": "a PNG", ".tif": "a GeoTIFF", ".geojson": "GeoJSON", ".html": "HTML"}
    for path, suffixes in expected.items():
        if path and os.path.splitext(path)[1].lower() not in suffixes:
            warnings.warn(f"{path}: is written as {kinds[suffixes[0]]}; name it "
                          f"{suffixes[0]} so that viewers open it as one", ChangeDetWarning,
                          stacklevel=1)


def _write_pictures(result: DiffSummary, before: str, after: str, quicklook_path: str | None,
                    report_path: str | None, *, rgb: list[int] | None, geojson_name: str,
                    overwrite: bool, drawn: list[str]) -> None:
    # `drawn` receives each picture's path once it is written.
    from changedet import __version__
    from changedet.quicklook import quicklook, read_previews
    from changedet.report import report
    from changedet.series import acquisition_date

    inputs = [before, after]
    with rasterio.Env():
        dates = (acquisition_date(before), acquisition_date(after))
        previews = read_previews(result, before, after, rgb=rgb, max_size=1600)
    figure = quicklook(result, before, after, dates=dates, previews=previews)
    if quicklook_path:
        io.write_png(figure, quicklook_path, overwrite=overwrite, inputs=inputs,
                     text={"Software": f"changedet {__version__}",
                           "Source": f"{before} -> {after}"})
        drawn.append(quicklook_path)
    if report_path:
        html = report(result, before, after, dates=dates, previews=previews, figure=figure,
                      geojson_name=geojson_name)
        io.write_text(report_path, [html], overwrite=overwrite, inputs=inputs)
        drawn.append(report_path)
