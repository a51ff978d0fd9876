"""Label whole optical + SAR GeoTIFF scenes with a trained model: one, or a region's worth.

    # one scene
    python scripts/predict.py --checkpoint runs/pie/model \
        --optical scene_rgb.tif --sar scene_sar.tif --output scene_labels.tif
    # many: a list file (CSV or whitespace-separated: optical, SAR, output per line) ...
    python scripts/predict.py --checkpoint runs/pie/model --scenes scenes.csv
    # ... or two globs, paired by what their wildcards match
    python scripts/predict.py --checkpoint runs/pie/model \
        --optical 'S2/*.tif' --sar 'S1/*.tif' --output_dir maps

Windows go through the model in batches, data-parallel over this host's devices; with
several hosts (jax.distributed: on TPU pods and under SLURM by itself, or with
--coordinator_address, --num_processes and --process_id), each labels its own share of
the scenes. A re-run skips the scenes whose outputs are complete. Outputs are
Cloud-Optimized GeoTIFFs (see asanet_jax/predict/outputs.py).

A model directory written by training (or by convert_torch_weights.py --dataset) records
how raster values become its inputs, its classes and palette, so it needs nothing else.
An official .pth/.safetensors records none: name its dataset with --dataset
(pie_rgb_sar, ddhr_sk, whu_opt_sar, or one built under --data_dir).
"""

from __future__ import annotations

from asanet_jax import interrupts

interrupts.hold()  # first: a Ctrl-C during the imports below ends cleanly too

import types

from absl import flags, logging

from asanet_jax import errors, multihost
from asanet_jax.predict import region, scene_list
from asanet_jax.predict.windows import BLENDS

flags.DEFINE_string("checkpoint", None, "Model directory or official .pth/.safetensors.")
flags.DEFINE_string("optical", None, "Optical GeoTIFF, or a glob of them (with --output_dir).")
flags.DEFINE_string("sar", None, "SAR GeoTIFF, or a glob of them (with --output_dir).")
flags.DEFINE_string("output", None, "Output label GeoTIFF of a single scene.")
flags.DEFINE_string("output_dir", None, "Folder of the outputs of --optical/--sar globs.")
flags.DEFINE_string("scenes", None, "List file of scenes: optical, SAR and output per line.")
flags.DEFINE_string(
    "dataset", None, "Dataset of a checkpoint that records none (default: the recorded one)."
)
flags.DEFINE_string("data_dir", None, "Where a --dataset that is not built in was built.")
flags.DEFINE_integer("window", 512, "Window size in pixels.")
flags.DEFINE_integer("stride", None, "Window stride (default: 2/3 of the window).")
flags.DEFINE_integer(
    "batch_size",
    None,
    "Windows per forward pass, a multiple of the device count (default: 1 per CPU "
    "device, 8 per GPU or TPU device).",
)
flags.DEFINE_enum(
    "blend",
    "mean",
    BLENDS,
    "Overlap blending: mean (mmseg's) or a linear or Hann ramp towards window edges (no seams).",
)
flags.DEFINE_bool("align", False, "Warp a SAR raster on another grid onto the optical grid.")
flags.DEFINE_integer("prefetch", 2, "Batches read ahead of, and written behind, the model.")
flags.DEFINE_bool("confidence", False, "Also write <output>_confidence.tif (top probability).")
flags.DEFINE_bool(
    "probabilities", False, "Also write <output>_probabilities.tif (one band per class)."
)
flags.DEFINE_bool("preview", True, "Also write a PNG preview, <output>.png.")
flags.DEFINE_string(
    "summary",
    None,
    "Summary JSON (default for several scenes: predict_summary.json beside the first output).",
)
flags.DEFINE_bool("overwrite", False, "Replace existing outputs that this run did not write.")
flags.DEFINE_bool("progress", True, "Show a progress bar.")
flags.DEFINE_string("coordinator_address", None, "jax.distributed coordinator host:port.")
flags.DEFINE_integer("num_processes", None, "jax.distributed: number of processes.")
flags.DEFINE_integer("process_id", None, "jax.distributed: this process's index.")
flags.DEFINE_integer(
    "heartbeat_timeout_s",
    None,
    "jax.distributed: seconds a process may go silent before the others count it dead "
    "(jax's default, 100, when unset).",
)
flags.mark_flag_as_required("checkpoint")


def main(argv) -> int:
    if len(argv) > 1:
        raise ValueError(
            f"unexpected arguments {argv[1:]}; quote globs ('S2/*.tif') so that the shell "
            "does not expand them"
        )
    logging.set_verbosity(logging.WARNING)
    f = flags.FLAGS
    settings = region.Settings(
        window=f.window,
        stride=f.stride,
        blend=f.blend,
        batch_size=f.batch_size,
        prefetch=f.prefetch,
        align=f.align,
        confidence=f.confidence,
        probabilities=f.probabilities,
        preview=f.preview,
        overwrite=f.overwrite,
    )
    pairs = scene_list.pairs_from_args(f.optical, f.sar, f.output, f.output_dir, f.scenes)
    summary = f.summary or region.default_summary(pairs)
    multihost.initialize(
        types.SimpleNamespace(
            coordinator_address=f.coordinator_address,
            num_processes=f.num_processes,
            process_id=f.process_id,
            heartbeat_timeout_s=f.heartbeat_timeout_s,
        )
    )
    region.predict_region(
        f.checkpoint,
        pairs,
        settings,
        dataset=f.dataset,
        data_dir=f.data_dir,
        summary=summary,
        new_folders=[f.output_dir] if f.output_dir else [],
        progress=f.progress,
    )
    return 0


def run() -> None:
    """The entry point (``asanet-predict``, ``scripts/predict.py``); exits."""
    errors.run_absl(main, __doc__)


if __name__ == "__main__":
    run()
