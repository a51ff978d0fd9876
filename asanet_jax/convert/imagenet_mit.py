"""ImageNet MiT weights as the initialisation of both CMX streams (the official start).

Two formats are read and renamed to SegFormer's own names first:

- NVlabs SegFormer's release (``mit_b2.pth``: ``patch_embed{i}``, ``block{i}.{j}`` with
  ``attn.q`` and ``attn.kv``, ``norm{i}``, and a classifier ``head``), the format the
  official ``RGBXTransformer.init_weights`` copies into both streams;
- mmseg's MiT (what mmseg's ``mit2mmseg.py`` writes: ``layers.{i}.0.projection``,
  ``layers.{i}.1.{j}.attn.attn.in_proj_weight`` holding q then kv, ``ffn.layers.{0,1,4}``
  with 1x1-conv weights, ``layers.{i}.2``), optionally under ``backbone.``.

The classifier keys are reported and skipped, as the official code drops them; any other
key that does not fit is an error. The FRMs, FFMs and decoder stay at their
initialisation. The head counts are in no weight's shape: they are the model's.
"""

from __future__ import annotations

import re

import numpy as np

from asanet_jax import weights
from asanet_jax.convert.cmx import mit_arch, mit_rules, mit_stream_layout
from asanet_jax.convert.inspection import unknown_keys_error
from asanet_jax.convert.mapping import to_flax_values
from asanet_jax.weights import CheckpointError, check_finite

_MMSEG_RENAMES = [
    (r"layers\.(\d+)\.0\.projection\.(weight|bias)", "patch_embed{s}.proj.{1}"),
    (r"layers\.(\d+)\.0\.norm\.(weight|bias)", "patch_embed{s}.norm.{1}"),
    (r"layers\.(\d+)\.1\.(\d+)\.(norm1|norm2)\.(weight|bias)", "block{s}.{1}.{2}.{3}"),
    (r"layers\.(\d+)\.1\.(\d+)\.attn\.attn\.out_proj\.(weight|bias)", "block{s}.{1}.attn.proj.{2}"),
    (r"layers\.(\d+)\.1\.(\d+)\.attn\.(sr|norm)\.(weight|bias)", "block{s}.{1}.attn.{2}.{3}"),
    (r"layers\.(\d+)\.1\.(\d+)\.ffn\.layers\.0\.(weight|bias)", "block{s}.{1}.mlp.fc1.{2}"),
    (
        r"layers\.(\d+)\.1\.(\d+)\.ffn\.layers\.1\.(weight|bias)",
        "block{s}.{1}.mlp.dwconv.dwconv.{2}",
    ),
    (r"layers\.(\d+)\.1\.(\d+)\.ffn\.layers\.4\.(weight|bias)", "block{s}.{1}.mlp.fc2.{2}"),
    (r"layers\.(\d+)\.2\.(weight|bias)", "norm{s}.{1}"),
]
_IN_PROJ = r"layers\.(\d+)\.1\.(\d+)\.attn\.attn\.in_proj_(weight|bias)"


def is_mit(state: dict) -> bool:
    """Whether a state_dict is an ImageNet MiT in either format (not a segmentor)."""
    try:
        detect_format(_without_backbone_prefix(state))
    except CheckpointError:
        return False
    return True


def _without_backbone_prefix(state: dict) -> dict:
    if any(k.startswith("backbone.") for k in state) and "decode_head.conv_seg.weight" not in state:
        return {k.removeprefix("backbone."): v for k, v in state.items()}
    return state


def detect_format(state: dict) -> str:
    """'nvlabs' or 'mmseg', from the first patch embedding's key.

    Raises:
      CheckpointError: a segmentor, or no MiT in either format (one line).
    """
    if any(k.startswith("decode_head.") for k in state):
        raise CheckpointError(
            "this is a segmentor checkpoint, not an ImageNet backbone: use --kind official"
        )
    if "patch_embed1.proj.weight" in state:
        return "nvlabs"
    if "layers.0.0.projection.weight" in state:
        return "mmseg"
    raise CheckpointError(
        "no MiT patch embedding found: not an ImageNet MiT checkpoint in NVlabs SegFormer "
        "('patch_embed1.proj.weight') or mmseg ('layers.0.0.projection.weight') format "
        f"(first of its {len(state)} keys: {', '.join(list(state)[:3])})"
    )


