"""Shared fixtures: the golden micro fixture from the official model, in NHWC."""

import os
import pathlib

# Reuse compiled programs across tests and their subprocesses (the training tests compile
# the same micro model in several runs).
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", str(pathlib.Path(__file__).parents[1] / ".pytest_cache" / "jax")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "2")

import jax
import numpy as np
import pytest

# Parity is measured at full float32 matmul precision (TF32/bf16 passes otherwise).
jax.config.update("jax_default_matmul_precision", "highest")

from benchmarks.golden import GOLDEN, nhwc, rel_l2  # noqa: E402, F401


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
