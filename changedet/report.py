"""A shareable, self-contained HTML report of a result.

One file, nothing fetched from the network: the pictures are inline data
URIs, the polygons inline GeoJSON, and the map is Leaflet [1]_ (vendored,
BSD-2-Clause) embedded in the page. The map shows the after (or before)
picture with the change polygons in the picture's own pixel frame
(``L.CRS.Simple``), so it needs no tiles and no projection. A table lists
the changes (id, class, area, scores, centroid); a row and its polygon
select each other. The run's metadata closes the page.

:func:`build_report` is pure string building; :func:`report` gathers the
pictures through :mod:`changedet.quicklook` (which reads decimated
previews).

References
----------
.. [1] Agafonkin, V. et al. Leaflet, an open-source JavaScript library for
       interactive maps. https://leafletjs.com
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray
from shapely.geometry import mapping
from shapely.geometry.base import BaseGeometry

from changedet import io
from changedet.quicklook import CHANGE_COLOURS, Previews, preview_polygons, quicklook, read_previews

if TYPE_CHECKING:
    from changedet.pipeline import ChangeResult

__all__ = ["build_report", "report", "encode_jpeg", "centroids_lonlat"]

_LEAFLET = "_vendor/leaflet/"


def encode_jpeg(image: NDArray[np.uint8], quality: int = 88) -> bytes:
    """JPEG bytes of an ``(H, W, 3)`` uint8 picture (imagery layers of the map)."""
    import io as _bytes_io

    from PIL import Image

    buf = _bytes_io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8), "RGB").save(
        buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _mime(data: bytes) -> str:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    raise ValueError("pictures must be PNG or JPEG bytes")


def _script_json(obj: Any) -> str:
    # Inside <script>, "</" would end the element; "<\/" is the same JSON string.
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("</", "<\\/").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def centroids_lonlat(result: ChangeResult) -> list[tuple[float, float] | None]:
    """Centroid of each polygon as (lon, lat), computed on the projected grid.

    Pixel-space results give (column, row) instead.
    """
    if not result.geometries:
        return []
    pts = [g.centroid if not g.is_empty else None for g in result.geometries]
    xs = [p.x for p in pts if p is not None]
    ys = [p.y for p in pts if p is not None]
    if result.grid.crs is not None:
        from rasterio.warp import transform

        from changedet.grid import WGS84

        xs, ys = transform(result.grid.crs, WGS84, xs, ys)
    else:
        ys = [-y for y in ys]   # pixel space's y is -row
    it = iter(zip(xs, ys, strict=True))
    return [next(it) if p is not None else None for p in pts]


def _fmt_area(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:,.0f}" if v >= 100 else f"{v:,.1f}"


def _fmt_centroid(c: tuple[float, float] | None, georef: bool) -> str:
    if c is None:
        return "–"
    x, y = c
    if not georef:
        return f"{x:.1f}, {y:.1f}"
    return f"{y:.5f}, {x:.5f}"  # lat, lon: the order map search boxes take


def _rows(result: ChangeResult) -> str:
    georef = result.grid.crs is not None
    out = []
    cents = centroids_lonlat(result)
    for i, (props, c) in enumerate(zip(result.properties, cents, strict=True), start=1):
        change = str(props["change"])
        area = props.get("area_m2")
        mean, top = props.get("score_mean", 0), props.get("score_max", 0)
        conf = props.get("confidence", 0)
        # data-v holds the raw value the table sorts on.
        out.append(
            f'<tr data-id="{i}" tabindex="0" class="c-{html.escape(change)}">'
            f'<td class=num data-v="{i}">{i}</td>'
            f'<td data-v="{html.escape(change)}"><span class="swatch" aria-hidden="true">'
            f"</span>{html.escape(change)}</td>"
            f'<td class=num data-v="{area if area is not None else -1}">{_fmt_area(area)}</td>'
            f'<td class=num data-v="{mean}" title="mean {mean:.2f}, max {top:.2f}">'
            f"{mean:.1f}</td>"
            f'<td class=num data-v="{conf}">{conf:.2f}</td>'
            f'<td class="ll">{_fmt_centroid(c, georef)}</td></tr>')
    return "\n".join(out)


def _meta_rows(result: ChangeResult, dates: Sequence[str | None]) -> list[tuple[str, str]]:
    m = result.metadata
    grid = result.grid
    rows: list[tuple[str, str]] = [
        ("Before", f"{m.get('before', '?')}" + (f" ({dates[0]})" if dates[0] else "")),
        ("After", f"{m.get('after', '?')}" + (f" ({dates[1]})" if dates[1] else "")),
    ]
    if grid.crs is not None:
        epsg = grid.crs.to_epsg()
        px, py = grid.pixel_size_m()
        rows.append(("Analysis grid", f"{'EPSG:' + str(epsg) if epsg else 'custom CRS'}, "
                                      f"{grid.width} × {grid.height} px of {px:.3g} × {py:.3g} m"))
    else:
        rows.append(("Analysis grid", f"pixel space, {grid.width} × {grid.height} px"))
    s = result.shift
    coreg = m.get("coregistration", {})
    if s.reliable:
        shift = f"{s.x:+.2f}, {s.y:+.2f} px (x right, y down)"
        if "shift_m" in coreg:
            east, north = coreg["shift_m"]["x"], coreg["shift_m"]["y"]
            shift += f" = {east:+.2f} m east, {north:+.2f} m north"
        shift += f"; reliability {s.reliability:.2f}; " + (
            "removed" if coreg.get("applied") else "too small to remove")
    else:
        shift = f"no reliable shift found (peak-to-sidelobe ratio {s.psr:.1f}); none removed"
    rows.append(("Co-registration", shift))
    norm = m.get("normalisation", {})
    if isinstance(norm, dict) and norm.get("method"):
        rows.append(("Radiometric normalisation", str(norm["method"])))
    thr = m.get("threshold", {})
    if isinstance(thr, dict) and thr:
        desc = ", ".join(f"{k} {v}" for k, v in thr.items() if isinstance(v, (int, float, str)))
        rows.append(("Threshold", desc))
    opts = m.get("options", {})
    if isinstance(opts, dict) and "min_area_m2" in opts:
        rows.append(("Minimum mapping unit", f"{opts['min_area_m2']:g} m²"))
    rows.append(("changedet", str(m.get("version", "?"))))
    return rows


_CSS = """
:root{--ink:#161616;--muted:#5f6368;--line:#dadce0;--bg:#fafafa;
 --appeared:%(appeared)s;--disappeared:%(disappeared)s;--changed:%(changed)s}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);
 font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
