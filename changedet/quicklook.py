"""Quick-look pictures: before | after | after with the changes outlined.

An editor looks before reading. :func:`render_quicklook` draws, from two
RGB pictures and the change polygons in their pixel coordinates, one
figure readable at the size of a news graphic: three panels on one extent,
the changes outlined in colour-blind-safe colours (Okabe and Ito) over a
dark halo so they show on bright and dark ground alike, a legend, a scale
bar of a round length in metres and a north arrow.

Everything here except :func:`read_previews` and :func:`quicklook` is pure:
arrays in, an ``(H, W, 3)`` uint8 array out. Those two read decimated
previews through :mod:`changedet.io`, so a large raster is never read
whole.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import shapely
import shapely.affinity
from affine import Affine
from numpy.typing import NDArray
from shapely.geometry.base import BaseGeometry

from changedet import io
from changedet.errors import InputError

if TYPE_CHECKING:
    from changedet.grid import Grid
    from changedet.pipeline import ChangeResult

__all__ = [
    "CHANGE_COLOURS",
    "Previews",
    "stretch",
    "nice_length",
    "north_angle",
    "Layout",
    "quicklook_layout",
    "render_quicklook",
    "encode_png",
    "check_rgb",
    "read_previews",
    "preview_polygons",
    "quicklook",
]

#: Outline colours (Okabe and Ito's colour-blind-safe palette).
CHANGE_COLOURS: dict[str, tuple[int, int, int]] = {
    "appeared": (230, 159, 0),     # orange
    "disappeared": (86, 180, 233),  # sky blue
    "changed": (204, 121, 167),     # reddish purple
}

_INK = (20, 20, 20)
_MUTED = (100, 100, 100)
_PAPER = (255, 255, 255)
_NODATA = (205, 205, 205)
_HALO = (0, 0, 0)


def stretch(data: NDArray[np.floating], invalid: NDArray[np.bool_] | None = None, *,
            percentiles: tuple[float, float] = (2.0, 98.0),
            nodata_colour: tuple[int, int, int] = _NODATA) -> NDArray[np.uint8]:
    """Contrast-stretch each band between two percentiles, for display.

    Parameters
    ----------
    data : (bands, H, W) ndarray
        One band (shown grey) or three (red, green, blue).
    invalid : (H, W) ndarray of bool, optional
        True where pixels are invalid; they are left out of the percentiles
        and painted `nodata_colour`.
    percentiles : (float, float), optional
        Values at these percentiles of the valid pixels map to 0 and 255.

    Returns
    -------
    (H, W, 3) ndarray of uint8

    Examples
    --------
    >>> img = np.arange(100, dtype=np.float32).reshape(1, 10, 10)
    >>> out = stretch(img)
    >>> out.shape, int(out[0, 0, 0]), int(out[9, 9, 0])
    ((10, 10, 3), 0, 255)
    """
    arr = np.asarray(data)
    if arr.ndim == 2:
        arr = arr[np.newaxis]
    if arr.ndim != 3 or arr.shape[0] not in (1, 3):
        raise ValueError(f"expected (1, H, W) or (3, H, W) data, got shape {np.shape(data)}")
    lo_p, hi_p = percentiles
    if not 0 <= lo_p < hi_p <= 100:
        raise ValueError(f"percentiles must rise within 0-100, not {percentiles!r}")
    bad = np.zeros(arr.shape[1:], bool) if invalid is None else np.asarray(invalid, bool)
    bad = bad | ~np.isfinite(arr).all(axis=0)
    out = np.empty((3, *arr.shape[1:]), np.uint8)
    for i, band in enumerate(arr):
        valid = band[~bad]
        if valid.size:
            lo, hi = np.percentile(valid, (lo_p, hi_p))
        else:
            lo, hi = 0.0, 1.0
        span = float(hi - lo) if hi > lo else 1.0
        scaled = (band.astype(np.float32) - np.float32(lo)) * np.float32(255.0 / span)
        out[i] = np.clip(np.nan_to_num(scaled), 0, 255).astype(np.uint8)
    if arr.shape[0] == 1:
        out[1:] = out[0]
    rgb = np.moveaxis(out, 0, -1).copy()
    rgb[bad] = nodata_colour
    return rgb


def nice_length(limit: float) -> float:
    """Return the largest 1, 2 or 5 times a power of ten not above `limit`.

    Examples
    --------
    >>> nice_length(73.0), nice_length(180.0), nice_length(0.9)
    (50.0, 100.0, 0.5)
    """
    if not (limit > 0 and math.isfinite(limit)):
        raise ValueError(f"limit must be a positive number, not {limit!r}")
    exp = math.floor(math.log10(limit))
    for m in (5.0, 2.0, 1.0):
        if m * 10.0 ** exp <= limit * (1 + 1e-9):
            return m * 10.0 ** exp
    return 10.0 ** exp


def north_angle(transform: Affine) -> float:
    """Where grid north points in the picture, degrees clockwise from up.

    0 for a north-up grid (no rotation terms); rotated grids give the angle
    of the map's +y axis in pixel space.

    Examples
    --------
    >>> north_angle(Affine(0.5, 0, 0, 0, -0.5, 0))
    0.0
    """
    inv = ~transform
    # Direction of map +y (north) in pixel space: (col, row) grows right/down.
    dc, dr = inv.b, inv.e
    return round(math.degrees(math.atan2(dc, -dr)), 6) % 360.0


def _font(size: int) -> Any:
    from PIL import ImageFont

    # Pillow's bundled scalable font: the same picture on every machine.
    return ImageFont.load_default(size=size)


def _text_width(draw: Any, text: str, font: Any) -> float:
    return float(draw.textlength(text, font=font))


def _rings(geom: BaseGeometry) -> list[NDArray[np.float64]]:
    out: list[NDArray[np.float64]] = []
    for poly in getattr(geom, "geoms", [geom]):
        if poly.is_empty or poly.geom_type != "Polygon":
            continue
        out.append(np.asarray(poly.exterior.coords))
        out.extend(np.asarray(r.coords) for r in poly.interiors)
    return out


def _draw_outlines(draw: Any, outlines: Sequence[tuple[BaseGeometry, str]], k: float,
                   width: int) -> None:
    halo = width + 4
    # Halos first, then colours, so a neighbour's halo never covers an outline.
    for pass_width, colour_of in ((halo, lambda c: _HALO), (width, CHANGE_COLOURS.get)):
        for geom, change in outlines:
            colour = colour_of(change) or CHANGE_COLOURS["changed"]
            for ring in _rings(geom):
                pts = [(float(x) * k - 0.5, float(y) * k - 0.5) for x, y in ring]
                draw.line(pts, fill=colour, width=pass_width, joint="curve")


def _draw_scale_bar(draw: Any, x: float, y: float, max_px: float, m_per_px: float,
                    font: Any) -> float:
    length_m = nice_length(max_px * m_per_px)
    bar_px = length_m / m_per_px
    h = 10
    segments = 4 if bar_px >= 120 else 2
    seg = bar_px / segments
    for i in range(segments):
        x0 = x + i * seg
        draw.rectangle([x0, y, x0 + seg, y + h], fill=_INK if i % 2 == 0 else _PAPER,
                       outline=_INK, width=1)
    label = f"{length_m / 1000:g} km" if length_m >= 1000 else f"{length_m:g} m"
    draw.text((x, y + h + 6), "0", font=font, fill=_INK)
    draw.text((x + bar_px, y + h + 6), label, font=font, fill=_INK, anchor="ma")
    return bar_px


def _draw_north_arrow(draw: Any, cx: float, cy: float, size: float, angle_deg: float,
                      font: Any) -> None:
    a = math.radians(angle_deg)
    ux, uy = math.sin(a), -math.cos(a)   # unit vector towards north, y down
    px, py = -uy, ux                      # perpendicular
    tip = (cx + ux * size / 2, cy + uy * size / 2)
    tail = (cx - ux * size / 2, cy - uy * size / 2)
    left = (tail[0] + px * size * 0.3, tail[1] + py * size * 0.3)
    right = (tail[0] - px * size * 0.3, tail[1] - py * size * 0.3)
    notch = (cx - ux * size * 0.2, cy - uy * size * 0.2)
    draw.polygon([tip, left, notch], fill=_INK)
    draw.polygon([tip, notch, right], fill=_PAPER, outline=_INK)
    draw.line([tip, right, notch], fill=_INK, width=2)
    label = (cx + ux * (size / 2 + 14), cy + uy * (size / 2 + 14))
    draw.text(label, "N", font=font, fill=_INK, anchor="mm")


class Layout(NamedTuple):
    """Where things go in a quick-look picture (see :func:`quicklook_layout`)."""

    #: Picture size in pixels.
    width: int
    height: int
    #: Upper-left corner (x, y) of the before, after and changes panels.
    panels: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
    #: Panel size (width, height) in pixels.
    panel_size: tuple[int, int]
    #: Panel pixels per input pixel.
    scale: float
    #: Type scale relative to an 1800-pixel-wide picture.
    type_scale: float


def quicklook_layout(shape: tuple[int, int], *, width: int = 1800, title: bool = True,
                     subtitle: bool = True, credit: bool = True,
                     max_panel_aspect: float = 1.3) -> Layout:
    """Lay out three panels of an ``(h, w)`` picture across `width` pixels.

    Panels share one scale ``k`` that fits three across with margins; a
    picture that would then be taller than `max_panel_aspect` times that
    panel width gets narrower panels, centred. The height is header + panel + footer.

    Examples
    --------
    >>> lay = quicklook_layout((512, 640))
    >>> lay.width, lay.panel_size
    (1800, (564, 451))
    """
    if width < 600:
        raise ValueError(f"width must be at least 600 pixels, not {width!r}")
    h, w = shape
    margin, gap = round(width * 0.018), round(width * 0.012)
    k = (width - 2 * margin - 2 * gap) / (3 * w)
    if h * k > max_panel_aspect * w * k:
        k = max_panel_aspect * w * k / h
    pw, ph = max(1, round(w * k)), max(1, round(h * k))
    s = width / 1800
    header = margin + (round(46 * s) if title else 0) + (round(30 * s) if subtitle else 0)
    header += round(40 * s)  # captions
    footer = round(96 * s) + (round(26 * s) if credit else 0)
    x0 = (width - 3 * pw - 2 * gap) // 2
    panels = tuple((x0 + i * (pw + gap), header) for i in range(3))
    return Layout(width, header + ph + footer, panels, (pw, ph), pw / w, s)  # type: ignore[arg-type]


def render_quicklook(before: NDArray[np.uint8], after: NDArray[np.uint8],
                     outlines: Sequence[tuple[BaseGeometry, str]] = (), *,
                     metres_per_pixel: float | None = None,
                     north: float | None = 0.0,
                     title: str | None = None,
                     subtitle: str | None = None,
                     captions: Sequence[str] = ("Before", "After", "Changes"),
                     credit: str | None = None,
                     width: int = 1800,
                     max_panel_aspect: float = 1.3) -> NDArray[np.uint8]:
    """Draw before | after | after with the changes outlined, as one picture.

    Parameters
    ----------
    before, after : (h, w, 3) ndarray of uint8
        The two dates on one extent (e.g. from :func:`stretch`).
    outlines : sequence of (geometry, change)
        Polygons in the pixel coordinates of `before` (x = column, y = row,
        pixel corners on integers) and their class (``"appeared"``,
        ``"disappeared"``, ``"changed"``).
    metres_per_pixel : float, optional
        Ground size of one pixel of `before`; without it (pixel space) no
        scale bar is drawn.
    north : float or None, optional
        Where north points, degrees clockwise from up (see
        :func:`north_angle`); ``None`` draws no north arrow.
    title, subtitle : str, optional
        Heading lines.
    captions : three str, optional
        Over each panel (e.g. with the dates).
    credit : str, optional
        Small print at the bottom (inputs, software).
    width : int, optional
        Width of the picture in pixels (at least 600).
    max_panel_aspect : float, optional
        Panels are at most this many times as tall as a full-width panel is
        wide; taller pictures get narrower panels.

    Returns
    -------
    (H, W, 3) ndarray of uint8
        Laid out by :func:`quicklook_layout`: ``W == width``.

    Notes
    -----
    Drawn with Pillow; text uses Pillow's bundled font, so the picture is
    the same on every machine. Outlines are 3 px wide (at 1800 px) over a
    black halo; the legend lists the classes present, with counts.
    """
    from PIL import Image, ImageDraw

    b, a = np.asarray(before), np.asarray(after)
    if b.ndim != 3 or b.shape[2] != 3 or b.dtype != np.uint8 or a.shape != b.shape \
            or a.dtype != np.uint8:
        raise ValueError(f"before and after must be (h, w, 3) uint8 of one shape, got "
                         f"{b.shape} {b.dtype} and {a.shape} {a.dtype}")
    if len(captions) != 3:
        raise ValueError("captions must be three strings (before, after, changes)")
    lay = quicklook_layout(b.shape[:2], width=width, title=bool(title),
                           subtitle=bool(subtitle), credit=bool(credit),
                           max_panel_aspect=max_panel_aspect)
    (pw, ph), k, s = lay.panel_size, lay.scale, lay.type_scale
    margin = round(width * 0.018)
    f_title, f_sub = _font(round(34 * s)), _font(round(20 * s))
    f_cap, f_small = _font(round(22 * s)), _font(round(17 * s))
    canvas = Image.new("RGB", (lay.width, lay.height), _PAPER)
    draw = ImageDraw.Draw(canvas)

    y = margin
    if title:
        draw.text((margin, y), title, font=f_title, fill=_INK, stroke_width=1, stroke_fill=_INK)
        y += round(46 * s)
    if subtitle:
        draw.text((margin, y), subtitle, font=f_sub, fill=_MUTED)

    lefts = [p[0] for p in lay.panels]
    top = lay.panels[0][1]
    for left, caption in zip(lefts, captions, strict=True):
        draw.text((left, top - round(10 * s)), caption, font=f_cap, fill=_INK, anchor="ld")

    resample = Image.Resampling.LANCZOS
    img_b = Image.fromarray(b, "RGB").resize((pw, ph), resample)
    img_a = Image.fromarray(a, "RGB").resize((pw, ph), resample)
    marked = img_a.copy()
    _draw_outlines(ImageDraw.Draw(marked), outlines, k, width=max(2, round(3 * s)))
    for left, img in zip(lefts, (img_b, img_a, marked), strict=True):
        canvas.paste(img, (left, top))
        draw.rectangle([left - 1, top - 1, left + pw, top + ph], outline=(150, 150, 150))

    # Footer: legend under the first panels, scale bar and north arrow under the last.
    fy = top + ph + round(22 * s)
    present = [c for c in CHANGE_COLOURS if any(ch == c for _, ch in outlines)]
    counts = {c: sum(1 for _, ch in outlines if ch == c) for c in present}
    lx = lefts[0]
    sw = round(34 * s)
    if not present:
        draw.text((lx, fy + 2), "No change found", font=f_cap, fill=_INK)
    for c in present:
        box = [lx, fy + 2, lx + sw, fy + 2 + round(22 * s)]
        draw.rectangle(box, fill=_PAPER, outline=_HALO, width=1)
        inner = [box[0] + 3, box[1] + 3, box[2] - 3, box[3] - 3]
        draw.rectangle(inner, outline=CHANGE_COLOURS[c], width=max(2, round(3 * s)))
        label = f"{c.capitalize()} ({counts[c]})"
        draw.text((lx + sw + 10, fy + 2 + round(11 * s)), label, font=f_cap, fill=_INK,
                  anchor="lm")
        lx += sw + 10 + _text_width(draw, label, f_cap) + round(36 * s)

    right = lefts[2] + pw
    if north is not None:
        _draw_north_arrow(draw, right - round(22 * s), fy + round(40 * s), round(40 * s),
                          north, f_cap)
    if metres_per_pixel is not None and metres_per_pixel > 0:
        _draw_scale_bar(draw, lefts[2], fy + round(8 * s), pw * 0.45,
                        metres_per_pixel / k, f_small)
    if credit:
        draw.text((margin, lay.height - round(12 * s)), credit, font=f_small, fill=_MUTED,
                  anchor="ld")
    return np.asarray(canvas, dtype=np.uint8).copy()


def encode_png(image: NDArray[np.uint8]) -> bytes:
    """PNG bytes of an ``(H, W, 3)`` uint8 picture (for data URIs, notebooks)."""
    import io as _bytes_io

    from PIL import Image

    buf = _bytes_io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8), "RGB").save(buf, format="PNG", optimize=True)
    return buf.getvalue()


@dataclass(frozen=True)
class Previews:
    """Display pictures of the two dates on a result's grid.

    Attributes
    ----------
    before, after : (h, w, 3) ndarray of uint8
        Stretched RGB (or grey) pictures, `after` with the shift removed.
    scale : float
        Picture pixels per grid pixel (at most 1).
    grid : Grid
        The result grid they cover.
    bands : tuple of int
        The bands shown as red, green, blue (one band: grey).
    """

    before: NDArray[np.uint8]
    after: NDArray[np.uint8]
    scale: float
    grid: Grid
    bands: tuple[int, ...]

    @property
    def metres_per_pixel(self) -> float | None:
        """Ground size of one picture pixel (None in pixel space)."""
        if self.grid.crs is None:
            return None
        return self.grid.pixel_size_m()[0] / self.scale

    def to_picture(self, geom: BaseGeometry) -> BaseGeometry:
        """Convert a geometry on the grid's CRS to picture pixel coordinates."""
        inv = ~self.grid.transform
        s = self.scale
        m = [inv.a * s, inv.b * s, inv.d * s, inv.e * s, inv.c * s, inv.f * s]
        return shapely.affinity.affine_transform(geom, m)


