"""Official vFuseNet checkpoints (mmseg ``EarlyFusionSegmentor`` with ``VFuseNetBackbone``
and two ``FCNHead``s): the key layout, the table to our variable paths, and the config
read from a state_dict's keys and shapes.

The layout is written from the official module definitions, independently of our Flax
modules. Each VGG stream is one ``features`` Sequential in which every stage's convs are
followed by an ``nn.Identity`` (it holds no weights but takes an index), so stage ``i``'s
convs are ``features.{start_i} ..`` with ``start_i = sum(blocks[:i] + 1)``; our table
turns those flat indices into ``stages.{i}.{k}``, which depends on the stage sizes.
"""

from __future__ import annotations

import re

import numpy as np

from asanet_jax.convert.inspection import count_indices
from asanet_jax.convert.layout import Layout, _bn, _conv, _conv_module
from asanet_jax.models.config import VGG_DEPTHS, VGG_WIDTHS, VFuseNetConfig
from asanet_jax.weights import CheckpointError

STREAMS = (("backbone", "optical"), ("backbone2", "sar"))  # official module, our stream


def feature_indices(stage_blocks) -> list[list[int]]:
    """Per stage, the ``features`` indices of its convs (the Identity after each stage
    takes one index)."""
    out, start = [], 0
    for n in stage_blocks:
        out.append(list(range(start, start + n)))
        start += n + 1
    return out


def decoder_widths(config: VFuseNetConfig) -> list[list[tuple[int, int]]]:
    """Per decoder stage, (in, out) of each of its ConvModules, as the official
    ``make_decoder_layer`` builds them (stage 0 has one conv fewer than the encoder's)."""
    widths, out = config.widths, []
    for i, n in enumerate(config.stage_blocks):
        cin, cout = widths[i], 64 if i == 0 else widths[i - 1]
        n = n - 1 if i == 0 else n
        out.append([(cin, cin if k < n - 1 else cout) for k in range(n)])
    return out


def vgg_layout(prefix: str, config: VFuseNetConfig, bands: int) -> Layout:
    """One VGG-BN stream's ``features`` under ``prefix`` (``backbone.backbone``)."""
    out, cin = [], bands
    for indices, width in zip(feature_indices(config.stage_blocks), config.widths, strict=True):
        for j in indices:
            out += _conv(f"{prefix}.features.{j}.conv", width, cin, 3)
            out += _bn(f"{prefix}.features.{j}.bn", width)
            cin = width
    return out


def layout(config: VFuseNetConfig) -> Layout:
    """Every key of the official vFuseNet state_dict for ``config``, in official order."""
    bands = {"optical": config.optical_channels, "sar": config.sar_channels}
    out: Layout = []
    for module, stream in STREAMS:
        out += vgg_layout(f"backbone.{module}", config, bands[stream])
    for i, w in enumerate(config.widths):
        out += _conv_module(f"backbone.fuse_convs.{i}", w, 2 * w, 3)
    for i, stage in enumerate(decoder_widths(config)):
        for k, (cin, cout) in enumerate(stage):
            out += _conv_module(f"backbone.decoder_convs.{i}.{k}", cout, cin, 3)
    heads = ["decode_head"] + (["auxiliary_head"] if config.aux_head else [])
    for head in heads:
        out += _conv(f"{head}.conv_seg", config.num_classes, config.head_channels, 1)
        out += _conv_module(f"{head}.convs.0", config.head_channels, 64, 3)
    return out


