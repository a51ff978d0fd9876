"""Shared fixtures: the golden micro fixture from the official model, in NHWC."""

import os
import pathlib
import sys

# Reuse compiled programs across tests and their subprocesses (the training tests compile
# the same micro model in several runs).
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", str(pathlib.Path(__file__).parents[1] / ".pytest_cache" / "jax")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "2")
# Parity is measured at full float32 matmul precision (TF32/bf16 passes otherwise). The
# scripts the tests run get it too: on a CPU it computes the same numbers, and a script's
# program then equals the one an in-process test compiled, so the cache serves it.
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
# Compiling, not running, is most of the suite's time (micro models): with XLA's backend
# optimisation off it is about a fifth shorter. Subprocesses inherit the flag; those that
# set a device count add to it. The figures the README quotes are measured with XLA's
# default flags (benchmarks/).
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
).strip()

import jax
import numpy as np
import pytest

jax.config.update("jax_default_matmul_precision", "highest")  # in case jax came first

# Test support is imported as `tests.support` (tests/ itself is a namespace package):
# `python -m pytest` from the repository root has the root on sys.path; a bare `pytest`
# puts only tests/ there.
REPO = pathlib.Path(__file__).resolve().parents[1]
if all(pathlib.Path(p or ".").resolve() != REPO for p in sys.path):
    sys.path.insert(0, str(REPO))

from tests.support.golden import GOLDEN, nhwc, rel_l2  # noqa: E402, F401


@pytest.fixture(scope="session")
def golden_io():
    return dict(np.load(GOLDEN / "io.npz"))


@pytest.fixture(scope="session")
def golden_grads():
    return dict(np.load(GOLDEN / "grads.npz"))


@pytest.fixture(scope="session")
def golden_checkpoint() -> pathlib.Path:
    return GOLDEN / "checkpoint.pth"


@pytest.fixture(scope="session")
def golden_model(golden_checkpoint):
    from asanet_jax.convert import load_torch_checkpoint

    model, config = load_torch_checkpoint(golden_checkpoint)
    return model, config


@pytest.fixture(scope="session")
def golden_state(golden_checkpoint):
    from asanet_jax.convert import read_state_dict

    return read_state_dict(golden_checkpoint)


@pytest.fixture(scope="session")
def pie(tmp_path_factory) -> dict:
    """A PIE-RGB-SAR folder (4 training and 1 validation tile of 64x64) and a TFDS data dir
    that the training runs of every architecture's tests share (built once per worker)."""
    from tests.support import fake_sources

    root = tmp_path_factory.mktemp("pie")
    source = fake_sources.write_pie(root / "PIE", [f"t{i}" for i in range(4)], ["v0"], 64)
    return {"source": source, "data_dir": root / "data"}
