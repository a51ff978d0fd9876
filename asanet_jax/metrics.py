"""Segmentation metrics from one confusion matrix, as mmseg's IoUMetric and the official
CustomIoUMetric compute them (docs/design.md, section 7).

The confusion matrix is accumulated on device (`confusion_update`), summed over the whole
split, then reduced once on the host (`summarize`). Per class: IoU, Acc (= recall),
precision, F1; overall: aAcc (OA), mIoU, mAcc, mF1 (nan-means over classes, so a class
absent from both prediction and labels does not count), and Kappa. Values are in
percent, rounded to 2 decimals, as mmseg prints them.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np

from asanet_jax.labels import IGNORE


def confusion_update(
    confusion: jax.Array, pred: jax.Array, label: jax.Array, ignore_index: int = IGNORE
) -> jax.Array:
    """Add (label, pred) pairs to `confusion` (K, K) int64-safe counts; ignore skipped.

    pred, label: (B, H, W) integer class ids. Rows are labels, columns predictions.
    """
    k = confusion.shape[0]
    valid = (label != ignore_index) & (label >= 0) & (label < k)
    index = jnp.where(valid, label.astype(jnp.int32) * k + pred.astype(jnp.int32), k * k)
    counts = jnp.bincount(index.ravel(), length=k * k + 1)[: k * k]
    return confusion + counts.reshape(k, k).astype(confusion.dtype)


def summarize(confusion: np.ndarray, class_names=None) -> dict:
    """Metrics from a (K, K) confusion matrix (rows label, columns prediction)."""
    confusion = np.asarray(confusion, np.float64)
    intersect = np.diag(confusion)
    area_label = confusion.sum(1)
    area_pred = confusion.sum(0)
    union = area_label + area_pred - intersect
    total = confusion.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = intersect / union
        acc = intersect / area_label
        precision = intersect / area_pred
        f1 = 2 * precision * acc / (precision + acc)
        oa = intersect.sum() / total
        pe = (area_pred * area_label).sum() / total**2
        kappa = (oa - pe) / (1 - pe)

    def pct(x):
        return np.round(np.asarray(x) * 100, 2)

    names = list(class_names) if class_names is not None else [str(i) for i in range(len(iou))]
    per_class = {
        name: {
            "IoU": float(pct(iou[i])),
            "Acc": float(pct(acc[i])),
            "Precision": float(pct(precision[i])),
            "Recall": float(pct(acc[i])),
            "F1": float(pct(f1[i])),
        }
        for i, name in enumerate(names)
    }
    return {
        "OA": float(pct(oa)),
        "mIoU": float(pct(np.nanmean(iou))),
        "mAcc": float(pct(np.nanmean(acc))),
        "mF1": float(pct(np.nanmean(f1))),
        "Kappa": float(pct(kappa)),
        "per_class": per_class,
    }


def to_json(metrics: dict) -> str:
    """JSON text with NaN (a class absent from labels or predictions) written as null."""

    def clean(x):
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        return None if isinstance(x, float) and np.isnan(x) else x

    return json.dumps(clean(metrics), indent=2, allow_nan=False) + "\n"


def format_table(metrics: dict) -> str:
    """The per-class table and the summary line, as text (NaN or null shown as nan)."""

    def f(v) -> str:
        return f"{float('nan') if v is None else v:>8.2f}"

    rows = [f"{'class':<14}{'IoU':>8}{'Acc':>8}{'Prec':>8}{'F1':>8}"]
    for name, m in metrics["per_class"].items():
        rows.append(f"{name:<14}{f(m['IoU'])}{f(m['Acc'])}{f(m['Precision'])}{f(m['F1'])}")
    rows.append(
        f"mIoU {metrics['mIoU']:.2f}  OA {metrics['OA']:.2f}  "
        f"Kappa {metrics['Kappa']:.2f}  mF1 {metrics['mF1']:.2f}"
    )
    return "\n".join(rows)
