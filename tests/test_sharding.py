"""Real meshes: 8 simulated CPU devices (a subprocess, since the device count is fixed when
JAX starts). One sharded step equals the single-device step; FSDP really shards."""

import json
import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).parent


def test_sharded_steps_equal_the_single_device_step_and_fsdp_shards_parameters():
    out = subprocess.run(
        [sys.executable, str(HERE / "mesh_check.py")], capture_output=True, text=True, timeout=900
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["devices"] == 8
    # BatchNorm over the global batch (SyncBN) makes the sharded step the same computation.
    assert report["dp_vs_single"] < 1e-5, report
    assert report["fsdp_vs_single"] < 1e-5, report
    assert report["dp_sharded"] == 0  # data parallel: parameters replicated
    assert report["fsdp_sharded_count"] > 0, report  # FSDP: big tensors split over devices
    assert abs(report["losses"][0] - report["losses"][1]) < 1e-5 * abs(report["losses"][0])
