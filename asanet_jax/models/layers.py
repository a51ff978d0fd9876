"""Normalisation layers and the conv-BN-ReLU unit, with PyTorch's semantics.

Norms always compute in float32, whatever the compute dtype, and return the input's
dtype. Parameter names follow Flax (``scale``, ``bias``, ``mean``, ``var``); the
converter's table maps them to PyTorch's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from asanet_jax.models import winograd
from asanet_jax.models.kernels import AUTO, Kernels, choose

F32 = jnp.float32


class LayerNorm(nnx.Module):
    """LayerNorm over the channel (last) axis: mmpretrain ``LN2d`` / ``nn.LayerNorm``.

    Two-pass variance in float32, as PyTorch computes it. x: (..., C) -> (..., C),
    returned in ``dtype`` if given, else in the input's dtype.
    """

    def __init__(
        self, num_features: int, *, eps: float = 1e-6, dtype=None, kernels: Kernels = AUTO
    ):
        self.eps = eps
        self.dtype = dtype
        self.mode = kernels.layernorm
        self.scale = nnx.Param(jnp.ones((num_features,), F32))
        self.bias = nnx.Param(jnp.zeros((num_features,), F32))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(F32)
        mean = channel_mean(x32, self.mode)
        var = channel_mean(jnp.square(x32 - mean), self.mode)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * self.scale[...] + self.bias[...]).astype(self.dtype or x.dtype)


def channel_mean(x: jax.Array, mode: str = "auto") -> jax.Array:
    """Mean over the last axis, kept: (..., C) -> (..., 1), float32.

    The CPU formulation (``kernels.layernorm``) is a matrix product with a ones
    vector. XLA:CPU fuses a reduction with its producer, and fed by the 49-tap
    depthwise convolution that fusion splits into a dozen materialised slices: a
    stage-1 block's depthwise conv + LayerNorm took 86 ms at batch 8 as a
    reduction, 25 ms as a product.
    """
    return choose(mode, _mean_by_product, _mean_by_reduction, x)


def _mean_by_reduction(x: jax.Array) -> jax.Array:
    return x.mean(-1, keepdims=True)


@jax.custom_vjp
def _mean_by_product(x: jax.Array) -> jax.Array:
    ones = jnp.ones((x.shape[-1], 1), x.dtype)
    return jnp.matmul(x, ones, precision=jax.lax.Precision.HIGHEST) / x.shape[-1]


def _mean_by_product_fwd(x):
    # The residual is only a carrier of the shape: the gradient does not depend on x.
    return _mean_by_product(x), jnp.zeros((0, *x.shape), x.dtype)


def _mean_by_product_bwd(carrier, g):
    # The plain broadcast of g / C, which fuses with its neighbours; autodiff would
    # transpose the product into an outer product with the ones vector.
    shape = carrier.shape[1:]
    return (jnp.broadcast_to(g / shape[-1], shape),)


_mean_by_product.defvjp(_mean_by_product_fwd, _mean_by_product_bwd)


class BatchNorm(nnx.Module):
    """``nn.BatchNorm2d`` (eps 1e-5, momentum 0.1) on the last axis of NHWC input.

    Training normalises with the biased batch variance and updates the running
    variance with the unbiased one, as PyTorch does. Statistics are reduced over
    every axis but the last of the (global) array, so under ``jax.jit`` with a
    batch sharded over devices they are global over the batch, like SyncBN.

    One value per channel (for example the CFM's MLP on 1x1 pooled maps with a
    global batch of one image) has no batch variance: PyTorch raises there. This
    layer instead normalises with the running statistics and leaves them
    unchanged for that step.

    ``replicas`` > 1 is plain ``nn.BatchNorm2d`` under N-GPU DDP instead: in training the
    batch is split into N equal consecutive parts, each normalised with its own
    statistics, and the running statistics follow the first part's (DDP broadcasts rank
    0's buffers before every forward pass). Evaluation is the same either way.

    Train/eval follows NNX modes: ``use_running_average`` is set by
    ``model.eval()`` / ``model.train()``.
    """

    def __init__(
        self, num_features: int, *, eps: float = 1e-5, momentum: float = 0.1, replicas: int = 1
    ):
        self.eps = eps
        self.momentum = momentum
        self.replicas = replicas
        self.use_running_average = False
        self.scale = nnx.Param(jnp.ones((num_features,), F32))
        self.bias = nnx.Param(jnp.zeros((num_features,), F32))
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), F32))
        self.var = nnx.BatchStat(jnp.ones((num_features,), F32))
        # Kept so a round trip to the official state_dict is exact.
        self.num_batches_tracked = nnx.BatchStat(jnp.zeros((), jnp.int32))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(F32)
        parts = 1 if self.use_running_average else self.replicas
        if x.shape[0] % parts:
            raise ValueError(
                f"a BatchNorm over {parts} replicas cannot split a batch of {x.shape[0]} "
                "into equal parts (config.model.ffm_bn_replicas)"
            )
        # (parts, B / parts, ..., C): statistics per part.
        x32 = x32.reshape(parts, x.shape[0] // parts, *x.shape[1:])
        n = x32[0].size // x.shape[-1]
        if self.use_running_average or n == 1:
            mean, var = self.mean[...], self.var[...]
        else:
            axes = tuple(range(1, x32.ndim - 1))
            mean = x32.mean(axes, keepdims=True)
            var = jnp.square(x32 - mean).mean(axes, keepdims=True)
            first_mean, first_var = (jax.lax.stop_gradient(s[0]).reshape(-1) for s in (mean, var))
            m = self.momentum
            self.mean.set_value((1 - m) * self.mean[...] + m * first_mean)
            self.var.set_value((1 - m) * self.var[...] + m * first_var * (n / (n - 1)))
            self.num_batches_tracked.set_value(self.num_batches_tracked[...] + 1)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * self.scale[...] + self.bias[...]).reshape(x.shape).astype(x.dtype)


class GRN(nnx.Module):
    """ConvNeXt V2 Global Response Normalisation, channel-last (mmpretrain ``GRN``).

    ``gx = ||x||_2 over H, W``; ``nx = gx / (mean_C(gx) + eps)``;
    ``y = gamma * (x * nx) + beta + x``. Computed in float32. x: (B, H, W, C).
    """

    def __init__(self, num_features: int, *, eps: float = 1e-6):
        self.eps = eps
        self.gamma = nnx.Param(jnp.zeros((num_features,), F32))
        self.beta = nnx.Param(jnp.zeros((num_features,), F32))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(F32)
        gx = jnp.sqrt(jnp.sum(jnp.square(x32), axis=(1, 2), keepdims=True))
        nx = gx / (gx.mean(-1, keepdims=True) + self.eps)
        y = self.gamma[...] * (x32 * nx) + self.beta[...] + x32
        return y.astype(x.dtype)


def depthwise_conv(x: jax.Array, kernel: jax.Array, mode: str = "auto") -> jax.Array:
    """Depthwise 'same' conv of odd size k, no bias, in ``x``'s dtype.

    The CPU formulation (``kernels.depthwise``) is a float32 sum of k*k shifted
    products (inputs rounded to x's dtype first, as a convolution accumulates); XLA's
    is its grouped convolution, which runs ~25x slower on CPU.

    Args:
      x: (B, H, W, C); kernel: (k, k, 1, C), nnx.Conv's layout.
      mode: 'cpu', 'xla' or 'auto' (see ``kernels``).
    Returns:
      (B, H, W, C).
    """
    return choose(mode, _shifted_sum_conv, _grouped_conv, x, kernel.astype(x.dtype))


def _grouped_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    pad = kernel.shape[0] // 2
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        (1, 1),
        ((pad, pad), (pad, pad)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=x.shape[-1],
    )


def _shifted_sum(x: jax.Array, kernel: jax.Array) -> jax.Array:
    k = kernel.shape[0]
    pad, h, w = k // 2, x.shape[1], x.shape[2]
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0))).astype(F32)
    k32 = kernel.astype(F32)
    y = sum(xp[:, i : i + h, j : j + w, :] * k32[i, j, 0] for i in range(k) for j in range(k))
    return y.astype(x.dtype)


@jax.custom_vjp
def _shifted_sum_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return _shifted_sum(x, kernel)


def _shifted_sum_fwd(x, kernel):
    return _shifted_sum(x, kernel), (x, kernel)


def _shifted_sum_bwd(res, g):
    # Closed forms: dx is one more shifted sum; dk is one reduction per tap, taken
    # one tap at a time. Unrolled, XLA kept all k*k products alive: a tiny training
    # step at batch 2 needed 3.6 GB of temporaries, against 1.55 GB this way.
    x, kernel = res
    k = kernel.shape[0]
    pad = k // 2
    # d/dx of a correlation is the correlation of g with the flipped kernel.
    dx = _shifted_sum(g.astype(x.dtype), kernel[::-1, ::-1])
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0))).astype(F32)
    g32 = g.astype(F32)

    def tap(t):
        window = jax.lax.dynamic_slice(xp, (0, t // k, t % k, 0), g32.shape)
        return jnp.sum(window * g32, axis=(0, 1, 2))

    dk = jax.lax.map(tap, jnp.arange(k * k)).reshape(kernel.shape).astype(kernel.dtype)
    return dx, dk


_shifted_sum_conv.defvjp(_shifted_sum_fwd, _shifted_sum_bwd)


class DepthwiseConv(nnx.Module):
    """``nn.Conv2d(C, C, k, padding=k // 2, groups=C)`` on NHWC (see ``depthwise_conv``).

    Parameters are nnx.Conv's (``kernel`` (k, k, 1, C), ``bias`` (C,)), so weights
    convert the same way. x: (B, H, W, C) -> (B, H, W, C).
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int,
        *,
        dtype=F32,
        kernels: Kernels = AUTO,
        rngs: nnx.Rngs,
    ):
        self.dtype = dtype
        self.mode = kernels.depthwise
        self.kernel = nnx.Param(
            nnx.initializers.lecun_normal()(rngs.params(), (kernel_size, kernel_size, 1, channels))
        )
        self.bias = nnx.Param(jnp.zeros((channels,), F32))

    def __call__(self, x: jax.Array) -> jax.Array:
        y = depthwise_conv(x.astype(self.dtype), self.kernel[...], self.mode)
        return y + self.bias[...].astype(self.dtype)


def conv(
    in_features: int,
    out_features: int,
    kernel_size: int,
    *,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
    groups: int = 1,
    use_bias: bool = True,
    dtype=F32,
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """``nn.Conv2d`` on NHWC: explicit symmetric padding (never Flax's 'SAME')."""
    return nnx.Conv(
        in_features,
        out_features,
        (kernel_size, kernel_size),
        strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        kernel_dilation=(dilation, dilation),
        feature_group_count=groups,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=F32,
        rngs=rngs,
    )


class ConvModule(nnx.Module):
    """mmcv ``ConvModule``: conv (no bias unless ``use_bias``, as mmcv's ``bias='auto'``
    before a norm) -> BatchNorm (over ``bn_replicas`` parts, see ``BatchNorm``) ->
    optional ReLU.

    Under the CPU formulation (``kernels.winograd``) a 3x3 'same' conv on a large
    float32 map runs as Winograd F(4x4, 3x3) (see ``winograd.eligible``); otherwise
    XLA's convolution. x: (B, H, W, in_features) -> (B, H', W', out_features).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int,
        *,
        padding: int = 0,
        relu: bool = True,
        use_bias: bool = False,
        bn_replicas: int = 1,
        dtype=F32,
        kernels: Kernels = AUTO,
        rngs: nnx.Rngs,
    ):
        self.relu = relu
        self.dtype = dtype
        self.same_3x3 = kernel_size == 3 and padding == 1
        self.mode = kernels.winograd
        self.winograd_min_pixels = kernels.winograd_min_pixels
        self.conv = conv(
            in_features,
            out_features,
            kernel_size,
            padding=padding,
            use_bias=use_bias,
            dtype=dtype,
            rngs=rngs,
        )
        self.bn = BatchNorm(out_features, replicas=bn_replicas)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(self.dtype)
        if self.same_3x3 and winograd.eligible(x, self.winograd_min_pixels):
            x = choose(
                self.mode,
                self._winograd,
                lambda x, _: self.conv(x),
                x,
                self.conv.kernel[...].astype(self.dtype),
            )
        else:
            x = self.conv(x)
        x = self.bn(x)
        return jax.nn.relu(x) if self.relu else x

    def _winograd(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
        y = winograd.conv3x3(x, kernel)
        return y if self.conv.bias is None else y + self.conv.bias[...].astype(y.dtype)
