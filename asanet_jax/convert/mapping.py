"""The explicit table from official PyTorch names to our Flax variable paths.

Each rule maps a PyTorch *module* path (a regex over the key without its last
component) to our module path and names the module kind. The kind fixes how every
leaf is renamed and transformed; nothing is decided by array rank.

Bump ``MAPPING_VERSION`` whenever a rule or a transform changes: it is recorded
beside every converted checkpoint.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import numpy as np

from asanet_jax.weights import CheckpointError, mismatch_report

MAPPING_VERSION = 3  # 2: CMX's table; 3: SA-Gate's and vFuseNet's; ASANet's unchanged


def _oihw_to_hwio(w: np.ndarray) -> np.ndarray:
    return np.transpose(w, (2, 3, 1, 0))


def _hwio_to_oihw(w: np.ndarray) -> np.ndarray:
    return np.transpose(w, (3, 2, 0, 1))


def _same(w: np.ndarray) -> np.ndarray:
    return w


def _to_int32(n: np.ndarray) -> np.ndarray:
    # JAX runs without 64-bit integers by default; the counter never nears 2**31.
    return n.astype(np.int32)


def _to_int64(n: np.ndarray) -> np.ndarray:
    return n.astype(np.int64)


@dataclasses.dataclass(frozen=True)
class Leaf:
    """One parameter of a module kind: torch name, our name, and both transforms."""

    torch: str
    flax: str
    to_flax: Callable[[np.ndarray], np.ndarray] = _same
    to_torch: Callable[[np.ndarray], np.ndarray] = _same


_WEIGHT_BIAS = (Leaf("weight", "scale"), Leaf("bias", "bias"))

KINDS: dict[str, tuple[Leaf, ...]] = {
    # nn.Conv2d (O, I, kH, kW) -> nnx.Conv kernel (kH, kW, I, O).
    "conv": (Leaf("weight", "kernel", _oihw_to_hwio, _hwio_to_oihw), Leaf("bias", "bias")),
    # Depthwise nn.Conv2d (C, 1, kH, kW) -> grouped nnx.Conv kernel (kH, kW, 1, C).
    "depthwise": (Leaf("weight", "kernel", _oihw_to_hwio, _hwio_to_oihw), Leaf("bias", "bias")),
    # nn.Linear (out, in) -> nnx.Linear kernel (in, out).
    "linear": (Leaf("weight", "kernel", np.transpose, np.transpose), Leaf("bias", "bias")),
    # LayerNorm / LN2d: weight -> scale.
    "layernorm": _WEIGHT_BIAS,
    # BatchNorm2d: affine parameters and buffers; the int64 counter is kept as int32.
    "batchnorm": (
        *_WEIGHT_BIAS,
        Leaf("running_mean", "mean"),
        Leaf("running_var", "var"),
        Leaf("num_batches_tracked", "num_batches_tracked", _to_int32, _to_int64),
    ),
    # GRN gamma/beta: (C,) in mmpretrain; the FAIR release's (1, 1, 1, C) is
    # reshaped when its keys are renamed (see imagenet.py).
    "grn": (Leaf("gamma", "gamma"), Leaf("beta", "beta")),
}

# One ConvNeXt V2 stream, mmpretrain names relative to the stream's prefix.
CONVNEXT_RULES: list[tuple[str, str, str]] = [
    (r"downsample_layers\.0\.0", r"downsample_layers.0.conv", "conv"),
    (r"downsample_layers\.0\.1", r"downsample_layers.0.norm", "layernorm"),
    (r"downsample_layers\.(\d+)\.0", r"downsample_layers.\1.norm", "layernorm"),
    (r"downsample_layers\.(\d+)\.1", r"downsample_layers.\1.conv", "conv"),
    (r"stages\.(\d+)\.(\d+)\.depthwise_conv", r"stages.\1.\2.depthwise_conv", "depthwise"),
    (r"stages\.(\d+)\.(\d+)\.norm", r"stages.\1.\2.norm", "layernorm"),
    (r"stages\.(\d+)\.(\d+)\.pointwise_conv(1|2)", r"stages.\1.\2.pointwise_conv\3", "linear"),
    (r"stages\.(\d+)\.(\d+)\.grn", r"stages.\1.\2.grn", "grn"),
    (r"norm(\d+)", r"norms.\1", "layernorm"),
]

FUSION_AND_HEAD_RULES: list[tuple[str, str, str]] = [
    (r"backbone\.FRMs\.(\d+)\.sconv\.0", r"sfms.\1.fc1", "conv"),
    (r"backbone\.FRMs\.(\d+)\.sconv\.2", r"sfms.\1.fc2", "conv"),
    (r"backbone\.FFMs\.(\d+)\.catconv(1|2)", r"fusions.\1.catconv\2", "conv"),
    (r"backbone\.FFMs\.(\d+)\.fc(1|2)", r"fusions.\1.fc\2", "conv"),
    (r"backbone\.FFMs\.(\d+)\.mlp(1|2)\.fc(1|2)\.conv", r"fusions.\1.mlp\2.fc\3.conv", "conv"),
    (r"backbone\.FFMs\.(\d+)\.mlp(1|2)\.fc(1|2)\.bn", r"fusions.\1.mlp\2.fc\3.bn", "batchnorm"),
    (
        r"backbone\.FFMs\.(\d+)\.mlp(1|2)\.dwconv\.conv",
        r"fusions.\1.mlp\2.dwconv.conv",
        "depthwise",
    ),
    # mmseg psp_modules[k] = Sequential(AdaptiveAvgPool2d, ConvModule): index 1.
    (r"decode_head\.psp_modules\.(\d+)\.1\.conv", r"decode_head.psp_modules.\1.conv", "conv"),
    (r"decode_head\.psp_modules\.(\d+)\.1\.bn", r"decode_head.psp_modules.\1.bn", "batchnorm"),
    (r"decode_head\.(bottleneck|fpn_bottleneck)\.conv", r"decode_head.\1.conv", "conv"),
    (r"decode_head\.(bottleneck|fpn_bottleneck)\.bn", r"decode_head.\1.bn", "batchnorm"),
    (r"decode_head\.(lateral_convs|fpn_convs)\.(\d+)\.conv", r"decode_head.\1.\2.conv", "conv"),
    (r"decode_head\.(lateral_convs|fpn_convs)\.(\d+)\.bn", r"decode_head.\1.\2.bn", "batchnorm"),
    (r"decode_head\.conv_seg", r"decode_head.conv_seg", "conv"),
    (r"auxiliary_head\.convs\.(\d+)\.conv", r"aux_head.convs.\1.conv", "conv"),
    (r"auxiliary_head\.convs\.(\d+)\.bn", r"aux_head.convs.\1.bn", "batchnorm"),
    (r"auxiliary_head\.conv_seg", r"aux_head.conv_seg", "conv"),
]


def stream_rules(torch_prefix: str, flax_prefix: str) -> list[tuple[str, str, str]]:
    """The ConvNeXt rules for one stream: e.g. ``backbone.backbone2`` -> ``sar``."""
    tp = re.escape(torch_prefix)
    return [(rf"{tp}\.{pat}", rf"{flax_prefix}.{tmpl}", k) for pat, tmpl, k in CONVNEXT_RULES]


def segmentor_rules(streams: tuple[str, ...]) -> list[tuple[str, str, str]]:
    """All rules for an official segmentor with the given streams."""
    if len(streams) == 1:
        return stream_rules("backbone", streams[0]) + FUSION_AND_HEAD_RULES
    return (
        stream_rules("backbone.backbone", "optical")
        + stream_rules("backbone.backbone2", "sar")
        + FUSION_AND_HEAD_RULES
    )


@dataclasses.dataclass(frozen=True)
class Mapped:
    """Where one PyTorch key goes."""

    flax_path: str
    leaf: Leaf


def map_key(key: str, rules: list[tuple]) -> Mapped | None:
    """Our variable path (and transforms) for a PyTorch key, or None if no rule matches.

    A rule's template is a regex replacement (``r"sfms.\1.fc1"``) or a function of the
    match, for renames a replacement cannot write (1-based stage names to 0-based).
    """
    module, _, leaf_name = key.rpartition(".")
    for pattern, template, kind in rules:
        m = re.fullmatch(pattern, module)
        if m is None:
            continue
        for leaf in KINDS[kind]:
            if leaf.torch == leaf_name:
                target = template(m) if callable(template) else m.expand(template)
                return Mapped(f"{target}.{leaf.flax}", leaf)
        return None
    return None


def to_flax_values(state: dict[str, np.ndarray], rules) -> dict[str, np.ndarray]:
    """Rename and transform every tensor through the table; unmatched keys are errors."""
    out, unmatched = {}, []
    for key, value in state.items():
        mapped = map_key(key, rules)
        if mapped is None:
            unmatched.append(key)
            continue
        out[mapped.flax_path] = mapped.leaf.to_flax(np.asarray(value))
    if unmatched:
        raise CheckpointError(mismatch_report(sorted(unmatched), [], []))
    return out
