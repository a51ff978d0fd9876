"""vFuseNet (Audebert et al., 2018), as the official repository builds it for the paper's
table (``VFuseNetBackbone`` + two ``FCNHead``s): two VGG-BN streams, a fusion per stage
``enc = x_optical + x_sar + ConvBNReLU([x_optical; x_sar])``, and per stage an
independent decoder that max-unpools ``enc`` with the OPTICAL stream's pooling indices
and runs its convs. The main FCN head reads decoder 0 (full resolution), the aux head
decoder 1 (1/2).

Decoder stages 2..4 are computed by the official code but feed nothing, and the encoder
stages 2..4 feed only them. Their parameters are kept here (``stages.{2,3,4}``,
``fuse_convs.{2,3,4}``, ``decoder.{2,3,4}``), so official checkpoints convert both ways
and the parameter count is the official one, but the forward pass never computes them;
``official_features`` does, for the parity test. The official training gives them no
gradient, and ``DORMANT`` lets the optimiser leave them untouched.

Input sides: the official model fails unless H and W are multiples of 32 (its deeper
unpooling indices run out of range). This one pads the input at the bottom and right
with zeros up to the next multiple of 32, as mmseg's data preprocessor pads, runs the
heads on the padded maps and crops every output back; it never resizes. Submodule
names follow the official ones. NHWC.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from asanet_jax.models import torch_ops
from asanet_jax.models.config import VFuseNetConfig, resolve
from asanet_jax.models.heads import FCNHead
from asanet_jax.models.inputs import check_inputs
from asanet_jax.models.layers import ConvModule

F32 = jnp.float32
MULTIPLE = 32  # the input sides the official model takes
USED_STAGES = 2  # decoders 0 and 1 feed the heads; 2..4 feed nothing
# Our parameter paths that the official forward pass never uses (regexes).
DORMANT = (
    r"(optical|sar)\.stages\.[2-9]\..+",
    r"fuse_convs\.[2-9]\..+",
    r"decoder\.[2-9]\..+",
)


class VGGStream(nnx.Module):
    """One VGG-BN stream: per stage, 3x3 ConvModules with a conv bias (mmcv ``ConvModule``
    with ``bias=True``), then a 2x2 max-pool that returns its indices."""

    def __init__(self, bands: int, config: VFuseNetConfig, *, dtype, kernels, rngs: nnx.Rngs):
        stages, cin = [], bands
        for n, width in zip(config.stage_blocks, config.widths, strict=True):
            blocks = []
            for _ in range(n):
                blocks.append(
                    ConvModule(
                        cin,
                        width,
                        3,
                        padding=1,
                        use_bias=True,
                        dtype=dtype,
                        kernels=kernels,
                        rngs=rngs,
                    )
                )
                cin = width
            stages.append(nnx.List(blocks))
        self.stages = nnx.List(stages)

    def run_stage(self, i: int, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(pooled, window-local pooling indices) of stage ``i``."""
        for block in self.stages[i]:
            x = block(x)
        return torch_ops.max_pool_2x2_with_indices(x)


