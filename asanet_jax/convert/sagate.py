"""Official SA-Gate checkpoints (mmseg ``EarlyFusionSegmentor`` with ``DualResNet``,
``SAGateHead`` and an FCN aux head): the key layout, the table to our variable paths,
and the config read from a state_dict's keys and shapes.

The layout is written from the official module definitions, independently of our Flax
modules: the deep stems ``backbone.conv1.{0,1,3,4,6}`` / ``backbone.hha_conv1.*`` and their
``bn1`` / ``hha_bn1``, then per layer the ``DualBottleneck``s (both streams' convs in one
module), the four ``sagates``, the decode head and the aux head.

Alias keys: the first bottleneck of every layer holds one downsample module under two
names, ``downsample`` and ``hha_downsample``, so both are in every official state_dict
with equal values. Both map to our one ``downsamples.{i}``; loading checks they are
equal, and the export writes both.
"""

from __future__ import annotations

import numpy as np

from asanet_jax.convert.inspection import count_indices
from asanet_jax.convert.layout import Layout, _bn, _conv, _conv_module
from asanet_jax.models.config import RESNET_DEPTHS, SAGateConfig
from asanet_jax.weights import CheckpointError

STREAMS = (("", "optical"), ("hha_", "sar"))  # official prefix, our stream


def _linear(p: str, o: int, i: int) -> Layout:
    return [(f"{p}.weight", (o, i), "float32"), (f"{p}.bias", (o,), "float32")]


def _stem(config: SAGateConfig, bands: int, prefix: str) -> Layout:
    w = config.stem_width
    p = f"backbone.{prefix}conv1"
    out = _conv(f"{p}.0", w, bands, 3, bias=False) + _bn(f"{p}.1", w)
    out += _conv(f"{p}.3", w, w, 3, bias=False) + _bn(f"{p}.4", w)
    return out + _conv(f"{p}.6", 2 * w, w, 3, bias=False)


def _bottleneck(p: str, prefix: str, cin: int, planes: int) -> Layout:
    out = _conv(f"{p}.{prefix}conv1", planes, cin, 1, bias=False) + _bn(f"{p}.{prefix}bn1", planes)
    out += _conv(f"{p}.{prefix}conv2", planes, planes, 3, bias=False)
    out += _bn(f"{p}.{prefix}bn2", planes)
    out += _conv(f"{p}.{prefix}conv3", 4 * planes, planes, 1, bias=False)
    return out + _bn(f"{p}.{prefix}bn3", 4 * planes)


