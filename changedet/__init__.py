"""changedet: find what changed between two images of the same place.

Read two georeferenced images (anything GDAL reads), put them on one grid,
co-register them, normalise their radiometry, score and threshold change,
and return the changes as polygons (GeoJSON, RFC 7946), a class raster and
a score raster.

>>> import changedet
>>> result = changedet.detect(f"{SAMPLE}/square_before.tif",   # SAMPLE: sample_tiles/
...                           f"{SAMPLE}/square_after.tif")
>>> len(result)
10
>>> fc = result.to_geojson(f"{TMP}/changes.geojson")            # TMP: a folder of yours
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
    DateOrderWarning,
    InputError,
    LargeChangeWarning,
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
from changedet.pairinfo import PairInfo, describe_pair  # noqa: E402
from changedet.pipeline import ChangeResult, DiffSummary, detect, diff  # noqa: E402
from changedet.series import SeriesResult, track_series  # noqa: E402

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "__version__",
    "detect",
    "diff",
    "ChangeResult",
    "DiffSummary",
    "track_series",
    "SeriesResult",
    "describe_pair",
    "PairInfo",
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
    "DateOrderWarning",
    "PixelSpaceWarning",
    "ResolutionMismatchWarning",
    "LargeChangeWarning",
]
