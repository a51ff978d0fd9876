"""``config.data``: its fields, and each dataset's official training augmentation and
test-time augmentation (the official mmseg dataset configs; docs/design.md sections 6
and 7). The training recipe (``train/recipe.py``), evaluation, the augmentation and
model directories all take their data defaults from here.

- ``config.data.augment``: the training augmentation, field for field
  ``transforms.Augment``;
- ``config.data.tta``: the test-time augmentation of ``scripts/eval.py --tta``
  (``ratios``, ``flip``).
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

# The official training augmentation and TTA of PIE-RGB-SAR (configs/_base_/datasets/
# pie-rgb-sar_256x256.py), the defaults of every dataset (a user's folder among them);
# OFFICIAL_DATA holds what each official dataset's config changes. flip_sar is our choice:
# the official PIE pipeline leaves SAR unflipped (configs/pie.py:official_flips).
AUGMENT = {
    "crop_size": (256, 256),
    "scale": (1024, 256),
    "ratio_range": (0.5, 2.0),
    "cat_max_ratio": 0.75,
    "crop_tries": 10,
    "hflip_prob": 0.5,
    "vflip_prob": 0.5,
    "flip_sar": True,
}
TTA = {"ratios": (0.75, 1.0, 1.25), "flip": True}
_SIX_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
OFFICIAL_DATA: dict[str, dict[str, dict]] = {
    "pie_rgb_sar": {"augment": {}, "tta": {}},
    # ddhr-rgb-sar_256x256.py: no flips.
    "ddhr_sk": {"augment": {"hflip_prob": 0.0, "vflip_prob": 0.0}, "tta": {"ratios": _SIX_RATIOS}},
    # whu-opt-sar-RGBS_512x512.py: 512 crops of a (2048, 512) rescale.
    "whu_opt_sar": {
        "augment": {"crop_size": (512, 512), "scale": (2048, 512)},
        "tta": {"ratios": _SIX_RATIOS},
    },
}


def synthetic_augment(tile_size: int) -> dict:
    """synthetic_rgb_sar's crops: the tile, rescaled as the official recipe rescales 256
    tiles (target scale (4 x tile, tile))."""
    return {"crop_size": (tile_size, tile_size), "scale": (4 * tile_size, tile_size)}


def augment_defaults(name: str) -> dict:
    """``config.data.augment``'s values for dataset `name`: its official recipe's; for
    synthetic_rgb_sar, its default 128 tiles'; for any other dataset, PIE's."""
    changed = OFFICIAL_DATA.get(name, {}).get("augment", {})
    if name == "synthetic_rgb_sar":
        changed = synthetic_augment(128)
    return {**AUGMENT, **changed}


def tta_defaults(name: str) -> dict:
    """``config.data.tta``'s values for dataset `name`: its official TTA (``ratios``,
    ``flip``); for a dataset without an official recipe, PIE's."""
    return {**TTA, **OFFICIAL_DATA.get(name, {}).get("tta", {})}


def defaults(num_classes=None) -> ml_collections.ConfigDict:
    """``config.data`` with PIE-RGB-SAR's official values; `num_classes` may be a
    ``FieldReference`` that the model's class count shares (None: the dataset's, set
    when training opens it)."""
    if num_classes is None:
        num_classes = config_dict.FieldReference(None, field_type=int)
    return ml_collections.ConfigDict(
        {
            "name": "pie_rgb_sar",
            "tfds_config": config_dict.placeholder(str),
            "data_dir": "data",
            # Where the source dataset lies; when set and the TFDS dataset is not built
            # yet under data_dir, training builds it first.
            "manual_dir": config_dict.placeholder(str),
            "num_classes": num_classes,
            "num_threads": config_dict.placeholder(int),
            "eval_batch_size": 8,
            # The dataset's official augmentation and TTA (module docstring).
            "augment": augment_defaults("pie_rgb_sar"),
            "tta": tta_defaults("pie_rgb_sar"),
        }
    )
