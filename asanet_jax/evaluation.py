"""Evaluate a model on a dataset split: whole-image, sliding-window or TTA inference, one
confusion matrix accumulated on device over the split, the official metrics, and a few
predictions kept for pictures.

`tta_probabilities` is mmseg's SegTTAModel: for each scale ratio, with and without a
horizontal flip, resize the raw image (cv2 bilinear, keep ratio, sizes int(x * r + 0.5)),
normalise, predict, flip back, resize the logits to the original size (bilinear,
align_corners=False), softmax; the probabilities are averaged. Its ratios and flip are
the settings' (``Settings.from_config``: ``config.data.tta``), by default the dataset's
official ones (``data_config.tta_defaults``), which ``scripts/eval.py --tta`` uses.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from asanet_jax import files, metrics
from asanet_jax.data import build, preprocess, specs, transforms
from asanet_jax.data import config as data_config
from asanet_jax.models import torch_ops
from asanet_jax.predict.predictor import Predictor, whole
from asanet_jax.predict.windows import slide

log = logging.getLogger(__name__)


class EvaluationError(ValueError):
    """A checkpoint, split or setting that does not fit the evaluation asked for."""


@dataclasses.dataclass(frozen=True)
class Settings:
    mode: str = "whole"  # 'whole' or 'slide'
    window: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    tta: bool = False
    # The TTA's scale ratios and horizontal flip (config.data.tta); None: the dataset's
    # official ones (data_config.tta_defaults).
    tta_ratios: tuple[float, ...] | None = None
    keep_samples: int = 4
    tta_flip: bool | None = None

    def __post_init__(self):
        if self.mode not in ("whole", "slide"):
            raise EvaluationError(f"mode={self.mode!r}; expected 'whole' or 'slide'")
        if self.mode == "slide" and (self.window is None or self.stride is None):
            raise EvaluationError("sliding-window inference needs a window and a stride")
        if self.tta_ratios is not None and not all(r > 0 for r in self.tta_ratios):
            raise EvaluationError(f"tta ratios {list(self.tta_ratios)}: expected positive")

    @classmethod
    def from_config(cls, data, **fields) -> Settings:
        """Settings with ``config.data.tta``'s ratios and flip, and `fields` (mode, tta, ...)."""
        return cls(tta_ratios=tuple(data.tta.ratios), tta_flip=bool(data.tta.flip), **fields)

    def tta_for(self, dataset: str) -> tuple[tuple[float, ...], bool]:
        """(ratios, flip) of the TTA on `dataset`: these settings', else the dataset's
        official ones."""
        official = data_config.tta_defaults(dataset)
        ratios = tuple(self.tta_ratios or official["ratios"])
        return ratios, official["flip"] if self.tta_flip is None else self.tta_flip


def check_fits(model_config, dataset: specs.DatasetSpec) -> None:
    """EvaluationError unless the model predicts the dataset's classes."""
    if model_config.num_classes != dataset.num_classes:
        raise EvaluationError(
            f"the checkpoint predicts {model_config.num_classes} classes but {dataset.name} "
            f"has {dataset.num_classes} ({', '.join(dataset.classes)}); use it with the "
            "dataset it was trained for"
        )


PREPROCESSING = (
    "optical_bands",
    "sar_bands",
    "sar_scaling",
    "optical_mean",
    "optical_std",
    "sar_mean",
    "sar_std",
)


def with_model_spec(source, model_spec: specs.DatasetSpec, where):
    """`source` with the model's recorded spec, so that its images are prepared as the
    model's training prepared them (a dataset rebuilt since may have other statistics).

    Raises:
      EvaluationError: the dataset's classes are not the model's.
    """
    data_spec = source.spec
    if data_spec.classes != model_spec.classes:
        raise EvaluationError(
            f"{where} was trained on {model_spec.name} with classes {list(model_spec.classes)}, "
            f"but {source.name} has {list(data_spec.classes)}"
        )
    differ = [f for f in PREPROCESSING if getattr(data_spec, f) != getattr(model_spec, f)]
    if differ:
        log.warning(
            "%s: preparing %s as the model was trained, which differs from the dataset's "
            "recorded %s",
            where,
            source.name,
            ", ".join(differ),
        )
    return dataclasses.replace(source, spec=model_spec)


def tta_probabilities(
    infer: Callable[[np.ndarray, np.ndarray], np.ndarray],
    optical_raw: np.ndarray,
    sar_raw: np.ndarray,
    spec: specs.DatasetSpec,
    ratios: tuple[float, ...],
    flip: bool = True,
) -> np.ndarray:
    """Averaged class probabilities (H, W, K) of one image under the official TTA.

    optical_raw, sar_raw: (H, W, 3) in model channel order, not normalised (as decoded);
    `infer` maps normalised (1, h, w, 3) inputs to (1, h, w, K) logits (`whole` or `slide`).
    """
    h, w = optical_raw.shape[:2]
    probs = None
    variants = 0
    for ratio in ratios:
        size = (int(h * ratio + 0.5), int(w * ratio + 0.5))
        optical, sar = preprocess.normalise_both(
            transforms.resize(optical_raw, size), transforms.resize(sar_raw, size), spec
        )
        for flipped in (False, True) if flip else (False,):
            o, s = (optical[:, ::-1], sar[:, ::-1]) if flipped else (optical, sar)
            logits = infer(np.ascontiguousarray(o)[None], np.ascontiguousarray(s)[None])
            if flipped:
                logits = logits[:, :, ::-1]
            logits = torch_ops.resize_bilinear(jnp.asarray(logits), (h, w))
            p = np.asarray(jax.nn.softmax(logits, axis=-1))[0]
            probs = p if probs is None else probs + p
            variants += 1
    return probs / variants


