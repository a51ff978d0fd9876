"""CMX (Zhang et al., 2023), as the official repository builds it for the paper's table:
two MiT streams with an FRM after every stage (its output feeds both streams' next
stage) and an FFM after every stage (its output feeds the decoder), then SegFormer's
all-MLP decoder. The official module is ``RGBXTransformer`` + ``MLPDecoderHead``.

Submodule names follow the official ones (``FRMs.{i}`` -> ``frms.{i}``, ``FFMs.{i}`` ->
``ffms.{i}``, the decoder's ``layers.{i}`` and ``fusion_conv``), so the converter's table
stays a rename. All tensors NHWC.

One departure from a plain reading of the official code is reproduced on purpose: in
training, the second (SAR) stream's drop-path rates in stage 2 are those of the block
after the first stream's (``cmx_drop_path_rates``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from asanet_jax.models import torch_ops
from asanet_jax.models.config import CMXConfig, resolve
from asanet_jax.models.convnext_v2 import drop_path_rates
from asanet_jax.models.inputs import check_inputs
from asanet_jax.models.layers import BatchNorm, DepthwiseConv, LayerNorm, conv
from asanet_jax.models.mit import TORCH_EPS, MiT, linear

F32 = jnp.float32
LAMBDA = 0.5  # the FRM's lambda_c and lambda_s


def cmx_drop_path_rates(depths, max_rate: float) -> tuple[list[list[float]], list[list[float]]]:
    """(optical, SAR) per-stage, per-block stochastic-depth rates, as the official
    ``RGBXTransformer`` assigns them from ``dpr = linspace(0, max_rate, sum(depths))``.

    Stages 1, 3 and 4 give block j of both streams ``dpr[cur + j]`` (``cur`` = blocks
    before the stage). Stage 2 gives every block of the first stream ``dpr[cur]`` and
    every block of the second ``dpr[cur + 1]``: the official code drops the ``+ i`` there
    and shifts the second stream by one.
    """
    optical = drop_path_rates(depths, max_rate)
    sar = [list(stage) for stage in optical]
    dpr = [rate for stage in optical for rate in stage]
    cur, d = depths[0], depths[1]
    optical[1], sar[1] = [dpr[cur]] * d, [dpr[cur + 1]] * d
    return optical, sar


class ChannelWeights(nnx.Module):
    """The FRM's channel gate: [avg; max] pooled over H, W of [x1; x2] -> Linear 4C->4C ->
    ReLU -> Linear 4C->2C -> sigmoid; (B, 1, 1, C) weights for x1's and x2's channels."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs):
        # On (B, 4C) pooled vectors: float32 costs nothing there.
        self.fc1 = linear(4 * dim, 4 * dim, dtype=F32, rngs=rngs)
        self.fc2 = linear(4 * dim, 2 * dim, dtype=F32, rngs=rngs)

    def __call__(self, both: jax.Array) -> tuple[jax.Array, jax.Array]:
        both = both.astype(F32)
        pooled = jnp.concatenate([both.mean(axis=(1, 2)), both.max(axis=(1, 2))], axis=-1)
        w = jax.nn.sigmoid(self.fc2(jax.nn.relu(self.fc1(pooled))))
        w1, w2 = jnp.split(w[:, None, None, :], 2, axis=-1)
        return w1, w2


class SpatialWeights(nnx.Module):
    """The FRM's spatial gate: 1x1 conv 2C->C -> ReLU -> 1x1 conv C->2 -> sigmoid; two
    (B, H, W, 1) maps, for x1 and x2."""

    def __init__(self, dim: int, *, dtype, rngs: nnx.Rngs):
        self.conv1 = conv(2 * dim, dim, 1, dtype=dtype, rngs=rngs)
        self.conv2 = conv(dim, 2, 1, dtype=dtype, rngs=rngs)

    def __call__(self, both: jax.Array) -> tuple[jax.Array, jax.Array]:
        w = jax.nn.sigmoid(self.conv2(jax.nn.relu(self.conv1(both))).astype(F32))
        return w[..., :1], w[..., 1:]


