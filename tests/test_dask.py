"""The block stage on a Dask cluster gives what the local path gives."""

import json

import numpy as np
import pytest

import changedet
from tests.conftest import flat_pair, write_tif

pytestmark = pytest.mark.dask

distributed = pytest.importorskip("distributed", reason="the 'dask' extra is not installed")


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("dask")
    p = flat_pair(3, shape=(320, 352), n_appeared=3, n_disappeared=2)
    return write_tif(d / "b.tif", p.before), write_tif(d / "a.tif", p.after)


def test_dask_detect_equals_local(client, pair):
    local = changedet.detect(*pair, block_size=128, threads=1)
    remote = changedet.detect(*pair, block_size=128, scheduler=client)
    assert len(local) == 5
    np.testing.assert_array_equal(remote.classes, local.classes)
    np.testing.assert_array_equal(remote.score, local.score)
    assert remote.properties == local.properties
    assert [g.wkb for g in remote.geometries] == [g.wkb for g in local.geometries]


def test_dask_diff_writes_the_same_geojson(client, pair, tmp_path):
    changedet.diff(*pair, tmp_path / "local.geojson", block_size=128, threads=2)
    changedet.diff(*pair, tmp_path / "dask.geojson", block_size=128, scheduler=client)
    assert (tmp_path / "dask.geojson").read_bytes() == (tmp_path / "local.geojson").read_bytes()
    assert len(json.loads((tmp_path / "dask.geojson").read_text())["features"]) == 5


def test_dask_address_from_the_cli(client, pair, tmp_path):
    from click.testing import CliRunner

    from changedet.cli import main

    out = tmp_path / "c.geojson"
    r = CliRunner().invoke(main, ["diff", str(pair[0]), str(pair[1]), "-o", str(out),
                                  "--block-size", "128", "--scheduler", client.scheduler.address])
    assert r.exit_code == 0, r.output
    assert len(json.loads(out.read_text())["features"]) == 5


def test_arrays_cannot_go_to_workers(client):
    p = flat_pair(0, shape=(64, 64), n_appeared=0, n_disappeared=0)
    from tests.conftest import utm_transform

    with pytest.raises(changedet.InputError, match="needs files"):
        changedet.detect(changedet.Raster(p.before, utm_transform(), "EPSG:32651"),
                         changedet.Raster(p.after, utm_transform(), "EPSG:32651"),
                         scheduler=client)


def test_unreachable_scheduler_is_a_clear_error(pair):
    with pytest.raises(changedet.ChangeDetError, match="could not reach"):
        changedet.detect(*pair, scheduler="tcp://127.0.0.1:1")
