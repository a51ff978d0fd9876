"""What a state_dict holds, told from its keys and shapes alone.

The official and the ImageNet loaders (official.py, imagenet.py) both use these: the
architecture of a ConvNeXt stream (``stream_arch``) and, for a checkpoint that is no
ConvNeXt V2 backbone, the model family it looks like (``foreign_family``).
"""

from __future__ import annotations

import re

from asanet_jax.weights import CheckpointError


def count_indices(state: dict, pattern: str) -> int:
    """How many distinct values of the regex group ``(\\d+)`` occur in the keys."""
    found = {int(m.group(1)) for k in state if (m := re.fullmatch(pattern, k))}
    if found and found != set(range(len(found))):
        raise CheckpointError(f"indices {sorted(found)} of {pattern!r} are not 0..n-1")
    return len(found)


def unknown_keys_error(fmt: str, family: str, keys: list[str]) -> CheckpointError:
    """The error for keys of an ImageNet checkpoint that belong to no `family` backbone or
    classifier (40 listed at most)."""
    return CheckpointError(
        f"{fmt} checkpoint: {len(keys)} keys that belong to no {family} backbone or "
        "classifier:\n" + "\n".join(f"    {k}" for k in keys[:40])
    )


def stream_arch(state: dict, p: str) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    """(depths, channels, input bands) of the mmpretrain ConvNeXt under prefix ``p``."""
    n = count_indices(state, rf"{re.escape(p)}\.downsample_layers\.(\d+)\.\d\.weight")
    depths = tuple(
        count_indices(state, rf"{re.escape(p)}\.stages\.{i}\.(\d+)\.depthwise_conv\.weight")
        for i in range(n)
    )
    stem = state[f"{p}.downsample_layers.0.0.weight"]
    channels = (
        stem.shape[0],
        *tuple(state[f"{p}.downsample_layers.{i}.1.weight"].shape[0] for i in range(1, n)),
    )
    return depths, channels, stem.shape[1]


# A ConvNeXt block's depthwise conv and layer scale in any of the three formats (and
# mmpretrain's V1 too): FAIR ``stages.i.j.dwconv``, timm ``stages.i.blocks.j.conv_dw``,
# mmpretrain ``backbone.stages.i.j.depthwise_conv``.
_BLOCK = r"(?:backbone\.)?stages\.\d+\.(?:blocks\.)?\d+\."
_BLOCK_DWCONV = _BLOCK + r"(?:dwconv|conv_dw|depthwise_conv)\.weight"
_LAYER_SCALE = _BLOCK + r"gamma"
# The first patch embedding of a MiT, NVlabs SegFormer's or mmseg's.
_MIT_PATCH_EMBED = r"(?:backbone\.)?(?:patch_embed1\.proj|layers\.0\.0\.projection)\.weight"
_USE_V2 = (
    "ASANet's streams are ConvNeXt V2; use a ConvNeXt V2 ImageNet checkpoint "
    "(mmpretrain, FAIR or timm format)"
)


def _first(state: dict, pattern: str) -> str | None:
    return next((k for k in state if re.fullmatch(pattern, k)), None)


def foreign_family(state: dict) -> tuple[str, str] | None:
    """(one-line reason saying what the checkpoint looks like and what to use instead,
    one of its keys that shows it) when it is not a ConvNeXt V2 backbone in a format
    the ImageNet loader reads, else None.

    Told apart by keys alone: ConvNeXt V1 has the blocks of V2 but no GRN (and, in
    the released weights, a layer-scale ``gamma`` per block); ResNets have
    ``layerN.M.conv1``; Swin has relative position bias tables; ViTs a patch
    embedding and attention blocks; Hugging Face transformers' ConvNeXt files name
    their modules ``embeddings.patch_embeddings`` / ``encoder.stages.N.layers.M``.
    """
    has_grn = any(".grn." in k for k in state)
    if key := _first(state, r"(?:convnext(?:v2)?\.)?embeddings\.patch_embeddings\.weight"):
        hf = "Hugging Face transformers ConvNeXt {} checkpoint ('embeddings.patch_embeddings', "
        hf += "'encoder.stages.N.layers.M' keys)"
        if has_grn:  # the right model in a layout not read here
            return (
                f"looks like a {hf.format('V2')}, a layout this converter does not read: "
                "use the same weights in mmpretrain, FAIR or timm format",
                key,
            )
        return f"looks like a {hf.format('V1')}: {_USE_V2}", key
    what = None
    if key := _first(
        state, r"(?:backbone\.)?(?:patch_embed1\.proj|layers\.0\.0\.projection)\.weight"
    ):
        return (
            "looks like a MiT (SegFormer) checkpoint, the ImageNet start of CMX's streams: "
            "use it with a CMX model (config.model.architecture='cmx')",
            key,
        )
    if not has_grn and (key := _first(state, _BLOCK_DWCONV)):
        gamma = _first(state, _LAYER_SCALE)
        why = "layer-scale 'gamma' parameters, no GRN" if gamma else "no GRN parameters"
        what, key = f"ConvNeXt V1 checkpoint ({why})", gamma or key
    elif key := _first(state, r".*relative_position_bias_table"):
        what = "Swin Transformer checkpoint (relative position bias tables)"
    elif key := _first(state, r"(?:backbone\.)?layer[1-4]\.\d+\.conv1\.weight"):
        return (
            "looks like a ResNet checkpoint ('layerN.M.conv1' residual blocks), the ImageNet "
            "start of SA-Gate's streams: use it with a SA-Gate model "
            "(config.model.architecture='sagate')",
            key,
        )
    elif key := _first(state, r"backbone\.features\.0\.conv\.weight"):
        return (
            "looks like an mmcls / mmpretrain VGG checkpoint, the ImageNet start of "
            "vFuseNet's streams: use it with a vFuseNet model "
            "(config.model.architecture='vfusenet')",
            key,
        )
    elif (key := _first(state, r"(?:backbone\.)?patch_embed\.proj(?:ection)?\.weight")) and any(
        ".attn." in k for k in state
    ):
        what = "vision transformer checkpoint (patch embedding, attention blocks)"
    return (f"looks like a {what}: {_USE_V2}", key) if what else None
