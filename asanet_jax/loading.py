"""``asanet_jax.load(path)``: the one way to get a model from disk.

It takes a model directory (``model.json`` + ``weights/``, as training and the converter
write) or an official checkpoint (.pth/.pt/.bin or .safetensors, converted on the fly by
``convert.load_torch_checkpoint``). ImageNet backbones initialise a model instead
(``convert.imagenet.init_from``).
"""

from __future__ import annotations

import pathlib

import ml_collections
from flax import nnx

from asanet_jax.weights import CheckpointError


def load(
    path,
    model_config: ml_collections.ConfigDict | dict | None = None,
    *,
    allow_nonfinite: bool = False,
) -> tuple[nnx.Module, ml_collections.ConfigDict, dict]:
    """(model in eval mode, config.model, metadata) from a model directory or an official
    checkpoint file. For a file, metadata holds its path.

    ``model_config`` sets fields the weights do not fix (``dtype``, ``kernels``; for a
    single-stream official checkpoint, ``modalities``). Weights holding NaN or Inf are
    refused unless ``allow_nonfinite``.

    Raises:
      CheckpointError: no such file or folder, or weights that do not fit (one-line
        reason first).
    """
    from asanet_jax import checkpointing

    path = pathlib.Path(path)
    if path.is_dir():
        return checkpointing.load_model_dir(path, model_config, allow_nonfinite=allow_nonfinite)
    if not path.exists():
        raise CheckpointError(
            f"{path}: no such checkpoint (a model directory, or an official .pth/.safetensors)"
        )
    from asanet_jax.convert import load_torch_checkpoint

    model, config = load_torch_checkpoint(path, model_config, allow_nonfinite=allow_nonfinite)
    return model, config, {"source": {"path": str(path), "kind": "official"}}
