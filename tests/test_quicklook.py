import numpy as np
import pytest
import shapely
from affine import Affine
from PIL import Image
from scipy import ndimage
from shapely.geometry import Polygon, box

import changedet
from changedet.cli import main
from changedet.quicklook import (
    CHANGE_COLOURS,
    nice_length,
    north_angle,
    preview_polygons,
    quicklook,
    quicklook_layout,
    read_previews,
    render_quicklook,
    stretch,
)

# -- stretch ---------------------------------------------------------------


def test_stretch_maps_percentiles_to_0_and_255_per_band():
    rng = np.random.default_rng(0)
    data = np.stack([rng.uniform(0, 10, (50, 60)), rng.uniform(100, 4000, (50, 60)),
                     rng.uniform(-1, 1, (50, 60))]).astype(np.float32)
    rgb = stretch(data)
    assert rgb.shape == (50, 60, 3) and rgb.dtype == np.uint8
    for i in range(3):
        lo, hi = np.percentile(data[i], (2, 98))
        assert rgb[..., i][data[i] <= lo].max() == 0
        assert rgb[..., i][data[i] >= hi].min() == 255
        mid = (data[i] > lo + 0.4 * (hi - lo)) & (data[i] < lo + 0.6 * (hi - lo))
        assert 95 <= rgb[..., i][mid].mean() <= 160


def test_stretch_ignores_and_paints_invalid_pixels():
    data = np.full((1, 20, 20), 10.0, np.float32)
    data[0, :, 10:] = 20.0
    data[0, 0, 0] = 1e9                      # an outlier, flagged invalid
    invalid = np.zeros((20, 20), bool)
    invalid[0, 0] = True
    rgb = stretch(data, invalid, nodata_colour=(1, 2, 3))
    assert tuple(rgb[0, 0]) == (1, 2, 3)
    assert (rgb[5, 2] == 0).all() and (rgb[5, 15] == 255).all()  # grey: r == g == b


@pytest.mark.parametrize("shape", [(2, 5, 5), (4, 5, 5), (5,)])
def test_stretch_rejects_other_band_counts(shape):
    with pytest.raises(ValueError, match="expected"):
        stretch(np.zeros(shape, np.float32))


def test_nice_length_and_north():
    assert [nice_length(v) for v in (1.0, 3.0, 7.0, 19.9, 260.0, 4999.0)] == \
        [1.0, 2.0, 5.0, 10.0, 200.0, 2000.0]
    assert north_angle(Affine(10, 0, 0, 0, -10, 0)) == 0.0
    # A grid rotated so that its rows run north: map +y is to the right.
    assert north_angle(Affine(0, 10, 0, 10, 0, 0)) == pytest.approx(90.0)


# -- render ----------------------------------------------------------------

def _scene(h=300, w=400, seed=0):
    rng = np.random.default_rng(seed)
    base = ndimage.gaussian_filter(rng.random((h, w)), 3)
    img = stretch(np.stack([base, base * 0.9, base * 0.8]).astype(np.float32))
    return img, img.copy()


def _drawn(pic, lay, colour):
    """Pixels of `colour` that the outlines drew in the changes panel."""
    (x2, y2), (x1, _) = lay.panels[2], lay.panels[1]
    pw, ph = lay.panel_size
    marked = pic[y2:y2 + ph, x2:x2 + pw].astype(int)
    plain = pic[y2:y2 + ph, x1:x1 + pw].astype(int)
    hit = (marked != plain).any(axis=2) & (marked == colour).all(axis=2)
    rows, cols = np.nonzero(hit)
    return cols + 0.5, rows + 0.5   # pixel centres, panel coordinates


OUTLINES = [(box(40, 50, 120, 110), "appeared"),
            (Polygon([(250, 60), (330, 80), (300, 170), (240, 140)]), "disappeared"),
            (box(150, 200, 190, 260), "changed")]


