"""Official CMX checkpoints (mmseg ``EarlyFusionSegmentor`` with ``RGBXTransformer`` and
``MLPDecoderHead``): the key layout, the table to our variable paths, and the config
read from a state_dict's keys and shapes.

The layout is written from the official module definitions, independently of our Flax
modules: the first stream's ``backbone.patch_embed{i}``, ``block{i}.{j}``, ``norm{i}``
(1-based), the second's the same with ``extra_``, then ``FRMs``, ``FFMs`` and the
decoder. The head count of each stage is in no weight's shape: it is the MiT variant's,
or given.
"""

from __future__ import annotations

import re

import numpy as np

from asanet_jax.convert.inspection import count_indices
from asanet_jax.convert.layout import Layout, _affine, _bn, _conv
from asanet_jax.models.config import CMXConfig
from asanet_jax.models.mit import MIT_VARIANTS
from asanet_jax.weights import CheckpointError

STREAMS = (("", "optical"), ("extra_", "sar"))  # official prefix, our stream


def _linear(p: str, o: int, i: int, bias: bool = True) -> Layout:
    out = [(f"{p}.weight", (o, i), "float32")]
    return out + ([(f"{p}.bias", (o,), "float32")] if bias else [])


def stream_block_layout(p: str, c: int, sr: int, mlp_ratio: int) -> Layout:
    """One MiT block under prefix ``p`` (``backbone.block1.0``)."""
    h = c * mlp_ratio
    out = _affine(f"{p}.norm1", c)
    out += _linear(f"{p}.attn.q", c, c) + _linear(f"{p}.attn.kv", 2 * c, c)
    out += _linear(f"{p}.attn.proj", c, c)
    if sr > 1:
        out += _conv(f"{p}.attn.sr", c, c, sr) + _affine(f"{p}.attn.norm", c)
    out += _affine(f"{p}.norm2", c) + _linear(f"{p}.mlp.fc1", h, c)
    out += [(f"{p}.mlp.dwconv.dwconv.weight", (h, 1, 3, 3), "float32")]
    out += [(f"{p}.mlp.dwconv.dwconv.bias", (h,), "float32")]
    return out + _linear(f"{p}.mlp.fc2", c, h)


def _patch_embeds(config: CMXConfig, bands: int, prefix: str) -> Layout:
    dims, out = config.embed_dims, []
    for i, c in enumerate(dims):
        p = f"{prefix}patch_embed{i + 1}"
        cin = bands if i == 0 else dims[i - 1]
        out += _conv(f"{p}.proj", c, cin, 7 if i == 0 else 3) + _affine(f"{p}.norm", c)
    return out


def _stage(config: CMXConfig, i: int, prefix: str) -> Layout:
    c, out = config.embed_dims[i], []
    for j in range(config.depths[i]):
        out += stream_block_layout(
            f"{prefix}block{i + 1}.{j}", c, config.sr_ratios[i], config.mlp_ratio
        )
    return out + _affine(f"{prefix}norm{i + 1}", c)


def mit_stream_layout(config: CMXConfig, bands: int, prefix: str = "") -> Layout:
    """One MiT stream's keys under ``prefix`` (``""``: NVlabs SegFormer's ImageNet file)."""
    out = _patch_embeds(config, bands, prefix)
    for i in range(len(config.embed_dims)):
        out += _stage(config, i, prefix)
    return out


def mit_layout(config: CMXConfig, in_channels: dict[str, int]) -> Layout:
    """The keys of both MiT streams in the official order: every patch embedding of the
    first stream, then of the second, then per stage the blocks and norm of each."""
    out: Layout = []
    for tp, stream in STREAMS:
        out += _patch_embeds(config, in_channels[stream], f"backbone.{tp}")
    for i in range(len(config.embed_dims)):
        for tp, _ in STREAMS:
            out += _stage(config, i, f"backbone.{tp}")
    return out


