"""What each dataset is: classes, palette, normalisation and the official recipe's settings.

Channel conventions (docs/design.md, section 5): the official loaders decode with OpenCV, so the
optical stream receives the first three bands of the file in reverse order (B,G,R for an
RGB file), and single-band SAR is replicated to three channels. `optical_bands` and
`sar_bands` say which stored bands feed the model, in model channel order; the means and
stds are in that same order.
"""

from __future__ import annotations

import dataclasses
import json

from asanet_jax.labels import IGNORE


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Everything the pipeline, training and evaluation need to know about a dataset."""

    name: str
    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    optical_mean: tuple[float, ...]
    optical_std: tuple[float, ...]
    sar_mean: tuple[float, ...]
    sar_std: tuple[float, ...]
    # Stored bands that feed the model, in model channel order (0-based). None means
    # OpenCV colour decoding, as the official loaders: see `opencv_color_bands`.
    optical_bands: tuple[int, ...] | None = None
    sar_bands: tuple[int, ...] | None = None
    ignore_index: int = IGNORE
    crop_size: tuple[int, int] = (256, 256)
    # RandomResize target scale (long, short) before the ratio; official (1024, 256) at 256.
    train_scale: tuple[int, int] = (1024, 256)
    hflip_prob: float = 0.5
    vflip_prob: float = 0.5
    tta_ratios: tuple[float, ...] = (0.75, 1.0, 1.25)
    train_split: str = "train"
    eval_split: str = "val"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __post_init__(self):
        if len(self.palette) != len(self.classes):
            raise ValueError(
                f"dataset {self.name!r}: {len(self.palette)} palette colours for "
                f"{len(self.classes)} classes; give one RGB colour per class"
            )
        for field, stats, bands in (
            ("optical", (self.optical_mean, self.optical_std), self.optical_bands or (0, 0, 0)),
            ("sar", (self.sar_mean, self.sar_std), self.sar_bands or (0, 0, 0)),
        ):
            for stat_name, stat in zip(("mean", "std"), stats, strict=True):
                if len(stat) != len(bands):
                    raise ValueError(
                        f"dataset {self.name!r}: {field}_{stat_name} has {len(stat)} values "
                        f"but {field}_bands selects {len(bands)} channels"
                    )
            if any(s <= 0 for s in stats[1]):
                raise ValueError(f"dataset {self.name!r}: {field}_std must be positive")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> DatasetSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown dataset spec fields {unknown}; known: {sorted(known)}")
        return cls(**{k: tuplify(v) for k, v in d.items()})


def tuplify(v):
    """JSON lists back to (nested) tuples, as the frozen specs hold them."""
    if isinstance(v, list):
        return tuple(tuplify(x) for x in v)
    return v


_PIE_PALETTE = ((128, 128, 128), (235, 51, 36), (255, 253, 85), (66, 236, 245), (56, 168, 0))
_WHU_DDHR_OPTICAL = dict(
    optical_mean=(80.475, 98.217, 106.364),
    optical_std=(29.48, 26.953, 24.829),
    sar_mean=(53.837,) * 3,
    sar_std=(48.475,) * 3,
)

PIE_RGB_SAR = DatasetSpec(
    name="pie_rgb_sar",
    classes=("background", "city", "road", "water", "forest", "farmland"),
    palette=(*_PIE_PALETTE, (168, 112, 0)),
    optical_mean=(73.422, 89.751, 83.405),
    optical_std=(29.48, 26.953, 24.829),
    sar_mean=(84.869,) * 3,
    sar_std=(57.769,) * 3,
)

# The official config names the classes in a different order (it swaps 2 and 4); these are
# the dataset authors' names. Palette as the official config (yellow farmland, green greenery).
# The official config reuses WHU's normalisation for DDHR; kept, since the official weights
# were trained with it. The official DDHR pipeline has no flips.
DDHR_SK = DatasetSpec(
    name="ddhr_sk",
    classes=("buildings", "roads", "farmland", "water", "greenery"),
    palette=((255, 0, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 0)),
    hflip_prob=0.0,
    vflip_prob=0.0,
    tta_ratios=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75),
    **_WHU_DDHR_OPTICAL,
)

WHU_OPT_SAR = DatasetSpec(
    name="whu_opt_sar",
    classes=("farmland", "city", "village", "water", "forest", "road", "other"),
    palette=(
        (255, 195, 128),
        (255, 0, 0),
        (159, 129, 183),
        (0, 0, 255),
        (0, 255, 0),
        (255, 255, 0),
        (255, 255, 255),
    ),
    crop_size=(512, 512),
    train_scale=(2048, 512),
    tta_ratios=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75),
    eval_split="test",
    **_WHU_DDHR_OPTICAL,
)

SYNTHETIC_CLASSES = ("field", "urban", "road", "water", "forest", "bare")
SYNTHETIC_PALETTE = (
    (230, 200, 90),
    (220, 60, 50),
    (250, 250, 120),
    (50, 110, 230),
    (30, 130, 40),
    (160, 130, 100),
)


def synthetic_spec(num_classes: int = 6, tile_size: int = 128) -> DatasetSpec:
    """Spec of `synthetic_rgb_sar`. Mean and std were measured on 64 default scenes, in
    model channel order (B, G, R). Crops are the tile size, rescaled as the official
    recipe rescales 256 tiles (target scale (4 x tile, tile))."""
    if not 2 <= num_classes <= len(SYNTHETIC_CLASSES):
        raise ValueError(
            f"synthetic_rgb_sar: num_classes={num_classes}; expected 2..{len(SYNTHETIC_CLASSES)}"
        )
    return DatasetSpec(
        name="synthetic_rgb_sar",
        classes=SYNTHETIC_CLASSES[:num_classes],
        palette=SYNTHETIC_PALETTE[:num_classes],
        optical_mean=(105.6, 145.8, 145.1),
        optical_std=(46.8, 44.6, 65.4),
        sar_mean=(120.6,) * 3,
        sar_std=(52.3,) * 3,
        crop_size=(tile_size, tile_size),
        train_scale=(4 * tile_size, tile_size),
    )


BUILTIN: dict[str, DatasetSpec] = {
    s.name: s for s in (PIE_RGB_SAR, DDHR_SK, WHU_OPT_SAR, synthetic_spec())
}


def get_spec(name: str) -> DatasetSpec:
    if name not in BUILTIN:
        raise KeyError(f"unknown dataset {name!r}; built-in datasets: {sorted(BUILTIN)}")
    return BUILTIN[name]


def opencv_color_bands(count: int, where: str) -> tuple[int, int, int]:
    """The bands OpenCV's colour decoding (cv2.IMREAD_COLOR) feeds, in order.

    One band is replicated; three or more give the first three reversed (RGB file -> BGR,
    a 4th band such as NIR or alpha is dropped). Two bands have no OpenCV colour meaning.
    """
    if count == 1:
        return (0, 0, 0)
    if count >= 3:
        return (2, 1, 0)
    raise ValueError(
        f"{where}: {count} bands have no OpenCV colour decoding; set the band selection "
        "explicitly (e.g. sar_bands=[0, 1, 0])"
    )


def model_bands(
    selection: tuple[int, ...] | None, count: int, field: str, where: str
) -> tuple[int, ...]:
    """Stored band indices feeding the model for one modality, checked against `count`."""
    bands = opencv_color_bands(count, where) if selection is None else tuple(selection)
    if max(bands) >= count:
        raise ValueError(
            f"{where}: {field}_bands {list(bands)} selects band {max(bands)} but the stored "
            f"{field} image has {count} band(s)"
        )
    return bands
