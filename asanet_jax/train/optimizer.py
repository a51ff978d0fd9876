"""The official optimisers: AdamW (ASANet, CMX) and SGD with momentum (SA-Gate and
vFuseNet, mmseg's ``schedule_80k``), with per-architecture parameter groups, under
mmengine's chained warm-up and poly decay (docs/design.md, section 6).

Parameter groups are rules over our own parameter paths (big_vision's way), declared per
architecture in ``LAYER_RULES`` and tested to equal the official groups for every
parameter:

- learning-rate scale ``layer_decay ** (NUM_LAYERS - 1 - id)``. For ASANet id is 0 for the
  downsample layers (stem included) of every stream, ``i + 1`` for the blocks of stage
  ``i``, and ``NUM_LAYERS - 1`` for everything else (stage norms, SFM, CFM, heads); with
  decay 0.9 and 8 layers that is ``0.9 ** (7 - id)``. CMX's official recipe has no layer
  decay (``optim.layer_decay = 1``); its rules give the MiT streams the same ids (patch
  embeddings 0, the blocks of stage ``i`` ``i + 1``), so that a decay other than 1 means
  the same thing for both. SA-Gate and vFuseNet have no layer decay (every id 7);
- no weight decay on 1-D parameters (norm scales, GRN, BatchNorm) and biases: for CMX
  that is mmengine's ``norm_decay_mult=0, bias_decay_mult=0``, since its only 1-D
  parameters are norms' and biases. mmseg's ``schedule_80k`` sets no such rule, so
  SA-Gate's and vFuseNet's recipes decay every parameter
  (``optim.decay_norms_and_biases``);
- ``FROZEN``: parameters that the official step never changes, because the official
  forward pass never uses them (vFuseNet's unused decoder stages get no gradient, and
  PyTorch's SGD skips a parameter without one, weight decay included). Their rate is 0.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from asanet_jax.models.vfusenet import DORMANT

OPTIMIZERS = ("adamw", "sgd")
NUM_LAYERS = 8  # ids 0..7: downsample (0), stages 0..3 (1..4), rest (7)
# Per architecture: (pattern over our parameter path, layer id or a function of the
# match); first match wins.
LAYER_RULES = {
    "asanet": (
        (r"(optical|sar)\.downsample_layers\..+", lambda m: 0),
        (r"(optical|sar)\.stages\.(\d+)\..+", lambda m: int(m[2]) + 1),
        (r".+", lambda m: NUM_LAYERS - 1),
    ),
    "cmx": (
        (r"(optical|sar)\.patch_embeds\..+", lambda m: 0),
        (r"(optical|sar)\.blocks\.(\d+)\..+", lambda m: int(m[2]) + 1),
        (r".+", lambda m: NUM_LAYERS - 1),
    ),
    "sagate": ((r".+", lambda m: NUM_LAYERS - 1),),
    "vfusenet": ((r".+", lambda m: NUM_LAYERS - 1),),
}
# Per architecture, regexes over our parameter paths that are never trained.
FROZEN = {"vfusenet": DORMANT}


def layer_id(path: str, architecture: str = "asanet") -> int:
    """The stage id of one of our parameter paths (``optical.stages.2.0.norm.scale`` -> 3)."""
    for pattern, rule in LAYER_RULES[architecture]:
        if m := re.fullmatch(pattern, path):
            return rule(m)
    raise AssertionError("the last rule matches every path")


def decays(path: str, shape: tuple[int, ...], norms_and_biases: bool = False) -> bool:
    """Weight decay applies to every parameter but 1-D ones and biases (to all of them
    with ``norms_and_biases``)."""
    return norms_and_biases or not (len(shape) == 1 or path.endswith(".bias"))


def frozen(path: str, architecture: str) -> bool:
    """Whether the official step never changes this parameter (``FROZEN``)."""
    return any(re.fullmatch(p, path) for p in FROZEN.get(architecture, ()))


def parameter_groups(
    params: nnx.State,
    layer_decay: float,
    architecture: str = "asanet",
    *,
    decay_norms_and_biases: bool = False,
) -> tuple[nnx.State, nnx.State]:
    """(learning-rate scale, weight decay on?) for every parameter, as two trees like
    `params` (an nnx.State of nnx.Param); frozen parameters get scale 0 and no decay."""

    def scale(p, _):
        name = _path_name(p)
        if frozen(name, architecture):
            return 0.0
        return layer_decay ** (NUM_LAYERS - 1 - layer_id(name, architecture))

    def decay(p, v):
        name = _path_name(p)
        return not frozen(name, architecture) and decays(name, v.shape, decay_norms_and_biases)

    scales = jax.tree_util.tree_map_with_path(scale, params)
    decay_mask = jax.tree_util.tree_map_with_path(decay, params)
    return scales, decay_mask


def warmup_poly_schedule(
    lr: float,
    warmup_steps: int,
    total_steps: int,
    warmup_factor: float = 1e-6,
    power: float = 1.0,
    *,
    poly_start: int | None = None,
    eta_min: float = 0.0,
) -> optax.Schedule:
    """The learning rate of iteration t (0-based) under mmengine's
    LinearLR(start_factor=s, begin=0, end=W) and PolyLR(power, eta_min, begin=P, end=T),
    stepped together as mmengine chains them (P = W when ``poly_start`` is None).

    Both mmengine schedulers count ``end - begin - 1`` steps, so the warm-up is full at
    t = W - 1 and the poly decay reaches ``eta_min`` at t = T - 1, the last iteration.
    Chained schedulers multiply their factors, so where the two overlap (P < W: CMX's
    recipe, 1000 against 1500) the rate is their product and never reaches ``lr``::

        warm(t) = s + (1 - s) * min(t, W - 1) / (W - 1)        (1 when W = 0)
        poly(t) = ((T - 1 - t) / (T - P - 1)) ** power          for t >= P, else 1
        lr(t)   = eta_min + (lr * warm(t) - eta_min) * poly(t)

    With ``eta_min`` > 0 the poly decay must start after the warm-up (P >= W), where
    mmengine's chain has this closed form (mmseg's schedule_80k: W = 0).

    Raises:
      ValueError: ``eta_min`` > 0 with a poly decay that starts inside the warm-up.
    """
    poly_start = warmup_steps if poly_start is None else int(poly_start)
    if eta_min and poly_start < warmup_steps:
        raise ValueError(
            f"config.optim.eta_min={eta_min!r} with config.optim.poly_start={poly_start} inside "
            f"the {warmup_steps}-step warm-up: expected eta_min=0 or poly_start >= warmup_steps"
        )
    last_warm = max(warmup_steps - 1, 1)
    decay_span = max(total_steps - poly_start - 1, 1)

    def schedule(step):
        t = jnp.asarray(step, jnp.float32)
        if warmup_steps:
            warm = warmup_factor + (1.0 - warmup_factor) * jnp.minimum(t, last_warm) / last_warm
        else:
            warm = 1.0
        # Remaining fraction as (T - 1 - t) / span: exact near the end in float32.
        remaining = jnp.clip((total_steps - 1 - t) / decay_span, 0.0, 1.0)
        poly = jnp.where(t < poly_start, 1.0, remaining**power)
        return eta_min + (lr * warm - eta_min) * poly

    return schedule


def _path_name(path) -> str:
    """'optical.stages.0.0.norm.scale' from a pytree path (the Variable's .value dropped)."""
    parts = [k for k in path if not isinstance(k, jax.tree_util.GetAttrKey)]
    return ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in parts)


