"""Pictures of predictions: class maps in the dataset palette, side by side with the inputs."""

from __future__ import annotations

import numpy as np

from asanet_jax.data import specs


def colorize(label: np.ndarray, palette, ignore_index: int = specs.IGNORE_INDEX) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 RGB; ignore (and unknown ids) in black."""
    table = np.zeros((256, 3), np.uint8)
    table[: len(palette)] = np.asarray(palette, np.uint8)
    table[ignore_index] = 0
    return table[np.asarray(label, np.uint8)]


def display_optical(optical: np.ndarray, spec: specs.DatasetSpec) -> np.ndarray:
    """A normalised model input (H, W, 3), model channel order -> displayable RGB uint8.

    With OpenCV channel order (the default) the model sees B, G, R, so it is reversed."""
    raw = optical * np.asarray(spec.optical_std) + np.asarray(spec.optical_mean)
    if spec.optical_bands is None:
        raw = raw[..., ::-1]
    return np.clip(raw, 0, 255).astype(np.uint8)


def display_sar(sar: np.ndarray, spec: specs.DatasetSpec) -> np.ndarray:
    raw = sar[..., 0] * spec.sar_std[0] + spec.sar_mean[0]
    return np.repeat(np.clip(raw, 0, 255).astype(np.uint8)[..., None], 3, -1)


def prediction_panel(examples: list[dict], predictions: list[np.ndarray], spec) -> np.ndarray:
    """Rows of [optical | SAR | label | prediction] for each example, with 4 px gaps."""
    rows = []
    for ex, pred in zip(examples, predictions, strict=True):
        tiles = [
            display_optical(ex["optical"], spec),
            display_sar(ex["sar"], spec),
            colorize(ex["label"], spec.palette, spec.ignore_index),
            colorize(pred, spec.palette, spec.ignore_index),
        ]
        gap = np.full((tiles[0].shape[0], 4, 3), 255, np.uint8)
        rows.append(np.concatenate([x for t in tiles for x in (t, gap)][:-1], axis=1))
    hgap = np.full((4, rows[0].shape[1], 3), 255, np.uint8)
    return np.concatenate([x for r in rows for x in (r, hgap)][:-1], axis=0)


def save_png(image: np.ndarray, path) -> None:
    from PIL import Image

    Image.fromarray(image).save(path)
