"""Sliding windows: where they go, how overlapping logits are blended, in memory or
streamed row by row.

- `window_starts`, `plan_windows`: mmseg's window grid (the last window moved back to the
  edge; a side shorter than the window is one window).
- `blend_weights`: averaging (mmseg's) or weights that fall towards a window's edges.
- `slide`: sliding-window inference over images in memory (evaluation).
- `Blender`: the same over a scene of any size, a row of windows at a time, writing rows
  as soon as no later window touches them (scene prediction).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from asanet_jax.data import io
from asanet_jax.predict.predictor import InferenceError, Predict

if TYPE_CHECKING:
    from asanet_jax.predict.stages import Batch


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Window starts along one axis as mmseg: ceil-many grids, the last moved to the edge."""
    count = max(length - window + stride - 1, 0) // stride + 1
    return sorted({max(min(i * stride, length - window), 0) for i in range(count)})


BLENDS = ("mean", "linear", "hann")


def blend_weights(height: int, width: int, blend: str = "mean") -> np.ndarray:
    """(height, width, 1) float32 weights of one window's logits where windows overlap.

    ``mean`` weighs every pixel 1: overlaps are averaged, as mmseg does. ``linear`` (a
    triangle) and ``hann`` (a raised cosine) fall towards the window's edges, so that a
    pixel takes most from the windows it lies deepest in, where the model saw the most
    context: no seams along window borders. Along an axis of n pixels, pixel i gets
    1 - |2(i + 1)/(n + 1) - 1| or sin^2(pi (i + 1)/(n + 1)): positive everywhere, so a
    pixel that only a window's edge covers (at the scene's border) keeps its logits.
    """
    if blend not in BLENDS:
        raise InferenceError(f"blend {blend!r}: expected one of {BLENDS}")

    def axis(n: int) -> np.ndarray:
        t = np.arange(1, n + 1, dtype=np.float64) / (n + 1)
        if blend == "linear":
            return 1 - np.abs(2 * t - 1)
        if blend == "hann":
            return np.sin(np.pi * t) ** 2
        return np.ones(n)

    return np.outer(axis(height), axis(width)).astype(np.float32)[..., None]


def slide(
    predict: Predict,
    optical: np.ndarray,
    sar: np.ndarray,
    window: tuple[int, int],
    stride: tuple[int, int],
    num_classes: int,
    blend: str = "mean",
) -> np.ndarray:
    """Sliding-window logits (B, H, W, K), overlaps blended (`blend_weights`)."""
    b, h, w = optical.shape[:3]
    if h < window[0] or w < window[1]:
        raise InferenceError(
            f"image of {h}x{w} is smaller than the {window[0]}x{window[1]} window; "
            "use a smaller window or whole-image inference"
        )
    if stride[0] <= 0 or stride[1] <= 0 or stride[0] > window[0] or stride[1] > window[1]:
        raise InferenceError(f"stride {stride} must be positive and at most the window {window}")
    weights = blend_weights(*window, blend)
    total = np.zeros((b, h, w, num_classes), np.float32)
    count = np.zeros((1, h, w, 1), np.float32)
    for y in window_starts(h, window[0], stride[0]):
        for x in window_starts(w, window[1], stride[1]):
            tile = (slice(None), slice(y, y + window[0]), slice(x, x + window[1]))
            total[tile] += np.asarray(predict(optical[tile], sar[tile])) * weights
            count[tile] += weights
    return total / count


@dataclasses.dataclass(frozen=True)
class WindowPlan:
    """Window starts over a scene: rows `ys`, columns `xs`, each window `size` (h, w)."""

    size: tuple[int, int]
    ys: list[int]
    xs: list[int]

    @property
    def count(self) -> int:
        return len(self.ys) * len(self.xs)


def default_stride(window: int) -> int:
    """Two thirds of the window (341 for 512), the stride when none is given."""
    return max(window * 2 // 3, 1)


def plan_windows(height, width, window: int, stride: int | None, min_side: int, where):
    """mmseg's window grid. Along a side shorter than the window, the window is the whole
    side, so a scene within one window is whole-image inference."""
    if min(height, width) < min_side:
        raise io.DataError(
            f"{where} is {height}x{width} pixels; the model's stages need a scene of at "
            f"least {min_side}x{min_side}"
        )
    stride = stride or default_stride(window)
    if window < min_side or not 0 < stride <= window:
        raise io.DataError(
            f"window {window} and stride {stride}: the window must be at least {min_side} "
            "and the stride between 1 and the window"
        )
    size = (min(window, height), min(window, width))
    ys = window_starts(height, size[0], min(stride, size[0]))
    xs = window_starts(width, size[1], min(stride, size[1]))
    return WindowPlan(size, ys, xs)


class Blender:
    """Stage 3 of a scene: sums weighted logits of the rows from `top` on, and writes the rows that
    no later window touches."""

    def __init__(self, plan: WindowPlan, width, num_classes, blend, writer, on_windows):
        self.plan, self.width, self.k = plan, width, num_classes
        # mean: plain sums and counts (what weights of 1 give, without the products)
        self.weights = None if blend == "mean" else blend_weights(*plan.size, blend)
        self.writer, self.on_windows = writer, on_windows
        self.top = plan.ys[0]
        self.total = np.zeros((0, width, num_classes), np.float32)
        self.count = np.zeros((0, width, 1), np.float32)
        self.missing = np.zeros((0, width), bool)
        self.left = {i: len(plan.xs) for i in range(len(plan.ys))}  # windows to come per row
        self.next_row = 0  # the first row of windows not yet complete

    def add(self, batch: Batch, logits) -> None:
        h, w = self.plan.size
        for i, missing in batch.rows:
            end = self.plan.ys[i] + h - self.top
            grow = end - self.total.shape[0]
            if grow > 0:
                self.total = np.concatenate(
                    [self.total, np.zeros((grow, self.width, self.k), np.float32)]
                )
                self.count = np.concatenate(
                    [self.count, np.zeros((grow, self.width, 1), np.float32)]
                )
                self.missing = np.concatenate([self.missing, np.zeros((grow, self.width), bool)])
            self.missing[end - h : end] |= missing
        logits = np.asarray(logits)  # waits for the device
        for n, (i, x) in enumerate(batch.windows):
            rows = slice(self.plan.ys[i] - self.top, self.plan.ys[i] - self.top + h)
            if self.weights is None:
                self.total[rows, x : x + w] += logits[n]
                self.count[rows, x : x + w] += 1
            else:
                self.total[rows, x : x + w] += logits[n] * self.weights
                self.count[rows, x : x + w] += self.weights
            self.left[i] -= 1
        self.on_windows(len(batch.windows))
        while self.next_row < len(self.plan.ys) and self.left[self.next_row] == 0:
            self.next_row += 1
            self._flush()

    def _flush(self) -> None:
        """Write the rows above the next incomplete row of windows."""
        i = self.next_row
        end = self.plan.ys[i] if i < len(self.plan.ys) else self.top + self.total.shape[0]
        done = end - self.top
        if done <= 0:
            return
        logits = self.total[:done] / self.count[:done]
        self.writer.write(self.top, logits, self.missing[:done])
        self.total, self.count = self.total[done:], self.count[done:]
        self.missing = self.missing[done:]
        self.top = end
