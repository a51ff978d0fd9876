"""`scripts/train.py` run as a user runs it, on a PIE-format folder of real GeoTIFFs."""

from __future__ import annotations

import pathlib
import subprocess
import sys

from flax import nnx

REPO = pathlib.Path(__file__).resolve().parents[2]


def train(
    config: str, workdir: pathlib.Path, pie: dict, *flags: str
) -> subprocess.CompletedProcess:
    """``scripts/train.py --config configs/<config>`` (``cmx.py:pie,runlocal`` ...) on the
    ``pie`` fixture's folder and TFDS data dir (built by the first run, reused after), with
    64-pixel crops."""
    cmd = [
        sys.executable,
        str(REPO / "scripts" / "train.py"),
        "--config",
        str(REPO / "configs" / config),
        "--workdir",
        str(workdir),
        f"--config.data.manual_dir={pie['source']}",
        f"--config.data.data_dir={pie['data_dir']}",
        "--config.data.num_threads=2",
        # The tiles' own size: these runs check the wiring, and PIE's 256 crops of a
        # rescaled 64-pixel tile cost 16 times the compute.
        "--config.data.augment.crop_size=(64, 64)",
        "--config.data.augment.scale=(128, 64)",
        *flags,
    ]
    return subprocess.run(cmd, capture_output=True, text=True)


@nnx.jit
def logits(model, optical, sar):
    """A trained model's logits, as one compiled program: called eagerly, a model compiles
    each of its operations on its own (23 s for the CMX micro model, 6 s compiled)."""
    return model(optical, sar)["logits"]
