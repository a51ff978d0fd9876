"""WHU-OPT-SAR: 100 GF-1/GF-3 scene pairs, cut into 512x512 tiles as the official tool does."""

from __future__ import annotations

import itertools
import math
import re

import numpy as np
import tensorflow_datasets as tfds

from asanet_jax.data import builder_base, io, specs
from asanet_jax.labels import IGNORE

TILE = 512
DIVISION_FILE = "The division of the dataset.txt"
RAW_LABELS = np.arange(0, 80, 10)


def tile_offsets(length: int, tile: int = TILE) -> list[int]:
    """Tile starts along one axis: a regular grid whose last tile is moved back to the edge."""
    if length <= tile:
        return [0]
    offsets = [tile * i for i in range(math.ceil((length - tile) / tile + 1))]
    if offsets[-1] + tile > length:
        offsets[-1] = length - tile
    return offsets


def tiles(height: int, width: int, tile: int = TILE) -> list[tuple[int, int]]:
    """(y, x) offsets in the official tile order (x outer, y inner); index = tile number."""
    return [
        (y, x) for x, y in itertools.product(tile_offsets(width, tile), tile_offsets(height, tile))
    ]


def map_label(raw: np.ndarray) -> np.ndarray:
    """0 -> ignore (255), 10..70 -> classes 0..6 (official: divide by 10, reduce zero label)."""
    label = (raw // 10).astype(np.int64) - 1
    return np.where(label < 0, IGNORE, label).astype(np.uint8)


def parse_division(path, scenes: set[str]) -> dict[str, list[str]]:
    """Scenes per split from the dataset's division file.

    The file has a section per split: a line containing 'train' starts the training
    scenes and one containing 'test' the test scenes; scene names (with or without
    `.tif`) follow, separated by whitespace, commas or new lines. Every scene on disk must
    appear exactly once.
    """
    if not path.is_file():
        raise io.DataError(f"{path}: split file not found")
    splits: dict[str, list[str]] = {"train": [], "test": []}
    current = None
    for line in path.read_text().splitlines():
        lower = line.lower()
        names = [t for t in re.split(r"[\s,;]+", line) if re.sub(r"\.tiff?$", "", t) in scenes]
        if not names:
            if "train" in lower:
                current = "train"
            elif "test" in lower:
                current = "test"
            continue
        if current is None:
            raise io.DataError(f"{path}: scene names before any 'train'/'test' heading")
        splits[current] += [re.sub(r"\.tiff?$", "", n) for n in names]
    listed = splits["train"] + splits["test"]
    twice = sorted({s for s in listed if listed.count(s) > 1})
    unlisted = sorted(scenes - set(listed))
    if twice or unlisted:
        raise io.DataError(
            f"{path}: every scene must be listed once; listed more than once: {twice[:10]}, "
            f"in optical/ but not listed: {unlisted[:10]}"
        )
    for split, names in splits.items():
        if not names:
            raise io.DataError(f"{path}: the {split} split lists no scenes")
    return splits


class Builder(builder_base.RgbSarBuilder):
    """WHU-OPT-SAR as distributed: `optical/`, `sar/`, `lbl/` <scene>.tif, division file."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    Download WHU-OPT-SAR and pass the folder holding `optical/`, `sar/`, `lbl/` and
    "{DIVISION_FILE}" as --manual_dir.
    """
    SPEC = specs.WHU_OPT_SAR
    OPTICAL_BANDS = (4,)
    SAR_BANDS = (1,)
    SOURCE_PARTS = ("optical", "sar", "lbl", DIVISION_FILE)

    def _features(self):
        return builder_base.base_features(
            scene=tfds.features.Text(),
            tile_offset=tfds.features.Tensor(shape=(2,), dtype=np.int32),
        )

    def _split_generators(self, dl_manager):
        root = self.manual_path(dl_manager)
        optical_dir = root / "optical"
        scenes = {p.stem for p in optical_dir.glob("*.tif")}
        if not scenes:
            raise io.DataError(f"{optical_dir}: no <scene>.tif files found")
        splits = parse_division(root / DIVISION_FILE, scenes)
        return {
            split: self._generate_examples(root, names, split) for split, names in splits.items()
        }

    def _generate_examples(self, root, scenes, split):
        def examples():
            for scene in scenes:
                paths = (
                    root / "optical" / f"{scene}.tif",
                    io.find_file(root / "sar", scene, (".tif",), "SAR"),
                    io.find_file(root / "lbl", scene, (".tif",), "label"),
                )
                optical, sar, raw = self.read_pair(*paths)
                io.check_label_values(paths[2], raw.data, RAW_LABELS)
                label = map_label(raw.data[..., 0])
                h, w = optical.shape
                for idx, (y, x) in enumerate(tiles(h, w)):
                    window = (slice(y, y + TILE), slice(x, x + TILE))
                    name = f"{scene}_{idx:03d}"
                    tile_optical = _tile(optical, *window)
                    yield (
                        name,
                        self.example(
                            tile_optical,
                            io.Raster(sar.data[window]),
                            label[window],
                            paths[2],
                            name,
                            scene=scene,
                            tile_offset=np.array([y, x], np.int32),
                        ),
                    )

        return builder_base.require_examples(examples(), split, str(root))


def _tile(raster: io.Raster, rows: slice, cols: slice) -> io.Raster:
    """A window of `raster` with its geotransform moved to the window's corner."""
    a, b, c, d, e, f = raster.transform
    transform = (
        a,
        b,
        c + a * cols.start + b * rows.start,
        d,
        e,
        f + d * cols.start + e * rows.start,
    )
    return io.Raster(raster.data[rows, cols], raster.crs, transform, raster.nodata)
