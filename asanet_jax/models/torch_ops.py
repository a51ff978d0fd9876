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


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """``nn.MaxPool2d(kernel_size=3, stride=2, padding=1)`` (the ResNet stem's).

    Padding never wins (it is -inf); the output side is ``(n - 1) // 2 + 1``. In the
    backward pass a tie sends the gradient to the first maximum of the window in
    row-major order, as PyTorch does. x: (B, H, W, C) -> (B, ceil(H / 2), ceil(W / 2), C).
    """
    return jax.lax.reduce_window(
        x,
        -jnp.inf,
        jax.lax.max,
        (1, 3, 3, 1),
        (1, 2, 2, 1),
        ((0, 0), (1, 1), (1, 1), (0, 0)),
    )


def _windows_2x2(x: jax.Array) -> jax.Array:
    """(B, 2h, 2w, C) -> (B, h, w, 4, C): each 2x2 window's pixels in row-major order."""
    b, h2, w2, c = x.shape
    win = x.reshape(b, h2 // 2, 2, w2 // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
    return win.reshape(b, h2 // 2, w2 // 2, 4, c)


def max_pool_2x2_with_indices(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``nn.MaxPool2d(2, return_indices=True)`` on even sides.

    The index kept is that of the first maximum of each window in row-major order, as
    PyTorch keeps it (ties are common after a ReLU); it is returned window-local, 0..3
    (``flat_indices`` gives PyTorch's form), and the gradient flows to that pixel only.

    Args:
      x: (B, H, W, C), H and W even.
    Returns:
      (pooled (B, H / 2, W / 2, C), local indices (B, H / 2, W / 2, C) int32).
    """
    if x.shape[1] % 2 or x.shape[2] % 2:
        raise ValueError(f"2x2 max pooling with indices needs even sides, got {x.shape[1:3]}")
    win = _windows_2x2(x)
    idx = jnp.argmax(win, axis=3).astype(jnp.int32)  # argmax keeps the first maximum
    pooled = jnp.take_along_axis(win, idx[:, :, :, None, :], axis=3)[:, :, :, 0, :]
    return pooled, idx


def flat_indices(local: jax.Array) -> jax.Array:
    """PyTorch's max-pool indices (``row * W + col`` in the input plane) of window-local
    2x2 indices. (B, h, w, C) -> (B, h, w, C) int32."""
    _, h, w, _ = local.shape
    rows = 2 * jnp.arange(h)[None, :, None, None] + local // 2
    cols = 2 * jnp.arange(w)[None, None, :, None] + local % 2
    return rows * (2 * w) + cols


def max_unpool_2x2(x: jax.Array, local: jax.Array) -> jax.Array:
    """``nn.MaxUnpool2d(2)`` with the indices of ``max_pool_2x2_with_indices``: each value
    back at its window's kept pixel, zeros elsewhere. (B, h, w, C) -> (B, 2h, 2w, C)."""
    b, h, w, c = x.shape
    onehot = (local[:, :, :, None, :] == jnp.arange(4)[None, None, None, :, None]).astype(x.dtype)
    win = (onehot * x[:, :, :, None, :]).reshape(b, h, w, 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
    return win.reshape(b, 2 * h, 2 * w, c)


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