def check_rgb(rgb: Sequence[int], *sources: io.RasterSource) -> None:
    """Check that every image has the bands `rgb` names, before any work.

    Raises
    ------
    InputError
        Naming the image and the bands it has.
    """
    for src in sources:
        with io.open_raster(src) as ds:
            bad = [b for b in rgb if not 1 <= b <= ds.count]
            if bad:
                raise InputError(
                    f"{io.source_label(src)}: has {ds.count} band(s), so --rgb "
                    f"{','.join(map(str, rgb))} cannot show band(s) {bad}; pick bands "
                    f"from 1 to {ds.count}")


def read_previews(result: ChangeResult, before: io.RasterSource, after: io.RasterSource, *,
                  rgb: Sequence[int] | None = None, max_size: int = 1200,
                  percentiles: tuple[float, float] = (2.0, 98.0)) -> Previews:
    """Read decimated, stretched pictures of both dates on `result`'s grid.

    Parameters
    ----------
    result : ChangeResult
        Gives the extent (its grid) and the shift to remove from `after`.
    before, after : path, dataset or Raster
        The inputs `result` came from.
    rgb : three ints or one int, optional
        1-based bands to show as red, green, blue (default: flagged or named
        colour bands, else the first three, see :func:`changedet.io.rgb_bands`).
    max_size : int, optional
        Longest side of the pictures in pixels.

    Raises
    ------
    InputError
        If a band in `rgb` does not exist.
    """
    if rgb is not None and len(rgb) not in (1, 3):
        raise ValueError(f"rgb must name one band or three, not {list(rgb)!r}")
    grid = result.grid
    coreg = result.metadata.get("coregistration", {})
    offset = (result.shift.x, result.shift.y) if coreg.get("applied") else (0.0, 0.0)
    pics = []
    bands: tuple[int, ...] = ()
    for src, off in ((before, (0.0, 0.0)), (after, offset)):
        with io.open_raster(src) as ds:
            use = tuple(rgb) if rgb is not None else io.rgb_bands(ds)
            bands = bands or use
            p = io.read_preview(ds, grid, bands=use, max_size=max_size, offset_px=off)
        pics.append(stretch(p.data, p.invalid, percentiles=percentiles))
        scale = p.scale
    return Previews(before=pics[0], after=pics[1], scale=scale, grid=grid, bands=bands)


