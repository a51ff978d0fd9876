"""rgb_sar_folder: a user's own co-registered optical/SAR/label files, described in JSON."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import tensorflow_datasets as tfds

from asanet_jax.data import builder_base, folder_spec, io, specs

log = logging.getLogger(__name__)


class Builder(builder_base.RgbSarBuilder):
    """Any GeoTIFF/JPEG/PNG triples rasterio or Pillow reads, per `rgb_sar_folder.json`.

    Images are stored as float32 (exact for 8/16-bit integers), so one record format fits
    uint8, uint16 and float32 sources; SAR is stored after the recorded `sar_scaling`.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    Pass the folder holding your image folders, split files and {folder_spec.SPEC_FILE}
    as --manual_dir (see tfds_builders/rgb_sar_folder/README.md).
    """
    OPTICAL_BANDS = tuple(range(1, 64))
    SAR_BANDS = tuple(range(1, 64))

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
        fs = folder_spec.FolderSpec.load(root / folder_spec.SPEC_FILE)
        self._folder, self._root = fs, root
        names = {split: io.read_name_list(root / file) for split, file in fs.splits.items()}
        io.check_disjoint_splits(names, root / folder_spec.SPEC_FILE)
        stats = {k: getattr(fs, k) for k in ("optical_mean", "optical_std", "sar_mean", "sar_std")}
        if any(v is None for v in stats.values()):
            if "train" not in names:
                raise io.DataError(
                    f"{root / folder_spec.SPEC_FILE}: normalisation statistics are not given and "
                    "there is no 'train' split to compute them from"
                )
            stats = self._train_statistics(names["train"])
        self._dataset_spec = specs.DatasetSpec(
            name=fs.name,
            classes=fs.classes,
            palette=fs.palette,
            ignore_index=fs.ignore_index,
            optical_bands=fs.optical_bands,
            sar_bands=fs.sar_bands,
            train_split="train",
            eval_split="val" if "val" in names else sorted(names)[-1],
            **{k: tuple(float(x) for x in v) for k, v in stats.items()},
        )
        self.info.metadata["spec"] = dataclasses.asdict(self._dataset_spec)
        self.info.metadata["folder_spec"] = dataclasses.asdict(fs)
        return {split: self._generate_examples(split, n) for split, n in names.items()}

    def _read(self, name: str):
        """One example as stored: (optical, sar, label int64, label path), nodata applied."""
        fs, root = self._folder, self._root
        paths = (
            io.find_file(root / fs.optical_dir, name, (fs.optical_suffix,), "optical"),
            io.find_file(root / fs.sar_dir, name, (fs.sar_suffix,), "SAR"),
            io.find_file(root / fs.label_dir, name, (fs.label_suffix,), "label"),
        )
        optical, sar, raw_label = self.read_pair(*paths)
        for field, selection, raster, path in (
            ("optical", fs.optical_bands, optical, paths[0]),
            ("sar", fs.sar_bands, sar, paths[1]),
        ):
            try:
                specs.model_bands(selection, raster.bands, field, str(path))
            except ValueError as e:
                raise io.DataError(str(e)) from e
        label = fs.mapped_label(raw_label)
        optical_data = optical.data.astype(np.float32)
        sar_data = fs.scale_sar(sar.data)
        missing = ~np.isfinite(optical_data).all(-1) | ~np.isfinite(sar_data).all(-1)
        for raster, data in ((optical, optical_data), (sar, sar.data)):
            if raster.nodata is not None and not np.isnan(raster.nodata):
                missing |= (data == raster.nodata).any(-1)
        if missing.any():
            if fs.nodata == "error":
                raise io.DataError(
                    f"{paths[0]} / {paths[1]}: {int(missing.sum())} pixels have no optical or SAR "
                    "value (NaN or nodata) and the dataset description says nodata='error'"
                )
            label[missing] = fs.ignore_index
            optical_data[missing] = 0.0
            sar_data[missing] = 0.0
            log.info("%s: %d nodata pixels set to ignore", name, int(missing.sum()))
        optical = dataclasses.replace(optical, data=optical_data)
        sar = dataclasses.replace(sar, data=sar_data)
        return optical, sar, label, paths[2]

    def _train_statistics(self, names: list[str]) -> dict:
        """Per-channel mean/std in model channel order over the valid pixels of `names`."""
        sums = {"optical": 0.0, "sar": 0.0}
        squares = {"optical": 0.0, "sar": 0.0}
        count = 0
        for name in names:
            optical, sar, label, _ = self._read(name)
            valid = label != self._folder.ignore_index
            for field, raster, selection in (
                ("optical", optical, self._folder.optical_bands),
                ("sar", sar, self._folder.sar_bands),
            ):
                bands = specs.model_bands(selection, raster.bands, field, name)
                x = raster.data[..., list(bands)][valid].astype(np.float64)
                sums[field] = sums[field] + x.sum(0)
                squares[field] = squares[field] + (x**2).sum(0)
            count += int(valid.sum())
        if count == 0:
            raise io.DataError("train split has no labelled pixels to compute statistics from")
        out = {}
        for field in ("optical", "sar"):
            mean = sums[field] / count
            out[f"{field}_mean"] = mean
            out[f"{field}_std"] = np.maximum(np.sqrt(squares[field] / count - mean**2), 1e-3)
        return out

    def _generate_examples(self, split, names):
        def examples():
            for name in names:
                optical, sar, label, label_path = self._read(name)
                yield name, self.example(optical, sar, label, label_path, name)

        return builder_base.require_examples(examples(), split, str(self._root))
