"""Per-example preprocessing, as the official mmseg pipelines do it (docs/design.md, section 6).

Stored values first become the model's bands (``preprocess.model_bands``: SAR scaling,
band selection, missing pixels). Training: RandomResize by a ratio of the target scale
(keep ratio), RandomCrop with the 75% category limit, horizontal and vertical flips,
normalisation, then padding to the crop size (images 0, labels ignore). Evaluation: the
whole image, normalised. The augmentation's settings are ``config.data.augment``
(``Augment.from_config``), each dataset's official ones by default (``data/config.py``).

Images are resized in their stored dtype with cv2 (uint8 stays uint8 and rounds as the
official pipeline, which resizes decoded uint8 images), bilinear for images and nearest
for labels. All arrays are (H, W, C) numpy; labels (H, W) uint8.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from asanet_jax.data import preprocess, specs
from asanet_jax.labels import IGNORE


@dataclasses.dataclass(frozen=True)
class Augment:
    """The training augmentation's settings, field for field ``config.data.augment``;
    defaults are the official PIE recipe's (``data/config.py`` holds every dataset's)."""

    crop_size: tuple[int, int] = (256, 256)
    # RandomResize target scale (long, short), multiplied by a ratio drawn from ratio_range.
    scale: tuple[int, int] = (1024, 256)
    ratio_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    crop_tries: int = 10
    hflip_prob: float = 0.5
    vflip_prob: float = 0.5
    # False reproduces the official PIE pipeline, which flips optical and label but not SAR.
    flip_sar: bool = True

    def __post_init__(self):
        where = "config.data.augment"
        for name in ("crop_size", "scale"):
            value = getattr(self, name)
            if len(value) != 2 or not all(isinstance(v, int) and v > 0 for v in value):
                raise ValueError(f"{where}.{name}={value!r}: expected two positive integers")
        if len(self.ratio_range) != 2 or not 0 < self.ratio_range[0] <= self.ratio_range[1]:
            raise ValueError(
                f"{where}.ratio_range={self.ratio_range!r}: expected (low, high), 0 < low <= high"
            )
        if not 0 < self.cat_max_ratio <= 1:
            raise ValueError(f"{where}.cat_max_ratio={self.cat_max_ratio!r}: expected 0 < r <= 1")
        if self.crop_tries < 0:
            raise ValueError(f"{where}.crop_tries={self.crop_tries!r}: expected 0 or more")
        for name in ("hflip_prob", "vflip_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{where}.{name}={getattr(self, name)!r}: expected 0 to 1")

    @classmethod
    def from_config(cls, data) -> Augment:
        """The augmentation ``config.data`` asks for (its ``augment`` fields)."""
        given = dict(data.augment)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(given) - known)
        if unknown:
            raise ValueError(
                f"config.data.augment: unknown fields {unknown}; known: {sorted(known)}"
            )
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in given.items()})

    @classmethod
    def for_spec(cls, spec: specs.DatasetSpec, **overrides) -> Augment:
        """The official augmentation of the dataset `spec` describes (``data/config.py``; a
        dataset without an official recipe gets the PIE one), with `overrides`."""
        from asanet_jax.data.config import augment_defaults

        return cls(**augment_defaults(spec.name)).replace(**overrides)

    def replace(self, **overrides) -> Augment:
        return dataclasses.replace(self, **overrides)


def rescale_size(height: int, width: int, scale: tuple[int, int]) -> tuple[int, int]:
    """mmcv.imrescale's new (H, W): fit the long and short edges within `scale`."""
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def resize(image: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """cv2 resize to (H, W); keeps a trailing channel axis of any length."""
    interpolation = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    out = cv2.resize(image, (size[1], size[0]), interpolation=interpolation)
    return out.reshape(*size, *image.shape[2:])


def random_rescale(images, label, rng: np.random.Generator, aug: Augment):
    """RandomResize(scale, ratio_range, keep_ratio=True) applied to every modality."""
    ratio = rng.uniform(*aug.ratio_range)
    target = (int(aug.scale[0] * ratio), int(aug.scale[1] * ratio))
    size = rescale_size(*label.shape, target)
    return [resize(im, size) for im in images], resize(label, size, nearest=True)


def crop_box(rng, shape, crop) -> tuple[int, int]:
    """Top-left corner of a random crop (mmseg: uniform over the valid offsets)."""
    return (
        int(rng.integers(0, max(shape[0] - crop[0], 0) + 1)),
        int(rng.integers(0, max(shape[1] - crop[1], 0) + 1)),
    )


def random_crop(images, label, rng: np.random.Generator, aug: Augment, ignore_index: int):
    """RandomCrop(crop_size, cat_max_ratio): retry up to `crop_tries` times for a crop in
    which no class exceeds `cat_max_ratio` of the labelled pixels (and more than one class
    is present); after that the last candidate is used, as mmseg does."""
    crop = aug.crop_size
    y, x = crop_box(rng, label.shape, crop)
    if aug.cat_max_ratio < 1.0:
        for _ in range(aug.crop_tries):
            counts = np.bincount(label[y : y + crop[0], x : x + crop[1]].ravel(), minlength=256)
            counts[ignore_index] = 0
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max() / counts.sum() < aug.cat_max_ratio:
                break
            y, x = crop_box(rng, label.shape, crop)
    window = (slice(y, y + crop[0]), slice(x, x + crop[1]))
    return [im[window] for im in images], label[window]


def pad_to(image: np.ndarray, size: tuple[int, int], value) -> np.ndarray:
    """Pad bottom and right up to `size` (mmseg's SegDataPreProcessor)."""
    pad_h, pad_w = size[0] - image.shape[0], size[1] - image.shape[1]
    if pad_h <= 0 and pad_w <= 0:
        return image
    widths = [(0, max(pad_h, 0)), (0, max(pad_w, 0))] + [(0, 0)] * (image.ndim - 2)
    return np.pad(image, widths, constant_values=value)


def _where(record: dict, spec) -> str:
    return f"{spec.name} example {record.get('file_name', b'?')!r}"


def train_example(record: dict, rng: np.random.Generator, spec, aug: Augment) -> dict:
    """One augmented training example: optical/sar (crop_h, crop_w, 3) float32 normalised,
    label (crop_h, crop_w) uint8."""
    optical, sar, _ = preprocess.model_bands(
        record["optical"], record["sar"], spec, _where(record, spec)
    )
    label = record["label"]
    (optical, sar), label = random_rescale([optical, sar], label, rng, aug)
    (optical, sar), label = random_crop([optical, sar], label, rng, aug, IGNORE)
    if rng.random() < aug.hflip_prob:
        optical, label = optical[:, ::-1], label[:, ::-1]
        sar = sar[:, ::-1] if aug.flip_sar else sar
    if rng.random() < aug.vflip_prob:
        optical, label = optical[::-1], label[::-1]
        sar = sar[::-1] if aug.flip_sar else sar
    optical, sar = preprocess.normalise_both(optical, sar, spec)
    return {
        "optical": pad_to(optical, aug.crop_size, 0),
        "sar": pad_to(sar, aug.crop_size, 0),
        "label": pad_to(np.ascontiguousarray(label), aug.crop_size, IGNORE),
    }


def eval_example(record: dict, spec) -> dict:
    """The whole image, normalised: optical/sar (H, W, 3) float32, label (H, W) uint8."""
    optical, sar, _ = preprocess.model_inputs(
        record["optical"], record["sar"], spec, _where(record, spec)
    )
    return {"optical": optical, "sar": sar, "label": record["label"]}
