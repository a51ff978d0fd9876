"""rgb_sar_folder: a user's own co-registered optical/SAR/label files, described in JSON."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import tensorflow_datasets as tfds

from asanet_jax.data import builder_base, folder_spec, io, preprocess, specs
from asanet_jax.labels import IGNORE

log = logging.getLogger(__name__)


@dataclasses.dataclass(kw_only=True)
class FolderConfig(tfds.core.BuilderConfig):
    """One user dataset; its name is the ``name`` of its rgb_sar_folder.json."""


class Builder(builder_base.RgbSarBuilder):
    """Any GeoTIFF/JPEG/PNG triples rasterio or Pillow reads, per `rgb_sar_folder.json`.

    Each dataset is built under its own name (a builder config), so several live side by
    side in one data_dir. Images are stored as float32 (exact for 8- and 16-bit integers)
    with the files' nodata values as NaN, SAR as stored (scaled when read, see
    ``preprocess.py``), labels as class ids with 255 = ignore.
    """

    VERSION = tfds.core.Version("2.0.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release.",
        "2.0.0": "One config per dataset name; raw values with nodata as NaN; labels 255 = "
        "ignore; band numbers from 1; exact float64 geotransforms.",
    }
    # `tfds build` accepts a config only when there are configs; build as
    # --config '{"name": "<the name in rgb_sar_folder.json>"}'.
    BUILDER_CONFIGS = [
        FolderConfig(name="unnamed", description="Build under your dataset's own name.")
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    Pass the folder holding your image folders, split files and {folder_spec.SPEC_FILE}
    as --manual_dir (see tfds_builders/rgb_sar_folder/README.md).
    """
    OPTICAL_BANDS = tuple(range(1, 64))
    SAR_BANDS = tuple(range(1, 64))

    @classmethod
    def config_for(cls, manual_dir) -> FolderConfig:
        """The config that a build of the dataset in `manual_dir` belongs to."""
        import pathlib

        fs = folder_spec.FolderSpec.load(pathlib.Path(manual_dir) / folder_spec.SPEC_FILE)
        return FolderConfig(name=fs.name, description=f"rgb_sar_folder dataset {fs.name!r}")

    def _features(self):
        return builder_base.base_features(optical_dtype=np.float32, sar_dtype=np.float32)

    def _info(self) -> tfds.core.DatasetInfo:
        # The spec is only known once the manual folder is read; it is filled in then.
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(self._features()),
            metadata=tfds.core.MetadataDict(),
        )

    def dataset_spec(self) -> specs.DatasetSpec:
        return self._dataset_spec

    def source_parts(self, root) -> list[str]:
        fs = folder_spec.FolderSpec.load(root / folder_spec.SPEC_FILE)
        return [
            folder_spec.SPEC_FILE,
            fs.optical_dir,
            fs.sar_dir,
            fs.label_dir,
            *fs.splits.values(),
        ]

    def _split_generators(self, dl_manager):
        root = self.manual_path(dl_manager)
        path = root / folder_spec.SPEC_FILE
        fs = folder_spec.FolderSpec.load(path)
        if fs.name != self.builder_config.name:
            raise io.DataError(
                f"{path} names the dataset {fs.name!r} but this build is config "
                f"{self.builder_config.name!r}; build it as {fs.name!r} (scripts/build_dataset.py "
                f'does; tfds build ... --config \'{{"name": "{fs.name}"}}\')'
            )
        self._folder, self._root = fs, root
        names = {split: io.read_name_list(root / file) for split, file in fs.splits.items()}
        io.check_disjoint_splits(names, path)
        stats = {k: getattr(fs, k) for k in ("optical_mean", "optical_std", "sar_mean", "sar_std")}
        if any(v is None for v in stats.values()):
            if "train" not in names:
                raise io.DataError(
                    f"{path}: normalisation statistics are not given and there is no 'train' "
                    "split to compute them from"
                )
            stats = self._train_statistics(names["train"])
        self._dataset_spec = specs.DatasetSpec(
            name=fs.name,
            classes=fs.classes,
            palette=fs.palette,
            optical_bands=fs.optical_bands,
            sar_bands=fs.sar_bands,
            sar_scaling=dict(fs.sar_scaling),
            train_split="train",
            eval_split="val" if "val" in names else sorted(names)[-1],
            **{k: tuple(float(x) for x in v) for k, v in stats.items()},
        )
        self.info.metadata["spec"] = self._dataset_spec.to_dict()
        self.info.metadata["folder_spec"] = dataclasses.asdict(fs)
        return {split: self._generate_examples(split, n) for split, n in names.items()}

    def _read(self, name: str):
        """One example: (optical, sar, label, label path, model bands), with the files'
        nodata values as NaN and missing pixels' labels set to ignore."""
        fs, root = self._folder, self._root
        paths = (
            io.find_file(root / fs.optical_dir, name, (fs.optical_suffix,), "optical"),
            io.find_file(root / fs.sar_dir, name, (fs.sar_suffix,), "SAR"),
            io.find_file(root / fs.label_dir, name, (fs.label_suffix,), "label"),
        )
        optical, sar, raw_label = self.read_pair(*paths)
        label = fs.mapped_label(raw_label)
        optical_data, sar_data = io.nodata_as_nan(optical), io.nodata_as_nan(sar)
        bands = preprocess.model_bands(optical_data, sar_data, fs, f"{paths[0]} / {paths[1]}")
        missing = bands[2]
        if missing.any():
            if fs.nodata == "error":
                raise io.DataError(
                    f"{paths[0]} / {paths[1]}: {int(missing.sum())} pixels have no value in a "
                    "band the model sees (NaN or the file's nodata) and the dataset "
                    "description says nodata='error'"
                )
            label[missing] = IGNORE
            log.info("%s: %d pixels without data set to ignore", name, int(missing.sum()))
        optical = dataclasses.replace(optical, data=optical_data)
        sar = dataclasses.replace(sar, data=sar_data)
        return optical, sar, label, paths[2], bands

    def _train_statistics(self, names: list[str]) -> dict:
        """Per-channel mean/std in model channel order over the valid pixels of `names`,
        of the model bands (SAR scaled) exactly as the model will be fed them."""
        sums, squares, count = {"o": 0.0, "s": 0.0}, {"o": 0.0, "s": 0.0}, 0
        for name in names:
            _, _, label, _, (optical, sar, _) = self._read(name)
            valid = label != IGNORE
            for key, image in (("o", optical), ("s", sar)):
                x = image[valid].astype(np.float64)
                sums[key] = sums[key] + x.sum(0)
                squares[key] = squares[key] + (x**2).sum(0)
            count += int(valid.sum())
        if count == 0:
            raise io.DataError("train split has no labelled pixels to compute statistics from")
        out = {}
        for key, field in (("o", "optical"), ("s", "sar")):
            mean = sums[key] / count
            out[f"{field}_mean"] = mean
            out[f"{field}_std"] = np.maximum(np.sqrt(squares[key] / count - mean**2), 1e-3)
        return out

    def _generate_examples(self, split, names):
        def examples():
            for name in names:
                optical, sar, label, label_path, _ = self._read(name)
                yield name, self.example(optical, sar, label, label_path, name)

        return builder_base.require_examples(examples(), split, str(self._root))
