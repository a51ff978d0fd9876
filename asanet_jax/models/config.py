"""The models' configuration, ``config.model``: per architecture, one dataclass holds every
field, its default, its meaning and its validation; the ConfigDict that configs and the
command line override is derived from it.

``config.model.architecture`` names the architecture (``ARCHITECTURES``); a config without
it (every model.json before asanet-jax 0.4) is ASANet's.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import ml_collections

from asanet_jax.models.convnext_v2 import VARIANTS
from asanet_jax.models.kernels import WINOGRAD_MIN_PIXELS, Kernels
from asanet_jax.models.mit import MIT_VARIANTS

MODALITIES = ("optical+sar", "optical", "sar")
# model.json files and configs of asanet-jax 0.1 name the optical stream 'rgb'.
LEGACY_MODALITIES = {"rgb+sar": "optical+sar", "rgb": "optical"}
FUSIONS = ("cfm", "sum")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _fail(config, field, expected):
    raise ValueError(f"config.model.{field}={getattr(config, field)!r}: expected {expected}")


def _set(config, field, value):
    object.__setattr__(config, field, value)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """What every architecture's config has: the inputs, the classes and the arithmetic.

    Subclasses add their own fields and validation (``ASANetConfig``, ``CMXConfig``).
    """

    architecture: str = "asanet"
    num_classes: int = 6
    optical_channels: int = 3  # input bands of each stream
    sar_channels: int = 3
    # Compute dtype; parameters stay float32, norms/GRN/softmax run in float32.
    dtype: str = "float32"
    # Which arithmetic for the operations XLA:CPU is slow at: 'auto' (the CPU formulations
    # on CPU only, chosen at lowering), 'xla', 'cpu', or a subset such as
    # 'depthwise+layernorm' (see kernels.py).
    kernels: str = "auto"

    def __post_init__(self):
        for field in ("num_classes", "optical_channels", "sar_channels"):
            if int(getattr(self, field)) < 1:
                _fail(self, field, "a positive integer")
            _set(self, field, int(getattr(self, field)))
        if self.dtype not in DTYPES:
            _fail(self, "dtype", f"one of {sorted(DTYPES)}")
        Kernels.from_setting(self.kernels)  # raises naming the setting

    @property
    def streams(self) -> tuple[str, ...]:
        """('optical', 'sar'), or the one stream of a single-modality model."""
        return ("optical", "sar")

    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]

    @property
    def min_input_side(self) -> int:
        raise NotImplementedError

    @property
    def kernel_choice(self) -> Kernels:
        return Kernels.from_setting(self.kernels)

    def describe(self) -> str:
        """One line naming the architecture and its sizes (for the scripts' reports)."""
        raise NotImplementedError

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class ASANetConfig(ModelConfig):
    """ASANet's ``config.model``, validated; the defaults are the paper's model (two
    ConvNeXt V2 tiny streams, SFM + CFM, UPerNet + FCN aux, 82,904,764 parameters), and
    ``modalities`` gives the single-modality UPerNet baselines.

    ``depths``/``channels`` left empty take the ``backbone`` variant's; after
    construction they always hold the resolved values.

    Raises (on construction):
      ValueError: naming the field, its value and what was expected.
    """

    # ConvNeXt V2 variant (atto..huge); `depths`/`channels`, when set, override it.
    backbone: str = "tiny"
    depths: tuple[int, ...] = ()
    channels: tuple[int, ...] = ()
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
    drop_path_rate: float = 0.4  # training regularisation
    dropout: float = 0.1
    # Under the CPU formulations, 3x3 convs on float32 maps of at least this many pixels
    # run as Winograd F(4x4, 3x3); 0 = every one.
    winograd_min_pixels: int = WINOGRAD_MIN_PIXELS

    def __post_init__(self):
        super().__post_init__()

        def set_(field, value):
            _set(self, field, value)

        def fail(field, expected):
            _fail(self, field, expected)

        if self.architecture != "asanet":
            fail("architecture", "'asanet' for an ASANetConfig")
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
        if int(self.decoder_channels) < 1:
            fail("decoder_channels", "a positive integer")
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
        if int(self.winograd_min_pixels) < 0:
            fail("winograd_min_pixels", "a pixel count >= 0")
        for field in (
            "decoder_channels",
            "aux_channels",
            "aux_in_index",
            "aux_num_convs",
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
        return tuple(self.modalities.split("+"))

    @property
    def min_input_side(self) -> int:
        """The smallest image height and width the model takes: the stem and each later
        stage downsample by 4 and 2, and the coarsest map must keep a pixel."""
        return 2 ** (len(self.depths) + 1)

    @property
    def kernel_choice(self) -> Kernels:
        return Kernels.from_setting(self.kernels, self.winograd_min_pixels)

    def describe(self) -> str:
        return (
            f"ASANet, ConvNeXt V2 {self.backbone}: {self.modalities}, depths {self.depths}, "
            f"channels {self.channels}, {self.num_classes} classes, sfm={self.sfm}, "
            f"fusion={self.fusion}"
        )


@dataclasses.dataclass(frozen=True)
class CMXConfig(ModelConfig):
    """CMX's ``config.model`` (official ``RGBXTransformer`` + ``MLPDecoderHead``), validated;
    the defaults are the official model (two MiT-B2 streams, FRM + FFM after every stage,
    the all-MLP decoder of 512 channels, 66,563,982 parameters).

    ``embed_dims``/``num_heads``/``depths`` left empty take the ``backbone`` variant's
    (b0..b5, as in SegFormer); after construction they always hold the resolved values.

    Raises (on construction):
      ValueError: naming the field, its value and what was expected.
    """

    architecture: str = "cmx"
    backbone: str = "b2"
    embed_dims: tuple[int, ...] = ()
    num_heads: tuple[int, ...] = ()
    depths: tuple[int, ...] = ()
    sr_ratios: tuple[int, ...] = (8, 4, 2, 1)  # attention's spatial reduction per stage
    mlp_ratio: int = 4
    decoder_channels: int = 512
    drop_path_rate: float = 0.1  # training regularisation
    dropout: float = 0.1
    # The FFMs' BatchNorms are plain BatchNorm2d in the official code, so each GPU of the
    # official 2-GPU run normalised over its own 4 images. 1 (default): statistics over
    # the whole batch, as SyncBN; N > 1: over each of N equal consecutive parts of the
    # batch, the running statistics following the first part's (DDP broadcasts rank 0's
    # buffers). Reproduces the official run with 2, beside train.loss_replicas=2.
    ffm_bn_replicas: int = 1

    def __post_init__(self):
        super().__post_init__()
        if self.architecture != "cmx":
            _fail(self, "architecture", "'cmx' for a CMXConfig")
        sizes = {k: tuple(getattr(self, k) or ()) for k in ("embed_dims", "num_heads", "depths")}
        given = [k for k, v in sizes.items() if v]
        if given and len(given) != 3:
            missing = sorted(set(sizes) - set(given))
            _fail(self, missing[0], "embed_dims, num_heads and depths to be set together")
        if not given:
            if self.backbone not in MIT_VARIANTS:
                _fail(self, "backbone", f"one of {sorted(MIT_VARIANTS)} (or custom sizes)")
            names = ("embed_dims", "num_heads", "depths")
            sizes = dict(zip(names, MIT_VARIANTS[self.backbone], strict=True))
        for k, v in sizes.items():
            _set(self, k, tuple(int(x) for x in v))
        _set(self, "sr_ratios", tuple(int(x) for x in self.sr_ratios or ()))
        n = len(self.embed_dims)
        if n != 4:
            _fail(self, "embed_dims", "4 stages, as every MiT")
        for k in ("num_heads", "depths", "sr_ratios"):
            if len(getattr(self, k)) != n:
                _fail(self, k, f"one value per stage, as embed_dims {self.embed_dims}")
        for k in ("embed_dims", "num_heads", "depths", "sr_ratios"):
            if any(x < 1 for x in getattr(self, k)):
                _fail(self, k, "positive integers")
        if any(c % h for c, h in zip(self.embed_dims, self.num_heads, strict=True)):
            _fail(self, "num_heads", f"divisors of embed_dims {self.embed_dims}")
        for k in ("mlp_ratio", "decoder_channels", "ffm_bn_replicas"):
            if int(getattr(self, k)) < 1:
                _fail(self, k, "a positive integer")
            _set(self, k, int(getattr(self, k)))
        for k in ("drop_path_rate", "dropout"):
            if not 0.0 <= float(getattr(self, k)) < 1.0:
                _fail(self, k, "a rate in [0, 1)")
            _set(self, k, float(getattr(self, k)))
        by_shape = (self.embed_dims, self.num_heads, self.depths)
        name = next((k for k, v in MIT_VARIANTS.items() if v == by_shape), "custom")
        _set(self, "backbone", name)

    @property
    def min_input_side(self) -> int:
        """The smallest image height and width the model takes: every stage's map must be
        at least as large as its attention's spatial-reduction kernel."""
        side = 1
        while not all(s >= r for s, r in zip(_mit_sizes(side), self.sr_ratios, strict=True)):
            side += 1
        return side

    def describe(self) -> str:
        return (
            f"CMX, MiT-{self.backbone}: embed dims {self.embed_dims}, heads {self.num_heads}, "
            f"depths {self.depths}, decoder {self.decoder_channels}, {self.num_classes} classes"
        )


def _mit_sizes(side: int) -> list[int]:
    """A side's length after each MiT stage: a 7x7 stride-4 patch embedding padded by 3,
    then 3x3 stride-2 ones padded by 1, as PyTorch's convolutions floor."""
    sizes = [(side + 6 - 7) // 4 + 1]
    for _ in range(3):
        sizes.append((sizes[-1] + 2 - 3) // 2 + 1)
    return sizes


RESNET_DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}  # bottlenecks per layer
VGG_DEPTHS = {11: (1, 1, 2, 2, 2), 13: (2, 2, 2, 2, 2), 16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}
VGG_WIDTHS = (64, 128, 256, 512, 512)  # fixed by the official VGGBackbone


def _custom_or_depth(config, field, table, kind) -> None:
    """Resolve ``depth`` / a custom block-count field in place: a set field wins, and
    ``depth`` is then the table's depth of that shape (0 when none)."""
    blocks = tuple(int(b) for b in getattr(config, field) or ())
    if not blocks:
        if int(config.depth) not in table:
            _fail(config, "depth", f"one of {sorted(table)} (or custom {field})")
        blocks = table[int(config.depth)]
    n = len(next(iter(table.values())))
    if len(blocks) != n or any(b < 1 for b in blocks):
        raise ValueError(f"config.model.{field}={blocks!r}: expected {n} positive {kind} counts")
    _set(config, field, blocks)
    _set(config, "depth", next((d for d, b in table.items() if b == blocks), 0))


@dataclasses.dataclass(frozen=True)
class SAGateConfig(ModelConfig):
    """SA-Gate's ``config.model`` (official ``DualResNet`` + ``SAGateHead`` + FCN aux head),
    validated; the defaults are the official model (two ResNet-101 streams with a deep stem
    of widths 64, 64, 128, an SA-Gate after every layer, the ASPP head of 512 channels and
    the FCN aux head, 130,691,540 parameters; 121.25M without the aux head).

    ``layers`` left empty takes ``depth``'s bottleneck counts (50, 101, 152); after
    construction it always holds them, and ``depth`` is 0 for a custom shape.

    Raises (on construction):
      ValueError: naming the field, its value and what was expected.
    """

    architecture: str = "sagate"
    depth: int = 101
    layers: tuple[int, ...] = ()  # bottlenecks per ResNet layer; empty: depth's
    stem_width: int = 64  # the deep stem's widths: w, w, 2w
    decoder_channels: int = 512  # the ASPP head's width
    dilations: tuple[int, ...] = (6, 12, 18)  # ASPP's three dilated branches
    c1_channels: int = 48  # the projection of the stride-4 merge
    aux_channels: int = 512  # FCN aux head on the stride-32 merge; 0 = no aux head
    dropout: float = 0.1

    def __post_init__(self):
        super().__post_init__()
        if self.architecture != "sagate":
            _fail(self, "architecture", "'sagate' for a SAGateConfig")
        _custom_or_depth(self, "layers", RESNET_DEPTHS, "bottleneck")
        _set(self, "dilations", tuple(int(d) for d in self.dilations or ()))
        if len(self.dilations) != 3 or any(d < 1 for d in self.dilations):
            _fail(self, "dilations", "three positive dilations, as the official ASPP")
        for k in ("stem_width", "decoder_channels", "c1_channels"):
            if int(getattr(self, k)) < 1:
                _fail(self, k, "a positive integer")
            _set(self, k, int(getattr(self, k)))
        if int(self.aux_channels) < 0:
            _fail(self, "aux_channels", "0 (no aux head) or a positive width")
        _set(self, "aux_channels", int(self.aux_channels))
        if not 0.0 <= float(self.dropout) < 1.0:
            _fail(self, "dropout", "a rate in [0, 1)")
        _set(self, "dropout", float(self.dropout))

    @property
    def widths(self) -> tuple[int, ...]:
        """Each ResNet layer's output channels (bottleneck planes times 4)."""
        return (256, 512, 1024, 2048)

    @property
    def min_input_side(self) -> int:
        """Any side works: every stride-2 step rounds up, so the coarsest map keeps a
        pixel."""
        return 1

    def describe(self) -> str:
        name = f"ResNet-{self.depth}" if self.depth else f"ResNet with layers {self.layers}"
        return (
            f"SA-Gate, {name}: stem width {self.stem_width}, ASPP {self.decoder_channels}, "
            f"aux {self.aux_channels or 'none'}, {self.num_classes} classes"
        )


@dataclasses.dataclass(frozen=True)
class VFuseNetConfig(ModelConfig):
    """vFuseNet's ``config.model`` (official ``VFuseNetBackbone`` + two FCN heads),
    validated; the defaults are the official model (two VGG16-BN streams, a fusion conv
    per stage, the unpooling decoder, FCN heads of 16 channels on the full-resolution
    and the 1/2 maps, 55,169,548 parameters).

    ``stage_blocks`` left empty takes ``depth``'s conv counts (11, 13, 16, 19); after
    construction it always holds them, and ``depth`` is 0 for a custom shape.

    Raises (on construction):
      ValueError: naming the field, its value and what was expected.
    """

    architecture: str = "vfusenet"
    depth: int = 16
    stage_blocks: tuple[int, ...] = ()  # convs per VGG stage; empty: depth's
    head_channels: int = 16  # the FCN heads' width
    aux_head: bool = True  # the FCN aux head on the 1/2 map
    # The fusion and decoder convs' BatchNorms are plain BatchNorm2d in the official code
    # (the VGG streams' and heads' are SyncBN), so under the official 2-GPU run they
    # normalised over each GPU's 4 images. 1 (default): over the whole batch; N > 1: over
    # each of N equal parts, as CMX's ffm_bn_replicas.
    plain_bn_replicas: int = 1

    def __post_init__(self):
        super().__post_init__()
        if self.architecture != "vfusenet":
            _fail(self, "architecture", "'vfusenet' for a VFuseNetConfig")
        _custom_or_depth(self, "stage_blocks", VGG_DEPTHS, "conv")
        for k in ("head_channels", "plain_bn_replicas"):
            if int(getattr(self, k)) < 1:
                _fail(self, k, "a positive integer")
            _set(self, k, int(getattr(self, k)))
        _set(self, "aux_head", bool(self.aux_head))

    @property
    def widths(self) -> tuple[int, ...]:
        return VGG_WIDTHS

    @property
    def min_input_side(self) -> int:
        """Any side works: the model pads to a multiple of 32 and crops (see vfusenet.py)."""
        return 1

    def describe(self) -> str:
        name = f"VGG{self.depth}-BN" if self.depth else f"VGG-BN with stages {self.stage_blocks}"
        return (
            f"vFuseNet, {name}: heads {self.head_channels}, "
            f"aux {'on' if self.aux_head else 'off'}, {self.num_classes} classes"
        )


CONFIGS: dict[str, type[ModelConfig]] = {
    "asanet": ASANetConfig,
    "cmx": CMXConfig,
    "sagate": SAGateConfig,
    "vfusenet": VFuseNetConfig,
}
ARCHITECTURES = tuple(CONFIGS)


def default_model_config(architecture: str = "asanet") -> ml_collections.ConfigDict:
    """The fields of an architecture's config with their defaults, as a ConfigDict to
    override."""
    cls = _config_class(architecture)
    return ml_collections.ConfigDict({f.name: f.default for f in dataclasses.fields(cls)})


def _config_class(architecture) -> type[ModelConfig]:
    if architecture not in CONFIGS:
        raise ValueError(
            f"config.model.architecture={architecture!r}: expected one of {ARCHITECTURES}"
        )
    return CONFIGS[architecture]


def resolve(config: ml_collections.ConfigDict | dict | ModelConfig) -> ModelConfig:
    """The validated config of ``config.model`` (a ConfigDict or dict), of the class its
    ``architecture`` names (ASANet's when it names none).

    Raises:
      ValueError: an unknown architecture or field, or a value that does not fit (naming it).
    """
    if isinstance(config, ModelConfig):
        return config
    given = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
    cls = _config_class(given.setdefault("architecture", "asanet"))
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ValueError(
            f"config.model has unknown fields {unknown} for architecture "
            f"{given['architecture']!r}; known: {sorted(known)}"
        )
    return cls(**given)


def to_config(config: ModelConfig) -> ml_collections.ConfigDict:
    """The ConfigDict that resolves to ``config`` (custom sizes spelled out)."""
    return ml_collections.ConfigDict(config.to_dict())
