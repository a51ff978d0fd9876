"""Weights from and to the official PyTorch code."""

from asanet_jax.convert.imagenet import load_imagenet_backbone
from asanet_jax.convert.mapping import MAPPING_VERSION
from asanet_jax.convert.official import (
    export_state_dict,
    infer_model_config,
    load_state_dict,
    load_torch_checkpoint,
)
from asanet_jax.convert.state_dicts import read_state_dict
from asanet_jax.weights import CheckpointError

__all__ = [
    "MAPPING_VERSION",
    "CheckpointError",
    "export_state_dict",
    "infer_model_config",
    "load_imagenet_backbone",
    "load_state_dict",
    "load_torch_checkpoint",
    "read_state_dict",
]