class FRM(nnx.Module):
    """Feature Rectify Module: each stream plus the other weighted by both gates,
    ``x1' = x1 + 0.5 * cw2 * x2 + 0.5 * sw2 * x2`` and symmetrically (the second gate
    of each pair rectifies the first stream). Two (B, H, W, C) -> two (B, H, W, C).
    """

    def __init__(self, dim: int, *, dtype, rngs: nnx.Rngs):
        self.channel_weights = ChannelWeights(dim, rngs=rngs)
        self.spatial_weights = SpatialWeights(dim, dtype=dtype, rngs=rngs)

    def __call__(self, x1: jax.Array, x2: jax.Array) -> tuple[jax.Array, jax.Array]:
        both = jnp.concatenate([x1, x2], axis=-1)
        c1, c2 = (w.astype(x1.dtype) for w in self.channel_weights(both))
        s1, s2 = (w.astype(x1.dtype) for w in self.spatial_weights(both))
        out1 = x1 + LAMBDA * c2 * x2 + LAMBDA * s2 * x2
        out2 = x2 + LAMBDA * c1 * x1 + LAMBDA * s1 * x1
        return out1, out2


class CrossAttention(nnx.Module):
    """The FFM's efficient cross attention. Each stream's keys and values (one Linear,
    no bias, split into K then V) make a (head_dim x head_dim) context per head, with
    the softmax over the keys' channel axis (the official ``dim=-2``); each stream's
    queries are its input itself, unprojected, read through the OTHER stream's context.
    Two (B, N, C) -> two (B, N, C).
    """

    def __init__(self, dim: int, num_heads: int, *, dtype, rngs: nnx.Rngs):
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.dtype = dtype
        self.kv1 = linear(dim, 2 * dim, use_bias=False, dtype=dtype, rngs=rngs)
        self.kv2 = linear(dim, 2 * dim, use_bias=False, dtype=dtype, rngs=rngs)

    def _context(self, kv_layer, x):
        b, n, c = x.shape
        kv = kv_layer(x).reshape(b, n, 2, self.num_heads, c // self.num_heads)
        k, v = kv[:, :, 0], kv[:, :, 1]
        ctx = jnp.einsum("bnhd,bnhe->bhde", k, v).astype(F32) * self.scale
        return jax.nn.softmax(ctx, axis=-2).astype(self.dtype)

    def _read(self, x, ctx):
        b, n, c = x.shape
        q = x.reshape(b, n, self.num_heads, c // self.num_heads)
        return jnp.einsum("bnhd,bhde->bnhe", q, ctx).reshape(b, n, c)

    def __call__(self, x1: jax.Array, x2: jax.Array) -> tuple[jax.Array, jax.Array]:
        ctx1, ctx2 = self._context(self.kv1, x1), self._context(self.kv2, x2)
        return self._read(x1, ctx2), self._read(x2, ctx1)


class CrossPath(nnx.Module):
    """Per stream: Linear C->2C -> ReLU, split into a residual half y and an interaction
    half u; cross attention of the u's; LayerNorm(x + Linear 2C->C([y; v])), eps 1e-5.
    Two (B, N, C) -> two (B, N, C)."""

    def __init__(self, dim: int, num_heads: int, *, dtype, kernels, rngs: nnx.Rngs):
        self.channel_proj1 = linear(dim, 2 * dim, dtype=dtype, rngs=rngs)
        self.channel_proj2 = linear(dim, 2 * dim, dtype=dtype, rngs=rngs)
        self.cross_attn = CrossAttention(dim, num_heads, dtype=dtype, rngs=rngs)
        self.end_proj1 = linear(2 * dim, dim, dtype=dtype, rngs=rngs)
        self.end_proj2 = linear(2 * dim, dim, dtype=dtype, rngs=rngs)
        self.norm1 = LayerNorm(dim, eps=TORCH_EPS, kernels=kernels)
        self.norm2 = LayerNorm(dim, eps=TORCH_EPS, kernels=kernels)

    def __call__(self, x1: jax.Array, x2: jax.Array) -> tuple[jax.Array, jax.Array]:
        y1, u1 = jnp.split(jax.nn.relu(self.channel_proj1(x1)), 2, axis=-1)
        y2, u2 = jnp.split(jax.nn.relu(self.channel_proj2(x2)), 2, axis=-1)
        v1, v2 = self.cross_attn(u1, u2)
        out1 = self.norm1(x1 + self.end_proj1(jnp.concatenate([y1, v1], axis=-1)))
        out2 = self.norm2(x2 + self.end_proj2(jnp.concatenate([y2, v2], axis=-1)))
        return out1, out2


class ChannelEmbed(nnx.Module):
    """The FFM's merge: BN(1x1 conv 2C->C, no bias (x) + BN(1x1 conv -> 3x3 depthwise
    conv -> ReLU -> 1x1 conv (x))), every conv but the first with a bias. The official
    ``channel_embed.{0,1,3,4}`` are ``embed_in``, ``embed_dw``, ``embed_out``, ``embed_bn``
    here. (B, H, W, 2C) -> (B, H, W, C)."""

    def __init__(self, in_channels, channels, *, bn_replicas, dtype, kernels, rngs: nnx.Rngs):
        self.residual = conv(in_channels, channels, 1, use_bias=False, dtype=dtype, rngs=rngs)
        self.embed_in = conv(in_channels, channels, 1, dtype=dtype, rngs=rngs)
        self.embed_dw = DepthwiseConv(channels, 3, dtype=dtype, kernels=kernels, rngs=rngs)
        self.embed_out = conv(channels, channels, 1, dtype=dtype, rngs=rngs)
        self.embed_bn = BatchNorm(channels, replicas=bn_replicas)
        self.norm = BatchNorm(channels, replicas=bn_replicas)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.embed_out(jax.nn.relu(self.embed_dw(self.embed_in(x))))
        return self.norm(self.residual(x) + self.embed_bn(y))


class FFM(nnx.Module):
    """Feature Fusion Module: CrossPath over the two streams' tokens, then ChannelEmbed
    of their concatenation. Two (B, H, W, C) -> (B, H, W, C)."""

    def __init__(self, dim, num_heads, *, bn_replicas, dtype, kernels, rngs: nnx.Rngs):
        self.cross = CrossPath(dim, num_heads, dtype=dtype, kernels=kernels, rngs=rngs)
        self.channel_emb = ChannelEmbed(
            2 * dim, dim, bn_replicas=bn_replicas, dtype=dtype, kernels=kernels, rngs=rngs
        )

    def __call__(self, x1: jax.Array, x2: jax.Array) -> jax.Array:
        b, h, w, c = x1.shape
        t1, t2 = self.cross(x1.reshape(b, h * w, c), x2.reshape(b, h * w, c))
        return self.channel_emb(jnp.concatenate([t1, t2], axis=-1).reshape(b, h, w, 2 * c))


class FusionConv(nnx.Module):
    """mmcv ConvModule(1x1, bias=True) -> BatchNorm (eps 1e-3) -> ReLU."""

    def __init__(self, in_channels, channels, *, dtype, rngs: nnx.Rngs):
        self.conv = conv(in_channels, channels, 1, dtype=dtype, rngs=rngs)
        self.bn = BatchNorm(channels, eps=1e-3)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.relu(self.bn(self.conv(x)))


class MLPDecoderHead(nnx.Module):
    """SegFormer's all-MLP decoder: a Linear C_i->D per stage, each map bilinearly resized
    to the finest map's size, concatenated coarsest first (stage 4, 3, 2, 1), a 1x1
    ConvModule, Dropout2d, then the 1x1 classifier. A list of (B, H_i, W_i, C_i), finest
    first -> (B, H_0, W_0, num_classes)."""

    def __init__(self, in_channels, channels, num_classes, *, dropout, dtype, rngs: nnx.Rngs):
        self.layers = nnx.List([linear(c, channels, dtype=dtype, rngs=rngs) for c in in_channels])
        self.fusion_conv = FusionConv(len(in_channels) * channels, channels, dtype=dtype, rngs=rngs)
        self.dropout = torch_ops.channel_dropout(dropout, rngs=rngs)
        self.conv_seg = conv(channels, num_classes, 1, dtype=dtype, rngs=rngs)

    def __call__(self, inputs) -> jax.Array:
        size = inputs[0].shape[1:3]
        outs = [
            torch_ops.resize_bilinear(self.layers[i](inputs[i]), size)
            for i in reversed(range(len(inputs)))
        ]
        return self.conv_seg(self.dropout(self.fusion_conv(jnp.concatenate(outs, axis=-1))))


class CMX(nnx.Module):
    """The segmentor.

    ``model(optical, sar)`` takes NHWC float arrays normalised as the official loaders
    do: optical (B, H, W, optical_channels), sar (B, H, W, sar_channels), H and W at
    least ``config.min_input_side`` (29 for the default spatial reductions). It returns:

    - ``logits``: (B, H, W, K) float32, decode logits bilinearly resized to input size;
    - ``decode_logits``: (B, ceil(H / 4), ceil(W / 4), K) float32, the decoder's output;
    - ``features``: the FFM output of every stage (strides 4..32), compute dtype.

    There is no auxiliary head. Dropout, drop-path and BatchNorm statistics follow NNX's
    ``model.train()`` / ``model.eval()``.
    """

    def __init__(self, config: ml_collections.ConfigDict | dict | CMXConfig, *, rngs: nnx.Rngs):
        config = resolve(config)
        if not isinstance(config, CMXConfig):
            raise ValueError(f"CMX needs a CMX config, got architecture {config.architecture!r}")
        self.config = config
        dtype, kernels = config.compute_dtype, config.kernel_choice
        rates = cmx_drop_path_rates(config.depths, config.drop_path_rate)

        def stream(bands, stage_rates):
            return MiT(
                bands,
                config.embed_dims,
                config.num_heads,
                config.sr_ratios,
                config.mlp_ratio,
                stage_rates,
                dtype=dtype,
                kernels=kernels,
                rngs=rngs,
            )

        self.optical = stream(config.optical_channels, rates[0])
        self.sar = stream(config.sar_channels, rates[1])
        self.frms = nnx.List([FRM(d, dtype=dtype, rngs=rngs) for d in config.embed_dims])
        self.ffms = nnx.List(
            [
                FFM(
                    d,
                    h,
                    bn_replicas=config.ffm_bn_replicas,
                    dtype=dtype,
                    kernels=kernels,
                    rngs=rngs,
                )
                for d, h in zip(config.embed_dims, config.num_heads, strict=True)
            ]
        )
        self.decode_head = MLPDecoderHead(
            config.embed_dims,
            config.decoder_channels,
            config.num_classes,
            dropout=config.dropout,
            dtype=dtype,
            rngs=rngs,
        )

    def encode(self, optical: jax.Array, sar: jax.Array) -> list[jax.Array]:
        """The FFM output of every stage, finest first."""
        check_inputs(self.config, optical, sar)
        x_opt, x_sar = jnp.asarray(optical, F32), jnp.asarray(sar, F32)
        features = []
        for i in range(len(self.config.depths)):
            x_opt = self.optical.run_stage(i, x_opt)
            x_sar = self.sar.run_stage(i, x_sar)
            x_opt, x_sar = self.frms[i](x_opt, x_sar)
            features.append(self.ffms[i](x_opt, x_sar))
        return features

    def __call__(self, optical: jax.Array, sar: jax.Array) -> dict:
        features = self.encode(optical, sar)
        decode = self.decode_head(features).astype(F32)
        return {
            "logits": torch_ops.resize_bilinear(decode, optical.shape[1:3]),
            "decode_logits": decode,
            "features": features,
        }
