"""Real meshes: 8 simulated CPU devices (a subprocess, since the device count is fixed when
JAX starts). One sharded step equals the single-device step; FSDP really shards."""

import json
import pathlib
import subprocess
import sys

import ml_collections
import pytest

from asanet_jax.train import sharding

HERE = pathlib.Path(__file__).parent


def test_sharded_steps_equal_the_single_device_step_and_fsdp_shards_parameters():
    out = subprocess.run(
        [sys.executable, str(HERE / "mesh_check.py")], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["devices"] == 8
    # BatchNorm over the global batch (SyncBN) makes the sharded step the same computation.
    assert report["fsdp_vs_single"] < 1e-5, report
    assert report["dp_sharded"] == 0  # data parallel: parameters replicated
    assert report["fsdp_sharded_count"] > 0, report  # FSDP: big tensors split over devices
    assert abs(report["losses"][0] - report["losses"][1]) < 1e-5 * abs(report["losses"][0])
    assert "data=-1 x fsdp=3 does not fit the 8 cpu device(s)" in report["fsdp3_error"]


@pytest.mark.parametrize(
    ("mesh", "message"),
    [
        (
            {"data": -1, "fsdp": 1, "platform": "gpu"},
            r"config.mesh.platform='gpu' but JAX \S+ found 1 cpu device\(s\)",
        ),
        ({"data": 8, "fsdp": 1, "platform": None}, r"data=8 x fsdp=1 does not fit the 1 cpu"),
        ({"data": -1, "fsdp": 1, "platform": "npu"}, r"platform='npu': expected one of"),
    ],
)
def test_a_missing_accelerator_or_a_mesh_that_does_not_fit_is_refused(mesh, message):
    with pytest.raises(ValueError, match=message):
        sharding.make_mesh(ml_collections.ConfigDict(mesh))
