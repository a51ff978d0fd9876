"""A plain-PyTorch CMX (two MiT streams, FRM + FFM per stage, MLP decoder): a baseline.

Written here from the official ``src/cmx.py`` of whu-pzhang/ASANet (``RGBXTransformer`` +
``MLPDecoderHead``) and its PIE config, without mmseg/mmcv, NCHW in and out, with the
official module names so that official checkpoints load into it with ``strict=True``.
``tests/test_torch_baseline.py`` checks it against the official CMX fixture.

Inside a MiT stage the activations are tokens, (B, N, C) with N = H * W row-major, as in
the official code; between stages and in the fusion modules they are NCHW.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# The paper's backbone (MiT-B2, config defaults) and the golden fixture's (smoke runs).
B2: dict = {}
MICRO = dict(
    embed_dims=(16, 32, 64, 128),
    num_heads=(1, 2, 2, 4),
    depths=(1, 1, 2, 1),
    sr_ratios=(8, 4, 2, 1),
    decoder_channels=32,
)
SIZES = {"b2": B2, "micro": MICRO}


def _up(x, size):
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _tokens(x):
    """(B, C, H, W) -> (B, H*W, C)."""
    return x.flatten(2).transpose(1, 2)


def _grid(x, h, w):
    """(B, H*W, C) -> (B, C, H, W)."""
    return x.transpose(1, 2).reshape(x.shape[0], -1, h, w)


def _heads(x, n):
    """(B, N, C) -> (B, n, N, C // n)."""
    b, length, c = x.shape
    return x.reshape(b, length, n, c // n).transpose(1, 2)


def _merge_heads(x):
    """(B, n, N, d) -> (B, N, n * d)."""
    b, n, length, d = x.shape
    return x.transpose(1, 2).reshape(b, length, n * d)


class DropPath(nn.Module):
    """Stochastic depth per sample (mmcv DropPath: kept samples scaled by 1 / keep)."""

    def __init__(self, rate=0.0):
        super().__init__()
        self.rate = rate

    def forward(self, x):
        if not self.training or self.rate <= 0:
            return x
        keep = 1 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


# --- MiT -------------------------------------------------------------------------------


class OverlapPatchEmbed(nn.Module):
    """Strided conv with padding k // 2, then LayerNorm (default eps 1e-5) on the tokens."""

    def __init__(self, in_ch, dim, k, stride):
        super().__init__()
        self.proj = nn.Conv2d(in_ch, dim, k, stride, padding=k // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        x = self.proj(x)
        h, w = x.shape[2:]
        return self.norm(_tokens(x)), h, w


class Attention(nn.Module):
    """Self-attention whose keys and values come from a map shrunk by sr_ratio (a strided
    conv + LayerNorm eps 1e-5, only when sr_ratio > 1); kv is one Linear, K then V."""

    def __init__(self, dim, num_heads, sr_ratio, qkv_bias=True):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x, h, w):
        q = _heads(self.q(x), self.num_heads)
        src = x
        if self.sr_ratio > 1:
            src = self.norm(_tokens(self.sr(_grid(x, h, w))))
        k, v = self.kv(src).chunk(2, dim=-1)
        # Scale 1 / sqrt(head dim), softmax over the keys: the official attention.
        out = F.scaled_dot_product_attention(
            q, _heads(k, self.num_heads), _heads(v, self.num_heads)
        )
        return self.proj(_merge_heads(out))


class DWConv(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x, h, w):
        return _tokens(self.dwconv(_grid(x, h, w)))


class Mlp(nn.Module):
    """Mix-FFN: Linear, depthwise 3x3, exact GELU, Linear."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x, h, w):
        return self.fc2(self.act(self.dwconv(self.fc1(x), h, w)))


class Block(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio, sr_ratio, drop_path):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, sr_ratio)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x, h, w):
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.mlp(self.norm2(x), h, w))


# --- FRM: feature rectification ----------------------------------------------------------


class ChannelWeights(nn.Module):
    """Per-channel gates for both streams from the avg- and max-pooled concatenation."""

    def __init__(self, dim):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(4 * dim, 4 * dim), nn.ReLU(), nn.Linear(4 * dim, 2 * dim), nn.Sigmoid()
        )

    def forward(self, a, b):
        x = torch.cat([a, b], 1)
        pooled = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], 1)  # (B, 4C)
        gates = self.mlp(pooled)[:, :, None, None]
        return gates.chunk(2, dim=1)  # for stream a's channels, for stream b's


class SpatialWeights(nn.Module):
    """Per-pixel gates for both streams from 1x1 convs on the concatenation."""

    def __init__(self, dim):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Conv2d(2 * dim, dim, 1), nn.ReLU(), nn.Conv2d(dim, 2, 1), nn.Sigmoid()
        )

    def forward(self, a, b):
        return self.mlp(torch.cat([a, b], 1)).chunk(2, dim=1)


class FeatureRectifyModule(nn.Module):
    """Each stream gets the other, gated by channel and by pixel, each with weight 0.5."""

    def __init__(self, dim, lambda_c=0.5, lambda_s=0.5):
        super().__init__()
        self.lambda_c, self.lambda_s = lambda_c, lambda_s
        self.channel_weights = ChannelWeights(dim)
        self.spatial_weights = SpatialWeights(dim)

    def forward(self, a, b):
        ca, cb = self.channel_weights(a, b)
        sa, sb = self.spatial_weights(a, b)
        # The gates computed from a's half scale a where it is added to b, and vice versa.
        out_a = a + self.lambda_c * cb * b + self.lambda_s * sb * b
        out_b = b + self.lambda_c * ca * a + self.lambda_s * sa * a
        return out_a, out_b


# --- FFM: feature fusion -----------------------------------------------------------------


class CrossAttention(nn.Module):
    """Efficient cross attention: each stream's (d x d) context K^T V, softmax over its
    rows (dim -2, the keys' channel), is read by the other stream's unprojected tokens."""

    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.kv1 = nn.Linear(dim, 2 * dim, bias=False)
        self.kv2 = nn.Linear(dim, 2 * dim, bias=False)

    def _context(self, kv, u):
        k, v = (_heads(t, self.num_heads) for t in kv(u).chunk(2, dim=-1))
        return torch.softmax(k.transpose(-2, -1) @ v * self.scale, dim=-2)

    def forward(self, u1, u2):
        ctx1, ctx2 = self._context(self.kv1, u1), self._context(self.kv2, u2)
        q1, q2 = _heads(u1, self.num_heads), _heads(u2, self.num_heads)
        return _merge_heads(q1 @ ctx2), _merge_heads(q2 @ ctx1)


class CrossPath(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.channel_proj1 = nn.Linear(dim, 2 * dim)
        self.channel_proj2 = nn.Linear(dim, 2 * dim)
        self.cross_attn = CrossAttention(dim, num_heads)
        self.end_proj1 = nn.Linear(2 * dim, dim)
        self.end_proj2 = nn.Linear(2 * dim, dim)
        self.norm1 = nn.LayerNorm(dim)  # mmcv LN default: eps 1e-5
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x1, x2):
        y1, u1 = F.relu(self.channel_proj1(x1)).chunk(2, dim=-1)
        y2, u2 = F.relu(self.channel_proj2(x2)).chunk(2, dim=-1)
        v1, v2 = self.cross_attn(u1, u2)
        out1 = self.norm1(x1 + self.end_proj1(torch.cat([y1, v1], -1)))
        out2 = self.norm2(x2 + self.end_proj2(torch.cat([y2, v2], -1)))
        return out1, out2


class ChannelEmbed(nn.Module):
    """2C -> C: BN(1x1 residual without bias + [1x1, dw 3x3, ReLU, 1x1, BN])."""

    def __init__(self, in_ch, out_ch):
        super().__init__()
        self.residual = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.channel_embed = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 1),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, groups=out_ch),
            nn.ReLU(),
            nn.Conv2d(out_ch, out_ch, 1),
            nn.BatchNorm2d(out_ch),
        )
        self.norm = nn.BatchNorm2d(out_ch)

    def forward(self, x):
        return self.norm(self.residual(x) + self.channel_embed(x))


class FeatureFusionModule(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.cross = CrossPath(dim, num_heads)
        self.channel_emb = ChannelEmbed(2 * dim, dim)

    def forward(self, a, b):
        h, w = a.shape[2:]
        x1, x2 = self.cross(_tokens(a), _tokens(b))
        return self.channel_emb(_grid(torch.cat([x1, x2], -1), h, w))


# --- the two-stream backbone ---------------------------------------------------------------


class RGBXTransformer(nn.Module):
    """Two MiT streams (optical: patch_embed/block/norm; SAR: the extra_* twins), FRM then
    FFM after every stage; returns the 4 fused maps, NCHW."""

    def __init__(self, embed_dims, num_heads, depths, sr_ratios, mlp_ratio=4, drop_path_rate=0.0):
        super().__init__()
        self.depths = tuple(depths)
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        cur = 0
        for s, (dim, heads, depth, sr) in enumerate(
            zip(embed_dims, num_heads, depths, sr_ratios, strict=True), start=1
        ):
            in_ch = 3 if s == 1 else embed_dims[s - 2]
            k, stride = (7, 4) if s == 1 else (3, 2)
            # Stochastic depth as the official code has it: stage 2's blocks all use one
            # rate, dpr[cur] in the optical stream but dpr[cur + 1] in the SAR stream (a
            # typo upstream, kept so training matches); other stages use dpr[cur + i].
            if s == 2:
                rates = [dpr[cur]] * depth
                extra_rates = [dpr[cur + 1]] * depth
            else:
                rates = extra_rates = dpr[cur : cur + depth]
            for prefix, stage_rates in (("", rates), ("extra_", extra_rates)):
                self.add_module(f"{prefix}patch_embed{s}", OverlapPatchEmbed(in_ch, dim, k, stride))
                blocks = [Block(dim, heads, mlp_ratio, sr, r) for r in stage_rates]
                self.add_module(f"{prefix}block{s}", nn.ModuleList(blocks))
                self.add_module(f"{prefix}norm{s}", nn.LayerNorm(dim, eps=1e-6))
            cur += depth
        self.FRMs = nn.ModuleList([FeatureRectifyModule(d) for d in embed_dims])
        self.FFMs = nn.ModuleList(
            [FeatureFusionModule(d, n) for d, n in zip(embed_dims, num_heads, strict=True)]
        )

    def _stage(self, prefix, s, x):
        x, h, w = getattr(self, f"{prefix}patch_embed{s}")(x)
        for block in getattr(self, f"{prefix}block{s}"):
            x = block(x, h, w)
        return _grid(getattr(self, f"{prefix}norm{s}")(x), h, w)

    def forward(self, rgb, sar):
        outs = []
        for s in range(1, len(self.depths) + 1):
            rgb, sar = self.FRMs[s - 1](self._stage("", s, rgb), self._stage("extra_", s, sar))
            outs.append(self.FFMs[s - 1](rgb, sar))  # the rectified maps go on, not the fused
        return outs


# --- decoder -------------------------------------------------------------------------------


class MLP(nn.Module):
    """Per-pixel Linear embedding of one stage's map, NCHW in and out."""

    def __init__(self, in_ch, ch):
        super().__init__()
        self.proj = nn.Linear(in_ch, ch)

    def forward(self, x):
        return F.conv2d(x, self.proj.weight[:, :, None, None], self.proj.bias)


class ConvModule(nn.Module):
    """mmcv ConvModule as the head builds it: 1x1 conv WITH bias, BN (eps 1e-3), ReLU."""

    def __init__(self, i, o):
        super().__init__()
        self.conv = nn.Conv2d(i, o, 1)
        self.bn = nn.BatchNorm2d(o, eps=1e-3)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class MLPDecoderHead(nn.Module):
    def __init__(self, in_channels, ch, num_classes, dropout=0.1):
        super().__init__()
        self.conv_seg = nn.Conv2d(ch, num_classes, 1)
        self.dropout = nn.Dropout2d(dropout)
        self.layers = nn.ModuleList([MLP(c, ch) for c in in_channels])
        self.fusion_conv = ConvModule(len(in_channels) * ch, ch)

    def forward(self, feats):
        size = feats[0].shape[2:]
        # Deepest stage first: c4, c3, c2, c1, each embedded then resized to stage 1's size.
        outs = [_up(self.layers[i](feats[i]), size) for i in reversed(range(len(feats)))]
        return self.conv_seg(self.dropout(self.fusion_conv(torch.cat(outs, 1))))


class TorchCMX(nn.Module):
    """CMX (MiT-B2 by default; FRM + FFM, MLP decoder). forward(x: (B, 6, H, W)) -> dict,
    channels 0-2 optical, 3-5 SAR."""

    def __init__(
        self,
        embed_dims=(64, 128, 320, 512),
        num_heads=(1, 2, 5, 8),
        depths=(3, 4, 6, 3),
        sr_ratios=(8, 4, 2, 1),
        decoder_channels=512,
        num_classes=6,
        drop_path_rate=0.1,
        dropout=0.1,
    ):
        super().__init__()
        self.backbone = RGBXTransformer(
            embed_dims, num_heads, depths, sr_ratios, drop_path_rate=drop_path_rate
        )
        self.decode_head = MLPDecoderHead(embed_dims, decoder_channels, num_classes, dropout)

    def forward(self, x):
        feats = self.backbone(x[:, :3], x[:, 3:])
        decode = self.decode_head(feats)
        return {"features": feats, "decode": decode, "logits": _up(decode, x.shape[2:])}


def loss(out, labels):
    """Decode CE on logits resized to the labels, ignore 255, mean over counted pixels."""
    return F.cross_entropy(_up(out["decode"], labels.shape[1:]), labels, ignore_index=255)
