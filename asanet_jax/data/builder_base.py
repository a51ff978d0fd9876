"""The record every RGB-SAR TFDS builder writes, and the checks every example passes.

One example holds the optical image and the SAR image as stored (all bands, source dtype,
file band order), the label already mapped to class ids with 255 = ignore, the file name,
and the optical file's CRS (WKT, '' when none) and geotransform (NaNs when none). Images
are zlib-compressed tensors, so any dtype and band count round-trips bit for bit, and
reading them back needs no TensorFlow.

TFDS writes a build into a temporary directory and renames it only when every split has
been written, so a build that raises leaves no dataset that looks complete. The build
records a fingerprint of its source files (`fingerprint.py`) in its metadata, so that a
dataset built from files that changed since is never served as current.

Optical, SAR and label of an example must share their CRS and geotransform where the
files have them; ``check_georeference=False`` accepts files that do not.
"""

from __future__ import annotations

import json
import pathlib
import sys
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from asanet_jax.data import fingerprint, io, specs
from asanet_jax.labels import IGNORE


def image_feature(dtype) -> tfds.features.Tensor:
    return tfds.features.Tensor(shape=(None, None, None), dtype=dtype, encoding="zlib")


def base_features(optical_dtype=np.uint8, sar_dtype=np.uint8, **extra) -> dict:
    return {
        "optical": image_feature(optical_dtype),
        "sar": image_feature(sar_dtype),
        "label": tfds.features.Tensor(shape=(None, None), dtype=np.uint8, encoding="zlib"),
        "file_name": tfds.features.Text(),
        "crs": tfds.features.Text(),
        # Encoded as bytes: TFDS would serialise a plain float tensor as float32, which
        # moves a UTM northing above 8.4e6 m by up to 0.5 m.
        "transform": tfds.features.Tensor(shape=(6,), dtype=np.float64, encoding="zlib"),
        **extra,
    }


class RgbSarBuilder(tfds.core.GeneratorBasedBuilder):
    """Common parts of the RGB-SAR builders; subclasses list the examples of each split."""

    # Subclasses set these.
    SPEC: specs.DatasetSpec
    OPTICAL_BANDS: tuple[int, ...] = (3,)
    SAR_BANDS: tuple[int, ...] = (1, 3)
    # Folders and files of the manual directory that the build reads.
    SOURCE_PARTS: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # TFDS looks for a builder's README and CITATIONS.bib under its package's path
        # inside the top-level package; ours install as asanet_jax.tfds_builders from the
        # tfds_builders/ folder, so the folder is given here.
        module = sys.modules[cls.__module__]
        cls.pkg_dir_path = epath.Path(module.__file__).parent

    def __init__(self, *, check_georeference: bool = True, **kwargs):
        self.check_georeference = check_georeference
        super().__init__(**kwargs)

    def source_parts(self, root: pathlib.Path) -> list[str]:
        return list(self.SOURCE_PARTS)

    @classmethod
    def config_for(cls, manual_dir):
        """The builder config that a build from `manual_dir` belongs to (None: the default)."""
        return None

    def data_root(self, manual_dir: pathlib.Path) -> pathlib.Path:
        """The folder holding SOURCE_PARTS, given the --manual_dir (the same by default)."""
        return manual_dir

    def dataset_spec(self) -> specs.DatasetSpec:
        return self.SPEC

    def _features(self) -> dict:
        return base_features()

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(self._features()),
            supervised_keys=None,
            metadata=tfds.core.MetadataDict(spec=json.loads(self.dataset_spec().to_json())),
        )

    def manual_path(self, dl_manager) -> pathlib.Path:
        """The source folder; its fingerprint is recorded with the build."""
        path = pathlib.Path(dl_manager.manual_dir)
        if not path.is_dir():
            raise io.DataError(
                f"{path}: manual directory not found; pass --manual_dir pointing at the "
                f"extracted {self.name} dataset (see tfds_builders/{self.name}/README.md)"
            )
        path = self.data_root(path)
        self.info.metadata["source"] = fingerprint.fingerprint(path, self.source_parts(path))
        return path

    def read_pair(
        self, optical_path: pathlib.Path, sar_path: pathlib.Path, label_path: pathlib.Path
    ) -> tuple[io.Raster, io.Raster, io.Raster]:
        """Read one example's three files, checking bands, sizes and whole-number labels."""
        optical = io.read_raster(optical_path)
        sar = io.read_raster(sar_path)
        label = io.read_raster(label_path)
        io.check_band_count(optical_path, optical, self.OPTICAL_BANDS, "optical")
        io.check_band_count(sar_path, sar, self.SAR_BANDS, "SAR")
        io.check_band_count(label_path, label, (1,), "label")
        io.check_integer_labels(label_path, label)
        rasters = {
            "optical": (optical_path, optical),
            "SAR": (sar_path, sar),
            "label": (label_path, label),
        }
        io.check_same_size(rasters)
        if self.check_georeference:
            io.check_same_georeference(rasters)
        return optical, sar, label

    def example(
        self,
        optical: io.Raster,
        sar: io.Raster,
        label: np.ndarray,
        label_path: pathlib.Path,
        file_name: str,
        **extra,
    ) -> dict:
        """One record; `label` must already hold class ids or the ignore value."""
        spec = self.dataset_spec()
        valid = np.array([*range(spec.num_classes), IGNORE])
        io.check_label_values(label_path, label, valid)
        return {
            "optical": optical.data,
            "sar": sar.data,
            "label": label.astype(np.uint8),
            "file_name": file_name,
            "crs": optical.crs,
            "transform": np.asarray(optical.transform, np.float64),
            **extra,
        }


def require_examples(examples: Iterator, split: str, source: str) -> Iterator:
    """Pass examples through, raising DataError if the split turns out empty."""
    count = 0
    for item in examples:
        count += 1
        yield item
    if count == 0:
        raise io.DataError(f"{source}: split {split!r} has no examples")
