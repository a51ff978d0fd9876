"""Cross-modal modules of ASANet: SFM (interaction) and CFM or plain sum (fusion).

Attribute names follow the official ``src/layers.py`` (``FRMs``/``FFMs`` entries), so
the converter's table stays a rename. All tensors NHWC.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from asanet_jax.models import torch_ops
from asanet_jax.models.layers import BatchNorm, conv

F32 = jnp.float32


class SFM(nnx.Module):
    """Semantic Focusing Module.

    ``optical' = optical + optical * sigmoid(f(maxpool(optical - sar)))`` and
    symmetrically for SAR,
    with ONE shared ``f`` = 1x1 conv C->max(32, C//16) -> exact GELU -> 1x1 conv ->C.
    maxpool is a global max over H, W. Inputs and outputs: two (B, H, W, C) arrays.
    The official ``sconv.0`` / ``sconv.2`` are ``fc1`` / ``fc2`` here.
    """

    def __init__(self, channels: int, *, rngs: nnx.Rngs):
        hidden = max(32, channels // 16)
        # f runs on (B, 1, 1, C) pooled vectors: float32 costs nothing there, whatever
        # the compute dtype of the streams.
        self.fc1 = conv(channels, hidden, 1, dtype=F32, rngs=rngs)
        self.fc2 = conv(hidden, channels, 1, dtype=F32, rngs=rngs)

    def focus(self, diff: jax.Array) -> jax.Array:
        """(B, H, W, C) difference -> (B, 1, 1, C) pre-sigmoid attention."""
        s = jnp.max(diff, axis=(1, 2), keepdims=True).astype(F32)
        return self.fc2(torch_ops.gelu(self.fc1(s)))

    def __call__(self, optical: jax.Array, sar: jax.Array) -> tuple[jax.Array, jax.Array]:
        attn_opt = jax.nn.sigmoid(self.focus(optical - sar).astype(F32)).astype(optical.dtype)
        attn_sar = jax.nn.sigmoid(self.focus(sar - optical).astype(F32)).astype(sar.dtype)
        return optical + optical * attn_opt, sar + sar * attn_sar


class PooledConvBN(nnx.Module):
    """ConvModule(1x1, no bias, BN, no activation) on a (B, 1, 1, C) pooled map."""

    def __init__(self, in_features: int, out_features: int, *, dtype, rngs: nnx.Rngs):
        self.conv = conv(in_features, out_features, 1, use_bias=False, dtype=dtype, rngs=rngs)
        self.bn = BatchNorm(out_features)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.bn(self.conv(x))


class PooledDWConv(nnx.Module):
    """ConvModule(3x3 depthwise, padding 1, bias, ReLU6) on a 1x1 map.

    With zero padding around a single pixel only the centre tap ever touches data,
    so ``y = x * w[1, 1] + b`` is exactly the official conv. The full 3x3 kernel is
    kept so that official weights round-trip unchanged.
    """

    def __init__(self, channels: int, *, dtype, rngs: nnx.Rngs):
        self.dtype = dtype
        self.conv = conv(channels, channels, 3, padding=1, groups=channels, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        assert x.shape[1:3] == (1, 1), x.shape
        centre = self.conv.kernel[...][1, 1, 0].astype(self.dtype)
        y = x.astype(self.dtype) * centre + self.conv.bias[...].astype(self.dtype)
        return jnp.clip(y, 0.0, 6.0)


class PooledMLP(nnx.Module):
    """CFM's MLP on the 1x1 pooled map: fc1 (C->4C, BN) -> dwconv (ReLU6) -> fc2 (4C->C, BN).

    x: (B, 1, 1, C) -> (B, 1, 1, C). Its BatchNorms see one value per image and
    channel; see ``BatchNorm`` for a global batch of one.
    """

    def __init__(self, channels: int, *, dtype, rngs: nnx.Rngs):
        hidden = 4 * channels
        self.fc1 = PooledConvBN(channels, hidden, dtype=dtype, rngs=rngs)
        self.dwconv = PooledDWConv(hidden, dtype=dtype, rngs=rngs)
        self.fc2 = PooledConvBN(hidden, channels, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(self.dwconv(self.fc1(x)))


class CFM(nnx.Module):
    """Cascade Fusion Module: two normed (B, H, W, C) streams -> one (B, H, W, C) map.

    ``g = avgpool(catconv1([optical, sar]))`` (computed as ``catconv1(avgpool(...))``);
    ``w1 = optical * sigmoid(mlp1(g))``, ``w2 = sar * sigmoid(mlp2(g))``;
    ``c = catconv2([w1, w2])``;
    ``out = w1 * softmax_C(fc1(c)) + w2 * softmax_C(fc2(c))`` (softmax over channels).
    """

    def __init__(self, channels: int, *, dtype=F32, rngs: nnx.Rngs):
        # catconv1 only feeds the global average pool, and a 1x1 conv commutes with
        # it: pooling first is the same function, runs on (B, 1, 1, 2C) instead of
        # the full map, and in float32 keeps the gates exact under bfloat16.
        self.catconv1 = conv(2 * channels, channels, 1, dtype=F32, rngs=rngs)
        # The gate branch runs on (B, 1, 1, C) vectors: float32 costs nothing there,
        # and its BatchNorms amplify bfloat16 rounding about tenfold.
        self.mlp1 = PooledMLP(channels, dtype=F32, rngs=rngs)
        self.mlp2 = PooledMLP(channels, dtype=F32, rngs=rngs)
        self.catconv2 = conv(2 * channels, channels, 1, dtype=dtype, rngs=rngs)
        self.fc1 = conv(channels, channels, 1, dtype=dtype, rngs=rngs)
        self.fc2 = conv(channels, channels, 1, dtype=dtype, rngs=rngs)

    def __call__(self, optical: jax.Array, sar: jax.Array) -> jax.Array:
        pooled = jnp.concatenate([optical, sar], axis=-1).astype(F32).mean((1, 2), keepdims=True)
        g = self.catconv1(pooled)  # == avgpool(catconv1(concat)), see __init__
        w1 = optical * jax.nn.sigmoid(self.mlp1(g)).astype(optical.dtype)
        w2 = sar * jax.nn.sigmoid(self.mlp2(g)).astype(sar.dtype)
        c = self.catconv2(jnp.concatenate([w1, w2], axis=-1))
        a1 = jax.nn.softmax(self.fc1(c).astype(F32), axis=-1).astype(w1.dtype)
        a2 = jax.nn.softmax(self.fc2(c).astype(F32), axis=-1).astype(w2.dtype)
        return w1 * a1 + w2 * a2


class SumFusion(nnx.Module):
    """The paper's "PWA" ablation: ``optical + sar`` (official ``SimpleFusionModule``)."""

    def __call__(self, optical: jax.Array, sar: jax.Array) -> jax.Array:
        return optical + sar
