"""Official mmseg checkpoints <-> our model: architecture inference, strict load, export.

Each architecture has its official key layout and its table to our variable paths
(``layout_of``, ``rules_of``): ASANet's in layout.py and mapping.py, each comparison
model's in its own module (``FAMILIES``: cmx.py, sagate.py, vfusenet.py). The
architecture itself is told from the keys: CMX's MiT streams have
``backbone.patch_embed1``, SA-Gate's DualResNet ``backbone.sagates``, vFuseNet's
``backbone.fuse_convs``.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable

import ml_collections
import numpy as np
from flax import nnx

from asanet_jax.convert import cmx, sagate, vfusenet
from asanet_jax.convert.inspection import count_indices, foreign_family, stream_arch
from asanet_jax.convert.layout import Layout, official_layout
from asanet_jax.convert.mapping import map_key, segmentor_rules, to_flax_values
from asanet_jax.convert.state_dicts import read_state_dict
from asanet_jax.models.config import LEGACY_MODALITIES, ModelConfig, resolve, to_config
from asanet_jax.weights import (
    CheckpointError,
    check_finite,
    check_fit,
    flat_weights,
    model_from_values,
)


@dataclasses.dataclass(frozen=True)
class Family:
    """How one comparison architecture's official checkpoints are told, laid out and
    mapped (ASANet's, the default, are in layout.py and mapping.py)."""

    matches: Callable[[dict], bool]
    layout: Callable[[ModelConfig], Layout]
    rules: Callable[[ModelConfig], list[tuple]]
    infer_config: Callable[[dict, dict], dict]
    check: Callable[[dict], None] = lambda state: None  # beyond keys and shapes


FAMILIES: dict[str, Family] = {
    "cmx": Family(cmx.is_cmx, cmx.layout, lambda _: cmx.RULES, cmx.infer_config),
    "sagate": Family(
        sagate.is_sagate,
        sagate.layout,
        lambda _: sagate.RULES,
        sagate.infer_config,
        sagate.check_aliases,
    ),
    "vfusenet": Family(
        vfusenet.is_vfusenet, vfusenet.layout, vfusenet.rules, vfusenet.infer_config
    ),
}


def layout_of(config: ModelConfig) -> Layout:
    """Every key of the official state_dict of ``config``'s model, in official order."""
    family = FAMILIES.get(config.architecture)
    return family.layout(config) if family else official_layout(config)


def rules_of(config: ModelConfig) -> list[tuple]:
    """The table from the official keys of ``config``'s model to our variable paths."""
    family = FAMILIES.get(config.architecture)
    return family.rules(config) if family else segmentor_rules(config.streams)


def architecture_of(state: dict) -> str:
    """The architecture whose official checkpoint ``state`` is, from the backbone's keys
    ('asanet' unless a comparison model's keys are there)."""
    return next((name for name, f in FAMILIES.items() if f.matches(state)), "asanet")


def _describe(state: dict) -> str:
    return ", ".join(list(state)[:3]) + (", ..." if len(state) > 3 else "")


def infer_model_config(
    state: dict[str, np.ndarray], overrides: dict | None = None
) -> ml_collections.ConfigDict:
    """``config.model`` of an official mmseg checkpoint, from its keys and shapes alone.

    The architecture is told from the keys. For ASANet, depths, channels, input bands,
    classes, decoder and aux widths, the aux head's input stage, SFM on/off and CFM or
    sum are read from the weights. What no weight records (the values of
    ``pool_scales``, ``drop_path_rate``, ``dropout``, ``dtype``, and which modality a
    single-stream baseline takes) comes from ``overrides`` or the defaults. For CMX, the
    MiT sizes, bands, classes and decoder width are read (the head counts are the MiT
    variant's, see ``cmx.infer_config``). An override that contradicts the weights is an
    error, raised here or by the strict shape check.

    Raises:
      CheckpointError: the keys are not those of an official ASANet / UPerNet / CMX model.
    """
    overrides = dict(overrides or {})
    found = architecture_of(state)
    asked = overrides.get("architecture", found)
    if asked != found:
        raise CheckpointError(
            f"config.model.architecture={asked!r} contradicts the checkpoint, which is {found}'s"
        )
    if found in FAMILIES:
        return _with_overrides(FAMILIES[found].infer_config(state, overrides), overrides)
    if "decode_head.conv_seg.weight" not in state:
        if family := foreign_family(state):
            raise CheckpointError(f"not an ASANet checkpoint: it {family[0]}")
        if any(k.startswith(("backbone.stages.", "stages.", "stem.")) for k in state):
            raise CheckpointError(
                "this is a ConvNeXt (ImageNet) backbone checkpoint, not a segmentor: "
                "convert it with --kind imagenet (asanet_jax.convert.load_imagenet_backbone)"
            )
        raise CheckpointError(
            "not an official ASANet/UPerNet checkpoint: no 'decode_head.conv_seg.weight' "
            f"among its {len(state)} keys ({_describe(state)})"
        )
    if "backbone.backbone.downsample_layers.0.0.weight" in state:
        if "backbone.backbone2.downsample_layers.0.0.weight" not in state:
            raise CheckpointError(
                "has an optical stream (backbone.backbone.*) but no SAR stream "
                "(backbone.backbone2.*): not an ASANet checkpoint"
            )
        depths, channels, opt_ch = stream_arch(state, "backbone.backbone")
        _, _, sar_ch = stream_arch(state, "backbone.backbone2")
        cfg = {
            "modalities": "optical+sar",
            "optical_channels": opt_ch,
            "sar_channels": sar_ch,
            "sfm": any(k.startswith("backbone.FRMs.") for k in state),
            "fusion": "cfm" if "backbone.FFMs.0.catconv1.weight" in state else "sum",
        }
    elif "backbone.downsample_layers.0.0.weight" in state:
        depths, channels, in_ch = stream_arch(state, "backbone")
        modality = overrides.get("modalities", "optical")
        modality = LEGACY_MODALITIES.get(modality, modality)
        if modality not in ("optical", "sar"):
            raise CheckpointError(
                f"a single-stream checkpoint cannot be modalities={modality!r}: "
                "expected 'optical' or 'sar'"
            )
        overrides["modalities"] = modality
        band_field = "optical_channels" if modality == "optical" else "sar_channels"
        cfg = {"modalities": modality, band_field: in_ch, "sfm": False, "fusion": "none"}
    else:
        raise CheckpointError(
            "has a decode head but no ConvNeXt backbone under 'backbone.' or "
            "'backbone.backbone.': not an ASANet/UPerNet checkpoint with a ConvNeXt V2 backbone"
        )
    seg = state["decode_head.conv_seg.weight"]
    n_pool = count_indices(state, r"decode_head\.psp_modules\.(\d+)\.1\.conv\.weight")
    pool_scales = tuple(overrides.get("pool_scales", (1, 2, 3, 6)))
    if len(pool_scales) != n_pool:
        raise CheckpointError(
            f"the checkpoint has {n_pool} PPM branches but pool_scales={pool_scales}: "
            "give the pool scales it was trained with"
        )
    cfg.update(
        depths=depths,
        channels=channels,
        num_classes=seg.shape[0],
        decoder_channels=seg.shape[1],
        pool_scales=pool_scales,
    )
    n_aux = count_indices(state, r"auxiliary_head\.convs\.(\d+)\.conv\.weight")
    if n_aux:
        aux_in = state["auxiliary_head.convs.0.conv.weight"].shape[1]
        candidates = [i for i, c in enumerate(channels) if c == aux_in]
        if not candidates:
            raise CheckpointError(
                f"the auxiliary head takes {aux_in} channels, which no stage has ({channels})"
            )
        preferred = overrides.get("aux_in_index", 2)
        cfg.update(
            aux_channels=state["auxiliary_head.convs.0.conv.weight"].shape[0],
            aux_num_convs=n_aux,
            aux_in_index=preferred if preferred in candidates else candidates[-1],
        )
    else:
        cfg["aux_channels"] = 0
    return _with_overrides(cfg, overrides)


def _with_overrides(cfg: dict, overrides: dict) -> ml_collections.ConfigDict:
    """``cfg`` (read from the weights) completed by ``overrides``, which may add what the
    weights do not record but not contradict them."""
    inferred = dict(cfg)
    for k, v in overrides.items():
        if (
            k in inferred
            and k != "modalities"
            and tuple(np.atleast_1d(v)) != tuple(np.atleast_1d(inferred[k]))
        ):
            raise CheckpointError(
                f"config.model.{k}={v!r} contradicts the checkpoint, which has {inferred[k]!r}"
            )
    cfg.update(overrides)
    try:
        return to_config(resolve(cfg))
    except ValueError as e:
        raise CheckpointError(str(e)) from None


def check_against_layout(state: dict[str, np.ndarray], config: ModelConfig) -> None:
    """Strict: the checkpoint has exactly the official keys of ``config``, with their shapes.

    Raises:
      CheckpointError: listing unconsumed, missing and shape-mismatched keys.
    """
    expected = {k: s for k, s, _ in layout_of(config)}
    check_fit(expected, {k: np.shape(v) for k, v in state.items()}, all_required=True)


def load_state_dict(
    state: dict[str, np.ndarray],
    model_config: ml_collections.ConfigDict | dict | None = None,
    *,
    allow_nonfinite: bool = False,
) -> tuple[nnx.Module, ml_collections.ConfigDict]:
    """``load_torch_checkpoint`` for a state_dict already in memory."""
    overrides = (
        model_config.to_dict()
        if isinstance(model_config, ml_collections.ConfigDict)
        else dict(model_config or {})
    )
    config = infer_model_config(state, overrides)
    model_config = resolve(config)
    check_against_layout(state, model_config)
    if family := FAMILIES.get(model_config.architecture):
        family.check(state)
    if not allow_nonfinite:
        check_finite(state)
    values = to_flax_values(state, rules_of(model_config))
    return model_from_values(model_config, values), config


def load_torch_checkpoint(
    path,
    model_config: ml_collections.ConfigDict | dict | None = None,
    *,
    allow_nonfinite: bool = False,
) -> tuple[nnx.Module, ml_collections.ConfigDict]:
    """Model and ``config.model`` from an official mmseg checkpoint (.pth or .safetensors).

    The architecture is inferred from the keys and shapes; ``model_config`` may add
    what the weights do not record (see ``infer_model_config``). Loading is strict:
    every tensor consumed, every model variable filled, every shape equal, every value
    finite (unless ``allow_nonfinite``). The model is returned in eval mode.

    Raises:
      CheckpointError: with a one-line reason, or the lists of unconsumed, missing
        and mismatched keys.
    """
    state = read_state_dict(path)  # its errors already name the file
    try:
        return load_state_dict(state, model_config, allow_nonfinite=allow_nonfinite)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None


def export_state_dict(model: nnx.Module) -> collections.OrderedDict[str, np.ndarray]:
    """The official mmseg state_dict of our model (numpy), in the official key order.

    The inverse of ``load_torch_checkpoint``: loading it back, or into the official
    PyTorch model with ``strict=True``, gives the same weights bit for bit.
    """
    rules = rules_of(model.config)
    ours = {k: np.asarray(v.get_value()) for k, v in flat_weights(model).items()}
    unwritten = set(ours)
    out = collections.OrderedDict()
    for key, shape, dtype in layout_of(model.config):
        mapped = map_key(key, rules)
        # Official aliases (SA-Gate's shared downsample) write one variable twice.
        value = mapped.leaf.to_torch(ours[mapped.flax_path])
        unwritten.discard(mapped.flax_path)
        assert value.shape == tuple(shape) and value.dtype == np.dtype(dtype), (key, value.shape)
        out[key] = value
    if unwritten:
        raise AssertionError(f"model variables with no official key: {sorted(unwritten)}")
    return out
