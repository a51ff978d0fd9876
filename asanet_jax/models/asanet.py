"""ASANet: two ConvNeXt V2 streams, SFM + CFM after every stage, UPerNet + FCN heads.

Also the paper's ablations (no SFM, sum fusion) and single-modality UPerNet
baselines, all from one ``config.model``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from asanet_jax.models import torch_ops
from asanet_jax.models.config import ModelSpec, resolve
from asanet_jax.models.convnext_v2 import ConvNeXtV2
from asanet_jax.models.fusion import CFM, SFM, SumFusion
from asanet_jax.models.heads import FCNHead, UPerHead

F32 = jnp.float32


class ASANet(nnx.Module):
    """The segmentor.

    ``model(rgb, sar)`` takes NHWC float arrays normalised as the official loaders
    do (DESIGN.md section 3): rgb (B, H, W, optical_channels), sar (B, H, W,
    sar_channels), H and W at least 32. It returns a dict:

    - ``logits``: (B, H, W, K) float32, decode logits bilinearly resized to input size;
    - ``decode_logits``: (B, H // 4, W // 4, K) float32, the UPerNet output;
    - ``aux_logits``: (B, H // 16, W // 16, K) float32 (map ``aux_in_index``), if present;
    - ``features``: the fused map of every stage (strides 4..32), compute dtype.

    Dropout, drop-path and BatchNorm statistics follow NNX's ``model.train()`` /
    ``model.eval()``.
    """

    def __init__(self, config: ml_collections.ConfigDict | dict | ModelSpec, *, rngs: nnx.Rngs):
        spec = config if isinstance(config, ModelSpec) else resolve(config)
        self.spec = spec
        dtype = spec.compute_dtype
        kernels = spec.kernel_choice
        in_channels = {"rgb": spec.optical_channels, "sar": spec.sar_channels}

        def stream(name):
            return ConvNeXtV2(
                in_channels[name],
                spec.depths,
                spec.channels,
                drop_path_rate=spec.drop_path_rate,
                dtype=dtype,
                kernels=kernels,
                rngs=rngs,
            )

        self.optical = stream("rgb") if "rgb" in spec.streams else None
        self.sar = stream("sar") if "sar" in spec.streams else None
        two = len(spec.streams) == 2
        self.sfms = (
            nnx.List([SFM(c, rngs=rngs) for c in spec.channels]) if two and spec.sfm else None
        )
        if two:
            fuse = (
                (lambda c: CFM(c, dtype=dtype, rngs=rngs))
                if spec.fusion == "cfm"
                else (lambda c: SumFusion())
            )
            self.fusions = nnx.List([fuse(c) for c in spec.channels])
        else:
            self.fusions = None
        self.decode_head = UPerHead(
            spec.channels,
            spec.decoder_channels,
            spec.num_classes,
            pool_scales=spec.pool_scales,
            dropout=spec.dropout,
            dtype=dtype,
            kernels=kernels,
            rngs=rngs,
        )
        self.aux_head = (
            FCNHead(
                spec.channels[spec.aux_in_index],
                spec.aux_channels,
                spec.num_classes,
                num_convs=spec.aux_num_convs,
                dropout=spec.dropout,
                dtype=dtype,
                kernels=kernels,
                rngs=rngs,
            )
            if spec.aux_channels
            else None
        )

    def _check_input(self, name: str, x, channels: int):
        if x is None:
            raise ValueError(f"modalities={self.spec.modalities!r} needs the {name} input")
        if x.ndim != 4 or x.shape[-1] != channels:
            raise ValueError(
                f"{name} input has shape {tuple(x.shape)}: expected NHWC (B, H, W, {channels})"
            )
        min_size = 2 ** (len(self.spec.depths) + 1)
        if x.shape[1] < min_size or x.shape[2] < min_size:
            raise ValueError(
                f"{name} input is {x.shape[1]}x{x.shape[2]}: the backbone downsamples by "
                f"{min_size}, so H and W must be at least {min_size}"
            )

    def encode(self, rgb: jax.Array | None, sar: jax.Array | None) -> list[jax.Array]:
        """The fused map of every stage, finest first."""
        spec = self.spec
        if self.optical is not None:
            self._check_input("rgb", rgb, spec.optical_channels)
        if self.sar is not None:
            self._check_input("sar", sar, spec.sar_channels)
        both = self.optical is not None and self.sar is not None
        if both and rgb.shape[:3] != sar.shape[:3]:
            raise ValueError(
                f"rgb {tuple(rgb.shape)} and sar {tuple(sar.shape)} differ in batch or size"
            )
        if self.fusions is None:
            stream, x = (self.optical, rgb) if self.optical is not None else (self.sar, sar)
            return stream(jnp.asarray(x, F32))

        # Inputs stay float32 into the (float32) stems, whose norms then hand the
        # compute dtype to everything after.
        x_rgb, x_sar = jnp.asarray(rgb, F32), jnp.asarray(sar, F32)
        features = []
        for i in range(len(spec.depths)):
            x_rgb = self.optical.run_stage(i, x_rgb)
            x_sar = self.sar.run_stage(i, x_sar)
            if self.sfms is not None:
                x_rgb, x_sar = self.sfms[i](x_rgb, x_sar)
            # The normed maps replace the streams and feed the next stage, as in the
            # official ASANet.forward (unlike the plain backbone).
            x_rgb = self.optical.norms[i](x_rgb)
            x_sar = self.sar.norms[i](x_sar)
            features.append(self.fusions[i](x_rgb, x_sar))
        return features

    def __call__(self, rgb: jax.Array | None = None, sar: jax.Array | None = None) -> dict:
        features = self.encode(rgb, sar)
        size = (rgb if rgb is not None else sar).shape[1:3]
        decode = self.decode_head(features).astype(F32)
        out = {
            "logits": torch_ops.resize_bilinear(decode, size),
            "decode_logits": decode,
            "features": features,
        }
        if self.aux_head is not None:
            out["aux_logits"] = self.aux_head(features[self.spec.aux_in_index]).astype(F32)
        return out


WEIGHTS = (nnx.Param, nnx.BatchStat)


def build_with_weights(spec: ModelSpec, fill, *, seed: int = 0) -> ASANet:
    """A model whose parameters and BatchNorm statistics come from elsewhere.

    ``fill`` receives the abstract weight State (ShapeDtypeStructs) and returns it
    with concrete values. The weights are never randomly initialised; only the
    dropout RNG streams are created (XLA drops the rest of init). Eval mode.
    """

    def make():
        return ASANet(spec, rngs=nnx.Rngs(params=seed, dropout=seed + 1))

    graphdef, weights, _ = nnx.split(nnx.eval_shape(make), WEIGHTS, ...)
    rest = jax.jit(lambda: nnx.split(make(), WEIGHTS, ...)[2])()
    model = nnx.merge(graphdef, fill(weights), rest)
    model.eval()
    return model


def build_model(config: ml_collections.ConfigDict | dict, *, seed: int = 0) -> ASANet:
    """A freshly initialised model in train mode from ``config.model``."""
    return ASANet(config, rngs=nnx.Rngs(params=seed, dropout=seed + 1))


def count_params(model: nnx.Module) -> int:
    """Number of trainable parameters (BatchNorm statistics excluded)."""
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
