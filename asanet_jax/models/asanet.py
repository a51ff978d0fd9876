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
from asanet_jax.models.config import ASANetConfig, resolve
from asanet_jax.models.convnext_v2 import ConvNeXtV2
from asanet_jax.models.fusion import CFM, SFM, SumFusion
from asanet_jax.models.heads import FCNHead, UPerHead
from asanet_jax.models.inputs import check_inputs

F32 = jnp.float32


class ASANet(nnx.Module):
    """The segmentor.

    ``model(optical, sar)`` takes NHWC float arrays normalised as the official loaders
    do (docs/design.md, section 5): optical (B, H, W, optical_channels),
    sar (B, H, W, sar_channels), H and W at least 32. It returns a dict:

    - ``logits``: (B, H, W, K) float32, decode logits bilinearly resized to input size;
    - ``decode_logits``: (B, H // 4, W // 4, K) float32, the UPerNet output;
    - ``aux_logits``: (B, H // 16, W // 16, K) float32 (map ``aux_in_index``), if present;
    - ``features``: the fused map of every stage (strides 4..32), compute dtype.

    Dropout, drop-path and BatchNorm statistics follow NNX's ``model.train()`` /
    ``model.eval()``.
    """

    def __init__(self, config: ml_collections.ConfigDict | dict | ASANetConfig, *, rngs: nnx.Rngs):
        config = resolve(config)
        if not isinstance(config, ASANetConfig):
            raise ValueError(
                f"ASANet needs an ASANet config, got architecture {config.architecture!r}"
            )
        self.config = config
        dtype = config.compute_dtype
        kernels = config.kernel_choice
        in_channels = {"optical": config.optical_channels, "sar": config.sar_channels}

        def stream(name):
            return ConvNeXtV2(
                in_channels[name],
                config.depths,
                config.channels,
                drop_path_rate=config.drop_path_rate,
                dtype=dtype,
                kernels=kernels,
                rngs=rngs,
            )

        self.optical = stream("optical") if "optical" in config.streams else None
        self.sar = stream("sar") if "sar" in config.streams else None
        two = len(config.streams) == 2
        self.sfms = (
            nnx.List([SFM(c, rngs=rngs) for c in config.channels]) if two and config.sfm else None
        )
        if two:
            fuse = (
                (lambda c: CFM(c, dtype=dtype, rngs=rngs))
                if config.fusion == "cfm"
                else (lambda c: SumFusion())
            )
            self.fusions = nnx.List([fuse(c) for c in config.channels])
        else:
            self.fusions = None
        self.decode_head = UPerHead(
            config.channels,
            config.decoder_channels,
            config.num_classes,
            pool_scales=config.pool_scales,
            dropout=config.dropout,
            dtype=dtype,
            kernels=kernels,
            rngs=rngs,
        )
        self.aux_head = (
            FCNHead(
                config.channels[config.aux_in_index],
                config.aux_channels,
                config.num_classes,
                num_convs=config.aux_num_convs,
                dropout=config.dropout,
                dtype=dtype,
                kernels=kernels,
                rngs=rngs,
            )
            if config.aux_channels
            else None
        )

    def encode(self, optical: jax.Array | None, sar: jax.Array | None) -> list[jax.Array]:
        """The fused map of every stage, finest first."""
        config = self.config
        check_inputs(config, optical, sar)
        if self.fusions is None:
            stream, x = (self.optical, optical) if self.optical is not None else (self.sar, sar)
            return stream(jnp.asarray(x, F32))

        # Inputs stay float32 into the (float32) stems, whose norms then hand the
        # compute dtype to everything after.
        x_opt, x_sar = jnp.asarray(optical, F32), jnp.asarray(sar, F32)
        features = []
        for i in range(len(config.depths)):
            x_opt = self.optical.run_stage(i, x_opt)
            x_sar = self.sar.run_stage(i, x_sar)
            if self.sfms is not None:
                x_opt, x_sar = self.sfms[i](x_opt, x_sar)
            # The normed maps replace the streams and feed the next stage, as in the
            # official ASANet.forward (unlike the plain backbone).
            x_opt = self.optical.norms[i](x_opt)
            x_sar = self.sar.norms[i](x_sar)
            features.append(self.fusions[i](x_opt, x_sar))
        return features

    def __call__(self, optical: jax.Array | None = None, sar: jax.Array | None = None) -> dict:
        features = self.encode(optical, sar)
        size = (optical if optical is not None else sar).shape[1:3]
        decode = self.decode_head(features).astype(F32)
        out = {
            "logits": torch_ops.resize_bilinear(decode, size),
            "decode_logits": decode,
            "features": features,
        }
        if self.aux_head is not None:
            out["aux_logits"] = self.aux_head(features[self.config.aux_in_index]).astype(F32)
        return out
