"""The model's configuration, ``config.model``: one dataclass holds every field, its
default, its meaning and its validation; the ConfigDict that configs and the command
line override is derived from it.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import ml_collections

from asanet_jax.models.convnext_v2 import VARIANTS
from asanet_jax.models.kernels import WINOGRAD_MIN_PIXELS, Kernels

MODALITIES = ("optical+sar", "optical", "sar")
# model.json files and configs of asanet-jax 0.1 name the optical stream 'rgb'.
LEGACY_MODALITIES = {"rgb+sar": "optical+sar", "rgb": "optical"}
FUSIONS = ("cfm", "sum")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """``config.model``, validated; the defaults are the paper's model (two ConvNeXt V2
    tiny streams, SFM + CFM, UPerNet + FCN aux, 82,904,764 parameters).

    ``depths``/``channels`` left empty take the ``backbone`` variant's; after
    construction they always hold the resolved values.

    Raises (on construction):
      ValueError: naming the field, its value and what was expected.
    """

    # ConvNeXt V2 variant (atto..huge); `depths`/`channels`, when set, override it.
    backbone: str = "tiny"
    depths: tuple[int, ...] = ()
    channels: tuple[int, ...] = ()
    num_classes: int = 6
    decoder_channels: int = 256  # UPerNet width
    pool_scales: tuple[int, ...] = (1, 2, 3, 6)  # PPM bins
    # FCN auxiliary head on fused map `aux_in_index`; 0 channels = no aux head.
    aux_channels: int = 128
    aux_in_index: int = 2
    aux_num_convs: int = 1
    sfm: bool = True  # Semantic Focusing Modules
    # 'cfm' (the paper) or 'sum' (the "PWA" ablation); 'none' for one stream.
    fusion: str = "cfm"
    # 'optical+sar' (ASANet) or 'optical' / 'sar' (the single-modality UPerNet baselines).
    modalities: str = "optical+sar"
    optical_channels: int = 3  # input bands of each stream
    sar_channels: int = 3
    drop_path_rate: float = 0.4  # training regularisation
    dropout: float = 0.1
    # Compute dtype; parameters stay float32, norms/GRN/softmax run in float32.
    dtype: str = "float32"
    # Which arithmetic for the operations XLA:CPU is slow at: 'auto' (the CPU formulations
    # on CPU only, chosen at lowering), 'xla', 'cpu', or a subset such as
    # 'depthwise+layernorm' (see kernels.py).
    kernels: str = "auto"
    # Under the CPU formulations, 3x3 convs on float32 maps of at least this many pixels
    # run as Winograd F(4x4, 3x3); 0 = every one.
    winograd_min_pixels: int = WINOGRAD_MIN_PIXELS

    def __post_init__(self):
        def set_(field, value):
            object.__setattr__(self, field, value)

        def fail(field, expected):
            raise ValueError(f"config.model.{field}={getattr(self, field)!r}: expected {expected}")

        set_("modalities", LEGACY_MODALITIES.get(self.modalities, self.modalities))
        depths, channels = tuple(self.depths or ()), tuple(self.channels or ())
        if bool(depths) != bool(channels):
            fail("depths" if not depths else "channels", "depths and channels to be set together")
        if not depths:
            if self.backbone not in VARIANTS:
                fail("backbone", f"one of {sorted(VARIANTS)} (or custom depths/channels)")
            depths, channels = VARIANTS[self.backbone]
        set_("depths", tuple(int(d) for d in depths))
        set_("channels", tuple(int(c) for c in channels))
        set_("pool_scales", tuple(int(s) for s in self.pool_scales or ()))
        if len(self.depths) != len(self.channels) or len(self.depths) < 2:
            fail("depths", f"as many stages as channels {self.channels}, at least 2")
        if any(d < 1 for d in self.depths):
            fail("depths", "positive block counts")
        if any(c < 1 for c in self.channels):
            fail("channels", "positive widths")
        for field in ("num_classes", "decoder_channels", "optical_channels", "sar_channels"):
            if int(getattr(self, field)) < 1:
                fail(field, "a positive integer")
        if int(self.aux_channels) < 0:
            fail("aux_channels", "0 (no aux head) or a positive width")
        if not 0 <= int(self.aux_in_index) < len(self.depths):
            fail("aux_in_index", f"a stage index in [0, {len(self.depths)})")
        if int(self.aux_num_convs) < 1:
            fail("aux_num_convs", "at least 1")
        if not self.pool_scales or any(s < 1 for s in self.pool_scales):
            fail("pool_scales", "positive pooled sizes")
        if self.modalities not in MODALITIES:
            fail("modalities", f"one of {MODALITIES}")
        two_stream = self.modalities == "optical+sar"
        if two_stream and self.fusion not in FUSIONS:
            fail("fusion", f"one of {FUSIONS}")
        if not two_stream and (self.sfm or self.fusion != "none"):
            raise ValueError(
                f"config.model.modalities={self.modalities!r} is a single-stream model: "
                f"set sfm=False and fusion='none' (got sfm={self.sfm!r}, "
                f"fusion={self.fusion!r})"
            )
        for field in ("drop_path_rate", "dropout"):
            if not 0.0 <= float(getattr(self, field)) < 1.0:
                fail(field, "a rate in [0, 1)")
        if self.dtype not in DTYPES:
            fail("dtype", f"one of {sorted(DTYPES)}")
        Kernels.from_setting(self.kernels)  # raises naming the setting
        if int(self.winograd_min_pixels) < 0:
            fail("winograd_min_pixels", "a pixel count >= 0")
        for field in (
            "num_classes",
            "decoder_channels",
            "aux_channels",
            "aux_in_index",
            "aux_num_convs",
            "optical_channels",
            "sar_channels",
            "winograd_min_pixels",
        ):
            set_(field, int(getattr(self, field)))
        set_("sfm", bool(self.sfm))
        set_("drop_path_rate", float(self.drop_path_rate))
        set_("dropout", float(self.dropout))
        set_("backbone", self._variant_name())

    def _variant_name(self) -> str:
        by_shape = (self.depths, self.channels)
        return next((name for name, dc in VARIANTS.items() if dc == by_shape), "custom")

    @property
    def streams(self) -> tuple[str, ...]:
        """('optical', 'sar'), or the one stream of a single-modality model."""
        return tuple(self.modalities.split("+"))

    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]

    @property
    def min_input_side(self) -> int:
        """The smallest image height and width the model takes: the stem and each later
        stage downsample by 4 and 2, and the coarsest map must keep a pixel."""
        return 2 ** (len(self.depths) + 1)

    @property
    def kernel_choice(self) -> Kernels:
        return Kernels.from_setting(self.kernels, self.winograd_min_pixels)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def default_model_config() -> ml_collections.ConfigDict:
    """The fields of ``ModelConfig`` with their defaults, as a ConfigDict to override."""
    return ml_collections.ConfigDict({f.name: f.default for f in dataclasses.fields(ModelConfig)})


def resolve(config: ml_collections.ConfigDict | dict | ModelConfig) -> ModelConfig:
    """A validated ``ModelConfig`` from ``config.model`` (a ConfigDict or dict).

    Raises:
      ValueError: an unknown field, or a value that does not fit (naming it).
    """
    if isinstance(config, ModelConfig):
        return config
    given = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ValueError(f"config.model has unknown fields {unknown}; known: {sorted(known)}")
    return ModelConfig(**given)


def to_config(config: ModelConfig) -> ml_collections.ConfigDict:
    """The ConfigDict that resolves to ``config`` (custom depths/channels spelled out)."""
    return ml_collections.ConfigDict(config.to_dict())