def _linear_weight(key: str, value: np.ndarray) -> np.ndarray:
    """mmseg stores the Mix-FFN's linear weights as 1x1 convolutions, (out, in, 1, 1)."""
    shape = tuple(np.shape(value))
    if len(shape) == 4 and shape[2:] != (1, 1):
        raise CheckpointError(f"{key}: shape {shape}: expected a 1x1 convolution (out, in, 1, 1)")
    return np.reshape(value, shape[:2]) if len(shape) == 4 else value


def to_nvlabs_names(state: dict[str, np.ndarray]) -> tuple[dict, list[str], str]:
    """(backbone tensors under NVlabs SegFormer's names and shapes, skipped classifier keys,
    format).

    Raises:
      CheckpointError: see ``detect_format``; keys of no MiT backbone or classifier.
    """
    state = _without_backbone_prefix(state)
    fmt = detect_format(state)
    out, skipped, unknown = {}, [], []
    for key, value in state.items():
        if re.fullmatch(r"head\.(weight|bias)", key):
            skipped.append(key)
        elif fmt == "nvlabs":
            out[key] = value
        elif m := re.fullmatch(_IN_PROJ, key):
            # q then kv, joined: split where q's C rows end.
            c = np.shape(value)[0] // 3
            prefix, leaf = f"block{int(m[1]) + 1}.{m[2]}.attn", m[3]
            out[f"{prefix}.q.{leaf}"] = value[:c]
            out[f"{prefix}.kv.{leaf}"] = value[c:]
        else:
            for pattern, template in _MMSEG_RENAMES:
                if m := re.fullmatch(pattern, key):
                    new = template.format(*m.groups(), s=int(m[1]) + 1)
                    if re.fullmatch(r"block\d\.\d+\.mlp\.fc[12]\.weight", new):
                        value = _linear_weight(key, value)
                    out[new] = value
                    break
            else:
                unknown.append(key)
    if unknown:
        raise unknown_keys_error(fmt, "MiT", unknown)
    return out, skipped, fmt


def init_from_imagenet(model, state: dict[str, np.ndarray], *, allow_nonfinite: bool = False):
    """Initialise both MiT streams of a CMX ``model`` in place from an ImageNet MiT
    state_dict already in memory.

    Returns:
      A report: ``format``, ``loaded`` (tensors per stream), ``streams``, ``skipped``
      (classifier keys) and ``left_at_init`` (backbone keys the checkpoint lacks: none).
    Raises:
      CheckpointError: wrong format or architecture, unknown keys, or a MiT of other
        sizes than the model's (naming the keys).
    """
    backbone, skipped, fmt = to_nvlabs_names(state)
    if not allow_nonfinite:
        check_finite(backbone)
    config = model.config
    bands = {"optical": config.optical_channels, "sar": config.sar_channels}
    given = {k: np.shape(v) for k, v in backbone.items()}
    values = {}
    for stream in config.streams:
        layout = {k: s for k, s, _ in mit_stream_layout(config, bands[stream], "")}
        report = weights.compare(layout, given)
        if any(report):
            found = mit_arch(backbone, "") if "patch_embed1.proj.weight" in backbone else {}
            sizes = ", ".join(f"{k} {v}" for k, v in found.items() if k != "bands")
            raise CheckpointError(
                f"this MiT ({sizes or 'sizes unknown'}) does not fit the {stream} stream of "
                f"{config.describe()}:\n" + weights.mismatch_report(*report)
            )
        values.update(to_flax_values(backbone, mit_rules("", stream)))
    weights.set_weights(model, values)
    return {
        "format": fmt,
        "loaded": len(backbone),
        "streams": list(config.streams),
        "skipped": skipped,
        "left_at_init": [],
    }


def imagenet_arch(state: dict[str, np.ndarray]) -> dict:
    """``config.model`` size fields of an ImageNet MiT state_dict, from its shapes."""
    backbone, _, _ = to_nvlabs_names(state)
    found = mit_arch(backbone, "")
    return {k: found[k] for k in ("embed_dims", "depths", "sr_ratios", "mlp_ratio")}
