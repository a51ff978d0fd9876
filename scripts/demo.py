"""`make demo`: build synthetic_rgb_sar, train a small ASANet on it, evaluate, draw predictions.

    python scripts/demo.py --workdir runs/demo [--overwrite]

Runs on a laptop CPU in a few minutes. A finished demo in --workdir is reused (its
metrics are printed again) unless --overwrite is given.
"""

from __future__ import annotations

from asanet_jax import interrupts

interrupts.hold()  # first: a Ctrl-C during the imports below ends cleanly too

import argparse
import json
import pathlib
import sys

import jax
import numpy as np
from absl import logging

import asanet_jax
from asanet_jax import errors, metrics, visualize
from asanet_jax.data import build, transforms
from asanet_jax.predict.predictor import Predictor
from asanet_jax.train import recipe, trainer


def predict_examples(model_dir: pathlib.Path, config, count: int = 4):
    """Whole-image predictions of the first `count` validation examples."""
    model, _, _ = asanet_jax.load(model_dir)
    source = build.open_or_build(config.data, "val")
    spec = source.spec
    examples = [transforms.eval_example(source.records[i], spec) for i in range(count)]
    batch = {k: np.stack([e[k] for e in examples]) for k in ("optical", "sar")}
    labels = Predictor(model).labels(batch["optical"], batch["sar"])
    return examples, list(labels), spec


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/demo")
    parser.add_argument("--data_dir", default="data")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    return errors.run(lambda: demo(args))


def demo(args) -> int:
    logging.set_verbosity(logging.WARNING)
    workdir = pathlib.Path(args.workdir)
    config = recipe.demo_config()
    config.data.data_dir = args.data_dir
    config.train.overwrite = args.overwrite
    finished = (workdir / "run.json").is_file() and not args.overwrite
    if finished:
        print(f"{workdir} holds a finished demo run; showing it (--overwrite retrains)")
        result = json.loads((workdir / "metrics.json").read_text())
    else:
        print(
            f"training {config.train.steps} steps of ASANet-{config.model.backbone} on "
            f"synthetic_rgb_sar ({jax.device_count()} {jax.default_backend()} device(s))"
        )
        result = trainer.train(config, workdir)
    print(metrics.format_table(result))
    examples, preds, spec = predict_examples(workdir / "model", config)
    picture = workdir / "predictions.png"
    visualize.save_png(visualize.prediction_panel(examples, preds, spec), picture)
    print(f"\ncheckpoint:  {workdir / 'model'}")
    print(f"training checkpoints: {workdir / 'checkpoints'}")
    print(f"metrics:     {workdir / 'metrics.json'}")
    print(f"predictions: {picture} (optical | SAR | label | prediction)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
