"""Mix Transformer (MiT, SegFormer's encoder) as CMX's streams use it, NHWC.

Each stage is an overlapping patch embedding (a strided convolution, then LayerNorm), a
stack of blocks (efficient self-attention whose keys and values come from a map reduced
``sr_ratio`` times, then a Mix-FFN with a 3x3 depthwise convolution), and the stage's
output LayerNorm. Submodule names follow the official ones (``patch_embed{i}``,
``block{i}.{j}``, ``norm{i}``) as ``patch_embeds.{i}``, ``blocks.{i}.{j}``, ``norms.{i}``
(0-based), so the converter's table stays a rename.

LayerNorm eps is mixed, as in the official code: 1e-6 in the blocks and the stage norms
(its ``norm_cfg``), PyTorch's default 1e-5 in the patch embeddings and the attention's
spatial reduction.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from asanet_jax.models import torch_ops
from asanet_jax.models.kernels import AUTO, Kernels
from asanet_jax.models.layers import DepthwiseConv, LayerNorm, conv

F32 = jnp.float32

# name -> (embed_dims, num_heads, depths), as SegFormer's mit_b0..mit_b5 (mlp ratio 4,
# spatial reduction (8, 4, 2, 1), qkv bias, for all).
MIT_VARIANTS: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {
    "b0": ((32, 64, 160, 256), (1, 2, 5, 8), (2, 2, 2, 2)),
    "b1": ((64, 128, 320, 512), (1, 2, 5, 8), (2, 2, 2, 2)),
    "b2": ((64, 128, 320, 512), (1, 2, 5, 8), (3, 4, 6, 3)),
    "b3": ((64, 128, 320, 512), (1, 2, 5, 8), (3, 4, 18, 3)),
    "b4": ((64, 128, 320, 512), (1, 2, 5, 8), (3, 8, 27, 3)),
    "b5": ((64, 128, 320, 512), (1, 2, 5, 8), (3, 6, 40, 3)),
}
BLOCK_EPS = 1e-6  # the official norm_cfg: blocks and stage norms
TORCH_EPS = 1e-5  # nn.LayerNorm's default: patch embeddings, spatial reduction


def linear(in_features: int, out_features: int, *, use_bias: bool = True, dtype, rngs):
    """``nn.Linear`` on the last axis; float32 parameters."""
    return nnx.Linear(
        in_features, out_features, use_bias=use_bias, dtype=dtype, param_dtype=F32, rngs=rngs
    )


class PatchEmbed(nnx.Module):
    """Overlapping patch embedding: k x k conv of stride s, padded k // 2 on every side
    (explicitly: PyTorch's symmetric padding, never 'SAME'), then LayerNorm (eps 1e-5).

    (B, H, W, Cin) -> (B, H', W', C), H' = (H + 2 (k // 2) - k) // s + 1.
    """

    def __init__(
        self, in_channels, channels, kernel_size, stride, *, dtype, conv_dtype, kernels, rngs
    ):
        self.proj = conv(
            in_channels,
            channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            dtype=conv_dtype,
            rngs=rngs,
        )
        self.norm = LayerNorm(channels, eps=TORCH_EPS, dtype=dtype, kernels=kernels)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.norm(self.proj(x))


class Attention(nnx.Module):
    """Efficient self-attention: queries from every pixel; keys and values from the map
    reduced by an ``sr_ratio`` x ``sr_ratio`` stride-``sr_ratio`` conv and LayerNorm (eps
    1e-5) when ``sr_ratio`` > 1. ``kv`` is one linear layer whose output is split into K,
    then V. Softmax in float32. (B, H, W, C) -> (B, H, W, C).
    """

    def __init__(self, dim, num_heads, sr_ratio, *, dtype, kernels, rngs):
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.dtype = dtype
        self.q = linear(dim, dim, dtype=dtype, rngs=rngs)
        self.kv = linear(dim, 2 * dim, dtype=dtype, rngs=rngs)
        self.proj = linear(dim, dim, dtype=dtype, rngs=rngs)
        if sr_ratio > 1:
            self.sr = conv(dim, dim, sr_ratio, stride=sr_ratio, dtype=dtype, rngs=rngs)
            self.norm = LayerNorm(dim, eps=TORCH_EPS, kernels=kernels)
        else:
            self.sr = self.norm = None

    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        heads, d = self.num_heads, c // self.num_heads
        q = self.q(x).reshape(b, h * w, heads, d)
        source = self.norm(self.sr(x)) if self.sr is not None else x
        kv = self.kv(source).reshape(b, -1, 2, heads, d)
        k, v = kv[:, :, 0], kv[:, :, 1]
        # (q @ k^T) * scale, in that order, as the official code computes it.
        scores = jnp.einsum("bnhd,bmhd->bhnm", q, k).astype(F32) * self.scale
        attn = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
        out = jnp.einsum("bhnm,bmhd->bnhd", attn, v.astype(self.dtype))
        return self.proj(out.reshape(b, h, w, c))


class MixFFN(nnx.Module):
    """Linear C->hC -> 3x3 depthwise conv (bias) -> exact GELU -> Linear hC->C.
    (B, H, W, C) -> (B, H, W, C)."""

    def __init__(self, dim, hidden, *, dtype, kernels, rngs):
        self.fc1 = linear(dim, hidden, dtype=dtype, rngs=rngs)
        self.dwconv = DepthwiseConv(hidden, 3, dtype=dtype, kernels=kernels, rngs=rngs)
        self.fc2 = linear(hidden, dim, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(torch_ops.gelu(self.dwconv(self.fc1(x))))


class Block(nnx.Module):
    """x + drop_path(attn(norm1(x))), then x + drop_path(mlp(norm2(x))); norms eps 1e-6."""

    def __init__(
        self, dim, num_heads, sr_ratio, mlp_ratio, drop_path_rate, *, dtype, kernels, rngs
    ):
        self.norm1 = LayerNorm(dim, eps=BLOCK_EPS, kernels=kernels)
        self.attn = Attention(dim, num_heads, sr_ratio, dtype=dtype, kernels=kernels, rngs=rngs)
        self.norm2 = LayerNorm(dim, eps=BLOCK_EPS, kernels=kernels)
        self.mlp = MixFFN(dim, dim * mlp_ratio, dtype=dtype, kernels=kernels, rngs=rngs)
        self.drop_path = torch_ops.drop_path(drop_path_rate, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class MiT(nnx.Module):
    """One MiT stream, run stage by stage by its owner.

    ``run_stage(i, x)`` is stage ``i``: patch embedding, blocks, and the stage norm, whose
    output is the stage's (and feeds the next stage). ``__call__`` runs them all (the
    plain backbone: SegFormer's ``forward_features``).

    Args:
      drop_path_rates: per stage, one stochastic-depth rate per block.
    """

    def __init__(
        self,
        in_channels: int,
        embed_dims: Sequence[int],
        num_heads: Sequence[int],
        sr_ratios: Sequence[int],
        mlp_ratio: int,
        drop_path_rates: Sequence[Sequence[float]],
        *,
        dtype=F32,
        kernels: Kernels = AUTO,
        rngs: nnx.Rngs,
    ):
        self.num_stages = len(embed_dims)
        embeds, blocks = [], []
        for i, dim in enumerate(embed_dims):
            first = i == 0
            embeds.append(
                PatchEmbed(
                    in_channels if first else embed_dims[i - 1],
                    dim,
                    7 if first else 3,
                    4 if first else 2,
                    dtype=dtype,
                    # The first one takes the raw bands: float32 whatever the compute
                    # dtype (cheap with 3 input bands; bfloat16 would round the input).
                    conv_dtype=F32 if first else dtype,
                    kernels=kernels,
                    rngs=rngs,
                )
            )
            blocks.append(
                nnx.List(
                    [
                        Block(
                            dim,
                            num_heads[i],
                            sr_ratios[i],
                            mlp_ratio,
                            rate,
                            dtype=dtype,
                            kernels=kernels,
                            rngs=rngs,
                        )
                        for rate in drop_path_rates[i]
                    ]
                )
            )
        self.patch_embeds = nnx.List(embeds)
        self.blocks = nnx.List(blocks)
        self.norms = nnx.List([LayerNorm(d, eps=BLOCK_EPS, kernels=kernels) for d in embed_dims])

    def run_stage(self, i: int, x: jax.Array) -> jax.Array:
        """(B, H, W, C_{i-1}) -> (B, H', W', C_i), normed."""
        x = self.patch_embeds[i](x)
        for block in self.blocks[i]:
            x = block(x)
        return self.norms[i](x)

    def __call__(self, x: jax.Array) -> list[jax.Array]:
        """(B, H, W, Cin) -> the output of every stage, strides 4, 8, 16, 32."""
        outs = []
        for i in range(self.num_stages):
            x = self.run_stage(i, x)
            outs.append(x)
        return outs
