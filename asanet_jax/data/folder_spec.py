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
- `label_map`: {"source value": class id} applied before checking labels, source values
  integers written as strings ("3", "-1"), class ids 0..classes-1 or 255 (ignore); null =
  identity. Label files hold integers (float files whole numbers only).
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

`FolderSpec.load` checks the type of every value before anything is built, and refuses
with one line naming the file, the key, the value and what was expected: strings are
not lists, booleans are not integers, 3.5 is not a band number; `label_map` keys are
integers written as strings ("3", "-1") and its values class ids (0..classes-1, or 255
to ignore); palette colours are three integers 0..255; percentiles lie in 0..100. A
byte order mark at the start of the file is allowed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import re

import numpy as np

from asanet_jax.data import io, preprocess
from asanet_jax.data.specs import tuplify
from asanet_jax.labels import IGNORE

SPEC_FILE = "rgb_sar_folder.json"


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_text(v) -> bool:
    return isinstance(v, str) and v != ""


def _is_list(v, item) -> bool:
    return isinstance(v, list) and len(v) > 0 and all(item(x) for x in v)


def _is_colour(v) -> bool:
    return isinstance(v, list) and len(v) == 3 and all(_is_int(x) and 0 <= x <= 255 for x in v)


_FOLDER = (_is_text, "a folder name (a non-empty string)")
_SUFFIX = (lambda v: isinstance(v, str), 'a string such as ".tif"')
_BANDS = (
    lambda v: v is None or _is_list(v, _is_int),
    "null or a non-empty list of band numbers (integers, from 1)",
)
_STATS = (
    lambda v: v is None or _is_list(v, _is_number),
    "null or a non-empty list of numbers, one per model channel",
)
# key -> (check of its JSON value, what is expected); label_map and sar_scaling are checked
# further in _check_label_map and _check_scaling_values.
FIELD_TYPES = {
    "name": (_is_text, "a non-empty string of letters, digits, '_', '.' or '-'"),
    "classes": (lambda v: _is_list(v, _is_text), "a non-empty list of class names (strings)"),
    "palette": (
        lambda v: _is_list(v, _is_colour),
        "a list of one RGB colour per class, each [r, g, b] of integers 0..255",
    ),
    "splits": (
        lambda v: isinstance(v, dict) and all(_is_text(f) for f in v.values()),
        "an object mapping split names to name-list files (strings)",
    ),
    "optical_dir": _FOLDER,
    "sar_dir": _FOLDER,
    "label_dir": _FOLDER,
    "optical_suffix": _SUFFIX,
    "sar_suffix": _SUFFIX,
    "label_suffix": _SUFFIX,
    "ignore_index": (_is_int, "an integer label value"),
    "label_nodata": (lambda v: v is None or _is_int(v), "null or an integer label value"),
    "label_map": (
        lambda v: v is None or isinstance(v, dict),
        'null or an object mapping label values (integers written as strings, e.g. "3") '
        "to class ids",
    ),
    "optical_bands": _BANDS,
    "sar_bands": _BANDS,
    "sar_scaling": (
        lambda v: isinstance(v, dict),
        'an object such as {"kind": "db_range", "min": -25.0, "max": 0.0}',
    ),
    "nodata": (lambda v: v in ("ignore", "error"), "'ignore' or 'error'"),
    "optical_mean": _STATS,
    "optical_std": _STATS,
    "sar_mean": _STATS,
    "sar_std": _STATS,
}


def _refuse(path, key: str, value, expected: str):
    raise io.DataError(f"{path}: {key}={json.dumps(value)}; expected {expected}")


def _check_label_map(path, label_map: dict, num_classes: int) -> None:
    for key, value in label_map.items():
        if not re.fullmatch(r"-?(0|[1-9][0-9]*)", key):
            raise io.DataError(
                f"{path}: label_map key {json.dumps(key)}; expected an integer label value "
                'written as a string, e.g. "3" or "-1"'
            )
        if not (_is_int(value) and (0 <= value < num_classes or value == IGNORE)):
            _refuse(
                path,
                f"label_map[{json.dumps(key)}]",
                value,
                f"a class id, an integer 0..{num_classes - 1} (or {IGNORE} to ignore)",
            )


def _check_scaling_values(path, scaling: dict) -> None:
    for key in ("min", "max"):
        value = scaling.get(key)
        if key in scaling and not (_is_number(value) or _is_list(value, _is_number)):
            _refuse(
                path,
                f"sar_scaling.{key}",
                value,
                "a number (dB), or a list of one number per stored SAR band",
            )
    for key in ("low", "high"):
        value = scaling.get(key)
        if key in scaling and not (_is_number(value) and 0 <= value <= 100):
            _refuse(path, f"sar_scaling.{key}", value, "a percentile, a number 0..100")


def check_types(path, raw: dict) -> None:
    """DataError naming `path`, the key, the value and what was expected, unless every
    value of the parsed `rgb_sar_folder.json` `raw` has the type its key needs."""
    for key, value in raw.items():
        check, expected = FIELD_TYPES[key]
        if not check(value):
            _refuse(path, key, value, expected)
    if raw.get("label_map"):
        _check_label_map(path, raw["label_map"], len(raw["classes"]))
    if "sar_scaling" in raw:
        _check_scaling_values(path, raw["sar_scaling"])


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
            raw = json.loads(io.read_text(path, "dataset description"))
        except json.JSONDecodeError as e:
            raise io.DataError(f"{path}: not valid JSON ({e})") from e
        if not isinstance(raw, dict):
            raise io.DataError(
                f"{path}: the dataset description is a JSON {type(raw).__name__}; expected "
                "a JSON object of keys and values (see tfds_builders/rgb_sar_folder/README.md)"
            )
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
        check_types(path, raw)
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
        values = raw.data[..., 0]
        nodata = self.label_nodata if self.label_nodata is not None else raw.nodata
        missing = values == self.ignore_index
        if nodata is not None:
            missing |= np.isnan(values) if np.isnan(nodata) else values == nodata
        # Float labels hold whole numbers (io.check_integer_labels), NaN only where missing.
        label = np.where(missing, 0, values).astype(np.int64)
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
