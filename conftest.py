"""Doctests run against the demo pair: docstring examples use SAMPLE and TMP."""

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _doctest_paths(doctest_namespace, tmp_path):
    doctest_namespace["SAMPLE"] = str(Path(__file__).parent / "sample_tiles")
    doctest_namespace["TMP"] = str(tmp_path)
