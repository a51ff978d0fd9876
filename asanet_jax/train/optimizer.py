"""The official optimiser: AdamW with stage-wise learning-rate decay and weight-decay
exemptions, under linear warm-up then poly decay (DESIGN.md section 4).

Parameter groups are decided on the official PyTorch names and shapes, through the
converter's mapping table, so they are exactly the official groups whatever our own
variable layout is: no weight decay on 1-D parameters and biases; learning-rate scale
decay ** (num_layers - 1 - id) with id 0 for the downsample layers of both streams,
i + 1 for stage i blocks, and num_layers - 1 for everything else (stage norms, SFM, CFM,
heads); with decay 0.9 and 8 layers that is 0.9 ** (7 - id).
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from asanet_jax.convert import layout, mapping
from asanet_jax.models.config import ModelSpec

NUM_LAYERS = 8  # ids 0..7: downsample (0), stages 0..3 (1..4), rest (7)
BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def official_layer_id(torch_key: str) -> int:
    """Stage id of an official parameter name (mmseg stage-wise decay for ConvNeXt)."""
    m = re.match(r"backbone\.(?:backbone2?\.)?(downsample_layers|stages)\.(\d+)\.", torch_key)
    if m is None:
        return NUM_LAYERS - 1
    return 0 if m.group(1) == "downsample_layers" else int(m.group(2)) + 1


def official_decays(torch_key: str, shape: tuple[int, ...]) -> bool:
    """mmseg: no weight decay for 1-D parameters and biases."""
    return not (len(shape) == 1 or torch_key.endswith(".bias"))


def parameter_groups(spec: ModelSpec, layer_decay: float) -> dict[str, tuple[float, bool]]:
    """Our parameter path -> (learning-rate scale, weight decay on?), for every parameter."""
    rules = mapping.segmentor_rules(spec.streams)
    groups = {}
    for key, shape, _ in layout.official_layout(spec):
        mapped = mapping.map_key(key, rules)
        if mapped is None or mapped.leaf.torch in BUFFERS:
            continue
        scale = layer_decay ** (NUM_LAYERS - 1 - official_layer_id(key))
        groups[mapped.flax_path] = (scale, official_decays(key, shape))
    return groups


def warmup_poly_schedule(
    lr: float, warmup_steps: int, total_steps: int, warmup_factor: float = 1e-6, power: float = 1.0
) -> optax.Schedule:
    """mmengine LinearLR(start_factor, end=warmup) then PolyLR(power, eta_min=0, end=total):
    the learning rate of update t (0-based)."""

    def schedule(step):
        t = jnp.asarray(step, jnp.float32)
        warm = warmup_factor + (1.0 - warmup_factor) * t / max(warmup_steps, 1)
        # Remaining fraction as (total - t) / span: exact near the end in float32.
        remaining = jnp.clip((total_steps - t) / max(total_steps - warmup_steps, 1), 0.0, 1.0)
        poly = remaining**power
        return lr * jnp.where(t < warmup_steps, warm, poly)

    return schedule


def _tree_of(state: nnx.State, groups: dict, index: int, path_of) -> nnx.State:
    def pick(path, _):
        name = path_of(path)
        if name not in groups:
            raise KeyError(f"parameter {name} has no official counterpart for grouping")
        return groups[name][index]

    return jax.tree_util.tree_map_with_path(pick, state)


def _path_name(path) -> str:
    """'optical.stages.0.0.norm.scale' from a pytree path (the Variable's .value dropped)."""
    parts = [k for k in path if not isinstance(k, jax.tree_util.GetAttrKey)]
    return ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in parts)


def make_optimizer(
    params: nnx.State, spec: ModelSpec, optim: ml_collections.ConfigDict, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW with the official groups over `params` (an nnx.State of nnx.Param)."""
    groups = parameter_groups(spec, optim.layer_decay)
    scales = _tree_of(params, groups, 0, _path_name)
    decay_mask = _tree_of(params, groups, 1, _path_name)
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