class VFuseNet(nnx.Module):
    """The segmentor.

    ``model(optical, sar)`` takes NHWC float arrays normalised as the official loaders
    do: optical (B, H, W, optical_channels), sar (B, H, W, sar_channels), any H and W
    (padded to multiples of 32 and cropped back, see the module docstring). It returns:

    - ``logits``: (B, H, W, K) float32, the main head's output (full resolution);
    - ``decode_logits``: the same array (the main head runs at input size);
    - ``aux_logits``: (B, ceil(H / 2), ceil(W / 2), K) float32, if ``aux_head``;
    - ``features``: the two decoder outputs the heads read, finest first:
      (B, H, W, 64) and (B, ceil(H / 2), ceil(W / 2), 64), compute dtype.

    BatchNorm statistics follow NNX's ``model.train()`` / ``model.eval()`` (there is no
    dropout).
    """

    def __init__(
        self, config: ml_collections.ConfigDict | dict | VFuseNetConfig, *, rngs: nnx.Rngs
    ):
        config = resolve(config)
        if not isinstance(config, VFuseNetConfig):
            raise ValueError(
                f"vFuseNet needs a vFuseNet config, got architecture {config.architecture!r}"
            )
        self.config = config
        dtype, kernels = config.compute_dtype, config.kernel_choice
        opts = dict(dtype=dtype, kernels=kernels, rngs=rngs)
        plain = dict(bn_replicas=config.plain_bn_replicas, **opts)
        widths = config.widths
        self.optical = VGGStream(config.optical_channels, config, **opts)
        self.sar = VGGStream(config.sar_channels, config, **opts)
        self.fuse_convs = nnx.List([ConvModule(2 * w, w, 3, padding=1, **plain) for w in widths])
        decoder = []
        for i, (n, cin) in enumerate(zip(config.stage_blocks, widths, strict=True)):
            cout = 64 if i == 0 else widths[i - 1]
            n = n - 1 if i == 0 else n
            decoder.append(
                nnx.List(
                    [
                        ConvModule(cin, cin if k < n - 1 else cout, 3, padding=1, **plain)
                        for k in range(n)
                    ]
                )
            )
        self.decoder = nnx.List(decoder)

        def head():
            return FCNHead(64, config.head_channels, config.num_classes, dropout=0.0, **opts)

        self.decode_head = head()
        self.aux_head = head() if config.aux_head else None

    def _decoders(self, optical: jax.Array, sar: jax.Array, stages: int) -> list[jax.Array]:
        """The outputs of decoders 0..stages-1 on inputs whose sides are multiples of 32."""
        dtype = self.config.compute_dtype
        x_opt, x_sar = optical.astype(dtype), sar.astype(dtype)
        outs = []
        for i in range(stages):
            x_opt, indices = self.optical.run_stage(i, x_opt)
            x_sar, _ = self.sar.run_stage(i, x_sar)
            enc = x_opt + x_sar + self.fuse_convs[i](jnp.concatenate([x_opt, x_sar], axis=-1))
            x = torch_ops.max_unpool_2x2(enc, indices)
            for block in self.decoder[i]:
                x = block(x)
            outs.append(x)
        return outs

    def _padded(self, optical, sar):
        check_inputs(self.config, optical, sar)
        h, w = optical.shape[1:3]
        pad = ((0, 0), (0, -h % MULTIPLE), (0, -w % MULTIPLE), (0, 0))
        return jnp.pad(jnp.asarray(optical, F32), pad), jnp.pad(jnp.asarray(sar, F32), pad)

    def official_features(self, optical: jax.Array, sar: jax.Array) -> list[jax.Array]:
        """All five decoder outputs in the official ``extract_feat`` order (decoder 4
        first, full resolution last), the unused ones included; H and W multiples of 32."""
        check_inputs(self.config, optical, sar)
        if optical.shape[1] % MULTIPLE or optical.shape[2] % MULTIPLE:
            raise ValueError(f"official_features needs sides that are multiples of {MULTIPLE}")
        outs = self._decoders(jnp.asarray(optical, F32), jnp.asarray(sar, F32), 5)
        return outs[::-1]

    def __call__(self, optical: jax.Array, sar: jax.Array) -> dict:
        h, w = optical.shape[1:3]
        half = (-(-h // 2), -(-w // 2))
        dec0, dec1 = self._decoders(*self._padded(optical, sar), USED_STAGES)
        # The heads run on the padded maps; only their outputs are cropped.
        logits = self.decode_head(dec0).astype(F32)[:, :h, :w]
        out = {
            "logits": logits,
            "decode_logits": logits,
            "features": [dec0[:, :h, :w], dec1[:, : half[0], : half[1]]],
        }
        if self.aux_head is not None:
            out["aux_logits"] = self.aux_head(dec1).astype(F32)[:, : half[0], : half[1]]
        return out
