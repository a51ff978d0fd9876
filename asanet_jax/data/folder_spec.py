"""The description of a user's own RGB-SAR dataset: `rgb_sar_folder.json` in its folder.

Example (every key shown; the optional ones with their defaults)::

    {
      "name": "my_fields",
      "optical_dir": "optical", "sar_dir": "sar", "label_dir": "label",
      "optical_suffix": ".tif", "sar_suffix": ".tif", "label_suffix": ".tif",
      "splits": {"train": "train.txt", "val": "val.txt"},
      "classes": ["crop", "forest", "water"],
      "palette": [[255, 200, 0], [0, 128, 0], [0, 0, 255]],
      "ignore_index": 255,
      "label_nodata": null,
      "label_map": null,
      "optical_bands": null,
      "sar_bands": null,
      "sar_scaling": {"kind": "db_range", "min": -25.0, "max": 0.0},
      "nodata": "ignore",
      "optical_mean": null, "optical_std": null, "sar_mean": null, "sar_std": null
    }

- `name`: the dataset's name (letters, digits, `_`, `.`, `-`); it is the TFDS config the
  build is stored under, so several user datasets live side by side in one data_dir.
- `splits` maps split name -> a text file listing example names (file stems), one per line.
- `ignore_index`: the label value that means "no label" in your label files (any
  integer, e.g. -1); `label_nodata`: another such value, null to take the label file's own
  nodata value. Both become 255, the library's ignore value, when the dataset is built.
- `label_map`: {"source value": class id} applied before checking labels; null = identity.
- `optical_bands` / `sar_bands`: the stored bands feeding the model's three channels, in
  model order, numbered from 1 as GDAL and rasterio number them (a 13-band Sentinel-2 file
  in band order B1..B12: [2, 3, 4] is B2, B3, B4, blue, green, red, the B, G, R order the
  official models were fed); null = OpenCV colour decoding as the official loaders (1
  band replicated; 3 or more: the first three reversed).
- `sar_scaling`: how SAR values are scaled when read (``preprocess.py``):
  `{"kind": "none"}`; `{"kind": "db_range", "min": a, "max": b}` maps a..b dB to 0..255
  and clips, with a and b numbers or lists of one value per stored SAR band (e.g. VV
  -25..0, VH -32..-5: `"min": [-25, -32], "max": [0, -5]`); `{"kind": "percentile", "low":
  p, "high": q}` stretches each image's (when predicting: each scene's) p-th..q-th
  percentile to 0..255.
- `nodata`: what a pixel does when a band the model sees has no value (NaN, or the file's
  nodata value): "ignore" sets its label to ignore and feeds the model 0; "error" stops.
- Normalisation statistics (model channel order); null ones are computed on the train
  split at build time and recorded.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re

import numpy as np

from asanet_jax.data import io, preprocess
from asanet_jax.data.specs import tuplify
from asanet_jax.labels import IGNORE

SPEC_FILE = "rgb_sar_folder.json"


@dataclasses.dataclass(frozen=True)
class FolderSpec:
    name: str
    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    splits: dict
    optical_dir: str = "optical"
    sar_dir: str = "sar"
    label_dir: str = "label"
    optical_suffix: str = ".tif"
    sar_suffix: str = ".tif"
    label_suffix: str = ".tif"
    ignore_index: int = IGNORE
    label_nodata: float | None = None
    label_map: dict | None = None
    optical_bands: tuple[int, ...] | None = None
    sar_bands: tuple[int, ...] | None = None
    sar_scaling: dict = dataclasses.field(
        default_factory=lambda: {"kind": "db_range", "min": -25.0, "max": 0.0}
    )
    nodata: str = "ignore"
    optical_mean: tuple[float, ...] | None = None
    optical_std: tuple[float, ...] | None = None
    sar_mean: tuple[float, ...] | None = None
    sar_std: tuple[float, ...] | None = None

    def __post_init__(self):
        where = f"{SPEC_FILE} ({self.name!r})"
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", str(self.name)):
            raise ValueError(
                f"{where}: name={self.name!r}; expected letters, digits, '_', '.' or '-'"
            )
        preprocess.check_scaling(self.sar_scaling, where)
        if self.nodata not in ("ignore", "error"):
            raise ValueError(f"{where}: nodata={self.nodata!r}; expected 'ignore' or 'error'")
        if not self.splits:
            raise ValueError(f"{where}: splits is empty; map split names to name-list files")
        if len(self.palette) != len(self.classes):
            raise ValueError(
                f"{where}: {len(self.palette)} palette colours for {len(self.classes)} classes"
            )
        for field in ("optical_bands", "sar_bands"):
            bands = getattr(self, field)
            if bands is not None and any(int(b) < 1 for b in bands):
                raise ValueError(
                    f"{where}: {field} {list(bands)}: band numbers start at 1, as GDAL and "
                    "rasterio number bands (asanet-jax 0.1 counted from 0: add 1 to each)"
                )
        mapped = set(map(int, self.label_map)) if self.label_map else set()
        if int(self.ignore_index) in mapped:
            raise ValueError(f"{where}: ignore_index={self.ignore_index} is also in label_map")
        if not self.label_map and 0 <= int(self.ignore_index) < len(self.classes):
            raise ValueError(
                f"{where}: ignore_index={self.ignore_index} is a class id; expected a value "
                f"outside 0..{len(self.classes) - 1}"
            )

    @classmethod
    def load(cls, path: pathlib.Path) -> FolderSpec:
        if not path.is_file():
            raise io.DataError(
                f"{path}: dataset description not found; write {SPEC_FILE} next to your "
                "folders (see tfds_builders/rgb_sar_folder/README.md)"
            )
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise io.DataError(f"{path}: not valid JSON ({e})") from e
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise io.DataError(f"{path}: unknown keys {unknown}; known keys: {sorted(known)}")
        required = [
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        absent = [k for k in required if k not in raw]
        if absent:
            raise io.DataError(f"{path}: missing required keys {absent}")
        try:
            return cls(
                **{
                    k: v if k in ("splits", "sar_scaling", "label_map") else tuplify(v)
                    for k, v in raw.items()
                }
            )
        except (TypeError, ValueError) as e:
            raise io.DataError(f"{path}: {e}") from e

    def mapped_label(self, raw: io.Raster) -> np.ndarray:
        """Class ids (int64) with `ignore_index` and nodata -> 255 and `label_map` applied."""
        label = raw.data[..., 0].astype(np.int64)
        nodata = self.label_nodata if self.label_nodata is not None else raw.nodata
        missing = label == int(self.ignore_index)
        if nodata is not None:
            missing |= label == nodata
        if self.label_map:
            out = np.full(label.shape, -1, np.int64)
            for src, dst in self.label_map.items():
                out[label == int(src)] = dst
            # Values the map does not name stay as they are, so the class check reports them.
            unmapped = out == -1
            out[unmapped] = label[unmapped]
            label = out
        label[missing] = IGNORE
        return label