def layout(config: CMXConfig) -> Layout:
    """Every key of the official CMX state_dict for ``config``, in official order."""
    bands = {"optical": config.optical_channels, "sar": config.sar_channels}
    out = mit_layout(config, bands)
    for i, c in enumerate(config.embed_dims):
        p = f"backbone.FRMs.{i}"
        out += _linear(f"{p}.channel_weights.mlp.0", 4 * c, 4 * c)
        out += _linear(f"{p}.channel_weights.mlp.2", 2 * c, 4 * c)
        out += _conv(f"{p}.spatial_weights.mlp.0", c, 2 * c, 1)
        out += _conv(f"{p}.spatial_weights.mlp.2", 2, c, 1)
    for i, c in enumerate(config.embed_dims):
        p = f"backbone.FFMs.{i}.cross"
        out += _linear(f"{p}.channel_proj1", 2 * c, c) + _linear(f"{p}.channel_proj2", 2 * c, c)
        out += _linear(f"{p}.cross_attn.kv1", 2 * c, c, bias=False)
        out += _linear(f"{p}.cross_attn.kv2", 2 * c, c, bias=False)
        out += _linear(f"{p}.end_proj1", c, 2 * c) + _linear(f"{p}.end_proj2", c, 2 * c)
        out += _affine(f"{p}.norm1", c) + _affine(f"{p}.norm2", c)
        p = f"backbone.FFMs.{i}.channel_emb"
        out += _conv(f"{p}.residual", c, 2 * c, 1, bias=False)
        out += _conv(f"{p}.channel_embed.0", c, 2 * c, 1)
        out += [(f"{p}.channel_embed.1.weight", (c, 1, 3, 3), "float32")]
        out += [(f"{p}.channel_embed.1.bias", (c,), "float32")]
        out += _conv(f"{p}.channel_embed.3", c, c, 1) + _bn(f"{p}.channel_embed.4", c)
        out += _bn(f"{p}.norm", c)
    d, k = config.decoder_channels, config.num_classes
    out += _conv("decode_head.conv_seg", k, d, 1)
    for i, c in enumerate(config.embed_dims):
        out += _linear(f"decode_head.layers.{i}.proj", d, c)
    out += _conv("decode_head.fusion_conv.conv", d, len(config.embed_dims) * d, 1)
    return out + _bn("decode_head.fusion_conv.bn", d)


def _index(m) -> int:
    return int(m[1]) - 1


def mit_rules(torch_prefix: str, flax_prefix: str) -> list[tuple]:
    """The table for one MiT stream: official ``{torch_prefix}patch_embed1`` ->
    ``{flax_prefix}.patch_embeds.0`` and so on (``torch_prefix`` like ``backbone.extra_``)."""
    tp, fp = re.escape(torch_prefix), flax_prefix
    block = rf"{tp}block(\d)\.(\d+)"

    def at(tail):
        return lambda m: f"{fp}.blocks.{_index(m)}.{m[2]}.{tail(m) if callable(tail) else tail}"

    return [
        (rf"{tp}patch_embed(\d)\.proj", lambda m: f"{fp}.patch_embeds.{_index(m)}.proj", "conv"),
        (
            rf"{tp}patch_embed(\d)\.norm",
            lambda m: f"{fp}.patch_embeds.{_index(m)}.norm",
            "layernorm",
        ),
        (rf"{block}\.(norm1|norm2)", at(lambda m: m[3]), "layernorm"),
        (rf"{block}\.attn\.(q|kv|proj)", at(lambda m: f"attn.{m[3]}"), "linear"),
        (rf"{block}\.attn\.sr", at("attn.sr"), "conv"),
        (rf"{block}\.attn\.norm", at("attn.norm"), "layernorm"),
        (rf"{block}\.mlp\.(fc1|fc2)", at(lambda m: f"mlp.{m[3]}"), "linear"),
        (rf"{block}\.mlp\.dwconv\.dwconv", at("mlp.dwconv"), "depthwise"),
        (rf"{tp}norm(\d)", lambda m: f"{fp}.norms.{_index(m)}", "layernorm"),
    ]


FUSION_AND_HEAD_RULES: list[tuple] = [
    (r"backbone\.FRMs\.(\d+)\.channel_weights\.mlp\.0", r"frms.\1.channel_weights.fc1", "linear"),
    (r"backbone\.FRMs\.(\d+)\.channel_weights\.mlp\.2", r"frms.\1.channel_weights.fc2", "linear"),
    (r"backbone\.FRMs\.(\d+)\.spatial_weights\.mlp\.0", r"frms.\1.spatial_weights.conv1", "conv"),
    (r"backbone\.FRMs\.(\d+)\.spatial_weights\.mlp\.2", r"frms.\1.spatial_weights.conv2", "conv"),
    (
        r"backbone\.FFMs\.(\d+)\.cross\.(channel_proj[12]|end_proj[12])",
        r"ffms.\1.cross.\2",
        "linear",
    ),
    (
        r"backbone\.FFMs\.(\d+)\.cross\.cross_attn\.(kv[12])",
        r"ffms.\1.cross.cross_attn.\2",
        "linear",
    ),
    (r"backbone\.FFMs\.(\d+)\.cross\.(norm[12])", r"ffms.\1.cross.\2", "layernorm"),
    (r"backbone\.FFMs\.(\d+)\.channel_emb\.residual", r"ffms.\1.channel_emb.residual", "conv"),
    (
        r"backbone\.FFMs\.(\d+)\.channel_emb\.channel_embed\.0",
        r"ffms.\1.channel_emb.embed_in",
        "conv",
    ),
    (
        r"backbone\.FFMs\.(\d+)\.channel_emb\.channel_embed\.1",
        r"ffms.\1.channel_emb.embed_dw",
        "depthwise",
    ),
    (
        r"backbone\.FFMs\.(\d+)\.channel_emb\.channel_embed\.3",
        r"ffms.\1.channel_emb.embed_out",
        "conv",
    ),
    (
        r"backbone\.FFMs\.(\d+)\.channel_emb\.channel_embed\.4",
        r"ffms.\1.channel_emb.embed_bn",
        "batchnorm",
    ),
    (r"backbone\.FFMs\.(\d+)\.channel_emb\.norm", r"ffms.\1.channel_emb.norm", "batchnorm"),
    (r"decode_head\.conv_seg", r"decode_head.conv_seg", "conv"),
    (r"decode_head\.layers\.(\d+)\.proj", r"decode_head.layers.\1", "linear"),
    (r"decode_head\.fusion_conv\.conv", r"decode_head.fusion_conv.conv", "conv"),
    (r"decode_head\.fusion_conv\.bn", r"decode_head.fusion_conv.bn", "batchnorm"),
]

