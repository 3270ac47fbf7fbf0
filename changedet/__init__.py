"""changedet: find what changed between two images of the same place.

Read two georeferenced images (anything GDAL reads), put them on one grid,
co-register them, normalise their radiometry, score and threshold change,
and return the changes as polygons (GeoJSON, RFC 7946), a class raster and
a score raster.

>>> import changedet
>>> result = changedet.detect("before.tif", "after.tif")   # doctest: +SKIP
>>> result.to_geojson("changes.geojson")                   # doctest: +SKIP
"""

import logging

__version__ = "0.1.0"

from changedet.align import CoregistrationResult, coregister  # noqa: E402
from changedet.coreg import Alignment, Shift, estimate_alignment, estimate_shift  # noqa: E402
from changedet.errors import (  # noqa: E402
    BandMismatchError,
    ChangeDetError,
    ChangeDetWarning,
    CoregistrationError,
    InputError,
    NoOverlapError,
    OutputError,
    OutputExistsError,
    PixelSpaceWarning,
    RasterReadError,
    ResolutionMismatchWarning,
    ROIError,
    UnreliableShiftWarning,
)
from changedet.grid import Grid  # noqa: E402
from changedet.io import Raster  # noqa: E402
from changedet.pipeline import ChangeResult, detect  # noqa: E402

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "__version__",
    "detect",
    "ChangeResult",
    "Raster",
    "Grid",
    "coregister",
    "CoregistrationResult",
    "Alignment",
    "Shift",
    "estimate_alignment",
    "estimate_shift",
    "ChangeDetError",
    "InputError",
    "RasterReadError",
    "NoOverlapError",
    "BandMismatchError",
    "ROIError",
    "CoregistrationError",
    "OutputError",
    "OutputExistsError",
    "ChangeDetWarning",
    "UnreliableShiftWarning",
    "PixelSpaceWarning",
    "ResolutionMismatchWarning",
]
