"""Every architecture behind one interface: build a model from its config, or build it
around weights that come from elsewhere (a converted checkpoint, a model directory).

``MODULES`` maps ``config.model.architecture`` to its module class. Every module takes
``(config, rngs=...)``, keeps the resolved config as ``model.config``, and is called as
``model(optical, sar)``, returning a dict with ``logits`` (B, H, W, K at input size),
``decode_logits``, ``features`` and, where the model has an auxiliary head, ``aux_logits``.
"""

from __future__ import annotations

import jax
import ml_collections
from flax import nnx

from asanet_jax.models.asanet import ASANet
from asanet_jax.models.cmx import CMX
from asanet_jax.models.config import ModelConfig, resolve
from asanet_jax.models.sagate import SAGateNet
from asanet_jax.models.vfusenet import VFuseNet

MODULES: dict[str, type[nnx.Module]] = {
    "asanet": ASANet,
    "cmx": CMX,
    "sagate": SAGateNet,
    "vfusenet": VFuseNet,
}
WEIGHTS = (nnx.Param, nnx.BatchStat)


def build(config: ml_collections.ConfigDict | dict | ModelConfig, *, rngs: nnx.Rngs) -> nnx.Module:
    """A randomly initialised model of the architecture ``config`` names."""
    config = resolve(config)
    return MODULES[config.architecture](config, rngs=rngs)


def build_with_weights(config: ModelConfig, fill, *, seed: int = 0) -> nnx.Module:
    """A model whose parameters and BatchNorm statistics come from elsewhere.

    ``fill`` receives the abstract weight State (ShapeDtypeStructs) and returns it
    with concrete values. The weights are never randomly initialised; only the
    dropout RNG streams are created (XLA drops the rest of init). Eval mode.
    """

    def make():
        return build(config, rngs=nnx.Rngs(params=seed, dropout=seed + 1))

    graphdef, weights, _ = nnx.split(nnx.eval_shape(make), WEIGHTS, ...)
    rest = jax.jit(lambda: nnx.split(make(), WEIGHTS, ...)[2])()
    model = nnx.merge(graphdef, fill(weights), rest)
    model.eval()
    return model


def count_params(model: nnx.Module) -> int:
    """Number of trainable parameters (BatchNorm statistics excluded)."""
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
