"""Winograd F(4x4, 3x3) against an independent float64 convolution and XLA's gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import rel_l2
from jax import lax

from asanet_jax.models import winograd


def conv3x3_float64(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Zero-padded 3x3 cross-correlation as nine shifted matrix products, in float64."""
    b, h, w, _ = x.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((b, h, w, kernel.shape[-1]))
    for i in range(3):
        for j in range(3):
            out += xp[:, i : i + h, j : j + w] @ kernel[i, j].astype(np.float64)
    return out


@pytest.mark.parametrize("size", [(1, 1), (4, 5), (7, 9), (13, 40), (32, 32)])
def test_matches_float64_convolution(size):
    rng = np.random.default_rng(sum(size))
    x = rng.normal(size=(2, *size, 6)).astype(np.float32)
    kernel = rng.normal(size=(3, 3, 6, 5)).astype(np.float32)
    out = jax.jit(winograd.conv3x3)(x, kernel)
    assert out.shape == (2, *size, 5) and out.dtype == jnp.float32
    assert rel_l2(out, conv3x3_float64(x, kernel)) <= 5e-6


def test_gradients_match_xla_convolution():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 10, 13, 4)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(3, 3, 4, 3)), jnp.float32)
    probe = jnp.asarray(rng.normal(size=(2, 10, 13, 3)), jnp.float32)

    def direct(x, k):
        return lax.conv_general_dilated(
            x,
            k,
            (1, 1),
            ((1, 1), (1, 1)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=lax.Precision.HIGHEST,
        )

    def loss(conv):
        return lambda x, k: jnp.sum(conv(x, k) * probe)

    ours = jax.grad(loss(winograd.conv3x3), argnums=(0, 1))(x, kernel)
    ref = jax.grad(loss(direct), argnums=(0, 1))(x, kernel)
    for a, b in zip(ours, ref, strict=True):
        assert rel_l2(a, b) <= 5e-6


def test_eligible_only_for_large_float32_maps():
    big = jnp.zeros((1, 64, 64, 8), jnp.float32)
    assert winograd.eligible(big, 64 * 64)
    assert not winograd.eligible(big.astype(jnp.bfloat16), 64 * 64)
    assert not winograd.eligible(jnp.zeros((1, 32, 32, 8), jnp.float32), 64 * 64)
    assert winograd.eligible(jnp.zeros((1, 1, 1, 8), jnp.float32), 0)
