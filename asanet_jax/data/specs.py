"""What each dataset is: classes, palette, how its rasters become model inputs; and the
registry of datasets (built-in, official, with a TFDS builder).

A ``DatasetSpec`` is recorded with every built dataset and in every model directory
trained or converted for a dataset, so that prediction needs nothing else. How raster
values become model inputs (band numbers, SAR scaling, missing pixels, normalisation)
is ``preprocess.py``; the means and stds are in model channel order. How a dataset is
trained and evaluated (augmentation, TTA) is the recipe's: ``config.data.augment`` and
``config.data.tta`` (``asanet_jax/data/config.py``), with each dataset's official values.
"""

from __future__ import annotations

import dataclasses
import json

from asanet_jax.data import preprocess

# Bumped when the meaning of a field changes; a spec of another version is refused.
# 2: band numbers count from 1 (as GDAL), SAR scaling applies when reading, ignore is 255.
VERSION = 2


class SpecVersionError(ValueError):
    """A dataset or model described by another version of asanet-jax."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Everything the pipeline, training, evaluation and prediction need to know about a
    dataset. Labels are class ids with 255 = ignore (``labels.IGNORE``)."""

    name: str
    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    optical_mean: tuple[float, ...]
    optical_std: tuple[float, ...]
    sar_mean: tuple[float, ...]
    sar_std: tuple[float, ...]
    # Stored bands that feed the model's three channels, in model channel order, numbered
    # from 1 as GDAL and rasterio number them. None: OpenCV's colour decoding, as the
    # official loaders (1 band replicated; 3 or more: the first three reversed).
    optical_bands: tuple[int, ...] | None = None
    sar_bands: tuple[int, ...] | None = None
    # How stored SAR values are scaled when read (preprocess.py): none, db_range, percentile.
    sar_scaling: dict = dataclasses.field(default_factory=lambda: {"kind": "none"})
    train_split: str = "train"
    eval_split: str = "val"
    version: int = VERSION

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
            ("optical", (self.optical_mean, self.optical_std), self.optical_bands or (1, 1, 1)),
            ("sar", (self.sar_mean, self.sar_std), self.sar_bands or (1, 1, 1)),
        ):
            for stat_name, stat in zip(("mean", "std"), stats, strict=True):
                if len(stat) != len(bands):
                    raise ValueError(
                        f"dataset {self.name!r}: {field}_{stat_name} has {len(stat)} values "
                        f"but {field}_bands selects {len(bands)} channels"
                    )
            if any(s <= 0 for s in stats[1]):
                raise ValueError(f"dataset {self.name!r}: {field}_std must be positive")
            if any(int(b) < 1 for b in bands):
                raise ValueError(
                    f"dataset {self.name!r}: {field}_bands {list(bands)}: band numbers start "
                    "at 1, as GDAL and rasterio number bands"
                )
        preprocess.check_scaling(self.sar_scaling, f"dataset {self.name!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict, where: str = "") -> DatasetSpec:
        """The spec recorded in a built dataset or a model directory.

        Records written before the augmentation and TTA settings moved to the recipe
        carry them (``MOVED_TO_RECIPE``); they are ignored, so those datasets and model
        directories still open.

        Raises:
          SpecVersionError: recorded by another version (band numbers, say, counted
            from 0 before version 2): the dataset must be rebuilt.
        """
        d = dict(d)
        if d.get("version") != VERSION:
            raise SpecVersionError(
                f"{where or d.get('name', 'dataset')}: described by asanet-jax with dataset "
                f"spec version {d.get('version', 1)}, this is version {VERSION} (band "
                "numbers count from 1, SAR scaling applies when reading): rebuild the "
                "dataset (scripts/build_dataset.py ... --overwrite)"
            )
        for name in MOVED_TO_RECIPE:
            d.pop(name, None)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown dataset spec fields {unknown}; known: {sorted(known)}")
        return cls(**{k: v if k == "sar_scaling" else tuplify(v) for k, v in d.items()})


# Fields that specs recorded before they moved to config.data.augment (crop_size, scale
# as train_scale, hflip_prob, vflip_prob) and config.data.tta (ratios as tta_ratios).
MOVED_TO_RECIPE = ("crop_size", "train_scale", "hflip_prob", "vflip_prob", "tta_ratios")


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
# were trained with it.
DDHR_SK = DatasetSpec(
    name="ddhr_sk",
    classes=("buildings", "roads", "farmland", "water", "greenery"),
    palette=((255, 0, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 0)),
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
    model channel order (B, G, R). The spec is the same for every tile size (the
    builder passes it); the training crops follow the tile in the recipe
    (``data/config.synthetic_augment``)."""
    del tile_size
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
    )


# The registry: every dataset asanet-jax knows by name. Everything else derives from it:
# the TFDS builders (build.BUILDERS; installed as asanet_jax.tfds_builders.<name>, which
# setup.py finds in tfds_builders/), the converter's --dataset choices, and the official
# recipes (data/config.py).
BUILTIN: dict[str, DatasetSpec] = {
    s.name: s for s in (PIE_RGB_SAR, DDHR_SK, WHU_OPT_SAR, synthetic_spec())
}
# The paper's datasets: official mmseg configs, weights and published results.
OFFICIAL: tuple[str, ...] = (PIE_RGB_SAR.name, DDHR_SK.name, WHU_OPT_SAR.name)
# A user's own dataset, a folder described by rgb_sar_folder.json (its spec is the folder's).
FOLDER = "rgb_sar_folder"
# The datasets with a TFDS builder, tfds_builders/<name>/: the official ones, users'
# folders and the synthetic dataset.
BUILDERS: tuple[str, ...] = (
    *OFFICIAL,
    FOLDER,
    *(name for name in BUILTIN if name not in OFFICIAL),
)


def get_spec(name: str) -> DatasetSpec:
    if name not in BUILTIN:
        raise KeyError(f"unknown dataset {name!r}; built-in datasets: {sorted(BUILTIN)}")
    return BUILTIN[name]
