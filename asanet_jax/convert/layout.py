"""The official state_dict layout: every key, shape and dtype, in official order.

Written from the official module definitions (mmpretrain ``ConvNeXt``, ASANet's
``SFM``/``CFM``, mmseg ``UPerHead``/``FCNHead``), independently of our Flax modules,
so that a checkpoint can be checked key by key before anything is loaded, and an
export can be written in exactly the official form.
"""

from __future__ import annotations

from asanet_jax.models.config import ModelConfig

Layout = list[tuple[str, tuple[int, ...], str]]


def _conv(p: str, o: int, i: int, k: int, bias: bool = True) -> Layout:
    out = [(f"{p}.weight", (o, i, k, k), "float32")]
    return out + ([(f"{p}.bias", (o,), "float32")] if bias else [])


def _affine(p: str, c: int) -> Layout:
    return [(f"{p}.weight", (c,), "float32"), (f"{p}.bias", (c,), "float32")]


def _bn(p: str, c: int) -> Layout:
    return [
        *_affine(p, c),
        (f"{p}.running_mean", (c,), "float32"),
        (f"{p}.running_var", (c,), "float32"),
        (f"{p}.num_batches_tracked", (), "int64"),
    ]


def _conv_module(p: str, o: int, i: int, k: int) -> Layout:
    return _conv(f"{p}.conv", o, i, k, bias=False) + _bn(f"{p}.bn", o)


def convnext_layout(p: str, config: ModelConfig, in_channels: int) -> Layout:
    """mmpretrain ConvNeXt V2 (GRN, linear pointwise convs) under prefix ``p``."""
    ch = config.channels
    out = _conv(f"{p}.downsample_layers.0.0", ch[0], in_channels, 4)
    out += _affine(f"{p}.downsample_layers.0.1", ch[0])
    for i in range(1, len(ch)):
        out += _affine(f"{p}.downsample_layers.{i}.0", ch[i - 1])
        out += _conv(f"{p}.downsample_layers.{i}.1", ch[i], ch[i - 1], 2)
    for i, (d, c) in enumerate(zip(config.depths, ch, strict=True)):
        for j in range(d):
            b = f"{p}.stages.{i}.{j}"
            out += [(f"{b}.depthwise_conv.weight", (c, 1, 7, 7), "float32")]
            out += [(f"{b}.depthwise_conv.bias", (c,), "float32")]
            out += _affine(f"{b}.norm", c)
            out += [(f"{b}.pointwise_conv1.weight", (4 * c, c), "float32")]
            out += [(f"{b}.pointwise_conv1.bias", (4 * c,), "float32")]
            out += [(f"{b}.pointwise_conv2.weight", (c, 4 * c), "float32")]
            out += [(f"{b}.pointwise_conv2.bias", (c,), "float32")]
            out += [(f"{b}.grn.gamma", (4 * c,), "float32"), (f"{b}.grn.beta", (4 * c,), "float32")]
    for i, c in enumerate(ch):
        out += _affine(f"{p}.norm{i}", c)
    return out


def _cfm(p: str, c: int) -> Layout:
    out = _conv(f"{p}.catconv1", c, 2 * c, 1)
    for m in ("mlp1", "mlp2"):
        out += _conv_module(f"{p}.{m}.fc1", 4 * c, c, 1)
        out += [(f"{p}.{m}.dwconv.conv.weight", (4 * c, 1, 3, 3), "float32")]
        out += [(f"{p}.{m}.dwconv.conv.bias", (4 * c,), "float32")]
        out += _conv_module(f"{p}.{m}.fc2", c, 4 * c, 1)
    out += _conv(f"{p}.catconv2", c, 2 * c, 1)
    return out + _conv(f"{p}.fc1", c, c, 1) + _conv(f"{p}.fc2", c, c, 1)


def heads_layout(config: ModelConfig) -> Layout:
    ch, d, k = config.channels, config.decoder_channels, config.num_classes
    out = _conv("decode_head.conv_seg", k, d, 1)
    for s in range(len(config.pool_scales)):
        out += _conv_module(f"decode_head.psp_modules.{s}.1", d, ch[-1], 1)
    out += _conv_module("decode_head.bottleneck", d, ch[-1] + len(config.pool_scales) * d, 3)
    for i, c in enumerate(ch[:-1]):
        out += _conv_module(f"decode_head.lateral_convs.{i}", d, c, 1)
    for i in range(len(ch) - 1):
        out += _conv_module(f"decode_head.fpn_convs.{i}", d, d, 3)
    out += _conv_module("decode_head.fpn_bottleneck", d, len(ch) * d, 3)
    if config.aux_channels:
        a = config.aux_channels
        out += _conv("auxiliary_head.conv_seg", k, a, 1)
        widths = [ch[config.aux_in_index]] + [a] * config.aux_num_convs
        for j in range(config.aux_num_convs):
            out += _conv_module(f"auxiliary_head.convs.{j}", widths[j + 1], widths[j], 3)
    return out


def official_layout(config: ModelConfig) -> Layout:
    """Every key of the official mmseg state_dict for ``config``, in official order.

    Two-stream models are mmseg ``EarlyFusionSegmentor`` + ASANet; single-modality
    baselines are ``EncoderDecoder`` with the backbone directly under ``backbone.``.
    """
    if len(config.streams) == 1:
        in_ch = config.optical_channels if config.streams == ("optical",) else config.sar_channels
        return convnext_layout("backbone", config, in_ch) + heads_layout(config)
    out = convnext_layout("backbone.backbone", config, config.optical_channels)
    out += convnext_layout("backbone.backbone2", config, config.sar_channels)
    if config.sfm:
        for i, c in enumerate(config.channels):
            h = max(32, c // 16)
            out += _conv(f"backbone.FRMs.{i}.sconv.0", h, c, 1)
            out += _conv(f"backbone.FRMs.{i}.sconv.2", c, h, 1)
    if config.fusion == "cfm":
        for i, c in enumerate(config.channels):
            out += _cfm(f"backbone.FFMs.{i}", c)
    return out + heads_layout(config)
