"""ConvNeXt V2 (mmpretrain ``ConvNeXt`` with ``use_grn=True``, no layer scale), NHWC.

Submodule names follow mmpretrain's, so that the converter's table is a plain rename:
``downsample_layers.{i}``, ``stages.{i}.{j}.{depthwise_conv,norm,pointwise_conv1,grn,
pointwise_conv2}``, ``norms.{i}`` (mmpretrain's ``norm{i}``).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from asanet_jax.models import torch_ops
from asanet_jax.models.kernels import AUTO, Kernels
from asanet_jax.models.layers import GRN, DepthwiseConv, LayerNorm, conv

F32 = jnp.float32

# name -> (depths, channels), as in mmpretrain's ConvNeXt.arch_settings.
VARIANTS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "atto": ((2, 2, 6, 2), (40, 80, 160, 320)),
    "femto": ((2, 2, 6, 2), (48, 96, 192, 384)),
    "pico": ((2, 2, 6, 2), (64, 128, 256, 512)),
    "nano": ((2, 2, 8, 2), (80, 160, 320, 640)),
    "tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "small": ((3, 3, 27, 3), (96, 192, 384, 768)),
    "base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
    "large": ((3, 3, 27, 3), (192, 384, 768, 1536)),
    "xlarge": ((3, 3, 27, 3), (256, 512, 1024, 2048)),
    "huge": ((3, 3, 27, 3), (352, 704, 1408, 2816)),
}


class Stem(nnx.Module):
    """4x4 stride-4 conv (bias) -> LayerNorm. (B, H, W, Cin) -> (B, H/4, W/4, C)."""

    def __init__(self, in_channels: int, channels: int, *, dtype, kernels: Kernels, rngs: nnx.Rngs):
        # float32 even under bfloat16: 3 input bands make it cheap, and rounding the
        # raw input to 8 bits of mantissa would cost accuracy for every later layer.
        self.conv = conv(in_channels, channels, 4, stride=4, dtype=F32, rngs=rngs)
        self.norm = LayerNorm(channels, dtype=dtype, kernels=kernels)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.norm(self.conv(x))


class Downsample(nnx.Module):
    """LayerNorm -> 2x2 stride-2 conv (bias); odd sizes floor, as in PyTorch."""

    def __init__(self, in_channels: int, channels: int, *, dtype, kernels: Kernels, rngs: nnx.Rngs):
        self.norm = LayerNorm(in_channels, kernels=kernels)
        self.conv = conv(in_channels, channels, 2, stride=2, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(self.norm(x))


class Block(nnx.Module):
    """dw7x7 -> LN -> Linear C->4C -> GELU -> GRN -> Linear 4C->C -> drop-path -> +x."""

    def __init__(
        self, channels: int, drop_path_rate: float, *, dtype, kernels: Kernels, rngs: nnx.Rngs
    ):
        self.dtype = dtype
        self.depthwise_conv = DepthwiseConv(channels, 7, dtype=dtype, kernels=kernels, rngs=rngs)
        self.norm = LayerNorm(channels, kernels=kernels)
        self.pointwise_conv1 = nnx.Linear(
            channels, 4 * channels, dtype=dtype, param_dtype=F32, rngs=rngs
        )
        self.grn = GRN(4 * channels)
        self.pointwise_conv2 = nnx.Linear(
            4 * channels, channels, dtype=dtype, param_dtype=F32, rngs=rngs
        )
        self.drop_path = torch_ops.drop_path(drop_path_rate, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.norm(self.depthwise_conv(x))
        y = torch_ops.gelu(self.pointwise_conv1(y))
        y = self.pointwise_conv2(self.grn(y))
        return x + self.drop_path(y)


def drop_path_rates(depths: Sequence[int], max_rate: float) -> list[list[float]]:
    """Per-block rates ``linspace(0, max_rate, sum(depths))``, split by stage."""
    rates = np.linspace(0.0, max_rate, sum(depths)).tolist()
    out, start = [], 0
    for d in depths:
        out.append(rates[start : start + d])
        start += d
    return out


class ConvNeXtV2(nnx.Module):
    """One ConvNeXt V2 stream, run stage by stage by its owner.

    ``downsample_layers[i]`` then ``stages[i]`` make stage ``i``; ``norms[i]`` is the
    stage's output LayerNorm. ``__call__`` is the plain backbone (mmpretrain's
    forward: the norm does NOT replace the stream), used by single-modality models.
    """

    def __init__(
        self,
        in_channels: int,
        depths: Sequence[int],
        channels: Sequence[int],
        *,
        drop_path_rate: float = 0.0,
        dtype=F32,
        kernels: Kernels = AUTO,
        rngs: nnx.Rngs,
    ):
        if len(depths) != len(channels):
            raise ValueError(
                f"depths {tuple(depths)} and channels {tuple(channels)} differ in length"
            )
        self.num_stages = len(depths)
        opts = dict(dtype=dtype, kernels=kernels, rngs=rngs)
        layers = [Stem(in_channels, channels[0], **opts)]
        for i in range(1, len(depths)):
            layers.append(Downsample(channels[i - 1], channels[i], **opts))
        self.downsample_layers = nnx.List(layers)
        self.stages = nnx.List(
            [
                nnx.List([Block(c, r, **opts) for r in stage_rates])
                for c, stage_rates in zip(
                    channels, drop_path_rates(depths, drop_path_rate), strict=True
                )
            ]
        )
        self.norms = nnx.List([LayerNorm(c, kernels=kernels) for c in channels])

    def run_stage(self, i: int, x: jax.Array) -> jax.Array:
        """Downsample and blocks of stage ``i`` (no output norm)."""
        x = self.downsample_layers[i](x)
        for block in self.stages[i]:
            x = block(x)
        return x

    def __call__(self, x: jax.Array) -> list[jax.Array]:
        """(B, H, W, Cin) -> the normed output of every stage, strides 4..32."""
        outs = []
        for i in range(self.num_stages):
            x = self.run_stage(i, x)
            outs.append(self.norms[i](x))
        return outs
