"""Inference over whole images, sliding windows, and the official test-time augmentation.

All functions take `predict(optical, sar) -> logits`, a (usually jitted) function of
normalised NHWC batches returning (B, H, W, K) float logits at the input size.

- `whole`: one forward pass per image.
- `slide`: mmseg's slide_inference: windows of `window` every `stride` pixels, the last
  window moved back to the image edge; overlapping logits are averaged (summed, then
  divided by how many windows covered each pixel).
- `tta_probabilities`: mmseg's SegTTAModel: for each scale ratio, with and without a
  horizontal flip, resize the raw image (cv2 bilinear, keep ratio, sizes
  int(x * r + 0.5)), normalise, predict, flip back, resize the logits to the original
  size (bilinear, align_corners=False), softmax; the probabilities are averaged.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from asanet_jax.data import specs, transforms
from asanet_jax.models import torch_ops

Predict = Callable[[np.ndarray, np.ndarray], jax.Array]


class InferenceError(ValueError):
    """Inference settings that cannot apply to the given images."""


def whole(predict: Predict, optical: np.ndarray, sar: np.ndarray) -> np.ndarray:
    return np.asarray(predict(optical, sar))


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Window starts along one axis as mmseg: ceil-many grids, the last moved to the edge."""
    count = max(length - window + stride - 1, 0) // stride + 1
    return sorted({max(min(i * stride, length - window), 0) for i in range(count)})


def slide(
    predict: Predict,
    optical: np.ndarray,
    sar: np.ndarray,
    window: tuple[int, int],
    stride: tuple[int, int],
    num_classes: int,
) -> np.ndarray:
    """Sliding-window logits (B, H, W, K), overlaps averaged."""
    b, h, w = optical.shape[:3]
    if h < window[0] or w < window[1]:
        raise InferenceError(
            f"image of {h}x{w} is smaller than the {window[0]}x{window[1]} window; "
            "use a smaller window or whole-image inference"
        )
    if stride[0] <= 0 or stride[1] <= 0 or stride[0] > window[0] or stride[1] > window[1]:
        raise InferenceError(f"stride {stride} must be positive and at most the window {window}")
    total = np.zeros((b, h, w, num_classes), np.float32)
    count = np.zeros((1, h, w, 1), np.float32)
    for y in window_starts(h, window[0], stride[0]):
        for x in window_starts(w, window[1], stride[1]):
            tile = (slice(None), slice(y, y + window[0]), slice(x, x + window[1]))
            total[tile] += np.asarray(predict(optical[tile], sar[tile]))
            count[tile] += 1
    return total / count


def tta_probabilities(
    infer: Callable[[np.ndarray, np.ndarray], np.ndarray],
    optical_raw: np.ndarray,
    sar_raw: np.ndarray,
    spec: specs.DatasetSpec,
    ratios: tuple[float, ...],
    flip: bool = True,
) -> np.ndarray:
    """Averaged class probabilities (H, W, K) of one image under the official TTA.

    optical_raw, sar_raw: (H, W, 3) in model channel order, not normalised (as decoded);
    `infer` maps normalised (1, h, w, 3) inputs to (1, h, w, K) logits (`whole` or `slide`).
    """
    h, w = optical_raw.shape[:2]
    probs = None
    variants = 0
    for ratio in ratios:
        size = (int(h * ratio + 0.5), int(w * ratio + 0.5))
        optical = transforms.normalise(
            transforms.resize(optical_raw, size), spec.optical_mean, spec.optical_std
        )
        sar = transforms.normalise(transforms.resize(sar_raw, size), spec.sar_mean, spec.sar_std)
        for flipped in (False, True) if flip else (False,):
            o, s = (optical[:, ::-1], sar[:, ::-1]) if flipped else (optical, sar)
            logits = infer(np.ascontiguousarray(o)[None], np.ascontiguousarray(s)[None])
            if flipped:
                logits = logits[:, :, ::-1]
            logits = torch_ops.resize_bilinear(jnp.asarray(logits), (h, w))
            p = np.asarray(jax.nn.softmax(logits, axis=-1))[0]
            probs = p if probs is None else probs + p
            variants += 1
    return probs / variants
