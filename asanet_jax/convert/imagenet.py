"""ImageNet ConvNeXt V2 weights as the initialisation of every stream (the paper's start).

Three formats are read and renamed to mmpretrain's backbone names first:

- mmpretrain (``backbone.downsample_layers...``, ``backbone.norm3``, ``head.fc``);
- the FAIR release (``downsample_layers``, ``stages.i.j.{dwconv,pwconv1,pwconv2}``,
  GRN shaped (1, 1, 1, C), final ``norm``, ``head``), renamed as mmpretrain's own
  ``convnext_to_mmpretrain`` does (final ``norm`` -> ``norm3``);
- timm (``stem``, ``stages.i.downsample``, ``stages.i.blocks.j.{conv_dw,mlp.fc1,
  mlp.grn,mlp.fc2}``, ``head.norm`` -> ``norm3``, ``head.fc``). timm builds its small
  sizes (atto, femto, pico, nano) with ``conv_mlp=True``: their ``mlp.fc1/fc2`` weights
  are 1x1 convolutions, (out, in, 1, 1), the same map as the (out, in) linear weights
  of the other sizes, and are reshaped to those.

Classifier keys are reported and skipped; any other key that does not fit is an
error. The stage norms the classifier never had (``norm0..2``) stay at their
initialisation, as in the official code, and are reported. A checkpoint of another
model family (ConvNeXt V1, ResNet, ViT, Swin, Hugging Face transformers' layout) is
refused with a first line that says what it looks like.
"""

from __future__ import annotations

import pathlib
import re

import numpy as np

from asanet_jax import checkpointing, weights
from asanet_jax.convert import imagenet_cnn, imagenet_mit
from asanet_jax.convert.inspection import foreign_family, stream_arch, unknown_keys_error
from asanet_jax.convert.layout import convnext_layout
from asanet_jax.convert.mapping import stream_rules, to_flax_values
from asanet_jax.convert.state_dicts import read_state_dict
from asanet_jax.weights import CheckpointError, check_finite

_FAIR_RENAMES = [
    (r"stages\.(\d+)\.(\d+)\.dwconv\.(.+)", r"stages.\1.\2.depthwise_conv.\3"),
    (r"stages\.(\d+)\.(\d+)\.pwconv(1|2)\.(.+)", r"stages.\1.\2.pointwise_conv\3.\4"),
    (r"stages\.(\d+)\.(\d+)\.(norm|grn)\.(.+)", r"stages.\1.\2.\3.\4"),
    (r"downsample_layers\.(\d+)\.(\d+)\.(.+)", r"downsample_layers.\1.\2.\3"),
    (r"norm\.(weight|bias)", r"norm3.\1"),
]
_TIMM_RENAMES = [
    (r"stem\.(0|1)\.(.+)", r"downsample_layers.0.\1.\2"),
    (r"stages\.(\d+)\.downsample\.(0|1)\.(.+)", r"downsample_layers.\1.\2.\3"),
    (r"stages\.(\d+)\.blocks\.(\d+)\.conv_dw\.(.+)", r"stages.\1.\2.depthwise_conv.\3"),
    (r"stages\.(\d+)\.blocks\.(\d+)\.norm\.(.+)", r"stages.\1.\2.norm.\3"),
    (r"stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc(1|2)\.(.+)", r"stages.\1.\2.pointwise_conv\3.\4"),
    (r"stages\.(\d+)\.blocks\.(\d+)\.mlp\.grn\.weight", r"stages.\1.\2.grn.gamma"),
    (r"stages\.(\d+)\.blocks\.(\d+)\.mlp\.grn\.bias", r"stages.\1.\2.grn.beta"),
    (r"head\.norm\.(weight|bias)", r"norm3.\1"),
]
_MMPRETRAIN_RENAMES = [(r"backbone\.(.+)", r"\1")]
_HEAD = {
    "mmpretrain": r"head\..+",
    "fair": r"head\.(weight|bias)",
    "timm": r"head\.fc\.(weight|bias)",
}


