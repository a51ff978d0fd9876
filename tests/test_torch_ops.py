"""Each torch-exact building block against the PyTorch call it reproduces."""

import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx

from asanet_jax.models import torch_ops


def _nchw(x):
    return torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))


def _nhwc(t):
    return np.transpose(t.numpy(), (0, 2, 3, 1))


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        ((8, 8), (32, 32)),
        ((5, 7), (13, 9)),
        ((32, 34), (8, 9)),
        ((17, 3), (4, 11)),
        ((1, 1), (5, 6)),
    ],
)
def test_resize_bilinear_matches_interpolate(src, dst):
    x = np.random.default_rng(0).normal(size=(2, *src, 3)).astype(np.float32)
    ref = F.interpolate(_nchw(x), size=dst, mode="bilinear", align_corners=False)
    ours = np.asarray(torch_ops.resize_bilinear(x, dst))
    np.testing.assert_allclose(ours, _nhwc(ref), rtol=0, atol=2e-6)


def test_resize_bilinear_is_not_antialiased():
    # jax.image.resize antialiases when shrinking by default; PyTorch does not.
    x = np.random.default_rng(1).normal(size=(1, 32, 32, 1)).astype(np.float32)
    ref = _nhwc(F.interpolate(_nchw(x), size=(7, 7), mode="bilinear", align_corners=False))
    antialiased = np.asarray(jax.image.resize(x, (1, 7, 7, 1), "bilinear"))
    assert np.abs(antialiased - ref).max() > 1e-2
    np.testing.assert_allclose(np.asarray(torch_ops.resize_bilinear(x, (7, 7))), ref, atol=2e-6)


@pytest.mark.parametrize(("size", "scale"), [(7, 6), (4, 6), (9, 2), (10, 3), (5, 1), (2, 3)])
def test_adaptive_avg_pool_matches_torch(size, scale):
    x = np.random.default_rng(2).normal(size=(2, size, size + 3, 4)).astype(np.float32)
    ref = torch.nn.AdaptiveAvgPool2d(scale)(_nchw(x))
    np.testing.assert_allclose(
        np.asarray(torch_ops.adaptive_avg_pool(x, scale)), _nhwc(ref), atol=1e-6
    )


def test_gelu_is_exact_erf_gelu():
    x = np.linspace(-6, 6, 1001, dtype=np.float32)
    ref = torch.nn.GELU()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.asarray(torch_ops.gelu(x)), ref, atol=1e-6)
    tanh_version = np.asarray(jax.nn.gelu(x))  # what a careless port would use
    assert np.abs(tanh_version - ref).max() > 1e-4


def _drop_pattern(y):
    """Per (image, channel): is the whole map zero, or all equal to one value?"""
    flat = y.reshape(y.shape[0], -1, y.shape[-1])
    return np.all(flat == 0, axis=1), np.all(flat == flat[:, :1], axis=1)


def test_channel_dropout_has_dropout2d_semantics():
    rate, shape = 0.3, (16, 5, 6, 64)
    ones = np.ones(shape, np.float32)
    layer = torch_ops.channel_dropout(rate, rngs=nnx.Rngs(dropout=0))
    ours = np.asarray(layer(ones))
    torch.manual_seed(0)
    ref = _nhwc(F.dropout2d(_nchw(ones), rate, training=True))
    for y in (ours, ref):
        zero, const = _drop_pattern(y)
        assert const.all()  # whole channels are dropped, never single pixels
        kept = y[y != 0]
        np.testing.assert_allclose(np.unique(kept), [1 / (1 - rate)], rtol=1e-6)
        assert abs(zero.mean() - rate) < 0.06
    layer.eval()
    np.testing.assert_array_equal(np.asarray(layer(ones)), ones)


def test_drop_path_drops_whole_samples():
    rate = 0.5
    layer = torch_ops.drop_path(rate, rngs=nnx.Rngs(dropout=0))
    y = np.asarray(layer(np.ones((64, 3, 3, 4), np.float32)))
    per_sample = y.reshape(64, -1)
    assert np.all((per_sample == 0).all(1) | (per_sample == 1 / (1 - rate)).all(1))
    assert 0.3 < (per_sample == 0).all(1).mean() < 0.7


@pytest.mark.parametrize("mode", ["cpu", "xla", "auto"])
def test_depthwise_conv_matches_grouped_conv2d(mode):
    from asanet_jax.models.layers import depthwise_conv

    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 9, 13, 5)).astype(np.float32)
    w = rng.normal(size=(5, 1, 7, 7)).astype(np.float32)
    ref = F.conv2d(_nchw(x), torch.from_numpy(w), padding=3, groups=5)
    kernel = np.transpose(w, (2, 3, 1, 0))  # the converter's OIHW -> HWIO
    ours = jax.jit(depthwise_conv, static_argnums=2)(x, kernel, mode)
    np.testing.assert_allclose(np.asarray(ours), _nhwc(ref), atol=1e-5)


def test_depthwise_conv_gradients_match_torch():
    from asanet_jax.models.layers import depthwise_conv

    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 6, 5, 3)).astype(np.float32)
    w = rng.normal(size=(3, 1, 7, 7)).astype(np.float32)
    g = rng.normal(size=(2, 6, 5, 3)).astype(np.float32)
    xt, wt = _nchw(x).requires_grad_(), torch.from_numpy(w).requires_grad_()
    (F.conv2d(xt, wt, padding=3, groups=3) * _nchw(g)).sum().backward()
    kernel = np.transpose(w, (2, 3, 1, 0))
    for mode in ("cpu", "xla", "auto"):
        dx, dk = jax.grad(
            lambda a, k, m=mode: (depthwise_conv(a, k, m) * g).sum(),
            argnums=(0, 1),
        )(x, kernel)
        np.testing.assert_allclose(np.asarray(dx), _nhwc(xt.grad), atol=1e-4)
        np.testing.assert_allclose(
            np.asarray(dk), np.transpose(wt.grad.numpy(), (2, 3, 1, 0)), atol=1e-4
        )