header,main,footer{max-width:1500px;margin:0 auto;padding:0 24px}
header{padding-top:24px}
h1{font-size:26px;margin:0 0 4px;letter-spacing:-.01em}
h2{font-size:18px;margin:28px 0 10px}
.summary{color:var(--muted);margin:0 0 18px}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-weight:600;
 font-size:13px;margin-right:6px;border:2px solid}
.badge.appeared{border-color:var(--appeared)}.badge.disappeared{border-color:var(--disappeared)}
.badge.changed{border-color:var(--changed)}
figure{margin:0;background:#fff;border:1px solid var(--line);border-radius:6px;padding:8px}
figure img{width:100%%;height:auto;display:block}
figcaption{color:var(--muted);font-size:13px;padding:6px 4px 0}
.explore{display:grid;grid-template-columns:minmax(0,3fr) minmax(320px,2fr);gap:16px}
#map{height:620px;border:1px solid var(--line);border-radius:6px;background:#e8e8e8}
.tablewrap{height:620px;overflow:auto;border:1px solid var(--line);border-radius:6px;
 background:#fff}
table{border-collapse:collapse;width:100%%;font-size:14px}
th[data-sort]{cursor:pointer;user-select:none}
th[aria-sort=ascending]::after{content:" \\25B2";font-size:10px}
th[aria-sort=descending]::after{content:" \\25BC";font-size:10px}
th{position:sticky;top:0;background:#f1f3f4;text-align:left;font-weight:600;
 padding:8px 7px;white-space:nowrap;border-bottom:1px solid var(--line)}
td{padding:6px 7px;border-bottom:1px solid #eee;white-space:nowrap}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
td.ll{font-variant-numeric:tabular-nums;font-size:13px}
tbody tr{cursor:pointer}
tbody tr:hover{background:#f5f8ff}
tbody tr.selected{background:#fff4d6}
tbody tr:focus{outline:2px solid #1a73e8;outline-offset:-2px}
.swatch{display:inline-block;width:12px;height:12px;border:3px solid var(--changed);
 margin-right:6px;vertical-align:-1px;border-radius:2px}
tr.c-appeared .swatch{border-color:var(--appeared)}
tr.c-disappeared .swatch{border-color:var(--disappeared)}
.empty{padding:24px;color:var(--muted)}
dl{display:grid;grid-template-columns:max-content 1fr;gap:6px 18px;margin:0;
 background:#fff;border:1px solid var(--line);border-radius:6px;padding:14px 16px}
dt{color:var(--muted)}dd{margin:0;overflow-wrap:anywhere}
details{margin-top:12px}
pre{background:#fff;border:1px solid var(--line);border-radius:6px;padding:12px;
 overflow:auto;max-height:420px;font-size:12px}
footer{color:var(--muted);font-size:12px;padding-top:18px;padding-bottom:28px}
button{font:inherit;padding:4px 10px;border:1px solid var(--line);border-radius:4px;
 background:#fff;cursor:pointer}
.leaflet-image-layer{image-rendering:pixelated}
.scalebar{background:rgba(255,255,255,.85);padding:2px 6px;font-size:12px;
 border:2px solid #333;border-top:none;line-height:1.2}
#js-errors{color:#b00020;white-space:pre-wrap}
#js-errors:empty{display:none}
@media (max-width:900px){.explore{grid-template-columns:1fr}.tablewrap{height:auto}}
"""

_JS = r"""
(function () {
  "use strict";
  var root = document.documentElement;
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var fc = JSON.parse(document.getElementById("changes-geojson").textContent);
  var W = data.width, H = data.height;
  function xy(c) { return L.latLng(-c[1], c[0]); }
  var map = L.map("map", {crs: L.CRS.Simple, minZoom: -8, maxZoom: 8, zoomSnap: 0.25,
                          attributionControl: false});
  var bounds = L.latLngBounds([[-H, 0], [0, W]]);
  var after = L.imageOverlay(data.after, bounds).addTo(map);
  var before = L.imageOverlay(data.before, bounds);
  function style(f, on) {
    var c = data.colours[f.properties.change] || data.colours.changed;
    return {color: c, weight: on ? 5 : 3, opacity: 1, fillColor: c,
            fillOpacity: on ? 0.35 : 0.06};
  }
  var layers = {}, selected = null;
  var halo = L.geoJSON(data.pixels, {coordsToLatLng: xy, interactive: false,
    style: function () { return {color: "#000", weight: 6, opacity: 0.75, fill: false}; }});
  var changes = L.geoJSON(data.pixels, {coordsToLatLng: xy,
    style: function (f) { return style(f, false); },
    onEachFeature: function (f, layer) {
      layers[f.id] = layer;
      var area = f.properties.area_m2;
      layer.bindTooltip("#" + f.id + " " + f.properties.change +
                        (area != null ? ", " + Math.round(area) + " m²" : ""), {sticky: true});
      layer.on("click", function () { select(f.id, false); });
    }});
  var group = L.layerGroup([halo, changes]).addTo(map);
  L.control.layers({"After": after, "Before": before}, {"Changes": group},
                   {collapsed: false}).addTo(map);
  if (data.metres_per_pixel) {
    var Scale = L.Control.extend({
      options: {position: "bottomleft"},
      onAdd: function () { this._div = L.DomUtil.create("div", "scalebar"); return this._div; },
      update: function () {
        var mpp = data.metres_per_pixel / Math.pow(2, map.getZoom());
        var target = 120 * mpp, e = Math.pow(10, Math.floor(Math.log10(target)));
        var len = [5, 2, 1].map(function (m) { return m * e; })
                           .filter(function (v) { return v <= target; })[0] || e;
        this._div.style.width = Math.round(len / mpp) + "px";
        this._div.textContent = len >= 1000 ? (len / 1000) + " km" : len + " m";
      }
    });
    var scale = new Scale().addTo(map);
    map.on("zoomend", function () { scale.update(); });
  }
  map.fitBounds(bounds);
  if (scale) { scale.update(); }
  var rows = {};
  Array.prototype.forEach.call(document.querySelectorAll("#changes tbody tr"), function (tr) {
    var id = Number(tr.getAttribute("data-id"));
    rows[id] = tr;
    tr.addEventListener("click", function () { select(id, true); });
    tr.addEventListener("keydown", function (ev) {
      if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); select(id, true); }
    });
  });
  function select(id, zoom) {
    if (selected !== null && layers[selected]) {
      layers[selected].setStyle(style(layers[selected].feature, false));
      if (rows[selected]) { rows[selected].classList.remove("selected"); }
    }
    selected = id;
    var layer = layers[id];
    if (!layer) { return; }
    layer.setStyle(style(layer.feature, true));
    layer.bringToFront();
    if (rows[id]) {
      rows[id].classList.add("selected");
      if (!zoom && rows[id].scrollIntoView) { rows[id].scrollIntoView({block: "nearest"}); }
    }
    if (zoom) {
      map.fitBounds(layer.getBounds().pad(1.5),
                    {maxZoom: Math.max(map.getZoom(), 2), animate: false});
    }
    root.setAttribute("data-selected", String(id));
  }
  // Sortable columns: click a header (again to reverse).
  var heads = document.querySelectorAll("#changes th[data-sort]");
  Array.prototype.forEach.call(heads, function (th, col) {
    th.addEventListener("click", function () {
      var desc = th.getAttribute("aria-sort") !== "descending";
      Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", desc ? "descending" : "ascending");
      var body = document.querySelector("#changes tbody");
      var trs = Array.prototype.slice.call(body.rows);
      var num = th.getAttribute("data-sort") === "num";
      trs.sort(function (a, b) {
        var x = a.cells[col].getAttribute("data-v"), y = b.cells[col].getAttribute("data-v");
        var d = num ? Number(x) - Number(y) : (x < y ? -1 : x > y ? 1 : 0);
        return desc ? -d : d;
      });
      trs.forEach(function (tr) { body.appendChild(tr); });
    });
  });
  var dl = document.getElementById("download");
  if (dl) {
    dl.addEventListener("click", function () {
      var blob = new Blob([JSON.stringify(fc)], {type: "application/geo+json"});
      var a = document.createElement("a");
      a.href = URL.createObjectURL(blob);
      a.download = data.geojson_name;
      document.body.appendChild(a); a.click(); a.remove();
    });
  }
  root.setAttribute("data-polygons", String(Object.keys(layers).length));
  if (location.hash === "#selftest") {
    var ok = true;
    Object.keys(rows).forEach(function (k) {
      rows[k].click();
      var id = Number(k);
      ok = ok && root.getAttribute("data-selected") === String(id) &&
           rows[id].classList.contains("selected") &&
           map.getBounds().intersects(layers[id].getBounds());
    });
    if (heads.length > 2) {
      heads[2].click();  // area, largest first
      var first = document.querySelector("#changes tbody tr");
      var areas = Object.keys(rows).map(function (k) {
        return Number(rows[k].cells[2].getAttribute("data-v"));
      });
      ok = ok && Number(first.cells[2].getAttribute("data-v")) === Math.max.apply(null, areas);
    }
    root.setAttribute("data-selftest", ok ? "ok" : "failed");
  }
  root.setAttribute("data-ready", "1");
})();
"""

_ONERROR = """
(function () {
  var root = document.documentElement;
  function record(msg) {
    var n = Number(root.getAttribute("data-errors") || "0") + 1;
    root.setAttribute("data-errors", String(n));
    var box = document.getElementById("js-errors");
    if (box) { box.textContent += msg + "\\n"; }
  }
  window.addEventListener("error", function (ev) {
    record("error: " + (ev.message || ev.type) + (ev.lineno ? " (line " + ev.lineno + ")" : ""));
  });
  window.addEventListener("unhandledrejection", function (ev) {
    record("unhandled rejection: " + ev.reason);
  });
})();
"""


def _leaflet_css() -> str:
    css = io.package_text(_LEAFLET + "leaflet.css")
    # The layer-switcher and marker icons are separate image files; the report
    # uses neither (the switcher is shown expanded), and must fetch nothing.
    return re.sub(r"url\((?!#)[^)]*\)", "none", css)


def build_report(result: ChangeResult, *, before_image: bytes, after_image: bytes,
                 image_size: tuple[int, int],
                 picture_polygons: Sequence[BaseGeometry],
                 figure: bytes | None = None,
                 metres_per_pixel: float | None = None,
                 dates: Sequence[str | None] = (None, None),
                 title: str | None = None,
                 geojson_name: str = "changes.geojson") -> str:
    """Build the HTML text of a self-contained report.

    Parameters
    ----------
    result : ChangeResult
        The changes and run metadata.
    before_image, after_image : bytes
        PNG or JPEG pictures of the two dates on the result's extent.
    image_size : (int, int)
        ``(width, height)`` of those pictures in pixels.
    picture_polygons : sequence of geometries
        ``result.geometries`` in the pictures' pixel coordinates (x right,
        y down), in the same order.
    figure : bytes, optional
        A PNG shown at the top (the quick-look).
    metres_per_pixel : float, optional
        Ground size of a picture pixel, for the map's scale bar.
    dates : (str, str), optional
        Acquisition dates of before and after.
    title : str, optional
        Page heading.
    geojson_name : str, optional
        File name offered by the page's "Download GeoJSON" button.

    Returns
    -------
    str
        A complete HTML5 document; it loads nothing from the network.
    """
    if len(picture_polygons) != len(result.geometries):
        raise ValueError("picture_polygons must have one polygon per result geometry")
    w, h = (int(v) for v in image_size)
    dates = (list(dates) + [None, None])[:2]
    from changedet import __version__

    meta = result.metadata
    name_b = str(meta.get("before", "before")).rsplit("/", 1)[-1]
    name_a = str(meta.get("after", "after")).rsplit("/", 1)[-1]
    title = title or f"Changes between {name_b} and {name_a}"

    counts = {c: sum(1 for p in result.properties if p["change"] == c) for c in CHANGE_COLOURS}
    badges = "".join(f'<span class="badge {c}">{n} {c}</span>' for c, n in counts.items() if n)
    when = " to ".join(d for d in dates if d)
    summary = (f"{len(result)} change{'s' if len(result) != 1 else ''} "
               f"{badges or ''}" + (f" · {html.escape(when)}" if when else ""))

    pixels = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": i,
         "properties": {"change": p["change"], "area_m2": p.get("area_m2")},
         "geometry": _round_geom(mapping(g))}
        for i, (g, p) in enumerate(zip(picture_polygons, result.properties, strict=True), start=1)]}
    data = {
        "width": w, "height": h,
        "before": _data_uri(before_image, _mime(before_image)),
        "after": _data_uri(after_image, _mime(after_image)),
        "pixels": pixels,
        "colours": {k: _hex(v) for k, v in CHANGE_COLOURS.items()},
        "metres_per_pixel": metres_per_pixel,
        "geojson_name": geojson_name,
    }
    css = _CSS % {k: _hex(v) for k, v in CHANGE_COLOURS.items()}
    fig = ""
    if figure is not None:
        fig = (f'<figure><img alt="Before, after, and after with the changes outlined" '
               f'src="{_data_uri(figure, _mime(figure))}">'
               "<figcaption>Before · after · after with the changes outlined "
               "(orange appeared, blue disappeared, purple changed).</figcaption></figure>")
    if result.geometries:
        table = ("<table id=changes><thead><tr><th class=num data-sort=num>#</th>"
                 "<th data-sort=text>Change</th>"
                 "<th class=num data-sort=num>Area m²</th><th class=num data-sort=num "
                 "title=\"mean change score, in no-change standard deviations\">Score</th>"
                 "<th class=num data-sort=num title=\"confidence in the class, 0-1\">Conf.</th>"
                 f"<th>Centroid ({'lat, lon' if result.grid.crs is not None else 'col, row'})"
                 "</th></tr></thead><tbody>\n"
                 f"{_rows(result)}\n</tbody></table>")
    else:
        table = ('<table id=changes><tbody></tbody></table><p class="empty">No change '
                 "larger than the minimum mapping unit was found.</p>")
    meta_rows = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>"
                        for k, v in _meta_rows(result, dates))
    coords = ("lon/lat WGS84" if result.grid.crs is not None else "pixel coordinates")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en" data-errors="0" data-ready="0">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta name="generator" content="changedet {html.escape(__version__)}">',
        f"<title>{html.escape(title)}</title>",
        f"<script>{_ONERROR}</script>",
        f"<style>{_leaflet_css()}</style>",
        f"<style>{css}</style>",
        "</head>",
        "<body>",
        "<header>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="summary">{summary}</p>',
        '<pre id="js-errors"></pre>',
        "</header>",
        "<main>",
        fig,
        "<h2>Explore</h2>",
        '<div class="explore"><div id="map" role="region" aria-label="Map of the changes">'
        f'</div><div class="tablewrap">{table}</div></div>',
        f'<p class="summary">Click a row to zoom to its change; click a polygon to find its '
        f"row. Switch between the before and after pictures at the top right of the map. "
        f'<button id="download" type="button">Download GeoJSON ({coords})</button></p>',
        "<h2>Run</h2>",
        f"<dl>{meta_rows}</dl>",
        "<details><summary>Full run metadata (JSON)</summary>"
        f"<pre>{html.escape(json.dumps(meta, indent=2, ensure_ascii=False))}</pre></details>",
        "</main>",
        f"<footer>Made with changedet {html.escape(__version__)}. The map uses Leaflet "
        "1.9.4 (BSD-2-Clause, © Vladimir Agafonkin, CloudMade), embedded in this file; "
        "the page loads nothing from the network.</footer>",
        f'<script type="application/geo+json" id="changes-geojson">'
        f"{_script_json(result.__geo_interface__)}</script>",
        f'<script type="application/json" id="report-data">{_script_json(data)}</script>',
        f"<script>{io.package_text(_LEAFLET + 'leaflet.js')}</script>",
        f"<script>{_JS}</script>",
        "</body>",
        "</html>",
        "",
    ]
    return "\n".join(parts)


def _round_geom(geom: dict[str, Any], decimals: int = 2) -> dict[str, Any]:
    def rnd(c: Any) -> Any:
        if isinstance(c, (list, tuple)) and c and isinstance(c[0], (int, float)):
            return [round(float(v), decimals) for v in c]
        return [rnd(v) for v in c]

    return {"type": geom["type"], "coordinates": rnd(geom["coordinates"])}


def report(result: ChangeResult, before: io.RasterSource, after: io.RasterSource, *,
           rgb: Sequence[int] | None = None, dates: Sequence[str | None] | None = None,
           title: str | None = None, previews: Previews | None = None,
           figure: NDArray[np.uint8] | None = None,
           geojson_name: str = "changes.geojson") -> str:
    """Make a self-contained HTML report of `result` (see :func:`build_report`).

    Parameters
    ----------
    result : ChangeResult
        What :func:`changedet.detect` returned for `before` and `after`.
    before, after : path, dataset or Raster
        The same inputs (read only as decimated previews).
    rgb : three ints, optional
        Bands to show as red, green, blue.
    dates : (str, str), optional
        Acquisition dates, for captions.
    previews : Previews, optional
        Pictures already read with :func:`changedet.quicklook.read_previews`.
    figure : (H, W, 3) ndarray of uint8, optional
        The quick-look picture, if already drawn (drawn here otherwise).

    Returns
    -------
    str
        HTML; write it with :func:`changedet.io.write_text`.
    """
    from changedet.quicklook import encode_png

    pv = previews or read_previews(result, before, after, rgb=rgb, max_size=1600)
    if figure is None:
        figure = quicklook(result, before, after, rgb=rgb, dates=dates, title=title,
                           previews=pv)
    polys = [g for g, _ in preview_polygons(result, pv)]
    h, w = pv.before.shape[:2]
    return build_report(result, before_image=encode_jpeg(pv.before),
                        after_image=encode_jpeg(pv.after), image_size=(w, h),
                        picture_polygons=polys, figure=encode_png(figure),
                        metres_per_pixel=pv.metres_per_pixel,
                        dates=dates or (None, None), title=title, geojson_name=geojson_name)
