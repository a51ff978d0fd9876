"""3x3 'same' convolution by Winograd's minimal filtering, F(4x4, 3x3).

Used on CPU for the heads' big 3x3 convolutions (UPerNet's ``fpn_bottleneck`` takes
1024 channels at a quarter of the input size). XLA:CPU runs those as direct
convolutions; Winograd computes each 4x4 output tile from a 6x6 input tile with 36
multiplications per channel pair instead of 144, as 36 independent matrix products
(Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016):

    Y = A^T [ (G g G^T) * (B^T d B) ] A          per tile, * elementwise

The transforms are fixed sums of strided slices. The backward is written out
(``_conv3x3_bwd``) and is Winograd too: the input gradient is another Winograd
convolution, the kernel gradient 36 products of transformed tiles. In float32 the
result differs from the direct convolution by a few 1e-6 relative (measured on the
golden fixture in ``tests/test_parity.py``), the size of float32 noise between the
official model in float32 and float64.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

TILE = 4  # output tile side m; the input tile side is m + 2
# Interpolation points 0, +-1, +-2 and infinity.
_BT = np.array(
    [
        [4, 0, -5, 0, 1, 0],
        [0, -4, -4, 1, 1, 0],
        [0, 4, -4, -1, 1, 0],
        [0, -2, -1, 2, 1, 0],
        [0, 2, -1, -2, 1, 0],
        [0, 4, 0, -5, 0, 1],
    ],
    np.float64,
)
_G = np.array(
    [
        [1 / 4, 0, 0],
        [-1 / 6, -1 / 6, -1 / 6],
        [-1 / 6, 1 / 6, -1 / 6],
        [1 / 24, 1 / 12, 1 / 6],
        [1 / 24, -1 / 12, 1 / 6],
        [0, 0, 1],
    ],
    np.float64,
)
_AT = np.array(
    [
        [1, 1, 1, 1, 1, 0],
        [0, 1, -1, 2, -2, 0],
        [0, 1, 1, 4, 4, 0],
        [0, 1, -1, 8, -8, 1],
    ],
    np.float64,
)


def eligible(x: jax.Array, min_pixels: int) -> bool:
    """Whether the Winograd formulation pays for NHWC input ``x`` (a static check).

    Only in float32: in bfloat16 the transforms' sums would round the tiles to 8 bits.
    Only on maps of at least ``min_pixels`` (``kernels.WINOGRAD_MIN_PIXELS`` by default).
    Where it runs (CPU only, by default) is ``config.model.kernels``'s choice.
    """
    return x.dtype == jnp.float32 and x.shape[1] * x.shape[2] >= min_pixels


def _combine(parts: list[jax.Array], coefficients: np.ndarray) -> jax.Array:
    """sum_j c_j * parts[j], skipping zeros and multiplications by +-1."""
    out = None
    for c, p in zip(coefficients, parts, strict=True):
        if c == 0:
            continue
        term = p if c == 1 else -p if c == -1 else p * np.float32(c)
        out = term if out is None else out + term
    return out


def _transform(a: jax.Array, matrix: np.ndarray, axis: int, step: int, count: int) -> jax.Array:
    """Apply ``matrix`` (r, s) to every window of s entries taken ``step`` apart.

    Window t of ``a`` along ``axis`` is ``a[t * step : t * step + s]``; the result
    stacks the r combinations on a new leading axis and keeps ``count`` windows
    along ``axis``.
    """
    parts = [
        lax.slice_in_dim(a, j, j + step * (count - 1) + 1, step, axis)
        for j in range(matrix.shape[1])
    ]
    return jnp.stack([_combine(parts, row) for row in matrix])


def _tiles(h: int, w: int) -> tuple[int, int]:
    return -(-h // TILE), -(-w // TILE)


def _per_tile(padded: jax.Array, matrix: np.ndarray, th: int, tw: int) -> jax.Array:
    """M d M^T for every tile of a padded (B, H', W', C) map, tiles TILE apart.

    Returns (r_w, r_h, B*th*tw, C) for ``matrix`` (r, s).
    """
    t = _transform(padded, matrix, axis=1, step=TILE, count=th)  # (r_h, B, th, W', C)
    t = _transform(t, matrix, axis=3, step=TILE, count=tw)  # (r_w, r_h, B, th, tw, C)
    return t.reshape(*t.shape[:2], -1, t.shape[-1])


def _sandwich(a: jax.Array, matrix: np.ndarray) -> jax.Array:
    """M a M^T over the two leading axes: (s, s, ...) -> (r, r, ...), axes swapped.

    Sums of scaled taps: an einsum here became a badly laid-out product that cost
    more than the whole input transform at batch 1.
    """
    a = _transform(a, matrix, axis=0, step=1, count=1)[:, 0]
    return _transform(a, matrix, axis=1, step=1, count=1)[:, :, 0]


def _input_tiles(x: jax.Array) -> jax.Array:
    """(B, H, W, C) -> B^T d B for every 6x6 input tile: (alpha_w, alpha_h, B*th*tw, C)."""
    _, h, w, _ = x.shape
    th, tw = _tiles(h, w)
    # One zero pixel on every side is the convolution's own padding; the extra rows
    # and columns on the bottom and right only feed outputs that are cropped away.
    xp = jnp.pad(x, ((0, 0), (1, th * TILE - h + 1), (1, tw * TILE - w + 1), (0, 0)))
    return _per_tile(xp, _BT, th, tw)


def _kernel_tiles(kernel: jax.Array) -> jax.Array:
    """(3, 3, C, D) -> G g G^T: (alpha_w, alpha_h, C, D), float32."""
    return _sandwich(kernel.astype(jnp.float32), _G)


def _output_from_tiles(m: jax.Array, b: int, h: int, w: int) -> jax.Array:
    """A^T M A: (alpha_w, alpha_h, B*th*tw, D) -> (B, H, W, D)."""
    th, tw = _tiles(h, w)
    m = m.reshape(*m.shape[:2], b, th, tw, m.shape[-1])
    y = _transform(m, _AT, axis=1, step=1, count=1)[:, :, 0]  # (m_h, alpha_w, B, th, tw, D)
    y = _transform(y, _AT, axis=1, step=1, count=1)[:, :, 0]  # (m_w, m_h, B, th, tw, D)
    y = y.transpose(2, 3, 1, 4, 0, 5).reshape(b, th * TILE, tw * TILE, -1)
    return y[:, :h, :w]


def _output_tiles_transposed(g: jax.Array) -> jax.Array:
    """The transpose of ``_output_from_tiles``: (B, H, W, D) -> (alpha_w, alpha_h, N, D)."""
    _, h, w, _ = g.shape
    th, tw = _tiles(h, w)
    gp = jnp.pad(g, ((0, 0), (0, th * TILE - h), (0, tw * TILE - w), (0, 0)))
    return _per_tile(gp, _AT.T, th, tw)


def _products(v: jax.Array, u: jax.Array) -> jax.Array:
    """The 36 independent (N, C) x (C, D) products."""
    return jnp.einsum("abnc,abcd->abnd", v, u, precision=lax.Precision.HIGHEST)


def _conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
    b, h, w, _ = x.shape
    m = _products(_input_tiles(x), _kernel_tiles(kernel).astype(x.dtype))
    return _output_from_tiles(m, b, h, w)


@jax.custom_vjp
def conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``nn.Conv2d(C, D, 3, padding=1, bias=False)`` on NHWC, by Winograd F(4x4, 3x3).

    Args:
      x: (B, H, W, C); any H, W (padded up to a multiple of 4 and cropped back).
      kernel: (3, 3, C, D), HWIO as nnx.Conv stores it.
    Returns:
      (B, H, W, D) in x's dtype.
    """
    if kernel.shape[:2] != (3, 3):
        raise ValueError(f"kernel has shape {kernel.shape}: expected (3, 3, C, D)")
    return _conv3x3(x, kernel)


def _conv3x3_fwd(x, kernel):
    return conv3x3(x, kernel), (x, kernel)


def _conv3x3_bwd(residuals, g):
    # Written out rather than left to autodiff: the transpose of the strided tile
    # slices is an interior pad per tile row, which XLA:CPU materialised as six
    # 277 MB arrays per training step for the fused bottleneck alone.
    x, kernel = residuals
    # d/dx of a 'same' correlation: the correlation of g with the kernel flipped in
    # space and transposed in channels, itself a Winograd convolution.
    dx = _conv3x3(g, kernel[::-1, ::-1].swapaxes(2, 3))
    du = jnp.einsum(
        "abnc,abnd->abcd",
        _input_tiles(x),
        _output_tiles_transposed(g),
        precision=lax.Precision.HIGHEST,
    ).astype(jnp.float32)
    # The transpose of G g G^T is G^T dU G: (alpha_w, alpha_h, C, D) -> (3_h, 3_w, C, D).
    dk = _sandwich(du, _G.T)
    return dx, dk.astype(kernel.dtype)


conv3x3.defvjp(_conv3x3_fwd, _conv3x3_bwd)
