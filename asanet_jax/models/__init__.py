"""Flax NNX modules of ASANet and the paper's comparison models, behind one interface
(``segmentor.build``)."""

from asanet_jax.models import tracing
from asanet_jax.models.asanet import ASANet
from asanet_jax.models.cmx import CMX
from asanet_jax.models.config import (
    ARCHITECTURES,
    ASANetConfig,
    CMXConfig,
    ModelConfig,
    SAGateConfig,
    VFuseNetConfig,
    default_model_config,
    resolve,
    to_config,
)
from asanet_jax.models.convnext_v2 import VARIANTS, ConvNeXtV2
from asanet_jax.models.mit import MIT_VARIANTS, MiT
from asanet_jax.models.sagate import SAGateNet
from asanet_jax.models.segmentor import MODULES, build, build_with_weights, count_params
from asanet_jax.models.vfusenet import VFuseNet

# Model construction under a trace in linear, not quadratic, time (see tracing.py).
tracing.install()

__all__ = [
    "ARCHITECTURES",
    "CMX",
    "MIT_VARIANTS",
    "MODULES",
    "VARIANTS",
    "ASANet",
    "ASANetConfig",
    "CMXConfig",
    "ConvNeXtV2",
    "MiT",
    "ModelConfig",
    "SAGateConfig",
    "SAGateNet",
    "VFuseNet",
    "VFuseNetConfig",
    "build",
    "build_with_weights",
    "count_params",
    "default_model_config",
    "resolve",
    "to_config",
]
