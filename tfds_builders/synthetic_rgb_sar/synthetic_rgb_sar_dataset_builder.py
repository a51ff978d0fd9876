"""synthetic_rgb_sar: procedurally generated optical + SAR land-cover scenes (no download)."""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from asanet_jax.data import builder_base, specs, synthetic

SPLIT_IDS = {"train": 0, "val": 1}


@dataclasses.dataclass(kw_only=True)
class SyntheticConfig(tfds.core.BuilderConfig):
    """Size of the generated dataset; every scene is a pure function of (seed, split, index)."""

    tile_size: int = 128
    num_classes: int = 6
    num_train: int = 320
    num_val: int = 64
    cloud_prob: float = 0.3
    seed: int = 0


class Builder(builder_base.RgbSarBuilder):
    """Seeded synthetic scenes: fields, forest, bare soil, roads, rivers, urban blocks."""

    VERSION = tfds.core.Version("2.0.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release.",
        "2.0.0": "Exact float64 geotransforms; dataset spec version 2 (band numbers from 1).",
    }
    BUILDER_CONFIGS = [
        SyntheticConfig(name="default", description="320 train + 64 val scenes of 128x128."),
        SyntheticConfig(
            name="tiny",
            description="Test size: 16 + 8 scenes of 64x64.",
            tile_size=64,
            num_train=16,
            num_val=8,
        ),
    ]
    OPTICAL_BANDS = (3,)
    SAR_BANDS = (1,)

    def dataset_spec(self) -> specs.DatasetSpec:
        return specs.synthetic_spec(self.builder_config.num_classes, self.builder_config.tile_size)

    def _features(self):
        return builder_base.base_features(cloud_fraction=np.float32)

    def _split_generators(self, dl_manager):
        c = self.builder_config
        return {
            split: self._generate_examples(split, c.num_train if split == "train" else c.num_val)
            for split in SPLIT_IDS
        }

    def _generate_examples(self, split, count):
        c = self.builder_config
        for i in range(count):
            scene = synthetic.generate_scene(
                (c.seed, SPLIT_IDS[split], i), c.tile_size, c.num_classes, c.cloud_prob
            )
            name = f"{split}_{i:05d}"
            yield (
                name,
                {
                    "optical": scene.optical,
                    "sar": scene.sar,
                    "label": scene.label,
                    "file_name": name,
                    "crs": "",
                    "transform": np.full(6, np.nan),
                    "cloud_fraction": np.float32(scene.cloud_fraction),
                },
            )
