"""The official segmentation loss: CE(decode) + 0.4 * CE(aux), ignore 255.

Both logits are bilinearly resized to the label size first (mmseg
``loss_by_feat``), and each CE is the mean over non-ignored pixels
(``avg_non_ignore=True``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from asanet_jax.labels import IGNORE
from asanet_jax.models import torch_ops


def cross_entropy(logits: jax.Array, labels: jax.Array, ignore_index: int = IGNORE):
    """Mean softmax cross-entropy over pixels whose label is not ``ignore_index``.

    Args:
      logits: (B, H, W, K), any float dtype; computed in float32.
      labels: (B, H, W) integers in [0, K) or ``ignore_index``.
    Returns:
      Scalar float32; 0 when every pixel is ignored (mmseg divides by count + eps).
    """
    logits = logits.astype(jnp.float32)
    valid = labels != ignore_index
    safe = jnp.where(valid, labels, 0).astype(jnp.int32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
    total = jnp.sum(jnp.where(valid, nll, 0.0))
    return total / (jnp.sum(valid) + jnp.finfo(jnp.float32).eps)


def segmentation_loss(
    outputs: dict, labels: jax.Array, aux_weight: float = 0.4, replicas: int = 1
) -> tuple:
    """Total loss and its parts from the model's output dict.

    Args:
      outputs: ``model(rgb, sar)``; uses ``decode_logits`` and, if present, ``aux_logits``.
      labels: (B, H, W) integer labels, 255 = ignore.
      replicas: 1 takes each CE's mean over the batch's labelled pixels. N > 1 splits the
        batch into N equal consecutive parts, takes each part's loss and averages them:
        what the official N-GPU training optimises (each GPU's mean over its own labelled
        pixels, gradients averaged by DDP). The two differ when the parts hold different
        numbers of ignored pixels.
    Returns:
      (total, {'decode': ..., 'aux': ...}) scalars.
    """
    if replicas > 1:
        batch = labels.shape[0]
        if batch % replicas:
            raise ValueError(f"replicas={replicas} does not divide the batch of {batch}")

        def split(x):
            return x.reshape(replicas, batch // replicas, *x.shape[1:])

        logits = {k: split(v) for k, v in outputs.items() if k in ("decode_logits", "aux_logits")}
        per_part = jax.vmap(lambda o, y: segmentation_loss(o, y, aux_weight))(logits, split(labels))
        return jax.tree.map(lambda x: jnp.mean(x, axis=0), per_part)
    size = labels.shape[1:3]
    parts = {
        "decode": cross_entropy(torch_ops.resize_bilinear(outputs["decode_logits"], size), labels)
    }
    total = parts["decode"]
    if "aux_logits" in outputs:
        parts["aux"] = cross_entropy(torch_ops.resize_bilinear(outputs["aux_logits"], size), labels)
        total = total + aux_weight * parts["aux"]
    return total, parts
