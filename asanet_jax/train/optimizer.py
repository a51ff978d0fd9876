"""The official optimiser: AdamW with stage-wise learning-rate decay and weight-decay
exemptions, under linear warm-up then poly decay (docs/design.md, section 6).

Parameter groups are rules over our own parameter paths (big_vision's way), tested to
equal the official mmseg groups for every parameter of the paper's model:

- learning-rate scale ``layer_decay ** (NUM_LAYERS - 1 - id)``, where id is 0 for the
  downsample layers (stem included) of every stream, ``i + 1`` for the blocks of stage
  ``i``, and ``NUM_LAYERS - 1`` for everything else (stage norms, SFM, CFM, heads); with
  decay 0.9 and 8 layers that is ``0.9 ** (7 - id)``;
- no weight decay on 1-D parameters (norm scales, GRN, BatchNorm) and biases.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

NUM_LAYERS = 8  # ids 0..7: downsample (0), stages 0..3 (1..4), rest (7)
# (pattern over our parameter path, layer id or a function of the match); first match wins.
LAYER_RULES = (
    (r"(optical|sar)\.downsample_layers\..+", lambda m: 0),
    (r"(optical|sar)\.stages\.(\d+)\..+", lambda m: int(m[2]) + 1),
    (r".+", lambda m: NUM_LAYERS - 1),
)


def layer_id(path: str) -> int:
    """The stage id of one of our parameter paths (``optical.stages.2.0.norm.scale`` -> 3)."""
    for pattern, rule in LAYER_RULES:
        if m := re.fullmatch(pattern, path):
            return rule(m)
    raise AssertionError("the last rule matches every path")


def decays(path: str, shape: tuple[int, ...]) -> bool:
    """Weight decay applies to every parameter but 1-D ones and biases."""
    return not (len(shape) == 1 or path.endswith(".bias"))


def parameter_groups(params: nnx.State, layer_decay: float) -> tuple[nnx.State, nnx.State]:
    """(learning-rate scale, weight decay on?) for every parameter, as two trees like
    `params` (an nnx.State of nnx.Param)."""

    scales = jax.tree_util.tree_map_with_path(
        lambda p, _: layer_decay ** (NUM_LAYERS - 1 - layer_id(_path_name(p))), params
    )
    decay_mask = jax.tree_util.tree_map_with_path(
        lambda p, v: decays(_path_name(p), v.shape), params
    )
    return scales, decay_mask


def warmup_poly_schedule(
    lr: float, warmup_steps: int, total_steps: int, warmup_factor: float = 1e-6, power: float = 1.0
) -> optax.Schedule:
    """The learning rate of iteration t (0-based) under mmengine's
    LinearLR(start_factor, begin=0, end=W) then PolyLR(power, eta_min=0, begin=W, end=T).

    Both mmengine schedulers count ``end - begin - 1`` steps, so the rate is full at
    t = W - 1 and exactly 0 at t = T - 1, the last iteration::

        t <  W:  lr * (s + (1 - s) * t / (W - 1))
        t >= W:  lr * ((T - 1 - t) / (T - W - 1)) ** power
    """
    last_warm = max(warmup_steps - 1, 1)
    decay_span = max(total_steps - warmup_steps - 1, 1)

    def schedule(step):
        t = jnp.asarray(step, jnp.float32)
        warm = warmup_factor + (1.0 - warmup_factor) * t / last_warm
        # Remaining fraction as (T - 1 - t) / span: exact near the end in float32.
        remaining = jnp.clip((total_steps - 1 - t) / decay_span, 0.0, 1.0)
        return lr * jnp.where(t < warmup_steps, warm, remaining**power)

    return schedule


def _path_name(path) -> str:
    """'optical.stages.0.0.norm.scale' from a pytree path (the Variable's .value dropped)."""
    parts = [k for k in path if not isinstance(k, jax.tree_util.GetAttrKey)]
    return ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in parts)


def make_optimizer(
    params: nnx.State, optim: ml_collections.ConfigDict, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW with the official groups over `params` (an nnx.State of nnx.Param)."""
    scales, decay_mask = parameter_groups(params, optim.layer_decay)
    schedule = warmup_poly_schedule(
        optim.lr, optim.warmup_steps, total_steps, optim.warmup_factor, optim.power
    )
    transforms = []
    if optim.get("grad_clip_norm"):
        transforms.append(optax.clip_by_global_norm(optim.grad_clip_norm))
    transforms += [
        optax.scale_by_adam(b1=optim.b1, b2=optim.b2, eps=optim.eps),
        # PyTorch AdamW: p -= lr_group * (adam + wd * p); the group scale covers both terms.
        optax.add_decayed_weights(optim.weight_decay, mask=decay_mask),
        _scale_by_tree(scales),
        optax.scale_by_learning_rate(schedule),
    ]
    return optax.chain(*transforms), schedule


def _scale_by_tree(scales) -> optax.GradientTransformation:
    def init(_):
        return optax.EmptyState()

    def update(updates, state, params=None):
        return jax.tree.map(lambda u, s: u * jnp.asarray(s, u.dtype), updates, scales), state

    return optax.GradientTransformation(init, update)
