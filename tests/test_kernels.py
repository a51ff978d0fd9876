"""`config.model.kernels`: one setting chooses the CPU formulations, per platform at
lowering time under 'auto' (parity of both forced settings is in test_parity.py)."""

import collections
import re

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax import export
from micro import MICRO_MODEL

from asanet_jax.models import ASANet
from asanet_jax.models.kernels import Kernels


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("auto", ("auto", "auto", "auto")),
        ("xla", ("xla", "xla", "xla")),
        ("cpu", ("cpu", "cpu", "cpu")),
        ("depthwise+winograd", ("cpu", "xla", "cpu")),
        ("layernorm", ("xla", "cpu", "xla")),
    ],
)
def test_settings_parse(setting, expected):
    k = Kernels.from_setting(setting)
    assert (k.depthwise, k.layernorm, k.winograd) == expected


@pytest.mark.parametrize("setting", ["gpu", "depthwise+depthwise", "cpu+xla", ""])
def test_bad_setting_names_the_value(setting):
    from asanet_jax.models.config import resolve

    with pytest.raises(ValueError, match=re.escape(f"config.model.kernels={setting!r}")):
        resolve({"kernels": setting})


COMPUTE_OPS = ("convolution", "dot_general", "reduce", "multiply")


def _op_counts(setting: str, platform: str) -> collections.Counter:
    """How many of each arithmetic op the StableHLO of a micro model's loss gradient,
    exported for `platform`, holds (bookkeeping ops such as the one-branch `case` that
    'auto' leaves are not counted)."""
    model = ASANet({**MICRO_MODEL, "kernels": setting, "winograd_min_pixels": 0}, rngs=nnx.Rngs(0))
    model.eval()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params, rest, x):
        out = nnx.merge(graphdef, params, rest)(x, -x)
        return out["logits"].mean()

    x = jnp.ones((1, 64, 64, 3))
    exported = export.export(jax.jit(jax.grad(loss)), platforms=[platform])(params, rest, x)
    ops = re.findall(r"stablehlo\.([a-z_]+)", exported.mlir_module())
    return collections.Counter(op for op in ops if op in COMPUTE_OPS)


def test_auto_is_decided_per_lowering_platform():
    """'auto' lowered for CPU is the 'cpu' program and lowered for CUDA the 'xla' one, op
    for op, whatever the backend of the machine that lowers it (ahead-of-time lowering)."""
    auto_cpu, auto_cuda = _op_counts("auto", "cpu"), _op_counts("auto", "cuda")
    forced_cpu, forced_xla = _op_counts("cpu", "cpu"), _op_counts("xla", "cpu")
    assert auto_cpu == forced_cpu
    assert auto_cuda == forced_xla
    # XLA's own program convolves (grouped depthwise and 3x3 convs); the CPU one mostly
    # multiplies: its only convolutions left are the 1x1, stem and downsample convs.
    assert forced_xla["convolution"] > forced_cpu["convolution"] > 0
    assert forced_cpu["dot_general"] > forced_xla["dot_general"]