def test_picture_size_follows_the_layout_at_news_graphic_width():
    b, a = _scene()
    pic = render_quicklook(b, a, OUTLINES, metres_per_pixel=0.5, title="T", subtitle="S",
                           credit="C", width=1800)
    lay = quicklook_layout((300, 400), width=1800)
    assert pic.shape == (lay.height, 1800, 3) and pic.dtype == np.uint8
    pw, ph = lay.panel_size
    assert 3 * pw >= 0.9 * 1800 and ph / pw == pytest.approx(300 / 400, abs=0.01)
    # Very tall images get narrower panels instead of a towering picture.
    tall = quicklook_layout((4000, 400), width=1800)
    assert tall.panel_size[1] <= 1.3 * pw + 1 and tall.panel_size[0] < pw / 5
    assert tall.width == 1800 and tall.panels[0][0] > 600   # centred


def test_outline_pixels_lie_on_the_polygon_boundaries():
    b, a = _scene()
    pic = render_quicklook(b, a, OUTLINES, metres_per_pixel=0.5, title="T", width=1800)
    lay = quicklook_layout((300, 400), width=1800, subtitle=False, credit=False)
    k = lay.scale
    for geom, change in OUTLINES:
        xs, ys = _drawn(pic, lay, CHANGE_COLOURS[change])
        assert xs.size > 50, change
        boundary = geom.boundary
        dist = shapely.distance(boundary, shapely.points(xs / k, ys / k)) * k
        # Within half the line width (3 px) and a pixel of the true boundary.
        assert dist.max() <= 2.6, (change, dist.max())
        # ... and all along it: every point of the boundary has colour near it.
        tree_pts = np.c_[xs, ys]
        for t in np.linspace(0, 1, 40, endpoint=False):
            p = boundary.interpolate(t, normalized=True)
            d = np.hypot(tree_pts[:, 0] - p.x * k, tree_pts[:, 1] - p.y * k).min()
            assert d <= 3.0, (change, t, d)
    # Nothing is drawn on the before and after panels.
    (x0, y0), (x1, _) = lay.panels[0], lay.panels[1]
    pw, ph = lay.panel_size
    assert (pic[y0:y0 + ph, x0:x0 + pw] == pic[y0:y0 + ph, x1:x1 + pw]).all()


def test_legend_lists_only_the_classes_present():
    b, a = _scene()
    only = render_quicklook(b, a, OUTLINES[:1], metres_per_pixel=0.5)
    lay = quicklook_layout((300, 400), title=False, subtitle=False, credit=False)
    footer = only[lay.panels[0][1] + lay.panel_size[1]:]
    has = lambda c: (footer == CHANGE_COLOURS[c]).all(axis=2).any()  # noqa: E731
    assert has("appeared") and not has("disappeared") and not has("changed")


@pytest.mark.parametrize("kw", [dict(width=300), dict(captions=("a", "b"))])
def test_render_rejects_bad_options(kw):
    b, a = _scene(50, 60)
    with pytest.raises(ValueError):
        render_quicklook(b, a, **kw)


def test_render_rejects_mismatched_pictures():
    b, _ = _scene(50, 60)
    with pytest.raises(ValueError, match="one shape"):
        render_quicklook(b, b[:40], [])


# -- from a result ---------------------------------------------------------

@pytest.fixture(scope="module")
def sample_result(sample_tiles):
    b, a = str(sample_tiles / "square_before.tif"), str(sample_tiles / "square_after.tif")
    return changedet.detect(b, a), b, a