def detect_format(state: dict) -> str:
    """'mmpretrain', 'fair' or 'timm', from the stem's key.

    Raises:
      CheckpointError: a segmentor, a checkpoint of another model family or an unknown
        layout; the first line says which, in one line.
    """
    if "backbone.downsample_layers.0.0.weight" in state and any(
        k.startswith("decode_head.") for k in state
    ):
        raise CheckpointError(
            "this is a segmentor checkpoint, not an ImageNet backbone: use --kind official"
        )
    if "backbone.backbone.downsample_layers.0.0.weight" in state:
        raise CheckpointError(
            "this is an ASANet segmentor checkpoint, not an ImageNet backbone: use --kind official"
        )
    if family := foreign_family(state):
        reason, key = family
        raise CheckpointError(
            f"{reason}\n"
            f"  for example {key} {tuple(np.shape(state[key]))}, one of its {len(state)} keys"
        )
    if "backbone.downsample_layers.0.0.weight" in state:
        return "mmpretrain"
    if "downsample_layers.0.0.weight" in state and "stages.0.0.dwconv.weight" in state:
        return "fair"
    if "stem.0.weight" in state and "stages.0.blocks.0.conv_dw.weight" in state:
        return "timm"
    raise CheckpointError(
        "no ConvNeXt V2 stem or stage keys found: not a ConvNeXt V2 ImageNet checkpoint in "
        "mmpretrain ('backbone.downsample_layers.0.0.weight'), FAIR "
        "('stages.0.0.dwconv.weight') or timm ('stages.0.blocks.0.conv_dw.weight') format "
        f"(first of its {len(state)} keys: {', '.join(list(state)[:3])})"
    )


def _pointwise_as_linear(key: str, value: np.ndarray) -> np.ndarray:
    """A block's MLP weight as a linear layer's, (out, in).

    timm's ``conv_mlp=True`` sizes store it as a 1x1 convolution, (out, in, 1, 1): the
    same map, so only the two unit dims go. Any other 4-D kernel is not pointwise.
    """
    shape = tuple(np.shape(value))
    if len(shape) != 4:
        return value  # (out, in), or a wrong shape the layout check reports
    if shape[2:] != (1, 1):
        raise CheckpointError(
            f"{key}: shape {shape}: expected a pointwise MLP weight, (out, in) or a 1x1 "
            "convolution (out, in, 1, 1)"
        )
    return value.reshape(shape[:2])


def _grn_as_vector(key: str, value: np.ndarray) -> np.ndarray:
    """A GRN gamma/beta as (C,): FAIR stores (1, 1, 1, C) (channels-last broadcast), a
    channels-first GRN would be (1, C, 1, 1); timm 1.0 and mmpretrain store (C,)."""
    shape = tuple(np.shape(value))
    if sum(d != 1 for d in shape) > 1:
        raise CheckpointError(
            f"{key}: shape {shape}: expected one GRN value per channel, (C,), (1, 1, 1, C) "
            "or (1, C, 1, 1)"
        )
    return value.reshape(-1)


def to_mmpretrain_names(state: dict[str, np.ndarray]) -> tuple[dict, list[str], str]:
    """(backbone tensors under mmpretrain's relative names and shapes, skipped head keys,
    format). MLP weights come out (out, in) and GRN gamma/beta (C,) whatever the format.

    Raises:
      CheckpointError: see ``detect_format``; keys of no ConvNeXt V2 backbone or
        classifier; an MLP or GRN tensor of a shape no format stores.
    """
    fmt = detect_format(state)
    renames = {"mmpretrain": _MMPRETRAIN_RENAMES, "fair": _FAIR_RENAMES, "timm": _TIMM_RENAMES}
    out, skipped, unknown = {}, [], []
    for key, value in state.items():
        if re.fullmatch(_HEAD[fmt], key):
            skipped.append(key)
            continue
        for pattern, template in renames[fmt]:
            if m := re.fullmatch(pattern, key):
                new = m.expand(template)
                if re.fullmatch(r"stages\.\d+\.\d+\.pointwise_conv[12]\.weight", new):
                    value = _pointwise_as_linear(key, value)
                elif re.fullmatch(r"stages\.\d+\.\d+\.grn\.(gamma|beta)", new):
                    value = _grn_as_vector(key, value)
                out[new] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise unknown_keys_error(fmt, "ConvNeXt V2", unknown)
    return out, skipped, fmt


def load_imagenet_backbone(model, path) -> dict:
    """Initialise every stream of ``model`` in place from an ImageNet ConvNeXt V2 checkpoint.

    Returns:
      A report: ``format``, ``loaded`` (tensors per stream), ``skipped`` (classifier
      keys) and ``left_at_init`` (backbone keys the checkpoint lacks, norm0..2).
    Raises:
      CheckpointError: wrong architecture, unknown keys, or a missing backbone tensor.
    """
    state = read_state_dict(path)  # its errors already name the file
    try:
        return init_from_imagenet(model, state)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None


