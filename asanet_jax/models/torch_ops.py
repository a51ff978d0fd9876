"""PyTorch-exact building blocks.

Each function reproduces one PyTorch call bit-for-bit in semantics (and to float32
rounding in value), so that weights trained with the official code give the official
numbers here. All arrays are NHWC. Each is tested directly against torch in
``tests/test_torch_ops.py``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def gelu(x: jax.Array) -> jax.Array:
    """``torch.nn.GELU()`` (exact, erf-based). ``jax.nn.gelu`` defaults to tanh."""
    return jax.nn.gelu(x, approximate=False)


@functools.lru_cache(maxsize=256)
def _bilinear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of PyTorch's bilinear, align_corners=False.

    PyTorch maps output pixel ``d`` to source ``s = (d + 0.5) * in / out - 0.5``,
    clamps ``s`` at 0 and interpolates between ``floor(s)`` and ``floor(s) + 1``
    (clamped to the last pixel). No antialiasing, whatever the scale.
    """
    # float32 arithmetic, as PyTorch's kernel does for float32 tensors.
    scale = np.float32(in_size) / np.float32(out_size)
    src = scale * (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    lo = np.floor(src).astype(np.int32)
    lo = np.minimum(lo, in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    w_hi = (src - lo).astype(np.float32)
    return lo, hi, w_hi


def _lerp_axis(x: jax.Array, axis: int, out_size: int) -> jax.Array:
    in_size = x.shape[axis]
    if in_size == out_size:
        return x
    lo, hi, w_hi = _bilinear_taps(in_size, out_size)
    shape = [1] * x.ndim
    shape[axis] = out_size
    w1 = jnp.asarray(w_hi, dtype=x.dtype).reshape(shape)
    w0 = jnp.asarray(1.0 - w_hi, dtype=x.dtype).reshape(shape)
    return jnp.take(x, lo, axis=axis) * w0 + jnp.take(x, hi, axis=axis) * w1


def resize_bilinear(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """``F.interpolate(x, size, mode='bilinear', align_corners=False)``.

    Args:
      x: (B, H, W, C).
      size: (H_out, W_out).
    Returns:
      (B, H_out, W_out, C), same dtype. Unlike ``jax.image.resize`` it never
      antialiases when shrinking, as PyTorch does not.
    """
    h, w = size
    return _lerp_axis(_lerp_axis(x, 1, h), 2, w)


@functools.lru_cache(maxsize=256)
def adaptive_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) averaging matrix of PyTorch's adaptive average pooling.

    Bin ``i`` covers ``floor(i * in / out)`` to ``ceil((i + 1) * in / out)``; bins
    overlap when ``out`` does not divide ``in``, and repeat pixels when out > in.
    """
    m = np.zeros((out_size, in_size), np.float32)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = -((-(i + 1) * in_size) // out_size)
        m[i, start:end] = 1.0 / (end - start)
    return m


def adaptive_avg_pool(x: jax.Array, size: int) -> jax.Array:
    """``nn.AdaptiveAvgPool2d(size)``.

    Args:
      x: (B, H, W, C).
      size: output height and width.
    Returns:
      (B, size, size, C), same dtype.
    """
    mh = jnp.asarray(adaptive_pool_matrix(x.shape[1], size), x.dtype)
    mw = jnp.asarray(adaptive_pool_matrix(x.shape[2], size), x.dtype)
    return jnp.einsum("ih,bhwc,jw->bijc", mh, x, mw, precision=jax.lax.Precision.HIGHEST)


def channel_dropout(rate: float, *, rngs: nnx.Rngs) -> nnx.Dropout:
    """``nn.Dropout2d(rate)`` on NHWC: zeroes whole (image, channel) maps.

    Survivors are scaled by ``1 / (1 - rate)``. Active in NNX train mode only.
    """
    return nnx.Dropout(rate, broadcast_dims=(1, 2), rngs=rngs)


def drop_path(rate: float, *, rngs: nnx.Rngs) -> nnx.Dropout:
    """mmcv ``DropPath(rate)`` (stochastic depth) on NHWC: drops whole samples.

    Survivors are scaled by ``1 / (1 - rate)``. Active in NNX train mode only.
    """
    return nnx.Dropout(rate, broadcast_dims=(1, 2, 3), rngs=rngs)
