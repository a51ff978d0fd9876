"""DDHR-SK (DDHRNet "korea", Pohang): GF-2 optical and GF-3 SAR 256x256, 5 classes."""

from __future__ import annotations

import tensorflow_datasets as tfds

from asanet_jax.data import builder_base, io, specs

# The official ASANet split: ids 200-299, 400-499, ..., 6000-6099 are val, the rest train.
# (The official script loops to len(files) - 1 and so leaves the last id out of both
# splits; here every id lands in exactly one split.)
VAL_BLOCKS = range(2, 61, 2)


def official_split(ids: list[int]) -> dict[str, list[int]]:
    """Ids by split under the official rule, with no id dropped."""
    val = [i for i in ids if i // 100 in VAL_BLOCKS]
    val_set = set(val)
    return {"train": [i for i in ids if i not in val_set], "val": val}


class Builder(builder_base.RgbSarBuilder):
    """DDHR-SK as distributed: `GF2/<id>.jpg`, `GF3/<id>.jpg`, `label/<id>.png`."""

    VERSION = tfds.core.Version("2.0.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release.",
        "2.0.0": "Exact float64 geotransforms; dataset spec version 2 (band numbers from 1).",
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Download DDHR-DATA and pass its `korea` folder as --manual_dir: it holds `GF2/`,
    `GF3/` and `label/`, directly or in `256_cloud/` as the dataset authors' own lists
    place them.
    """
    SPEC = specs.DDHR_SK
    OPTICAL_BANDS = (3,)
    SAR_BANDS = (1, 3)
    SOURCE_PARTS = ("GF2", "GF3", "label")

    def data_root(self, manual_dir):
        nested = manual_dir / "256_cloud"  # korea/256_cloud/{GF2,GF3,label}, the authors' lists
        if not (manual_dir / "GF2").is_dir() and (nested / "GF2").is_dir():
            return nested
        return manual_dir

    def _split_generators(self, dl_manager):
        root = self.manual_path(dl_manager)
        ids = self._ids(root)
        return {
            split: self._generate_examples(root, split_ids, split)
            for split, split_ids in official_split(ids).items()
        }

    @staticmethod
    def _ids(root) -> list[int]:
        """Ids 1..N from `label/`; a gap or a non-numeric name is an error."""
        label_dir = root / "label"
        if not label_dir.is_dir():
            raise io.DataError(f"{label_dir}: label folder not found")
        stems = [p.stem for p in label_dir.glob("*.png")]
        bad = sorted(s for s in stems if not s.isdigit())
        if bad:
            raise io.DataError(f"{label_dir}: expected numeric ids as file names, got {bad[:5]}")
        ids = sorted(int(s) for s in stems)
        if not ids:
            raise io.DataError(f"{label_dir}: no <id>.png labels found")
        missing = sorted(set(range(1, ids[-1] + 1)) - set(ids))
        if missing:
            raise io.DataError(
                f"{label_dir}: ids run 1..{ids[-1]} but labels {missing[:10]} are missing"
            )
        return ids

    def _generate_examples(self, root, ids, split):
        def examples():
            for i in ids:
                paths = (
                    io.find_file(root / "GF2", str(i), (".jpg",), "optical"),
                    io.find_file(root / "GF3", str(i), (".jpg",), "SAR"),
                    root / "label" / f"{i}.png",
                )
                optical, sar, label = self.read_pair(*paths)
                yield str(i), self.example(optical, sar, label.data[..., 0], paths[2], str(i))

        return builder_base.require_examples(examples(), split, str(root))
