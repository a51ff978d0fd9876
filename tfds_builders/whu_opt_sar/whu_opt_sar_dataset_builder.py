"""WHU-OPT-SAR: 100 GF-1/GF-3 scene pairs, cut into 512x512 tiles as the official tool does."""

from __future__ import annotations

import dataclasses
import itertools
import math
import pathlib
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


def parse_division(path: pathlib.Path) -> dict[str, list[str]]:
    """Scene names per split from the dataset's own division file.

    The file (CRLF line endings) holds a ``train:`` heading, one scene file name per line
    (``NH49E004021.tif``), a blank line, then a ``test:`` heading and its names. Headings
    are matched case-insensitively, with or without the colon or a "set"/"ing" suffix;
    names may carry ``.tif`` or not.
    """
    if not path.is_file():
        raise io.DataError(f"{path}: split file not found")
    splits: dict[str, list[str]] = {"train": [], "test": []}
    current = None
    for number, line in enumerate(io.read_text(path, "division file").splitlines(), 1):
        text = line.strip()
        if not text:
            continue
        heading = re.fullmatch(r"(train|test)(?:ing)?(?: set)?\s*:?", text, re.IGNORECASE)
        if heading:
            current = heading[1].lower()
            continue
        if current is None:
            raise io.DataError(
                f"{path}:{number}: scene {text!r} comes before any 'train:' or 'test:' heading"
            )
        splits[current] += [re.sub(r"\.tiff?$", "", t, flags=re.IGNORECASE) for t in text.split()]
    listed = splits["train"] + splits["test"]
    twice = sorted({s for s in listed if listed.count(s) > 1})
    if twice:
        raise io.DataError(f"{path}: scenes listed more than once: {twice[:10]}")
    for split, names in splits.items():
        if not names:
            raise io.DataError(f"{path}: the {split} split lists no scenes")
    return splits


def opencv_optical(path: pathlib.Path, raster: io.Raster) -> io.Raster:
    """The optical scene as the official loaders (OpenCV colour decoding) saw it.

    A 4-band RGB TIFF whose 4th band is tagged as unassociated alpha (ExtraSamples = 2)
    is decoded by libtiff as colour premultiplied by that band, ``(x * a + 127) // 255``;
    the premultiplied bands are stored, so that converted official weights see what they
    were trained on. Otherwise the bands are stored as they are. A 4-band MINISBLACK TIFF
    decodes as its first band replicated, which this builder does not reproduce.
    """
    tags = io.tiff_tags(path)
    photometric, extra = tags.get(262, (None,))[0], tags.get(338, ())
    if photometric == 1:
        raise io.DataError(
            f"{path}: a 4-band MINISBLACK TIFF, which OpenCV (and so the official ASANet "
            "loader) decodes as its first band replicated to three channels, not as B, G, "
            "R; rewrite it with photometric RGB (bands B, G, R, NIR), or describe the data "
            "as an rgb_sar_folder dataset with explicit optical_bands"
        )
    if photometric == 2 and extra == (2,) and raster.data.dtype == np.uint8:
        data = raster.data.astype(np.uint32)
        colour = (data[..., :3] * data[..., 3:4] + 127) // 255
        premultiplied = np.concatenate([colour, data[..., 3:4]], -1).astype(np.uint8)
        return dataclasses.replace(raster, data=premultiplied)
    return raster


class Builder(builder_base.RgbSarBuilder):
    """WHU-OPT-SAR as distributed: `optical/`, `sar/`, `lbl/` <scene>.tif, division file."""

    VERSION = tfds.core.Version("2.0.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release.",
        "2.0.0": "Exact float64 geotransforms; dataset spec version 2 (band numbers from 1).",
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    Download WHU-OPT-SAR and pass the folder holding `optical/`, `sar/`, `lbl/` and
    "{DIVISION_FILE}" as --manual_dir.
    """
    SPEC = specs.WHU_OPT_SAR
    OPTICAL_BANDS = (4,)
    SAR_BANDS = (1,)
    SOURCE_PARTS = ("optical", "sar", "lbl", DIVISION_FILE)

    def __init__(self, *, allow_missing_scenes: bool = False, **kwargs):
        # True builds a deliberate subset: the scenes of the division file that are on disk.
        self.allow_missing_scenes = allow_missing_scenes
        super().__init__(**kwargs)

    def _features(self):
        return builder_base.base_features(
            scene=tfds.features.Text(),
            tile_offset=tfds.features.Tensor(shape=(2,), dtype=np.int32),
        )

    def _split_generators(self, dl_manager):
        root = self.manual_path(dl_manager)
        optical_dir = root / "optical"
        on_disk = {p.stem for p in optical_dir.glob("*.tif")}
        if not on_disk:
            raise io.DataError(f"{optical_dir}: no <scene>.tif files found")
        division = root / DIVISION_FILE
        splits = parse_division(division)
        listed = set(splits["train"] + splits["test"])
        unlisted = sorted(on_disk - listed)
        if unlisted:
            raise io.DataError(
                f"{division}: {len(unlisted)} scene(s) in {optical_dir} are not listed: "
                f"{unlisted[:10]}"
            )
        absent = sorted(listed - on_disk)
        if absent and not self.allow_missing_scenes:
            raise io.DataError(
                f"{optical_dir}: {len(absent)} of the {len(listed)} scenes listed in {division} "
                f"are missing: {absent[:10]}; build a deliberate subset with "
                "--allow_missing_scenes (allow_missing_scenes=True)"
            )
        splits = {split: [n for n in names if n in on_disk] for split, names in splits.items()}
        for split, names in splits.items():
            if not names:
                raise io.DataError(f"{optical_dir}: no scene of the {split} split is on disk")
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
                optical = opencv_optical(paths[0], optical)
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
