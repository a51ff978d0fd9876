"""SA-Gate (Chen et al., 2020), as the official repository builds it for the paper's
table: two ResNet streams (``DualResNet``: a deep stem, then bottleneck layers whose
stride sits on the 3x3 conv), a Separation-and-Aggregation gate after every layer, the
ASPP decoder ``SAGateHead`` on the last merge with a skip from the first, and an FCN aux
head on the last merge.

Submodule names follow the official ones where the official module is one per stream
(``conv1``/``hha_conv1`` -> ``optical.stem``/``sar.stem``, ``layer{i}`` -> ``layers.{i-1}``,
``sagates.{i}``, ``decode_head.aspp.*``), so the converter's table stays a rename. All
tensors NHWC.

One official quirk is reproduced on purpose: the first bottleneck of every layer gives
both streams the SAME downsample module (``downsample`` and ``hha_downsample`` are one
object). Here it is ``downsamples.{i}``, called once per stream: one set of weights, its
gradient the sum over both streams, and in training its BatchNorm normalises each stream
with that stream's statistics and updates the running statistics twice per step, optical
first, as PyTorch does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from asanet_jax.models import torch_ops
from asanet_jax.models.config import SAGateConfig, resolve
from asanet_jax.models.heads import FCNHead
from asanet_jax.models.inputs import check_inputs
from asanet_jax.models.layers import BatchNorm, ConvModule, conv
from asanet_jax.models.mit import linear

F32 = jnp.float32
EXPANSION = 4  # bottleneck output channels / planes
REDUCTION = 16  # the FSP channel gate's bottleneck


def leaky_relu(x: jax.Array) -> jax.Array:
    """``nn.LeakyReLU()``: slope 0.01."""
    return jax.nn.leaky_relu(x, 0.01)


class Stem(nnx.Module):
    """The deep stem (official ``conv1`` Sequential, then ``bn1``, ReLU, max-pool):
    3x3/2 conv 3->w, BN, ReLU, 3x3 conv w->w, BN, ReLU, 3x3 conv w->2w, BN, ReLU,
    MaxPool 3/2/1. (B, H, W, bands) -> (B, ceil(H / 4), ceil(W / 4), 2w)."""

    def __init__(self, bands: int, width: int, *, dtype, rngs: nnx.Rngs):
        opts = dict(use_bias=False, dtype=dtype, rngs=rngs)
        self.conv1 = conv(bands, width, 3, stride=2, padding=1, **opts)
        self.bn1 = BatchNorm(width)
        self.conv2 = conv(width, width, 3, padding=1, **opts)
        self.bn2 = BatchNorm(width)
        self.conv3 = conv(width, 2 * width, 3, padding=1, **opts)
        self.norm = BatchNorm(2 * width)  # the official DualResNet.bn1

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jax.nn.relu(self.bn1(self.conv1(x)))
        x = jax.nn.relu(self.bn2(self.conv2(x)))
        x = jax.nn.relu(self.norm(self.conv3(x)))
        return torch_ops.max_pool_3x3_s2(x)


class Downsample(nnx.Module):
    """A layer's residual projection: 1x1 conv with the layer's stride (no bias), BN."""

    def __init__(self, in_channels, channels, stride, *, dtype, rngs: nnx.Rngs):
        self.conv = conv(
            in_channels, channels, 1, stride=stride, use_bias=False, dtype=dtype, rngs=rngs
        )
        self.bn = BatchNorm(channels)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.bn(self.conv(x))


class Bottleneck(nnx.Module):
    """One stream's half of the official ``DualBottleneck``: 1x1 conv -> BN -> ReLU ->
    3x3 conv (the stride) -> BN -> ReLU -> 1x1 conv (x4) -> BN, plus the residual (the
    given downsample, or the input), ReLU. (B, H, W, C) -> (B, H / s, W / s, 4 planes)."""

    def __init__(self, in_channels, planes, stride, *, dtype, rngs: nnx.Rngs):
        opts = dict(use_bias=False, dtype=dtype, rngs=rngs)
        self.conv1 = conv(in_channels, planes, 1, **opts)
        self.bn1 = BatchNorm(planes)
        self.conv2 = conv(planes, planes, 3, stride=stride, padding=1, **opts)
        self.bn2 = BatchNorm(planes)
        self.conv3 = conv(planes, planes * EXPANSION, 1, **opts)
        self.bn3 = BatchNorm(planes * EXPANSION)

    def __call__(self, x: jax.Array, downsample: Downsample | None = None) -> jax.Array:
        y = jax.nn.relu(self.bn1(self.conv1(x)))
        y = jax.nn.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return jax.nn.relu(y + (x if downsample is None else downsample(x)))


class ResNetStream(nnx.Module):
    """One stream: the deep stem and the bottleneck layers (without the downsamples,
    which the two streams share, see ``SAGate``'s module docstring)."""

    def __init__(self, bands: int, config: SAGateConfig, *, dtype, rngs: nnx.Rngs):
        self.stem = Stem(bands, config.stem_width, dtype=dtype, rngs=rngs)
        channels = 2 * config.stem_width
        layers = []
        for i, n in enumerate(config.layers):
            planes = 64 * 2**i
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(Bottleneck(channels, planes, stride, dtype=dtype, rngs=rngs))
                channels = planes * EXPANSION
            layers.append(nnx.List(blocks))
        self.layers = nnx.List(layers)


class FSP(nnx.Module):
    """Feature Separation Part: the main path plus the guide path weighted per channel by
    ``sigmoid(fc2(relu(fc1(avgpool([guide; main])))))``. Two (B, H, W, C) -> (B, H, W, C)."""

    def __init__(self, channels: int, *, rngs: nnx.Rngs):
        # On (B, 2C) pooled vectors: float32 costs nothing there.
        self.fc1 = linear(2 * channels, channels // REDUCTION, dtype=F32, rngs=rngs)
        self.fc2 = linear(channels // REDUCTION, channels, dtype=F32, rngs=rngs)

    def __call__(self, guide: jax.Array, main: jax.Array) -> jax.Array:
        pooled = jnp.concatenate([guide, main], axis=-1).astype(F32).mean(axis=(1, 2))
        w = jax.nn.sigmoid(self.fc2(jax.nn.relu(self.fc1(pooled))))
        return main + w[:, None, None, :].astype(main.dtype) * guide


class SAGate(nnx.Module):
    """Separation-and-Aggregation gate: each stream rectified by the other (FSP), two 1x1
    gate convs on the rectified pair, a softmax over the two gates, and
    ``merge = optical * a + sar * b`` of the UNrectified inputs. The next layer gets
    ``relu((x + merge) / 2)`` per stream; the head gets ``merge``, before that ReLU.
    Two (B, H, W, C) -> ((optical', sar'), merge)."""

    def __init__(self, channels: int, *, dtype, rngs: nnx.Rngs):
        self.fsp_rgb = FSP(channels, rngs=rngs)
        self.fsp_hha = FSP(channels, rngs=rngs)
        self.gate_rgb = conv(2 * channels, 1, 1, dtype=dtype, rngs=rngs)
        self.gate_hha = conv(2 * channels, 1, 1, dtype=dtype, rngs=rngs)

    def __call__(self, rgb: jax.Array, sar: jax.Array):
        rec_rgb = self.fsp_rgb(sar, rgb)
        rec_sar = self.fsp_hha(rgb, sar)
        both = jnp.concatenate([rec_rgb, rec_sar], axis=-1)
        gates = jnp.concatenate([self.gate_rgb(both), self.gate_hha(both)], axis=-1)
        a = jax.nn.softmax(gates.astype(F32), axis=-1).astype(rgb.dtype)
        merge = rgb * a[..., :1] + sar * a[..., 1:]
        return (jax.nn.relu((rgb + merge) / 2), jax.nn.relu((sar + merge) / 2)), merge


class ASPP(nnx.Module):
    """The head's ASPP: a 1x1 and three dilated 3x3 convs (padding = dilation, no bias),
    one BatchNorm over the four concatenated, LeakyReLU, a 1x1 reduction; plus a global
    branch (mean over H, W -> 1x1 conv -> BN on 1x1 maps -> LeakyReLU -> 1x1 conv) added
    everywhere; BN, LeakyReLU. (B, H, W, C) -> (B, H, W, channels)."""

    def __init__(self, in_channels, channels, dilations, *, dtype, rngs: nnx.Rngs):
        opts = dict(use_bias=False, dtype=dtype, rngs=rngs)
        self.map_convs = nnx.List(
            [conv(in_channels, channels, 1, **opts)]
            + [conv(in_channels, channels, 3, padding=d, dilation=d, **opts) for d in dilations]
        )
        self.map_bn = BatchNorm(4 * channels)
        self.global_pooling_conv = conv(in_channels, channels, 1, **opts)
        self.global_pooling_bn = BatchNorm(channels)
        self.red_conv = conv(4 * channels, channels, 1, **opts)
        self.pool_red_conv = conv(channels, channels, 1, **opts)
        self.red_bn = BatchNorm(channels)

    def __call__(self, x: jax.Array) -> jax.Array:
        out = jnp.concatenate([m(x) for m in self.map_convs], axis=-1)
        out = self.red_conv(leaky_relu(self.map_bn(out)))
        pool = x.astype(F32).mean(axis=(1, 2), keepdims=True).astype(x.dtype)
        pool = leaky_relu(self.global_pooling_bn(self.global_pooling_conv(pool)))
        out = out + self.pool_red_conv(pool)
        return leaky_relu(self.red_bn(out))


class SAGateHead(nnx.Module):
    """The official ``SAGateHead``: ASPP on the last merge, bilinearly resized to the first
    merge's size, concatenated with a 1x1 ConvModule projection of the first merge, two
    3x3 ConvModules, Dropout2d, the 1x1 classifier. Merges finest first ->
    (B, H_0, W_0, num_classes)."""

    def __init__(self, config: SAGateConfig, *, dtype, kernels, rngs: nnx.Rngs):
        d, c1 = config.decoder_channels, config.c1_channels
        first, last = config.widths[0], config.widths[-1]
        opts = dict(dtype=dtype, kernels=kernels, rngs=rngs)
        self.aspp = ASPP(last, d, config.dilations, dtype=dtype, rngs=rngs)
        self.c1_bottleneck = ConvModule(first, c1, 1, **opts)
        self.last_conv = nnx.List(
            [ConvModule(d + c1, d, 3, padding=1, **opts), ConvModule(d, d, 3, padding=1, **opts)]
        )
        self.dropout = torch_ops.channel_dropout(config.dropout, rngs=rngs)
        self.conv_seg = conv(d, config.num_classes, 1, dtype=dtype, rngs=rngs)

    def __call__(self, merges) -> jax.Array:
        skip = self.c1_bottleneck(merges[0])
        x = torch_ops.resize_bilinear(self.aspp(merges[-1]), skip.shape[1:3])
        x = jnp.concatenate([x, skip], axis=-1)
        for m in self.last_conv:
            x = m(x)
        return self.conv_seg(self.dropout(x))


class SAGateNet(nnx.Module):
    """The segmentor.

    ``model(optical, sar)`` takes NHWC float arrays normalised as the official loaders
    do: optical (B, H, W, optical_channels), sar (B, H, W, sar_channels), any H and W.
    It returns:

    - ``logits``: (B, H, W, K) float32, decode logits bilinearly resized to input size;
    - ``decode_logits``: (B, ceil(H / 4), ceil(W / 4), K) float32, the head's output;
    - ``aux_logits``: (B, ceil(H / 32), ceil(W / 32), K) float32, if ``aux_channels``;
    - ``features``: the four merges (strides 4..32), compute dtype.

    Dropout and BatchNorm statistics follow NNX's ``model.train()`` / ``model.eval()``.
    """

    def __init__(self, config: ml_collections.ConfigDict | dict | SAGateConfig, *, rngs: nnx.Rngs):
        config = resolve(config)
        if not isinstance(config, SAGateConfig):
            raise ValueError(
                f"SA-Gate needs a SA-Gate config, got architecture {config.architecture!r}"
            )
        self.config = config
        dtype, kernels = config.compute_dtype, config.kernel_choice
        self.optical = ResNetStream(config.optical_channels, config, dtype=dtype, rngs=rngs)
        self.sar = ResNetStream(config.sar_channels, config, dtype=dtype, rngs=rngs)
        ins = (2 * config.stem_width, *config.widths[:-1])
        self.downsamples = nnx.List(
            [
                Downsample(c, w, 1 if i == 0 else 2, dtype=dtype, rngs=rngs)
                for i, (c, w) in enumerate(zip(ins, config.widths, strict=True))
            ]
        )
        self.sagates = nnx.List([SAGate(w, dtype=dtype, rngs=rngs) for w in config.widths])
        self.decode_head = SAGateHead(config, dtype=dtype, kernels=kernels, rngs=rngs)
        self.aux_head = (
            FCNHead(
                config.widths[-1],
                config.aux_channels,
                config.num_classes,
                dropout=config.dropout,
                dtype=dtype,
                kernels=kernels,
                rngs=rngs,
            )
            if config.aux_channels
            else None
        )

    def encode(self, optical: jax.Array, sar: jax.Array) -> list[jax.Array]:
        """The merge of every layer, finest first."""
        check_inputs(self.config, optical, sar)
        dtype = self.config.compute_dtype
        x_opt = self.optical.stem(jnp.asarray(optical, F32).astype(dtype))
        x_sar = self.sar.stem(jnp.asarray(sar, F32).astype(dtype))
        merges = []
        for i in range(len(self.config.layers)):
            for j, (b_opt, b_sar) in enumerate(
                zip(self.optical.layers[i], self.sar.layers[i], strict=True)
            ):
                shared = self.downsamples[i] if j == 0 else None
                x_opt, x_sar = b_opt(x_opt, shared), b_sar(x_sar, shared)
            (x_opt, x_sar), merge = self.sagates[i](x_opt, x_sar)
            merges.append(merge)
        return merges

    def __call__(self, optical: jax.Array, sar: jax.Array) -> dict:
        merges = self.encode(optical, sar)
        decode = self.decode_head(merges).astype(F32)
        out = {
            "logits": torch_ops.resize_bilinear(decode, optical.shape[1:3]),
            "decode_logits": decode,
            "features": merges,
        }
        if self.aux_head is not None:
            out["aux_logits"] = self.aux_head(merges[-1]).astype(F32)
        return out