def make_optimizer(
    params: nnx.State,
    optim: ml_collections.ConfigDict,
    total_steps: int,
    architecture: str = "asanet",
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """``optim.name``'s optimiser (AdamW, or SGD with momentum as PyTorch's) with the
    official groups of ``architecture`` over `params` (an nnx.State of nnx.Param).

    Raises:
      ValueError: an unknown ``optim.name``.
    """
    name = optim.get("name", "adamw")
    if name not in OPTIMIZERS:
        raise ValueError(f"config.optim.name={name!r}: expected one of {OPTIMIZERS}")
    scales, decay_mask = parameter_groups(
        params,
        optim.layer_decay,
        architecture,
        decay_norms_and_biases=optim.get("decay_norms_and_biases", False),
    )
    schedule = warmup_poly_schedule(
        optim.lr,
        optim.warmup_steps,
        total_steps,
        optim.warmup_factor,
        optim.power,
        poly_start=optim.get("poly_start"),
        eta_min=optim.get("eta_min", 0.0),
    )
    transforms = []
    if optim.get("grad_clip_norm"):
        transforms.append(optax.clip_by_global_norm(optim.grad_clip_norm))
    if name == "adamw":
        transforms += [
            optax.scale_by_adam(b1=optim.b1, b2=optim.b2, eps=optim.eps),
            # PyTorch AdamW: p -= lr_group * (adam + wd * p); the group scale covers both.
            optax.add_decayed_weights(optim.weight_decay, mask=decay_mask),
        ]
    else:
        transforms += [
            # PyTorch SGD: d = g + wd * p; buf = momentum * buf + d (buf = d at first);
            # p -= lr_group * buf.
            optax.add_decayed_weights(optim.weight_decay, mask=decay_mask),
            optax.trace(decay=optim.momentum, nesterov=False),
        ]
    transforms += [_scale_by_tree(scales), optax.scale_by_learning_rate(schedule)]
    return optax.chain(*transforms), schedule


def _scale_by_tree(scales) -> optax.GradientTransformation:
    def init(_):
        return optax.EmptyState()

    def update(updates, state, params=None):
        return jax.tree.map(lambda u, s: u * jnp.asarray(s, u.dtype), updates, scales), state

    return optax.GradientTransformation(init, update)