def preview_polygons(result: ChangeResult, previews: Previews,
                     ) -> list[tuple[BaseGeometry, str]]:
    """Return the result's polygons in picture pixel coordinates, with their class."""
    return [(previews.to_picture(g), p["change"])
            for g, p in zip(result.geometries, result.properties, strict=True)]


def _summary(result: ChangeResult) -> str:
    counts = {c: sum(1 for p in result.properties if p["change"] == c) for c in CHANGE_COLOURS}
    parts = [f"{n} {c}" for c, n in counts.items() if n]
    head = f"{len(result)} change{'s' if len(result) != 1 else ''}"
    return head + (": " + ", ".join(parts) if parts else "")


def quicklook(result: ChangeResult, before: io.RasterSource, after: io.RasterSource, *,
              rgb: Sequence[int] | None = None, dates: Sequence[str | None] | None = None,
              title: str | None = None, width: int = 1800,
              previews: Previews | None = None) -> NDArray[np.uint8]:
    """Draw the quick-look picture of a result: before | after | changes outlined.

    Parameters
    ----------
    result : ChangeResult
        What :func:`changedet.detect` returned for `before` and `after`.
    before, after : path, dataset or Raster
        The same inputs.
    rgb : three ints, optional
        Bands to show as red, green, blue (e.g. ``(3, 2, 1)``).
    dates : (str, str), optional
        Dates for the captions.
    title : str, optional
        Heading (default: the two file names).
    width : int, optional
        Picture width in pixels.
    previews : Previews, optional
        Pictures already read with :func:`read_previews`.

    Returns
    -------
    (H, W, 3) ndarray of uint8
        Write it with :func:`changedet.io.write_png`, or show it in a
        notebook with ``PIL.Image.fromarray``.

    Examples
    --------
    >>> import changedet
    >>> b, a = f"{SAMPLE}/square_before.tif", f"{SAMPLE}/square_after.tif"
    >>> r = changedet.detect(b, a)
    >>> img = quicklook(r, b, a)
    >>> img.shape[1], img.shape[2]
    (1800, 3)
    >>> changedet.io.write_png(img, f"{TMP}/quicklook.png")
    """
    from changedet import __version__

    pv = previews or read_previews(result, before, after, rgb=rgb,
                                   max_size=max(600, round(width * 0.6)))
    d_b, d_a = (list(dates) + [None, None])[:2] if dates else (None, None)
    meta = result.metadata
    name_b = str(meta.get("before", "before")).rsplit("/", 1)[-1]
    name_a = str(meta.get("after", "after")).rsplit("/", 1)[-1]
    grid = result.grid
    if grid.crs is not None:
        epsg = grid.crs.to_epsg()
        crs_txt = f"EPSG:{epsg}" if epsg else "custom CRS"
        px = f"{grid.pixel_size_m()[0]:.3g} m pixels"
    else:
        crs_txt, px = "no georeferencing (pixel coordinates)", "pixel space"
    sub = f"{_summary(result)}  ·  {px}  ·  {crs_txt}"
    s = result.shift
    if s.reliable:
        sub += f"  ·  shift removed {s.x:+.2f}, {s.y:+.2f} px"
    captions = (f"Before{'  ·  ' + d_b if d_b else ''}",
                f"After{'  ·  ' + d_a if d_a else ''}",
                "After, changes outlined")
    bands = ",".join(str(b) for b in pv.bands)
    credit = (f"changedet {__version__}  ·  before: {name_b}  ·  after: {name_a}  ·  "
              f"bands {bands}, 2-98 % stretch")
    return render_quicklook(
        pv.before, pv.after, preview_polygons(result, pv),
        metres_per_pixel=pv.metres_per_pixel,
        north=north_angle(grid.transform) if grid.crs is not None else None,
        title=title or f"Changes between {name_b} and {name_a}",
        subtitle=sub, captions=captions, credit=credit, width=width)
