"""``changedet info``: check a pair before diffing it."""

from __future__ import annotations

import json
import math

import click
import rasterio

from changedet.cli.options import bands_opt, handle_errors, verbosity_opt
from changedet.pairinfo import ImageSummary, PairInfo, describe_pair


def _num(v: float) -> str:
    return f"{v:.6g}"


def _image_lines(label: str, s: ImageSummary) -> list[str]:
    px, py = s.pixel_size
    mx, my = s.pixel_size_m
    unit = "" if s.crs is None else f" ({_num(mx)} x {_num(my)} m)"
    lines = [
        f"{label}: {s.name}",
        f"  CRS          {s.crs or 'none (pixel space)'}",
        f"  size         {s.width} x {s.height} px",
        f"  pixel size   {_num(px)} x {_num(py)}{unit}",
        "  extent       " + ", ".join(f"{v:.10g}" for v in s.bounds)
        + "  (left, bottom, right, top)",
    ]
    if s.bounds_lonlat:
        w, so, e, n = s.bounds_lonlat
        lines.append(f"  lon/lat      {w:.6f}, {so:.6f}, {e:.6f}, {n:.6f}")
    dtypes = sorted(set(s.dtypes))
    nodata = "none" if s.nodata is None else ("nan" if math.isnan(s.nodata) else _num(s.nodata))
    lines.append(f"  bands        {s.count} x {'/'.join(dtypes)}"
                 + (f" (+ alpha band {s.alpha_band})" if s.alpha_band else ""))
    lines.append(f"  nodata       {nodata}")
    return lines


def format_info(info: PairInfo) -> str:
    """Return the human-readable text of ``changedet info``."""
    lines = _image_lines("before", info.before) + [""] + _image_lines("after", info.after) + [""]
    o = info.overlap
    if o is None:
        lines.append("overlap      none")
    else:
        bw, aw = o.before_window, o.after_window
        lines.append(f"overlap      {bw[2]} x {bw[3]} px of before "
                     f"({100 * o.before_fraction:.1f} %), "
                     f"{aw[2]} x {aw[3]} px of after ({100 * o.after_fraction:.1f} %)")
    s = info.shift
    if s is not None:
        text = (f"shift        x {s.x:+.2f}, y {s.y:+.2f} px "
                "(after relative to before; x right, y down)")
        if info.shift_m is not None:
            text += f" = {info.shift_m[0]:+.2f} m east, {info.shift_m[1]:+.2f} m north"
        lines.append(text)
        lines.append(f"             {'reliable' if s.reliable else 'NOT reliable'} "
                     f"(agreement score {s.reliability:.2f} of 1; peak-to-sidelobe "
                     f"ratio {s.psr:.1f})")
    for note in info.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)


@click.command(short_help="Check a pair of images before a diff.")
@click.argument("before", metavar="BEFORE")
@click.argument("after", metavar="AFTER")
@click.option("--json", "as_json", is_flag=True, default=False,
              help="Print JSON (for scripts) instead of text.")
@click.option("--no-shift", is_flag=True, default=False,
              help="Do not estimate the shift (reads no pixels).")
@bands_opt
@verbosity_opt
@handle_errors
def info(before: str, after: str, as_json: bool, no_shift: bool,
         bands: list[int] | None) -> None:
    """Describe BEFORE and AFTER and how they line up.

    Prints each image's CRS, pixel size, extent, band count, data type and
    nodata; their overlap (in pixels and as a share of each); and the after
    image's shift relative to before, estimated on a central crop of the
    overlap, with how reliable it is.

    \b
    Examples:
    $ changedet info before.tif after.tif
    $ changedet info before.tif after.tif --json | jq .shift
    """  # noqa: D301 - \b must stay a backspace: click's no-rewrap marker
    with rasterio.Env():
        result = describe_pair(before, after, bands=bands, shift=not no_shift)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        click.echo(format_info(result))
