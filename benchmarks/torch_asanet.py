"""A plain-PyTorch ASANet: the side-by-side baseline for the benchmarks.

Written here from docs/design.md, section 2 (no mmseg/mmcv needed), NCHW, with the official module
names so that official checkpoints load into it with ``strict=True``.
``tests/test_torch_baseline.py`` checks it against the official fixture as closely
as our Flax model is checked, which is what makes its timings a fair baseline.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over channels of an NCHW tensor (mmpretrain LN2d)."""

    def forward(self, x):
        return F.layer_norm(
            x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps
        ).permute(0, 3, 1, 2)


class GRN(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(c))
        self.beta = nn.Parameter(torch.zeros(c))

    def forward(self, x):  # NHWC
        gx = torch.norm(x, p=2, dim=(1, 2), keepdim=True)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
        return self.gamma * (x * nx) + self.beta + x


class Block(nn.Module):
    def __init__(self, c, drop_path=0.0):
        super().__init__()
        self.depthwise_conv = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.pointwise_conv1 = nn.Linear(c, 4 * c)
        self.act = nn.GELU()
        self.grn = GRN(4 * c)
        self.pointwise_conv2 = nn.Linear(4 * c, c)
        self.drop_path = drop_path

    def forward(self, x):
        y = self.depthwise_conv(x).permute(0, 2, 3, 1)
        y = self.pointwise_conv2(self.grn(self.act(self.pointwise_conv1(self.norm(y)))))
        y = y.permute(0, 3, 1, 2)
        if self.training and self.drop_path > 0:
            keep = 1 - self.drop_path
            mask = x.new_empty(x.shape[0], 1, 1, 1).bernoulli_(keep)
            y = y * mask / keep
        return x + y


class ConvNeXtV2(nn.Module):
    def __init__(self, in_ch, depths, channels, drop_path_rate=0.0):
        super().__init__()
        self.downsample_layers = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(in_ch, channels[0], 4, 4), LayerNorm2d(channels[0], eps=1e-6))]
        )
        for i in range(1, len(depths)):
            self.downsample_layers.append(
                nn.Sequential(
                    LayerNorm2d(channels[i - 1], eps=1e-6),
                    nn.Conv2d(channels[i - 1], channels[i], 2, 2),
                )
            )
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.stages = nn.ModuleList()
        for d, c in zip(depths, channels, strict=True):
            self.stages.append(nn.Sequential(*[Block(c, rates.pop(0)) for _ in range(d)]))
        for i, c in enumerate(channels):
            self.add_module(f"norm{i}", LayerNorm2d(c, eps=1e-6))


