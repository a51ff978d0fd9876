"""ImageNet CNN weights as the start of SA-Gate's and vFuseNet's streams, loaded exactly as
the official code loads them: partially, by name, and silently skipping what does not fit.

- **SA-Gate** (``DualResNet.init_weights``): the file's every key is kept under its own
  name and, when it contains ``conv1``/``conv2``/``conv3``/``bn1``/``bn2``/``bn3``/
  ``downsample``, also under its ``hha_`` twin, so both streams get the same tensors; the
  result is loaded with ``strict=False``: a name the model lacks is unused, a tensor whose
  shape differs is skipped, a model tensor the file lacks keeps its initialisation. Two
  layouts are found in practice:

  - open-mmlab's ``resnet101_v1c-e67eebb6.pth``, which the official config names (mmseg
    ``ResNetV1c``: a ``stem.*`` of widths 32, 32, 64 and a ``fc`` classifier). Its stem
    names match nothing and its first-layer 1x1 convs expect 64 input channels where the
    deep stem of width 64 gives 128, so the official model keeps both stems, both
    ``layer1.0.conv1`` and the shared ``layer1.0.downsample.0`` at their initialisation
    (while the BatchNorms after them do load), and every SA-Gate;
  - TorchSeg's ``resnet101_v1c.pth`` (the deep stem ``conv1.{0,1,3,4,6}`` of widths 64,
    64, 128 and ``bn1``), which fits everything but the SA-Gates.

- **vFuseNet** (mmengine's ``Pretrained`` with ``prefix='backbone.'`` on the inner VGG,
  built twice): the file's ``backbone.*`` keys, prefix removed, go by name into both VGG
  streams with ``strict=False``; mmcls' ``vgg16_bn`` classifier is unused, and the fusion
  convs, decoders and heads keep their initialisation.

The report says what was loaded, what was left at initialisation and why, and which file
keys were unused.
"""

from __future__ import annotations

import numpy as np

from asanet_jax import weights
from asanet_jax.convert import sagate, vfusenet
from asanet_jax.convert.mapping import map_key
from asanet_jax.weights import CheckpointError, check_finite

# The substrings for which DualResNet.init_weights also writes the hha_ twin, in its order.
_TWINNED = ("conv1", "conv2", "conv3", "bn1", "bn2", "bn3", "downsample")


def is_resnet(state: dict) -> bool:
    """A ResNet classifier (mmseg ResNetV1c or TorchSeg), not a segmentor."""
    return "layer1.0.conv1.weight" in state and not any(k.startswith("decode_head.") for k in state)


def is_vgg(state: dict) -> bool:
    """An mmcls / mmpretrain VGG classifier (``backbone.features.*``)."""
    return (
        "backbone.features.0.conv.weight" in state
        and "backbone.fuse_convs.0.conv.weight" not in state
    )


def resnet_format(state: dict) -> str:
    if "stem.0.weight" in state:
        return "open-mmlab ResNetV1c (stem widths 32, 32, 64)"
    if "conv1.0.weight" in state:
        return "TorchSeg ResNet (deep stem widths 64, 64, 128)"
    return "ResNet"


def _official_dual_resnet_names(state: dict) -> dict[str, np.ndarray]:
    """What ``DualResNet.init_weights`` hands to its strict=False load."""
    out = {}
    for key, value in state.items():
        out[key.replace(".bn.", ".")] = value
        for part in _TWINNED:
            if part in key:
                out[key] = value
                out[key.replace(part, f"hha_{part}")] = value
    return out


def _load_by_name(model, layout, offered: dict, rules, prefix: str) -> dict:
    """strict=False: every layout key present in ``offered`` with its shape is set (through
    our table), the others are listed. Returns the report's lists."""
    values, loaded, missing, mismatched = {}, [], [], []
    for key, shape, _ in layout:
        name = key.removeprefix(prefix)
        if name not in offered:
            missing.append(name)
            continue
        if tuple(np.shape(offered[name])) != tuple(shape):
            mismatched.append(
                f"{name}: file {tuple(np.shape(offered[name]))}, model {tuple(shape)}"
            )
            continue
        mapped = map_key(key, rules)
        values[mapped.flax_path] = mapped.leaf.to_flax(np.asarray(offered[name]))
        loaded.append(name)
    weights.set_weights(model, values)
    return {"loaded_keys": loaded, "left_at_init": missing, "shape_mismatch_skipped": mismatched}


def _report(fmt: str, parts: dict, unused: list[str]) -> dict:
    """The loaders' common report: ``loaded`` (a count), ``skipped`` (file keys unused),
    ``left_at_init``, plus the loaded names and the shape mismatches skipped."""
    return {
        "format": fmt,
        "loaded": len(parts["loaded_keys"]),
        "streams": ["optical", "sar"],
        "skipped": unused,
        **parts,
    }


def init_sagate(model, state: dict, *, allow_nonfinite: bool = False) -> dict:
    """Both SA-Gate streams from an ImageNet ResNet, as the official init loads it."""
    if not is_resnet(state):
        raise CheckpointError(
            "not an ImageNet ResNet (no 'layer1.0.conv1.weight'): SA-Gate's streams start from "
            "open-mmlab's resnet101_v1c or TorchSeg's resnet101_v1c.pth"
        )
    if not allow_nonfinite:
        check_finite(state)
    offered = _official_dual_resnet_names(state)
    layout = [row for row in sagate.layout(model.config) if row[0].startswith("backbone.")]
    parts = _load_by_name(model, layout, offered, sagate.RULES, "backbone.")
    used = set(parts["loaded_keys"])
    unused = [k for k in state if not ({k, k.replace(".bn.", ".")} | _twins(k)) & used]
    return _report(resnet_format(state), parts, unused)


def _twins(key: str) -> set[str]:
    return {key.replace(part, f"hha_{part}") for part in _TWINNED if part in key}


def init_vfusenet(model, state: dict, *, allow_nonfinite: bool = False) -> dict:
    """Both vFuseNet streams from an mmcls / mmpretrain VGG-BN, as the official init loads it."""
    if not is_vgg(state):
        raise CheckpointError(
            "not an mmcls / mmpretrain VGG (no 'backbone.features.0.conv.weight'): vFuseNet's "
            "streams start from vgg16_bn_batch256_imagenet_20210208-7e55cd29.pth"
        )
    if not allow_nonfinite:
        check_finite(state)
    inner = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    layout = vfusenet.layout(model.config)
    rules = vfusenet.rules(model.config)
    parts: dict = {"loaded_keys": [], "left_at_init": [], "shape_mismatch_skipped": []}
    for module, _ in vfusenet.STREAMS:
        prefix = f"backbone.{module}."
        stream = [row for row in layout if row[0].startswith(prefix)]
        for k, v in _load_by_name(model, stream, inner, rules, prefix).items():
            parts[k] += [f"{module}.{name}" for name in v]
    used = {name.split(".", 1)[1] for name in parts["loaded_keys"]}
    unused = [f"backbone.{k}" for k in inner if k not in used]
    return _report("mmcls / mmpretrain VGG-BN", parts, unused)
