"""The one predictor: a model split once, its forward pass jitted once.

`Predictor` feeds each stream its input (a single-modality model gets only its own).
Everything that predicts uses it: evaluation, scene and region prediction, the training
loop's evaluation (through `logits`), the scripts and the notebook. Given a device mesh
it runs each batch data-parallel over the mesh's devices: the weights replicated, the
batch split over every axis (``multihost.local_mesh`` for this host's devices).

This module needs only the model's dependencies (jax, flax, numpy).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import numpy as np
from flax import nnx

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

    def __init__(self, model: nnx.Module, mesh: jax.sharding.Mesh | None = None):
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
    def default_batch_size(self) -> int:
        """Windows per forward pass when none is asked for: one per device on a CPU (larger
        batches fall out of cache there: 44 vs 30 windows/s for micro at batch 1 vs 8),
        eight per device on an accelerator, which wants full batches."""
        device = self.mesh.devices.flat[0] if self.mesh is not None else jax.devices()[0]
        return self.devices * (1 if device.platform == "cpu" else 8)

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def check_batch(self, size: int) -> None:
        """InferenceError unless a batch of `size` splits over the predictor's devices."""
        if size < 1 or size % self.devices:
            raise InferenceError(
                f"a batch of {size} does not split over {self.devices} devices; "
                "use a positive multiple of the device count"
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