class SFM(nn.Module):
    def __init__(self, c):
        super().__init__()
        h = max(32, c // 16)
        self.sconv = nn.Sequential(nn.Conv2d(c, h, 1), nn.GELU(), nn.Conv2d(h, c, 1))

    def forward(self, a, b):
        za = self.sconv(torch.amax(a - b, dim=(2, 3), keepdim=True))
        zb = self.sconv(torch.amax(b - a, dim=(2, 3), keepdim=True))
        return a + a * torch.sigmoid(za), b + b * torch.sigmoid(zb)


class ConvBN(nn.Module):
    """mmcv ConvModule: conv (no bias) + BN (+ ReLU)."""

    def __init__(self, i, o, k, relu=True):
        super().__init__()
        self.conv = nn.Conv2d(i, o, k, padding=k // 2, bias=False)
        self.bn = nn.BatchNorm2d(o)
        self.relu = relu

    def forward(self, x):
        x = self.bn(self.conv(x))
        return F.relu(x) if self.relu else x


class DWReLU6(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, groups=c)

    def forward(self, x):
        return F.relu6(self.conv(x))


class MLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.fc1 = ConvBN(c, 4 * c, 1, relu=False)
        self.dwconv = DWReLU6(4 * c)
        self.fc2 = ConvBN(4 * c, c, 1, relu=False)

    def forward(self, x):
        return self.fc2(self.dwconv(self.fc1(x)))


class CFM(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.catconv1 = nn.Conv2d(2 * c, c, 1)
        self.mlp1, self.mlp2 = MLP(c), MLP(c)
        self.catconv2 = nn.Conv2d(2 * c, c, 1)
        self.fc1, self.fc2 = nn.Conv2d(c, c, 1), nn.Conv2d(c, c, 1)

    def forward(self, a, b):
        g = F.adaptive_avg_pool2d(self.catconv1(torch.cat([a, b], 1)), 1)
        w1 = a * torch.sigmoid(self.mlp1(g))
        w2 = b * torch.sigmoid(self.mlp2(g))
        c = self.catconv2(torch.cat([w1, w2], 1))
        return w1 * F.softmax(self.fc1(c), dim=1) + w2 * F.softmax(self.fc2(c), dim=1)


class TwoStream(nn.Module):
    def __init__(self, depths, channels, drop_path_rate):
        super().__init__()
        self.backbone = ConvNeXtV2(3, depths, channels, drop_path_rate)
        self.backbone2 = ConvNeXtV2(3, depths, channels, drop_path_rate)
        self.FRMs = nn.ModuleList([SFM(c) for c in channels])
        self.FFMs = nn.ModuleList([CFM(c) for c in channels])

    def forward(self, a, b):
        outs = []
        for i in range(len(self.FFMs)):
            a = self.backbone.stages[i](self.backbone.downsample_layers[i](a))
            b = self.backbone2.stages[i](self.backbone2.downsample_layers[i](b))
            a, b = self.FRMs[i](a, b)
            a = getattr(self.backbone, f"norm{i}")(a)
            b = getattr(self.backbone2, f"norm{i}")(b)
            outs.append(self.FFMs[i](a, b))
        return outs


def _up(x, size):
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class UPerHead(nn.Module):
    def __init__(self, in_channels, ch, num_classes, pool_scales=(1, 2, 3, 6)):
        super().__init__()
        self.conv_seg = nn.Conv2d(ch, num_classes, 1)
        self.pool_scales = pool_scales
        self.psp_modules = nn.ModuleList(
            [
                nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvBN(in_channels[-1], ch, 1))
                for s in pool_scales
            ]
        )
        self.bottleneck = ConvBN(in_channels[-1] + len(pool_scales) * ch, ch, 3)
        self.lateral_convs = nn.ModuleList([ConvBN(c, ch, 1) for c in in_channels[:-1]])
        self.fpn_convs = nn.ModuleList([ConvBN(ch, ch, 3) for _ in in_channels[:-1]])
        self.fpn_bottleneck = ConvBN(len(in_channels) * ch, ch, 3)
        self.dropout = nn.Dropout2d(0.1)

    def forward(self, feats):
        x = feats[-1]
        psp = [x] + [_up(m(x), x.shape[2:]) for m in self.psp_modules]
        lat = [m(f) for m, f in zip(self.lateral_convs, feats[:-1], strict=True)]
        lat.append(self.bottleneck(torch.cat(psp, 1)))
        for i in range(len(lat) - 1, 0, -1):
            lat[i - 1] = lat[i - 1] + _up(lat[i], lat[i - 1].shape[2:])
        outs = [m(v) for m, v in zip(self.fpn_convs, lat[:-1], strict=True)] + [lat[-1]]
        outs = [outs[0]] + [_up(o, outs[0].shape[2:]) for o in outs[1:]]
        return self.conv_seg(self.dropout(self.fpn_bottleneck(torch.cat(outs, 1))))


class FCNHead(nn.Module):
    def __init__(self, in_ch, ch, num_classes):
        super().__init__()
        self.conv_seg = nn.Conv2d(ch, num_classes, 1)
        self.convs = nn.Sequential(ConvBN(in_ch, ch, 3))
        self.dropout = nn.Dropout2d(0.1)

    def forward(self, x):
        return self.conv_seg(self.dropout(self.convs(x)))


class TorchASANet(nn.Module):
    """ASANet (SFM + CFM, UPerNet, FCN aux on map 2). forward(x: (B, 6, H, W)) -> dict."""

    def __init__(
        self,
        depths=(3, 3, 9, 3),
        channels=(96, 192, 384, 768),
        num_classes=6,
        decoder_channels=256,
        aux_channels=128,
        drop_path_rate=0.4,
    ):
        super().__init__()
        self.backbone = TwoStream(depths, channels, drop_path_rate)
        self.decode_head = UPerHead(channels, decoder_channels, num_classes)
        self.auxiliary_head = FCNHead(channels[2], aux_channels, num_classes)

    def forward(self, x):
        feats = self.backbone(x[:, :3], x[:, 3:])
        decode = self.decode_head(feats)
        return {
            "features": feats,
            "decode": decode,
            "aux": self.auxiliary_head(feats[2]),
            "logits": _up(decode, x.shape[2:]),
        }


def loss(out, labels):
    """Decode CE + 0.4 aux CE on logits resized to the labels, ignore 255."""
    size = labels.shape[1:]
    ce = lambda z: F.cross_entropy(_up(z, size), labels, ignore_index=255)  # noqa: E731
    return ce(out["decode"]) + 0.4 * ce(out["aux"])
