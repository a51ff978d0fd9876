"""Running a model for prediction: the one predictor, whole images and sliding windows.

`Predictor` splits a model once, jits its forward pass once, and feeds each stream its
input (a single-modality model gets only its own). Everything that predicts uses it:
evaluation, scene prediction, the training loop's evaluation (through `logits`), the
scripts and the notebook.

- `whole`: one forward pass per image.
- `slide`: mmseg's slide_inference: windows of `window` every `stride` pixels, the last
  window moved back to the image edge; overlapping logits are averaged (summed, then
  divided by how many windows covered each pixel), or blended with weights that fall
  towards each window's edges (`blend_weights`).

A `Predictor` given a device mesh runs each batch data-parallel over the mesh's devices:
the weights replicated, the batch split over every axis (the training mesh,
``train/sharding.py``).

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

    def __init__(self, model: ASANet, mesh: jax.sharding.Mesh | None = None):
        graphdef, state = nnx.split(model)
        view = nnx.merge(graphdef, state)  # shares the arrays, not the mode
        view.eval()
        self.config: ModelConfig = model.config
        self.graphdef, self.state = nnx.split(view)
        self.mesh = mesh
        if mesh is not None:
            P = jax.sharding.PartitionSpec
            self.state = jax.device_put(self.state, jax.sharding.NamedSharding(mesh, P()))
            self._batch = jax.sharding.NamedSharding(mesh, P(mesh.axis_names))
        self._forward = jax.jit(functools.partial(logits, self.graphdef))

    @property
    def devices(self) -> int:
        """How many devices share each batch (its size must be a multiple)."""
        return 1 if self.mesh is None else self.mesh.size

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def check_batch(self, size: int) -> None:
        """InferenceError unless a batch of `size` splits over the predictor's devices."""
        if size % self.devices:
            raise InferenceError(
                f"a batch of {size} does not split over {self.devices} devices; "
                "use a multiple of the device count"
            )

    def __call__(self, optical, sar) -> jax.Array:
        optical, sar = stream_inputs(self.config, optical, sar)
        if self.mesh is not None:
            self.check_batch((optical if optical is not None else sar).shape[0])
            optical, sar = (
                None if x is None else jax.device_put(x, self._batch) for x in (optical, sar)
            )
        return self._forward(self.state, optical, sar)

    def labels(self, optical, sar) -> np.ndarray:
        """Class ids (B, H, W), int32."""
        return np.asarray(self(optical, sar).argmax(-1))


def whole(predict: Predict, optical: np.ndarray, sar: np.ndarray) -> np.ndarray:
    return np.asarray(predict(optical, sar))


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
