"""Two processes on localhost with jax.distributed train two steps and agree with one
process holding the same two devices."""

import pathlib
import socket
import subprocess
import sys

import numpy as np
from flax import nnx

from asanet_jax import checkpointing
from asanet_jax.data import build

SCRIPT = pathlib.Path(__file__).parent / "distributed_check.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def weights(workdir):
    model, _, _ = checkpointing.load_model_dir(pathlib.Path(workdir) / "model")
    state = nnx.state(model, (nnx.Param, nnx.BatchStat))
    return {".".join(map(str, k)): np.asarray(v[...]) for k, v in nnx.to_flat_state(state)}


def test_two_processes_train_like_one(tmp_path):
    data_dir = tmp_path / "data"
    build.build("synthetic_rgb_sar", data_dir, config="tiny")
    port = str(free_port())
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(SCRIPT),
                "process",
                str(i),
                port,
                str(tmp_path / "multi"),
                str(data_dir),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate() for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
        assert "devices 2 processes 2" in out
    single = subprocess.run(
        [sys.executable, str(SCRIPT), "single", str(tmp_path / "single"), str(data_dir)],
        capture_output=True,
        text=True,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    assert "devices 2 processes 1" in single.stdout
    multi, ref = weights(tmp_path / "multi"), weights(tmp_path / "single")
    assert multi.keys() == ref.keys()
    for k in ref:
        scale = max(np.abs(ref[k]).max(), 1e-3)
        assert np.abs(multi[k] - ref[k]).max() / scale < 1e-5, k
    # Both evaluated the same validation split into the same metrics.
    assert outs[0][0].split("mIoU")[-1].strip() == single.stdout.split("mIoU")[-1].strip()
