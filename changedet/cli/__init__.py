"""The ``changedet`` command line: thin commands over the library.

Each command parses its options, opens a ``rasterio.Env``, calls the
library and writes. Errors the user can fix exit with code 1 and one line
on stderr; usage errors exit with code 2 (click's convention).
"""

from __future__ import annotations

import click

from changedet import __version__
from changedet.cli.coregister import coregister
from changedet.cli.diff import diff
from changedet.cli.info import info
from changedet.cli.series import series

__all__ = ["main"]


@click.group(name="changedet", context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="changedet",
                      message="%(prog)s %(version)s")
def main() -> None:
    """Find what changed between two satellite or aerial images of the same place.

    \b
    $ changedet diff before.tif after.tif -o changes.geojson
    $ changedet coregister before.tif after.tif --json
    $ changedet info before.tif after.tif
    $ changedet series 2019.tif 2021.tif 2023.tif -o site.geojson

    Also available as a rasterio plugin: rio changedet diff ...
    """  # noqa: D301 - \b must stay a backspace: click's no-rewrap marker


main.add_command(diff)
main.add_command(coregister)
main.add_command(info)
main.add_command(series)
