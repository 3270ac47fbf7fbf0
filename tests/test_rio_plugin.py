import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import entry_points

import pytest
from click.testing import CliRunner


def _plugin():
    eps = [ep for ep in entry_points(group="rasterio.rio_plugins") if ep.name == "changedet"]
    assert eps, ("changedet is not registered under rasterio.rio_plugins: install it "
                 "(pip install -e .) so its entry points exist")
    return eps[0]


def test_entry_point_loads_the_changedet_group():
    from changedet.cli import main

    ep = _plugin()
    assert ep.value == "changedet.cli:main"
    group = ep.load()
    assert group is main and group.name == "changedet"
    assert {"diff", "info", "series"} <= set(group.commands)


def test_rio_runs_the_plugin(sample_tiles):
    from rasterio.rio.main import main_group

    b, a = str(sample_tiles / "square_before.tif"), str(sample_tiles / "square_after.tif")
    r = CliRunner().invoke(main_group, ["changedet", "info", b, a, "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["shift"]["reliable"] is True
    r = CliRunner().invoke(main_group, ["changedet", "diff", "--help"])
    assert r.exit_code == 0 and "--quicklook" in r.output


def test_rio_command_line():
    rio = os.path.join(os.path.dirname(sys.executable), "rio")
    if not os.path.exists(rio):
        rio = shutil.which("rio")
    if rio is None:
        pytest.skip("rasterio's rio script is not installed beside this Python")
    out = subprocess.run([rio, "changedet", "--help"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert "diff" in out.stdout and "series" in out.stdout and "info" in out.stdout