def layout(config: SAGateConfig) -> Layout:
    """Every key of the official SA-Gate state_dict for ``config``, in official order
    (the downsample aliases included)."""
    bands = {"optical": config.optical_channels, "sar": config.sar_channels}
    out: Layout = []
    for tp, stream in STREAMS:
        out += _stem(config, bands[stream], tp)
    for tp, _ in STREAMS:
        out += _bn(f"backbone.{tp}bn1", 2 * config.stem_width)
    cin = 2 * config.stem_width
    for i, n in enumerate(config.layers):
        planes = 64 * 2**i
        for j in range(n):
            p = f"backbone.layer{i + 1}.{j}"
            for tp, _ in STREAMS:
                out += _bottleneck(p, tp, cin, planes)
                if j == 0:
                    out += _conv(f"{p}.{tp}downsample.0", 4 * planes, cin, 1, bias=False)
                    out += _bn(f"{p}.{tp}downsample.1", 4 * planes)
            cin = 4 * planes
    for i, c in enumerate(config.widths):
        p = f"backbone.sagates.{i}"
        for side in ("rgb", "hha"):
            out += _linear(f"{p}.fsp_{side}.filter.fc.0", c // 16, 2 * c)
            out += _linear(f"{p}.fsp_{side}.filter.fc.2", c, c // 16)
        out += _conv(f"{p}.gate_rgb", 1, 2 * c, 1) + _conv(f"{p}.gate_hha", 1, 2 * c, 1)
    d, k, last = config.decoder_channels, config.num_classes, config.widths[-1]
    out += _conv("decode_head.conv_seg", k, d, 1)
    p = "decode_head.aspp"
    out += _conv(f"{p}.map_convs.0", d, last, 1, bias=False)
    for b in (1, 2, 3):
        out += _conv(f"{p}.map_convs.{b}", d, last, 3, bias=False)
    out += _bn(f"{p}.map_bn", 4 * d)
    out += _conv(f"{p}.global_pooling_conv", d, last, 1, bias=False)
    out += _bn(f"{p}.global_pooling_bn", d)
    out += _conv(f"{p}.red_conv", d, 4 * d, 1, bias=False)
    out += _conv(f"{p}.pool_red_conv", d, d, 1, bias=False) + _bn(f"{p}.red_bn", d)
    c1 = config.c1_channels
    out += _conv_module("decode_head.c1_bottleneck", c1, config.widths[0], 1)
    out += _conv_module("decode_head.last_conv.0", d, d + c1, 3)
    out += _conv_module("decode_head.last_conv.1", d, d, 3)
    if config.aux_channels:
        a = config.aux_channels
        out += _conv("auxiliary_head.conv_seg", k, a, 1)
        out += _conv_module("auxiliary_head.convs.0", a, last, 3)
    return out


def aliases(config: SAGateConfig) -> dict[str, str]:
    """alias -> first name, for every ``hha_downsample`` key (the official meta's form)."""
    out = {}
    for key, _, _ in layout(config):
        if ".hha_downsample." in key:
            out[key] = key.replace(".hha_downsample.", ".downsample.")
    return out


def _layer(m, group: int = 1) -> int:
    return int(m[group]) - 1


def _stream(prefix: str) -> str:
    return dict(STREAMS)[prefix or ""]


RULES: list[tuple] = [
    (r"backbone\.(hha_)?conv1\.0", lambda m: f"{_stream(m[1])}.stem.conv1", "conv"),
    (r"backbone\.(hha_)?conv1\.1", lambda m: f"{_stream(m[1])}.stem.bn1", "batchnorm"),
    (r"backbone\.(hha_)?conv1\.3", lambda m: f"{_stream(m[1])}.stem.conv2", "conv"),
    (r"backbone\.(hha_)?conv1\.4", lambda m: f"{_stream(m[1])}.stem.bn2", "batchnorm"),
    (r"backbone\.(hha_)?conv1\.6", lambda m: f"{_stream(m[1])}.stem.conv3", "conv"),
    (r"backbone\.(hha_)?bn1", lambda m: f"{_stream(m[1])}.stem.norm", "batchnorm"),
    (
        r"backbone\.layer(\d)\.0\.(hha_)?downsample\.0",
        lambda m: f"downsamples.{_layer(m)}.conv",
        "conv",
    ),
    (
        r"backbone\.layer(\d)\.0\.(hha_)?downsample\.1",
        lambda m: f"downsamples.{_layer(m)}.bn",
        "batchnorm",
    ),
    (
        r"backbone\.layer(\d)\.(\d+)\.(hha_)?(conv[123])",
        lambda m: f"{_stream(m[3])}.layers.{_layer(m)}.{m[2]}.{m[4]}",
        "conv",
    ),
    (
        r"backbone\.layer(\d)\.(\d+)\.(hha_)?(bn[123])",
        lambda m: f"{_stream(m[3])}.layers.{_layer(m)}.{m[2]}.{m[4]}",
        "batchnorm",
    ),
    (r"backbone\.sagates\.(\d+)\.(fsp_rgb|fsp_hha)\.filter\.fc\.0", r"sagates.\1.\2.fc1", "linear"),
    (r"backbone\.sagates\.(\d+)\.(fsp_rgb|fsp_hha)\.filter\.fc\.2", r"sagates.\1.\2.fc2", "linear"),
    (r"backbone\.sagates\.(\d+)\.(gate_rgb|gate_hha)", r"sagates.\1.\2", "conv"),
    (r"decode_head\.conv_seg", r"decode_head.conv_seg", "conv"),
    (r"decode_head\.aspp\.map_convs\.(\d)", r"decode_head.aspp.map_convs.\1", "conv"),
    (
        r"decode_head\.aspp\.(global_pooling_conv|red_conv|pool_red_conv)",
        r"decode_head.aspp.\1",
        "conv",
    ),
    (
        r"decode_head\.aspp\.(map_bn|global_pooling_bn|red_bn)",
        r"decode_head.aspp.\1",
        "batchnorm",
    ),
    (r"decode_head\.c1_bottleneck\.conv", r"decode_head.c1_bottleneck.conv", "conv"),
    (r"decode_head\.c1_bottleneck\.bn", r"decode_head.c1_bottleneck.bn", "batchnorm"),
    (r"decode_head\.last_conv\.(\d)\.conv", r"decode_head.last_conv.\1.conv", "conv"),
    (r"decode_head\.last_conv\.(\d)\.bn", r"decode_head.last_conv.\1.bn", "batchnorm"),
    (r"auxiliary_head\.convs\.(\d+)\.conv", r"aux_head.convs.\1.conv", "conv"),
    (r"auxiliary_head\.convs\.(\d+)\.bn", r"aux_head.convs.\1.bn", "batchnorm"),
    (r"auxiliary_head\.conv_seg", r"aux_head.conv_seg", "conv"),
]


def is_sagate(state: dict) -> bool:
    """Whether a state_dict has SA-Gate's backbone (a DualResNet's SA-Gates)."""
    return "backbone.sagates.0.gate_rgb.weight" in state


def infer_config(state: dict[str, np.ndarray], overrides: dict | None = None) -> dict:
    """``config.model`` fields of an official SA-Gate checkpoint, from its keys and shapes."""
    for key in ("backbone.conv1.0.weight", "backbone.hha_conv1.0.weight"):
        if key not in state:
            raise CheckpointError(
                f"has SA-Gate's gates but no {key!r}: not a SA-Gate checkpoint with a deep stem"
            )
    if "decode_head.conv_seg.weight" not in state:
        raise CheckpointError("has SA-Gate's backbone but no 'decode_head.conv_seg.weight'")
    layers = tuple(
        count_indices(state, rf"backbone\.layer{i + 1}\.(\d+)\.conv1\.weight") for i in range(4)
    )
    depth = next((d for d, b in RESNET_DEPTHS.items() if b == layers), 0)
    seg = state["decode_head.conv_seg.weight"]
    aux = state.get("auxiliary_head.convs.0.conv.weight")
    cfg = {
        "architecture": "sagate",
        "depth": depth,
        "layers": layers,
        "stem_width": int(np.shape(state["backbone.conv1.0.weight"])[0]),
        "optical_channels": int(np.shape(state["backbone.conv1.0.weight"])[1]),
        "sar_channels": int(np.shape(state["backbone.hha_conv1.0.weight"])[1]),
        "num_classes": int(np.shape(seg)[0]),
        "decoder_channels": int(np.shape(seg)[1]),
        "c1_channels": int(np.shape(state["decode_head.c1_bottleneck.conv.weight"])[0]),
        "aux_channels": 0 if aux is None else int(np.shape(aux)[0]),
    }
    return cfg


def check_aliases(state: dict[str, np.ndarray]) -> None:
    """Each ``hha_downsample`` tensor must equal its ``downsample`` twin: they are one
    module in the official model, so a checkpoint where they differ was not written by it.

    Raises:
      CheckpointError: naming the first pair that differs.
    """
    for key in state:
        if ".hha_downsample." in key:
            twin = key.replace(".hha_downsample.", ".downsample.")
            if twin in state and not np.array_equal(
                np.asarray(state[key]), np.asarray(state[twin])
            ):
                raise CheckpointError(
                    f"{key!r} differs from {twin!r}: SA-Gate's two streams share one downsample "
                    "module, so an official checkpoint holds equal values under both names"
                )