def evaluate(
    predictor: Predictor,
    source: build.Source,
    settings: Settings,
    progress: bool = True,
    corrupt=None,
):
    """(metrics, confusion (K, K), samples) over the split; samples are the first
    `keep_samples` examples with their predictions, for pictures.

    `corrupt(optical, sar, index) -> (optical, sar)` alters the decoded images (model
    channel order, 0..255) before normalisation (see corruptions.py)."""
    from tqdm import tqdm

    check_fits(predictor.config, source.spec)
    spec = source.spec
    k = spec.num_classes
    predict = predictor

    def infer(optical, sar):
        if settings.mode == "slide":
            return slide(predict, optical, sar, settings.window, settings.stride, k)
        return whole(predict, optical, sar)

    update = jax.jit(metrics.confusion_update, static_argnames="ignore_index")
    confusion = jnp.zeros((k, k), jnp.int32)
    samples = []
    ratios, flip = settings.tta_for(spec.name)
    for i in tqdm(
        range(len(source)), desc=f"{source.name}/{source.split}", unit="img", disable=not progress
    ):
        record = source.records[i]
        optical_raw, sar_raw, _ = preprocess.model_bands(record["optical"], record["sar"], spec)
        if corrupt is not None:
            optical_raw, sar_raw = corrupt(optical_raw, sar_raw, i)
        optical, sar = preprocess.normalise_both(optical_raw, sar_raw, spec)
        example = {"optical": optical, "sar": sar, "label": record["label"]}
        if settings.tta:
            probs = tta_probabilities(infer, optical_raw, sar_raw, spec, ratios, flip)
            pred = probs.argmax(-1)
        else:
            logits = infer(example["optical"][None], example["sar"][None])
            pred = logits[0].argmax(-1)
        confusion = update(confusion, pred[None], example["label"][None])
        if len(samples) < settings.keep_samples:
            samples.append((example, pred))
    confusion = np.asarray(confusion)
    return metrics.summarize(confusion, spec.classes), confusion, samples


def robustness(
    predictor: Predictor,
    source: build.Source,
    settings: Settings,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, float]:
    """mIoU under every corruption of corruptions.suite(seed), clean first (one compile)."""
    from asanet_jax import corruptions

    table = {}
    for name, corrupt in corruptions.suite(seed).items():
        result, _, _ = evaluate(predictor, source, settings, progress=progress, corrupt=corrupt)
        table[name] = result["mIoU"]
        log.info("%s: mIoU %.2f", name, result["mIoU"])
    return table


def robustness_markdown(table: dict[str, float]) -> str:
    """The table as the README shows it: a row per corruption, a column per severity."""
    lines = [
        "| corruption | " + " | ".join(f"severity {s}" for s in range(1, 6)) + " |",
        "| --- |" + " --- |" * 5,
    ]
    for kind in ("clouds", "fog"):
        lines.append(
            f"| {kind} | " + " | ".join(f"{table[f'{kind}_{s}']:.2f}" for s in range(1, 6)) + " |"
        )
    lines.append(
        f"\nclean {table['clean']:.2f}; optical missing {table['optical_missing']:.2f}; "
        f"SAR missing {table['sar_missing']:.2f} (mIoU)"
    )
    return "\n".join(lines)


def write_report(out, result: dict, confusion, samples, source: build.Source) -> list[pathlib.Path]:
    """metrics.json, confusion.png and predictions.png (optical | SAR | label | prediction)
    into folder `out` (created); each written atomically. Returns the paths."""
    from asanet_jax import visualize

    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "metrics.json", out / "confusion.png", out / "predictions.png"]
    files.write_text(paths[0], metrics.to_json(result))
    visualize.save_png(visualize.confusion_image(confusion, source.spec.classes), paths[1])
    examples, predictions = zip(*samples, strict=True)
    panel = visualize.prediction_panel(list(examples), list(predictions), source.spec)
    visualize.save_png(panel, paths[2])
    return paths


def write_robustness_report(out, table: dict, first_example: dict, spec, seed: int):
    """robustness.json, robustness.md, robustness.png and corruptions.png (the corruptions
    applied to `first_example`'s optical image) into folder `out`. Returns the paths."""
    from asanet_jax import visualize

    out = pathlib.Path(out)
    paths = [out / f"robustness.{ext}" for ext in ("json", "md", "png")]
    paths.append(out / "corruptions.png")
    files.write_text(paths[0], json.dumps(table, indent=2) + "\n")
    files.write_text(paths[1], robustness_markdown(table) + "\n")
    visualize.save_png(visualize.robustness_plot(table), paths[2])
    optical = visualize.display_optical(first_example["optical"], spec)
    visualize.save_png(visualize.corruption_examples(optical, seed), paths[3])
    return paths