def rules(config: VFuseNetConfig) -> list[tuple]:
    """The table for ``config``'s stage sizes (the flat ``features`` indices depend on
    them)."""
    where = {
        j: (i, k)
        for i, indices in enumerate(feature_indices(config.stage_blocks))
        for k, j in enumerate(indices)
    }
    ours = dict(STREAMS)

    def feature(m):
        if int(m[2]) not in where:  # an Identity's index: no official key has it
            return f"{ours[m[1]]}.features.{m[2]}.{m[3]}"
        i, k = where[int(m[2])]
        return f"{ours[m[1]]}.stages.{i}.{k}.{m[3]}"

    return [
        (r"backbone\.(backbone2?)\.features\.(\d+)\.(conv)", feature, "conv"),
        (r"backbone\.(backbone2?)\.features\.(\d+)\.(bn)", feature, "batchnorm"),
        (r"backbone\.fuse_convs\.(\d+)\.conv", r"fuse_convs.\1.conv", "conv"),
        (r"backbone\.fuse_convs\.(\d+)\.bn", r"fuse_convs.\1.bn", "batchnorm"),
        (r"backbone\.decoder_convs\.(\d+)\.(\d+)\.conv", r"decoder.\1.\2.conv", "conv"),
        (r"backbone\.decoder_convs\.(\d+)\.(\d+)\.bn", r"decoder.\1.\2.bn", "batchnorm"),
        (r"decode_head\.convs\.0\.conv", r"decode_head.convs.0.conv", "conv"),
        (r"decode_head\.convs\.0\.bn", r"decode_head.convs.0.bn", "batchnorm"),
        (r"decode_head\.conv_seg", r"decode_head.conv_seg", "conv"),
        (r"auxiliary_head\.convs\.0\.conv", r"aux_head.convs.0.conv", "conv"),
        (r"auxiliary_head\.convs\.0\.bn", r"aux_head.convs.0.bn", "batchnorm"),
        (r"auxiliary_head\.conv_seg", r"aux_head.conv_seg", "conv"),
    ]


def is_vfusenet(state: dict) -> bool:
    """Whether a state_dict has vFuseNet's backbone (its per-stage fusion convs)."""
    return "backbone.fuse_convs.0.conv.weight" in state


def stage_blocks_of(state: dict, prefix: str) -> tuple[int, ...]:
    """The convs per stage of the VGG ``features`` under ``prefix``, read from the gaps
    the Identity after each stage leaves in the indices."""
    p = re.escape(prefix)
    found = sorted(
        int(m[1]) for k in state if (m := re.fullmatch(rf"{p}\.features\.(\d+)\.conv\.weight", k))
    )
    blocks, run, previous = [], 0, None
    for j in found:
        if previous is not None and j != previous + 1:
            if j != previous + 2:
                raise CheckpointError(
                    f"{prefix}.features indices jump from {previous} to {j}: expected one "
                    "Identity between stages"
                )
            blocks.append(run)
            run = 0
        run, previous = run + 1, j
    blocks.append(run)
    if len(blocks) != len(VGG_WIDTHS):
        raise CheckpointError(
            f"{prefix}.features has {len(blocks)} stages: expected {len(VGG_WIDTHS)}"
        )
    return tuple(blocks)


def infer_config(state: dict[str, np.ndarray], overrides: dict | None = None) -> dict:
    """``config.model`` fields of an official vFuseNet checkpoint, from its keys and shapes."""
    for module, _ in STREAMS:
        if f"backbone.{module}.features.0.conv.weight" not in state:
            raise CheckpointError(
                f"has vFuseNet's fusion convs but no 'backbone.{module}.features.0.conv.weight'"
            )
    if "decode_head.conv_seg.weight" not in state:
        raise CheckpointError("has vFuseNet's backbone but no 'decode_head.conv_seg.weight'")
    blocks = stage_blocks_of(state, "backbone.backbone")
    seg = state["decode_head.conv_seg.weight"]
    n_convs = count_indices(state, r"decode_head\.convs\.(\d+)\.conv\.weight")
    if n_convs != 1:
        raise CheckpointError(f"the decode head has {n_convs} convs: the official one has 1")
    return {
        "architecture": "vfusenet",
        "depth": next((d for d, b in VGG_DEPTHS.items() if b == blocks), 0),
        "stage_blocks": blocks,
        "optical_channels": int(np.shape(state["backbone.backbone.features.0.conv.weight"])[1]),
        "sar_channels": int(np.shape(state["backbone.backbone2.features.0.conv.weight"])[1]),
        "num_classes": int(np.shape(seg)[0]),
        "head_channels": int(np.shape(seg)[1]),
        "aux_head": "auxiliary_head.conv_seg.weight" in state,
    }
