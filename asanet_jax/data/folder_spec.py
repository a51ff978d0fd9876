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

- `splits` maps split name -> a text file listing example names (file stems), one per line.
- `label_nodata`: a label value meaning "no label" (mapped to ignore); null takes the
  label file's own nodata value, if any.
- `label_map`: {"source value": class id} applied before checking labels; null = identity.
- `optical_bands` / `sar_bands`: stored bands feeding the model's three channels, in model
  order; null = OpenCV colour decoding as the official loaders (1 band replicated; 3 or
  more: first three reversed).
- `sar_scaling`: how SAR values become the stored values, recorded with the dataset:
  `{"kind": "none"}` keeps them; `{"kind": "db_range", "min": a, "max": b}` maps a..b dB
  linearly to 0..255 and clips outside; `{"kind": "percentile", "low": p, "high": q}`
  stretches each image's p-th..q-th percentile to 0..255 and clips outside.
- `nodata`: what a pixel with no optical or SAR value (NaN, or the file's nodata value)
  does: "ignore" sets its label to ignore and its image values to 0; "error" stops.
- Normalisation statistics (model channel order); null ones are computed on the train
  split at build time and recorded.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np

from asanet_jax.data import io, specs
from asanet_jax.labels import IGNORE

SPEC_FILE = "rgb_sar_folder.json"
SCALINGS = ("none", "db_range", "percentile")


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
        kind = self.sar_scaling.get("kind")
        if kind not in SCALINGS:
            raise ValueError(f"{where}: sar_scaling.kind={kind!r}; expected one of {SCALINGS}")
        need = {"db_range": ("min", "max"), "percentile": ("low", "high")}.get(kind, ())
        missing = [k for k in need if k not in self.sar_scaling]
        if missing:
            raise ValueError(f"{where}: sar_scaling {kind!r} needs {missing}")
        if need and not self.sar_scaling[need[0]] < self.sar_scaling[need[1]]:
            raise ValueError(f"{where}: sar_scaling needs {need[0]} < {need[1]}")
        if self.nodata not in ("ignore", "error"):
            raise ValueError(f"{where}: nodata={self.nodata!r}; expected 'ignore' or 'error'")
        if not self.splits:
            raise ValueError(f"{where}: splits is empty; map split names to name-list files")
        if len(self.palette) != len(self.classes):
            raise ValueError(
                f"{where}: {len(self.palette)} palette colours for {len(self.classes)} classes"
            )
        if not 0 <= self.ignore_index <= 255 or self.ignore_index < len(self.classes):
            raise ValueError(
                f"{where}: ignore_index={self.ignore_index}; expected {len(self.classes)}..255"
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
            return cls(**{k: specs.tuplify(v) if k != "splits" else v for k, v in raw.items()})
        except (TypeError, ValueError) as e:
            raise io.DataError(f"{path}: {e}") from e

    def mapped_label(self, raw: io.Raster) -> np.ndarray:
        """Class ids (int64) with nodata -> ignore and `label_map` applied."""
        label = raw.data[..., 0].astype(np.int64)
        nodata = self.label_nodata if self.label_nodata is not None else raw.nodata
        missing = label == nodata if nodata is not None else np.zeros(label.shape, bool)
        if self.label_map:
            out = np.full(label.shape, -1, np.int64)
            for src, dst in self.label_map.items():
                out[label == int(src)] = dst
            # Values the map does not name stay as they are, so the class check reports them.
            unmapped = out == -1
            out[unmapped] = label[unmapped]
            label = out
        label[missing] = self.ignore_index
        return label

    def scale_sar(self, data: np.ndarray) -> np.ndarray:
        """SAR values -> stored values per `sar_scaling` (float32; NaN stays NaN)."""
        x = data.astype(np.float32)
        kind = self.sar_scaling["kind"]
        if kind == "none":
            return x
        if kind == "db_range":
            lo, hi = self.sar_scaling["min"], self.sar_scaling["max"]
        else:
            finite = x[np.isfinite(x)]
            if finite.size == 0:
                return x
            lo, hi = np.percentile(finite, [self.sar_scaling["low"], self.sar_scaling["high"]])
            hi = max(hi, lo + 1e-6)
        with np.errstate(invalid="ignore"):
            scaled = np.clip(np.rint((x - lo) / (hi - lo) * 255.0), 0.0, 255.0)
        return scaled.astype(np.float32)
