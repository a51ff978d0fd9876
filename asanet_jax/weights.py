"""Our model's weights as named arrays: list them, check given ones against them, fill them.

Names are our variable paths (``optical.stages.0.0.norm.scale``); shapes are compared
before anything is loaded, and every report of what does not fit is written by
``mismatch_report``. Used by the converter (official and ImageNet checkpoints) and by
model directories (`checkpointing`).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from asanet_jax.models.config import ModelConfig
from asanet_jax.models.segmentor import WEIGHTS, build_with_weights


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit; the message says why."""


def flat_weights(model: nnx.Module) -> dict[str, nnx.Variable]:
    """``'optical.stages.0.0.norm.scale' -> Variable`` for every parameter and BN statistic."""
    state = nnx.state(model, WEIGHTS)
    return {".".join(map(str, p)): v for p, v in nnx.to_flat_state(state)}


def compare(expected: dict[str, tuple], given: dict[str, tuple], *, all_required: bool = True):
    """(unconsumed, missing, mismatched) between two name -> shape maps, each sorted.

    `unconsumed`: given but not expected; `missing`: expected but not given (when
    `all_required`); `mismatched`: 'name: given shape vs expected shape' lines.
    """
    unconsumed = sorted(set(given) - set(expected))
    missing = sorted(set(expected) - set(given)) if all_required else []
    mismatched = sorted(
        f"{k}: checkpoint {tuple(s)} vs model {tuple(expected[k])}"
        for k, s in given.items()
        if k in expected and tuple(s) != tuple(expected[k])
    )
    return unconsumed, missing, mismatched


def mismatch_report(unconsumed, missing, mismatched) -> str:
    """The lists of unconsumed, missing and shape-mismatched keys, 40 of each at most."""
    lines = ["the checkpoint does not fit the model:"]
    for title, items in (
        ("unconsumed (in the checkpoint, not in the model)", unconsumed),
        ("missing (in the model, not in the checkpoint)", missing),
        ("shape mismatch", mismatched),
    ):
        if items:
            lines.append(f"  {title}: {len(items)}")
            lines += [f"    {x}" for x in items[:40]]
            if len(items) > 40:
                lines.append(f"    ... and {len(items) - 40} more")
    return "\n".join(lines)


def check_fit(expected: dict[str, tuple], given: dict[str, tuple], *, all_required: bool) -> None:
    """Raise CheckpointError listing the mismatches unless `given` fits `expected`."""
    report = compare(expected, given, all_required=all_required)
    if any(report):
        raise CheckpointError(mismatch_report(*report))


def check_finite(values: dict) -> None:
    """Raise, naming them, if floating tensors of ``values`` hold NaN or Inf.

    Such weights load without complaint and then predict one class everywhere.
    """
    bad = []
    for name, value in values.items():
        a = np.asarray(value)
        if jnp.issubdtype(a.dtype, jnp.floating) and not np.isfinite(a).all():
            nan, inf = int(np.isnan(a).sum()), int(np.isinf(a).sum())
            bad.append(f"{name} ({nan} NaN and {inf} Inf of {a.size} values)")
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise CheckpointError(
            f"{len(bad)} tensor(s) hold non-finite values: {'; '.join(bad[:5])}{more} "
            "(allow_nonfinite / --allow_nonfinite loads them anyway)"
        )


def set_weights(model: nnx.Module, values: dict[str, np.ndarray]) -> None:
    """Overwrite the named variables in place; every name and shape must exist in the model."""
    current = flat_weights(model)
    given = {k: np.shape(v) for k, v in values.items()}
    check_fit({k: v.shape for k, v in current.items()}, given, all_required=False)
    for k, v in values.items():
        current[k].set_value(jnp.asarray(v, dtype=current[k].dtype))


def model_from_values(config: ModelConfig, values: dict[str, np.ndarray]) -> nnx.Module:
    """A model (eval mode) whose every weight comes from ``values``; strict."""

    def fill(weights):
        flat = [(".".join(map(str, p)), p, v) for p, v in nnx.to_flat_state(weights)]
        given = {k: np.shape(v) for k, v in values.items()}
        check_fit({name: v.shape for name, _, v in flat}, given, all_required=True)
        return nnx.from_flat_state(
            [(path, v.replace(jnp.asarray(values[name], v.dtype))) for name, path, v in flat]
        )

    return build_with_weights(config, fill)