def test_quicklook_of_the_sample_pair_outlines_the_found_polygons(sample_result, tmp_path):
    from changedet.io import write_png

    result, b, a = sample_result
    out = tmp_path / "look.png"
    write_png(quicklook(result, b, a), out)
    with Image.open(out) as im:
        pic = np.asarray(im.convert("RGB"))
    pv = read_previews(result, b, a, max_size=round(1800 * 0.6))
    lay = quicklook_layout(pv.before.shape[:2], width=1800)
    assert pic.shape == (lay.height, 1800, 3)
    k = lay.scale
    for change in ("appeared", "disappeared"):
        polys = [g for g, c in preview_polygons(result, pv) if c == change]
        xs, ys = _drawn(pic, lay, CHANGE_COLOURS[change])
        assert xs.size > 0
        edges = shapely.union_all([g.boundary for g in polys])
        dist = shapely.distance(edges, shapely.points(xs / k, ys / k)) * k
        assert np.percentile(dist, 99) <= 2.6 and dist.max() <= 4, change


def test_previews_remove_the_shift_and_respect_max_size(sample_result):
    result, b, a = sample_result
    pv = read_previews(result, b, a, max_size=320)
    assert pv.before.shape == (256, 320, 3) and pv.scale == pytest.approx(0.5)
    assert pv.metres_per_pixel == pytest.approx(1.0)
    # With the shift removed, the dates line up: their gradients correlate best at 0.
    gb = np.hypot(*np.gradient(pv.before.mean(axis=2)))
    ga = np.hypot(*np.gradient(pv.after.mean(axis=2)))
    unshifted = read_previews(result.__class__(**{**result.__dict__,
                                                  "metadata": {**result.metadata,
                                                               "coregistration": {}}}),
                              b, a, max_size=320)
    gu = np.hypot(*np.gradient(unshifted.after.mean(axis=2)))
    assert np.corrcoef(gb.ravel(), ga.ravel())[0, 1] > np.corrcoef(gb.ravel(), gu.ravel())[0, 1]
    img = quicklook(result, b, a, previews=pv, width=900)
    assert img.shape[1] == 900


def test_rgb_choice(tmp_path):
    import changedet.io as cio
    from tests.conftest import write_tif

    data = np.zeros((4, 32, 32), np.uint8)
    p = write_tif(tmp_path / "rgbn.tif", data)
    with cio.open_raster(p) as ds:
        assert cio.rgb_bands(ds) == (1, 2, 3)
    p = write_tif(tmp_path / "grey.tif", data[:1])
    with cio.open_raster(p) as ds:
        assert cio.rgb_bands(ds) == (1,)
    import rasterio
    from rasterio.enums import ColorInterp

    p = write_tif(tmp_path / "bgrn.tif", data)
    with rasterio.open(p, "r+") as ds:
        ds.colorinterp = [ColorInterp.blue, ColorInterp.green, ColorInterp.red,
                          ColorInterp.undefined]
    with cio.open_raster(p) as ds:
        assert cio.rgb_bands(ds) == (3, 2, 1)


def test_cli_rgb_option_is_checked(sample_tiles, tmp_path):
    from click.testing import CliRunner

    b, a = str(sample_tiles / "square_before.tif"), str(sample_tiles / "square_after.tif")
    r = CliRunner().invoke(main, ["diff", b, a, "--rgb", "3,2", "--quicklook", "x.png"])
    assert r.exit_code == 2 and "three bands" in r.output
    out = tmp_path / "q.png"
    r = CliRunner().invoke(main, ["diff", b, a, "-q", "--rgb", "3,2,1", "--quicklook", str(out)])
    assert r.exit_code == 0, r.output
    with Image.open(out) as im:
        assert im.size[0] == 1800


def test_pixel_space_gets_no_scale_bar_and_no_north_arrow():
    b, a = _scene()
    plain = render_quicklook(b, a, OUTLINES, metres_per_pixel=None, north=None)
    marked = render_quicklook(b, a, OUTLINES, metres_per_pixel=0.5, north=0.0)
    lay = quicklook_layout((300, 400), title=False, subtitle=False, credit=False)
    x2 = lay.panels[2][0]
    foot = lay.panels[2][1] + lay.panel_size[1]
    ink = lambda pic: (pic[foot + 2:, x2:] < 128).all(axis=2).sum()  # noqa: E731
    assert ink(plain) == 0 and ink(marked) > 200
