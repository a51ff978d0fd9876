"""Running a model for prediction: the one predictor, whole images and sliding windows.

`Predictor` splits a model once, jits its forward pass once, and feeds each stream its
input (a single-modality model gets only its own). Everything that predicts uses it:
evaluation, scene prediction, the training loop's evaluation (through `logits`), the
scripts and the notebook.

- `whole`: one forward pass per image.
- `slide`: mmseg's slide_inference: windows of `window` every `stride` pixels, the last
  window moved back to the image edge; overlapping logits are averaged (summed, then
  divided by how many windows covered each pixel).

This module needs only the model's dependencies (jax, flax, numpy).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import numpy as np
from flax import nnx

from asanet_jax.models.asanet import ASANet
from asanet_jax.models.config import ModelConfig

Predict = Callable[[np.ndarray, np.ndarray], jax.Array]


class InferenceError(ValueError):
    """Inference settings that cannot apply to the given images."""


def stream_inputs(config: ModelConfig, optical, sar) -> tuple:
    """The model's (optical, sar) arguments: a single-modality model gets only its own."""
    return (
        optical if "optical" in config.streams else None,
        sar if "sar" in config.streams else None,
    )


def logits(graphdef: nnx.GraphDef, state: nnx.State, optical, sar) -> jax.Array:
    """The pure forward pass: (B, H, W, K) float32 logits at the input size.

    optical, sar: normalised NHWC batches; ``graphdef`` should be in eval mode.
    """
    model = nnx.merge(graphdef, state)
    return model(*stream_inputs(model.config, optical, sar))["logits"]


class Predictor:
    """A model ready to predict: eval mode, split once, one jitted forward pass.

    ``predictor(optical, sar)`` takes normalised NHWC batches (B, H, W, C) and returns
    (B, H, W, K) float32 logits; a stream the model does not have may be None. The
    caller's model is left as it is (its mode included).
    """

    def __init__(self, model: ASANet):
        graphdef, state = nnx.split(model)
        view = nnx.merge(graphdef, state)  # shares the arrays, not the mode
        view.eval()
        self.config: ModelConfig = model.config
        self.graphdef, self.state = nnx.split(view)
        self._forward = jax.jit(functools.partial(logits, self.graphdef))

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def __call__(self, optical, sar) -> jax.Array:
        return self._forward(self.state, *stream_inputs(self.config, optical, sar))

    def labels(self, optical, sar) -> np.ndarray:
        """Class ids (B, H, W), int32."""
        return np.asarray(self(optical, sar).argmax(-1))


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
