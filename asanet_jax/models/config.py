"""The model's ConfigDict (``config.model``) and its validation.

Every field is documented here once; ``configs/*.py`` and the converter fill it.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import ml_collections

from asanet_jax.models.convnext_v2 import VARIANTS
from asanet_jax.models.kernels import WINOGRAD_MIN_PIXELS, Kernels

MODALITIES = ("rgb+sar", "rgb", "sar")
FUSIONS = ("cfm", "sum")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def default_model_config() -> ml_collections.ConfigDict:
    """The paper's model: two ConvNeXt V2 tiny streams, SFM + CFM, UPerNet + FCN aux."""
    return ml_collections.ConfigDict(
        {
            # ConvNeXt V2 variant name (atto..huge); `depths`/`channels`, when set,
            # override it for a custom backbone.
            "backbone": "tiny",
            "depths": (),
            "channels": (),
            "num_classes": 6,
            "decoder_channels": 256,
            "pool_scales": (1, 2, 3, 6),
            # FCN auxiliary head on fused map `aux_in_index`; 0 channels = no aux head.
            "aux_channels": 128,
            "aux_in_index": 2,
            "aux_num_convs": 1,
            "sfm": True,
            # 'cfm' (the paper) or 'sum' (the "PWA" ablation); two-stream models only.
            "fusion": "cfm",
            # 'rgb+sar' (ASANet) or 'rgb' / 'sar' (the single-modality UPerNet baselines).
            "modalities": "rgb+sar",
            "optical_channels": 3,
            "sar_channels": 3,
            "drop_path_rate": 0.4,
            "dropout": 0.1,
            # Compute dtype; parameters stay float32, norms/GRN/softmax run in float32.
            "dtype": "float32",
            # Which arithmetic for the operations XLA:CPU is slow at: 'auto' (the CPU
            # formulations on CPU only, chosen at lowering), 'xla', 'cpu', or a subset
            # such as 'depthwise+layernorm' (see models/kernels.py).
            "kernels": "auto",
            # Under the CPU formulations, 3x3 convs on float32 maps of at least this
            # many pixels run as Winograd F(4x4, 3x3); 0 = every one.
            "winograd_min_pixels": WINOGRAD_MIN_PIXELS,
        }
    )


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A validated, fully resolved ``config.model``."""

    depths: tuple[int, ...]
    channels: tuple[int, ...]
    num_classes: int
    decoder_channels: int
    pool_scales: tuple[int, ...]
    aux_channels: int
    aux_in_index: int
    aux_num_convs: int
    sfm: bool
    fusion: str
    modalities: str
    optical_channels: int
    sar_channels: int
    drop_path_rate: float
    dropout: float
    dtype: str
    kernels: str = "auto"
    winograd_min_pixels: int = WINOGRAD_MIN_PIXELS

    @property
    def kernel_choice(self) -> Kernels:
        return Kernels.from_setting(self.kernels, self.winograd_min_pixels)

    @property
    def streams(self) -> tuple[str, ...]:
        return tuple(self.modalities.split("+"))

    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]


def resolve(config: ml_collections.ConfigDict | dict) -> ModelSpec:
    """Validate ``config.model`` and resolve the backbone variant.

    Raises:
      ValueError: naming the field, its value and what was expected.
    """
    cfg = dict(default_model_config().to_dict())
    given = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
    unknown = sorted(set(given) - set(cfg))
    if unknown:
        raise ValueError(f"config.model has unknown fields {unknown}; known: {sorted(cfg)}")
    cfg.update(given)

    def fail(field, expected):
        raise ValueError(f"config.model.{field}={cfg[field]!r}: expected {expected}")

    depths, channels = tuple(cfg["depths"] or ()), tuple(cfg["channels"] or ())
    if bool(depths) != bool(channels):
        fail("depths" if not depths else "channels", "depths and channels to be set together")
    if not depths:
        if cfg["backbone"] not in VARIANTS:
            fail("backbone", f"one of {sorted(VARIANTS)} (or custom depths/channels)")
        depths, channels = VARIANTS[cfg["backbone"]]
    if len(depths) != len(channels) or len(depths) < 2:
        fail("depths", f"as many stages as channels {channels}, at least 2")
    if any(int(d) < 1 for d in depths):
        fail("depths", "positive block counts")
    if any(int(c) < 1 for c in channels):
        fail("channels", "positive widths")
    for field in ("num_classes", "decoder_channels", "optical_channels", "sar_channels"):
        if int(cfg[field]) < 1:
            fail(field, "a positive integer")
    if int(cfg["aux_channels"]) < 0:
        fail("aux_channels", "0 (no aux head) or a positive width")
    if not 0 <= int(cfg["aux_in_index"]) < len(depths):
        fail("aux_in_index", f"a stage index in [0, {len(depths)})")
    if int(cfg["aux_num_convs"]) < 1:
        fail("aux_num_convs", "at least 1")
    if not cfg["pool_scales"] or any(int(s) < 1 for s in cfg["pool_scales"]):
        fail("pool_scales", "positive pooled sizes")
    if cfg["modalities"] not in MODALITIES:
        fail("modalities", f"one of {MODALITIES}")
    two_stream = cfg["modalities"] == "rgb+sar"
    if two_stream and cfg["fusion"] not in FUSIONS:
        fail("fusion", f"one of {FUSIONS}")
    if not two_stream and (cfg["sfm"] or cfg["fusion"] != "none"):
        raise ValueError(
            f"config.model.modalities={cfg['modalities']!r} is a single-stream model: "
            f"set sfm=False and fusion='none' (got sfm={cfg['sfm']!r}, "
            f"fusion={cfg['fusion']!r})"
        )
    for field in ("drop_path_rate", "dropout"):
        if not 0.0 <= float(cfg[field]) < 1.0:
            fail(field, "a rate in [0, 1)")
    if cfg["dtype"] not in DTYPES:
        fail("dtype", f"one of {sorted(DTYPES)}")
    Kernels.from_setting(cfg["kernels"])  # raises naming the setting
    if int(cfg["winograd_min_pixels"]) < 0:
        fail("winograd_min_pixels", "a pixel count >= 0")
    return ModelSpec(
        depths=tuple(int(d) for d in depths),
        channels=tuple(int(c) for c in channels),
        num_classes=int(cfg["num_classes"]),
        decoder_channels=int(cfg["decoder_channels"]),
        pool_scales=tuple(int(s) for s in cfg["pool_scales"]),
        aux_channels=int(cfg["aux_channels"]),
        aux_in_index=int(cfg["aux_in_index"]),
        aux_num_convs=int(cfg["aux_num_convs"]),
        sfm=bool(cfg["sfm"]),
        fusion=cfg["fusion"],
        modalities=cfg["modalities"],
        optical_channels=int(cfg["optical_channels"]),
        sar_channels=int(cfg["sar_channels"]),
        drop_path_rate=float(cfg["drop_path_rate"]),
        dropout=float(cfg["dropout"]),
        dtype=cfg["dtype"],
        kernels=cfg["kernels"],
        winograd_min_pixels=int(cfg["winograd_min_pixels"]),
    )


def to_config(spec: ModelSpec) -> ml_collections.ConfigDict:
    """The ConfigDict that resolves to ``spec`` (custom depths/channels spelled out)."""
    d = dataclasses.asdict(spec)
    d["backbone"] = next(
        (n for n, dc in VARIANTS.items() if dc == (spec.depths, spec.channels)), "custom"
    )
    return ml_collections.ConfigDict(d)