def init_from_imagenet(
    model, state: dict[str, np.ndarray], *, allow_nonfinite: bool = False
) -> dict:
    """``load_imagenet_backbone`` for a state_dict already in memory: ConvNeXt V2 for
    ASANet, MiT for CMX (``imagenet_mit``), ResNet for SA-Gate and VGG-BN for vFuseNet
    (``imagenet_cnn``, loaded partially by name as the official code loads them)."""
    if model.config.architecture == "cmx":
        return imagenet_mit.init_from_imagenet(model, state, allow_nonfinite=allow_nonfinite)
    if model.config.architecture == "sagate":
        return imagenet_cnn.init_sagate(model, state, allow_nonfinite=allow_nonfinite)
    if model.config.architecture == "vfusenet":
        return imagenet_cnn.init_vfusenet(model, state, allow_nonfinite=allow_nonfinite)
    backbone, skipped, fmt = to_mmpretrain_names(state)
    if not allow_nonfinite:
        check_finite(backbone)
    prefixed = {f"x.{k}": v for k, v in backbone.items()}
    config = model.config
    n = len(config.depths)
    may_lack = {f"norm{i}.{p}" for i in range(n - 1) for p in ("weight", "bias")}
    bands = {"optical": config.optical_channels, "sar": config.sar_channels}
    given = {k: np.shape(v) for k, v in backbone.items()}
    values, left = {}, []
    for stream in config.streams:
        layout = {k[2:]: s for k, s, _ in convnext_layout("x", config, bands[stream])}
        unconsumed, missing, mismatched = weights.compare(layout, given)
        missing = [k for k in missing if k not in may_lack]
        if unconsumed or missing or mismatched:
            raise CheckpointError(
                f"does not fit the {stream} stream ({config.depths}, {config.channels}, "
                f"{bands[stream]} input bands):\n"
                + weights.mismatch_report(unconsumed, missing, mismatched)
            )
        left += [f"{stream}.{k}" for k in sorted(set(layout) - set(backbone))]
        values.update(to_flax_values(prefixed, stream_rules("x", stream)))
    weights.set_weights(model, values)
    return {
        "format": fmt,
        "loaded": len(backbone),
        "streams": list(config.streams),
        "skipped": skipped,
        "left_at_init": left,
    }


def init_from(model, path, log=print) -> None:
    """Initialise every backbone stream of `model` in place from ImageNet weights: a raw
    checkpoint (ASANet: ConvNeXt V2 in mmpretrain, FAIR or timm format; CMX: MiT in NVlabs
    SegFormer or mmseg format; .pth/.safetensors) or a model directory written by
    ``convert_torch_weights.py --kind imagenet``.

    Raises:
      CheckpointError: the weights do not fit the model's streams (naming the keys).
    """
    path = pathlib.Path(path)
    if not path.is_dir():
        report = load_imagenet_backbone(model, path)
        log(
            f"initialised {', '.join(report['streams'])} stream(s) from {path}: "
            f"{report['format']}, {report['loaded']} tensors; skipped {len(report['skipped'])} "
            f"unused keys; left at initialisation: {len(report['left_at_init'])}"
            + (
                f" (shapes that do not fit, skipped as the official code does: "
                f"{report['shape_mismatch_skipped']})"
                if report.get("shape_mismatch_skipped")
                else ""
            )
        )
        return
    source, _, _ = checkpointing.load_model_dir(path)
    streams = tuple(f"{s}." for s in model.config.streams)
    values = {
        k: np.asarray(v[...])
        for k, v in weights.flat_weights(source).items()
        if k.startswith(streams)
    }
    if not values:
        raise CheckpointError(f"{path}: holds no backbone weights for streams {streams}")
    try:
        weights.set_weights(model, values)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: backbone does not fit config.model: {e}") from None
    log(f"initialised {len(values)} backbone tensors from {path}")


def imagenet_arch(state: dict[str, np.ndarray]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(depths, channels) of an ImageNet ConvNeXt V2 state_dict, from its shapes."""
    backbone, _, _ = to_mmpretrain_names(state)
    depths, channels, _ = stream_arch({f"x.{k}": v for k, v in backbone.items()}, "x")
    return depths, channels
