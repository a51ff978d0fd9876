"""Flax NNX modules of ASANet and its parts."""

from asanet_jax.models.asanet import ASANet, count_params
from asanet_jax.models.config import ModelConfig, default_model_config, resolve, to_config
from asanet_jax.models.convnext_v2 import VARIANTS, ConvNeXtV2

__all__ = [
    "VARIANTS",
    "ASANet",
    "ConvNeXtV2",
    "ModelConfig",
    "count_params",
    "default_model_config",
    "resolve",
    "to_config",
]
