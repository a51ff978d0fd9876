"""Pictures of predictions: class maps in the dataset palette, side by side with the inputs."""

from __future__ import annotations

import numpy as np

from asanet_jax import files
from asanet_jax.data import specs
from asanet_jax.labels import IGNORE


def colorize(label: np.ndarray, palette, ignore_index: int = IGNORE) -> np.ndarray:
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
            colorize(ex["label"], spec.palette),
            colorize(pred, spec.palette),
        ]
        gap = np.full((tiles[0].shape[0], 4, 3), 255, np.uint8)
        rows.append(np.concatenate([x for t in tiles for x in (t, gap)][:-1], axis=1))
    hgap = np.full((4, rows[0].shape[1], 3), 255, np.uint8)
    return np.concatenate([x for r in rows for x in (r, hgap)][:-1], axis=0)


def save_png(image: np.ndarray, path) -> None:
    """Write an (H, W, 3) or (H, W) uint8 image as PNG, atomically."""
    from PIL import Image

    with files.atomic_output(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def confusion_image(confusion: np.ndarray, class_names, cell: int = 56) -> np.ndarray:
    """A confusion-matrix picture: rows = labels, columns = predictions, each cell shaded
    and annotated with its share of the row (percent)."""
    from PIL import Image, ImageDraw

    confusion = np.asarray(confusion, np.float64)
    rows = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    k = len(class_names)
    margin = 9 * max(len(str(n)) for n in class_names) + 12
    image = Image.new("RGB", (margin + k * cell, margin + k * cell), "white")
    draw = ImageDraw.Draw(image)
    for i in range(k):
        draw.text((4, margin + i * cell + cell // 2 - 6), str(class_names[i]), fill="black")
        draw.text(
            (margin + i * cell + 4, margin - 16), str(class_names[i])[: cell // 7], fill="black"
        )
        for j in range(k):
            v = rows[i, j]
            colour = tuple(int(255 - v * (255 - c)) for c in (8, 48, 107))
            box = (
                margin + j * cell,
                margin + i * cell,
                margin + (j + 1) * cell - 1,
                margin + (i + 1) * cell - 1,
            )
            draw.rectangle(box, fill=colour)
            draw.text(
                (box[0] + 8, box[1] + cell // 2 - 6),
                f"{100 * v:.1f}",
                fill="white" if v > 0.5 else "black",
            )
    draw.text((margin, 2), "rows: label, columns: prediction (% of row)", fill="black")
    return np.asarray(image)


def robustness_plot(table: dict[str, float], size=(560, 360)) -> np.ndarray:
    """mIoU against severity for clouds and fog, with the clean and missing-modality
    levels as horizontal lines."""
    from PIL import Image, ImageDraw

    w, h = size
    left, right, top, bottom = 50, 130, 20, 40
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)

    def xy(severity, miou):
        x = left + (severity - 1) / 4 * (w - left - right)
        y = top + (1 - miou / 100) * (h - top - bottom)
        return x, y

    for v in range(0, 101, 20):
        y = xy(1, v)[1]
        draw.line([(left, y), (w - right, y)], fill=(225, 225, 225))
        draw.text((8, y - 6), f"{v}", fill="black")
    for s in range(1, 6):
        draw.text((xy(s, 0)[0] - 3, h - bottom + 6), str(s), fill="black")
    draw.text(((w - right) // 2 - 20, h - 16), "severity", fill="black")
    draw.text((4, 2), "mIoU", fill="black")
    levels = [
        ("clean", (0, 0, 0)),
        ("optical_missing", (150, 150, 150)),
        ("sar_missing", (120, 60, 160)),
    ]
    for name, colour in levels:
        y = xy(1, table[name])[1]
        for x in range(left, w - right, 8):
            draw.line([(x, y), (x + 4, y)], fill=colour)
        draw.text((w - right + 6, y - 6), f"{name} {table[name]:.1f}", fill=colour)
    for kind, colour in (("clouds", (30, 110, 220)), ("fog", (220, 120, 30))):
        points = [xy(s, table[f"{kind}_{s}"]) for s in range(1, 6)]
        draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse([(x - 3, y - 3), (x + 3, y + 3)], fill=colour)
        draw.text((points[-1][0] + 6, points[-1][1] - 6), kind, fill=colour)
    return np.asarray(image)


def corruption_examples(optical_rgb: np.ndarray, seed: int = 0) -> np.ndarray:
    """Rows: clouds and fog; columns: severities 1..5 of one RGB image (0..255)."""
    from asanet_jax import corruptions

    rows = []
    for fn in (corruptions.clouds, corruptions.fog):
        tiles = [
            np.clip(fn(optical_rgb.astype(np.float32), s, seed), 0, 255).astype(np.uint8)
            for s in corruptions.SEVERITIES
        ]
        gap = np.full((optical_rgb.shape[0], 4, 3), 255, np.uint8)
        rows.append(np.concatenate([x for t in tiles for x in (t, gap)][:-1], axis=1))
    hgap = np.full((4, rows[0].shape[1], 3), 255, np.uint8)
    return np.concatenate([rows[0], hgap, rows[1]], axis=0)
