"""PIE-RGB-SAR: 256x256 optical/SAR/label GeoTIFF triples, 6 classes (manual download)."""

from __future__ import annotations

import tensorflow_datasets as tfds

from asanet_jax.data import builder_base, io, specs

SPLIT_FILES = {"train": "train.txt", "val": "val.txt"}


class Builder(builder_base.RgbSarBuilder):
    """PIE-RGB-SAR as distributed: `rgb/ sar/ label/ <name>.tif`, `train.txt`, `val.txt`."""

    VERSION = tfds.core.Version("2.0.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release.",
        "2.0.0": "Exact float64 geotransforms; dataset spec version 2 (band numbers from 1).",
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Download PIE-RGB-SAR and pass the folder holding `rgb/`, `sar/`, `label/`, `train.txt`
    and `val.txt` as --manual_dir.
    """
    SPEC = specs.PIE_RGB_SAR
    OPTICAL_BANDS = (3,)
    SAR_BANDS = (1, 3)
    SOURCE_PARTS = ("rgb", "sar", "label", *SPLIT_FILES.values())

    def _split_generators(self, dl_manager):
        root = self.manual_path(dl_manager)
        names = {split: io.read_name_list(root / file) for split, file in SPLIT_FILES.items()}
        io.check_disjoint_splits(names, root)
        return {
            split: self._generate_examples(root, split_names, split)
            for split, split_names in names.items()
        }

    def _generate_examples(self, root, names, split):
        def examples():
            for name in names:
                paths = [root / folder / f"{name}.tif" for folder in ("rgb", "sar", "label")]
                for role, path in zip(("optical", "SAR", "label"), paths, strict=True):
                    if not path.is_file():
                        raise io.DataError(
                            f"missing {role} file {path} for {name!r} listed in "
                            f"{root / SPLIT_FILES[split]}"
                        )
                optical, sar, label = self.read_pair(*paths)
                yield name, self.example(optical, sar, label.data[..., 0], paths[2], name)

        return builder_base.require_examples(examples(), split, str(root))
