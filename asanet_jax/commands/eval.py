"""Evaluate a checkpoint on a dataset split with the official metrics.

    python scripts/eval.py --checkpoint runs/pie/model --data_dir data --out eval/pie
    python scripts/eval.py --checkpoint asanet_pie.pth --dataset pie_rgb_sar --tta
    python scripts/eval.py --config configs/whu.py --checkpoint DIR --mode slide \
        --window 512 --stride 341

--checkpoint is a model directory or an official .pth/.safetensors (converted on the
fly). The dataset is the one the model directory records, built under --data_dir (built
first from --manual_dir when missing); for a checkpoint that records none, --dataset
names it, or --config gives a config's data settings. Inputs are prepared as the model
was trained (its recorded preprocessing). The split is the dataset's evaluation split
unless --split is given. Writes <out>/metrics.json, <out>/confusion.png and
<out>/predictions.png, and prints the per-class table.
"""

from __future__ import annotations

from asanet_jax import interrupts

interrupts.hold()  # first: a Ctrl-C during the imports below ends cleanly too

import sys

from absl import flags, logging
from ml_collections import config_flags

import asanet_jax
from asanet_jax import checkpointing, errors, evaluation, metrics
from asanet_jax.commands import config_files
from asanet_jax.data import build
from asanet_jax.predict.predictor import Predictor

config_flags.DEFINE_config_file("config", None, "A config file (configs/*.py[:variant]).")
flags.DEFINE_string("checkpoint", None, "Model directory or official .pth/.safetensors.")
flags.DEFINE_string(
    "dataset", None, "TFDS dataset of a checkpoint that records none (e.g. pie_rgb_sar)."
)
flags.DEFINE_string("data_dir", "data", "Where the dataset is built (without --config).")
flags.DEFINE_string("manual_dir", None, "Source files to build the dataset from if missing.")
flags.DEFINE_string("split", None, "Split to evaluate (default: the dataset's eval split).")
flags.DEFINE_enum("mode", "whole", ["whole", "slide"], "Whole-image or sliding-window.")
flags.DEFINE_integer("window", None, "Sliding window size (square).")
flags.DEFINE_integer("stride", None, "Sliding window stride.")
flags.DEFINE_bool("tta", False, "The official multi-scale + horizontal-flip TTA.")
flags.DEFINE_string("out", "eval", "Output folder.")
flags.DEFINE_bool("robustness", False, "Also run the cloud/fog/missing-modality suite.")
flags.DEFINE_integer("seed", 0, "Seed of the robustness corruptions.")
flags.mark_flags_as_required(["checkpoint"])


def main(argv) -> int:
    del argv
    logging.set_verbosity(logging.WARNING)
    f = flags.FLAGS
    model, _, meta = asanet_jax.load(f.checkpoint)
    data = (
        f.config.data
        if f["config"].present
        else checkpointing.model_data(meta, f.checkpoint, f.data_dir, f.dataset, f.manual_dir)
    )
    source = build.open_or_build(data, f.split)  # default: the evaluation split
    if "dataset" in meta:  # prepare inputs as the model was trained
        source = evaluation.with_model_spec(
            source, checkpointing.model_dataset(meta, f.checkpoint), f.checkpoint
        )
    predictor = Predictor(model)
    window = (f.window, f.window) if f.window else None
    stride = (f.stride, f.stride) if f.stride else None
    if f["config"].present:  # its config.data.tta, else the dataset's official TTA
        settings = evaluation.Settings.from_config(
            f.config.data, mode=f.mode, window=window, stride=stride, tta=f.tta
        )
    else:
        settings = evaluation.Settings(f.mode, window, stride, f.tta)
    result, confusion, samples = evaluation.evaluate(predictor, source, settings)
    result["settings"] = {
        "mode": f.mode,
        "window": f.window,
        "stride": f.stride,
        "tta": f.tta,
        "checkpoint": str(f.checkpoint),
        "dataset": source.name,
        "split": source.split,
    }
    written = evaluation.write_report(f.out, result, confusion, samples, source)
    print(metrics.format_table(result))
    print("wrote " + ", ".join(map(str, written)))
    if f.robustness:
        table = evaluation.robustness(predictor, source, settings, seed=f.seed)
        first = samples[0][0]
        written = evaluation.write_robustness_report(f.out, table, first, source.spec, f.seed)
        print(evaluation.robustness_markdown(table))
        print("wrote " + ", ".join(map(str, written)))
    return 0


def run() -> None:
    """The entry point (``asanet-eval``, ``scripts/eval.py``); exits."""
    sys.argv = config_files.resolve_argv(sys.argv)
    errors.run_absl(main, __doc__)


if __name__ == "__main__":
    run()
