"""Segmentation heads (mmseg ``UPerHead`` with PPM, and ``FCNHead``), NHWC.

Submodule names follow mmseg's, so the converter's table stays a rename.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from asanet_jax.models import torch_ops
from asanet_jax.models.kernels import AUTO, Kernels
from asanet_jax.models.layers import ConvModule, conv

F32 = jnp.float32


class UPerHead(nnx.Module):
    """UPerNet: PPM on the last map, FPN top-down over the others.

    Takes a list of (B, H_i, W_i, C_i) maps, finest first; returns
    (B, H_0, W_0, num_classes) logits at the finest map's size.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        channels: int,
        num_classes: int,
        *,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
        dtype=F32,
        kernels: Kernels = AUTO,
        rngs: nnx.Rngs,
    ):
        self.pool_scales = tuple(pool_scales)
        last = in_channels[-1]
        opts = dict(dtype=dtype, kernels=kernels, rngs=rngs)
        # mmseg's psp_modules[k] is Sequential(AdaptiveAvgPool2d, ConvModule); the
        # pool has no weights, so only the ConvModule is kept here.
        self.psp_modules = nnx.List([ConvModule(last, channels, 1, **opts) for _ in pool_scales])
        self.bottleneck = ConvModule(
            last + len(pool_scales) * channels, channels, 3, padding=1, **opts
        )
        self.lateral_convs = nnx.List(
            [ConvModule(c, channels, 1, **opts) for c in in_channels[:-1]]
        )
        self.fpn_convs = nnx.List(
            [ConvModule(channels, channels, 3, padding=1, **opts) for _ in in_channels[:-1]]
        )
        self.fpn_bottleneck = ConvModule(
            len(in_channels) * channels, channels, 3, padding=1, **opts
        )
        self.dropout = torch_ops.channel_dropout(dropout, rngs=rngs)
        self.conv_seg = conv(channels, num_classes, 1, dtype=dtype, rngs=rngs)

    def psp_forward(self, x: jax.Array) -> jax.Array:
        size = x.shape[1:3]
        outs = [x]
        for scale, module in zip(self.pool_scales, self.psp_modules, strict=True):
            pooled = module(torch_ops.adaptive_avg_pool(x, scale))
            outs.append(torch_ops.resize_bilinear(pooled, size))
        return self.bottleneck(jnp.concatenate(outs, axis=-1))

    def features(self, inputs: Sequence[jax.Array]) -> jax.Array:
        """The fused map before dropout and ``conv_seg``: (B, H_0, W_0, channels)."""
        laterals = [m(x) for m, x in zip(self.lateral_convs, inputs[:-1], strict=True)]
        laterals.append(self.psp_forward(inputs[-1]))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + torch_ops.resize_bilinear(
                laterals[i], laterals[i - 1].shape[1:3]
            )
        outs = [m(x) for m, x in zip(self.fpn_convs, laterals[:-1], strict=True)]
        outs.append(laterals[-1])
        size = outs[0].shape[1:3]
        outs = [outs[0]] + [torch_ops.resize_bilinear(x, size) for x in outs[1:]]
        return self.fpn_bottleneck(jnp.concatenate(outs, axis=-1))

    def __call__(self, inputs: Sequence[jax.Array]) -> jax.Array:
        return self.conv_seg(self.dropout(self.features(inputs)))


class FCNHead(nnx.Module):
    """mmseg ``FCNHead`` (``concat_input=False``): 3x3 ConvModules, dropout, 1x1 conv.

    (B, H, W, in_channels) -> (B, H, W, num_classes).
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_classes: int,
        *,
        num_convs: int = 1,
        dropout: float = 0.1,
        dtype=F32,
        kernels: Kernels = AUTO,
        rngs: nnx.Rngs,
    ):
        widths = [in_channels] + [channels] * num_convs
        self.convs = nnx.List(
            [
                ConvModule(a, b, 3, padding=1, dtype=dtype, kernels=kernels, rngs=rngs)
                for a, b in itertools.pairwise(widths)
            ]
        )
        self.dropout = torch_ops.channel_dropout(dropout, rngs=rngs)
        self.conv_seg = conv(channels, num_classes, 1, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        for m in self.convs:
            x = m(x)
        return self.conv_seg(self.dropout(x))
