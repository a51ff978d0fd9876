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


def segmentation_loss(outputs: dict, labels: jax.Array, aux_weight: float = 0.4) -> tuple:
    """Total loss and its parts from the model's output dict.

    Args:
      outputs: ``model(rgb, sar)``; uses ``decode_logits`` and, if present, ``aux_logits``.
      labels: (B, H, W) integer labels, 255 = ignore.
    Returns:
      (total, {'decode': ..., 'aux': ...}) scalars.
    """
    size = labels.shape[1:3]
    parts = {
        "decode": cross_entropy(torch_ops.resize_bilinear(outputs["decode_logits"], size), labels)
    }
    total = parts["decode"]
    if "aux_logits" in outputs:
        parts["aux"] = cross_entropy(torch_ops.resize_bilinear(outputs["aux_logits"], size), labels)
        total = total + aux_weight * parts["aux"]
    return total, parts
