"""Errors and warnings raised by changedet.

Every error has one root, :class:`ChangeDetError`, and each subclass also
inherits the builtin exception it refines, as rasterio's errors do, so
``except ValueError`` keeps working for callers who do not know changedet.
The CLI turns any :class:`ChangeDetError` into a one-line message and exit
code 1.
"""

from __future__ import annotations

__all__ = [
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
    "LargeChangeWarning",
    "DateOrderWarning",
]


class ChangeDetError(Exception):
    """Root of every error changedet raises on purpose."""


class InputError(ChangeDetError, ValueError):
    """An input is of the wrong kind, shape, type or content."""


class RasterReadError(ChangeDetError, OSError):
    """A raster is missing, unreadable, truncated or corrupt."""


class NoOverlapError(ChangeDetError, ValueError):
    """The two images (and the region of interest) share too little ground."""


class BandMismatchError(ChangeDetError, ValueError):
    """The two images have band counts that cannot be paired."""


class ROIError(ChangeDetError, ValueError):
    """The region of interest is malformed or lies outside the images."""


class CoregistrationError(ChangeDetError, RuntimeError):
    """No reliable alignment between the two images could be found."""


class OutputError(ChangeDetError, OSError):
    """An output cannot be written where it was asked for."""


class OutputExistsError(OutputError, FileExistsError):
    """An output already exists and overwriting was not allowed."""


class ChangeDetWarning(UserWarning):
    """Root of the warnings changedet issues."""


class UnreliableShiftWarning(ChangeDetWarning):
    """The co-registration found no reliable shift; none was applied."""


class PixelSpaceWarning(ChangeDetWarning):
    """The inputs carry no georeferencing; coordinates are pixels."""


class ResolutionMismatchWarning(ChangeDetWarning):
    """The two images' pixel sizes differ a lot; one was resampled."""


class LargeChangeWarning(ChangeDetWarning):
    """A change too large to hold in one window was processed in tiles and joined.

    It is complete, but its outline near the tiles' seams and its attributes are
    as the tiles saw it, not exactly what one window holding it would give.
    """


class DateOrderWarning(ChangeDetWarning):
    """The before image is dated later than the after image: the two may be swapped."""