RULES: list[tuple] = [
    rule for tp, fp in STREAMS for rule in mit_rules(f"backbone.{tp}", fp)
] + FUSION_AND_HEAD_RULES


def is_cmx(state: dict) -> bool:
    """Whether a state_dict has CMX's backbone (either stream's first patch embedding)."""
    return any(f"backbone.{tp}patch_embed1.proj.weight" in state for tp, _ in STREAMS)


def mit_arch(state: dict, prefix: str) -> dict:
    """embed_dims, depths, sr_ratios, mlp_ratio and the input bands of the MiT under
    ``prefix`` (``backbone.`` / ``backbone.extra_`` / ``""``), from shapes alone."""
    p = re.escape(prefix)
    stages = sorted(
        int(m[1]) for k in state if (m := re.fullmatch(rf"{p}patch_embed(\d)\.proj\.weight", k))
    )
    n = len(stages)
    if stages != list(range(1, n + 1)):
        raise CheckpointError(
            f"MiT patch embeddings {stages} under {prefix!r}: expected patch_embed1..N"
        )
    dims = tuple(int(state[f"{prefix}patch_embed{i + 1}.proj.weight"].shape[0]) for i in range(n))
    depths = tuple(
        count_indices(state, rf"{p}block{i + 1}\.(\d+)\.norm1\.weight") for i in range(n)
    )
    srs = tuple(
        int(np.shape(state[k])[2])
        if (k := f"{prefix}block{i + 1}.0.attn.sr.weight") in state
        else 1
        for i in range(n)
    )
    fc1 = f"{prefix}block1.0.mlp.fc1.weight"
    mlp_ratio = int(np.shape(state[fc1])[0]) // dims[0] if fc1 in state else 4
    bands = int(state[f"{prefix}patch_embed1.proj.weight"].shape[1])
    return {
        "embed_dims": dims,
        "depths": depths,
        "sr_ratios": srs,
        "mlp_ratio": mlp_ratio,
        "bands": bands,
    }


def heads_for(embed_dims: tuple[int, ...], overrides: dict) -> tuple[int, ...]:
    """The head counts: given, or those of the MiT variants with these embed dims."""
    if "num_heads" in overrides:
        return tuple(overrides["num_heads"])
    known = {dims: heads for dims, heads, _ in MIT_VARIANTS.values()}
    if embed_dims not in known:
        raise CheckpointError(
            f"embed dims {embed_dims} are no MiT variant's, and the attention head counts are "
            "in no weight's shape: give them (--set num_heads='(1, 2, 5, 8)')"
        )
    return known[embed_dims]


def infer_config(state: dict[str, np.ndarray], overrides: dict) -> dict:
    """``config.model`` fields of an official CMX checkpoint, from its keys and shapes
    (the head counts from the MiT variant or ``overrides``)."""
    optical = mit_arch(state, "backbone.")
    if "backbone.extra_patch_embed1.proj.weight" not in state:
        raise CheckpointError(
            "has CMX's optical stream (backbone.patch_embed*) but no SAR stream "
            "(backbone.extra_patch_embed*): not a CMX checkpoint"
        )
    sar = mit_arch(state, "backbone.extra_")
    if "decode_head.conv_seg.weight" not in state:
        raise CheckpointError(
            "has CMX's backbone but no 'decode_head.conv_seg.weight': an ImageNet MiT? "
            "convert it with --kind imagenet"
        )
    seg = state["decode_head.conv_seg.weight"]
    return {
        "architecture": "cmx",
        "embed_dims": optical["embed_dims"],
        "num_heads": heads_for(optical["embed_dims"], overrides),
        "depths": optical["depths"],
        "sr_ratios": optical["sr_ratios"],
        "mlp_ratio": optical["mlp_ratio"],
        "optical_channels": optical["bands"],
        "sar_channels": sar["bands"],
        "num_classes": int(seg.shape[0]),
        "decoder_channels": int(seg.shape[1]),
    }
