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
Cloud-Optimized GeoTIFFs (see asanet_jax/scene_outputs.py).

A model directory written by training (or by convert_torch_weights.py --dataset) records
how raster values become its inputs, its classes and palette, so it needs nothing else.
An official .pth/.safetensors records none: name its dataset with --dataset
(pie_rgb_sar, ddhr_sk, whu_opt_sar, or one built under --data_dir).
"""

from __future__ import annotations

import pathlib
import sys
import time
import types

from absl import flags, logging

import asanet_jax
from asanet_jax import cli, evaluation, inference, loading, region

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
    inference.BLENDS,
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
flags.mark_flag_as_required("checkpoint")

GLOB_CHARS = "*?["


def pairs_from_flags(f) -> list[region.Pair]:
    """The scenes the flags name: --scenes, two globs, or one pair; ValueError otherwise."""
    given = [name for name in ("optical", "sar", "output", "output_dir") if f[name].value]
    if f.scenes:
        if given:
            raise ValueError(f"--scenes lists the scenes; drop --{', --'.join(given)}")
        return region.read_list(f.scenes)
    if not (f.optical and f.sar):
        raise ValueError("give --optical and --sar (files or globs), or --scenes")
    if any(c in f.optical + f.sar for c in GLOB_CHARS):
        if not f.output_dir or f.output:
            raise ValueError("globs write into --output_dir (and take no --output)")
        pathlib.Path(f.output_dir).mkdir(parents=True, exist_ok=True)
        return region.match_globs(f.optical, f.sar, f.output_dir)
    if not f.output or f.output_dir:
        raise ValueError("one scene writes --output (--output_dir is for globs)")
    return [region.Pair(pathlib.Path(f.optical), pathlib.Path(f.sar), pathlib.Path(f.output))]


def main(argv) -> int:
    del argv
    logging.set_verbosity(logging.WARNING)
    f = flags.FLAGS
    pairs = pairs_from_flags(f)
    from asanet_jax.train import sharding

    sharding.maybe_initialize_distributed(
        types.SimpleNamespace(
            coordinator_address=f.coordinator_address,
            num_processes=f.num_processes,
            process_id=f.process_id,
        )
    )
    import jax

    start = time.perf_counter()
    model, _, meta = asanet_jax.load(f.checkpoint)
    spec = loading.model_dataset(meta, f.checkpoint, f.dataset, f.data_dir)
    evaluation.check_fits(model.config, spec)
    predictor = inference.Predictor(model, sharding.local_mesh())
    # On CPUs one window per device is fastest (larger batches fall out of cache: 44 vs
    # 30 windows/s for micro at batch 1 vs 8); accelerators want full batches.
    per_device = 1 if jax.local_devices()[0].platform == "cpu" else 8
    batch_size = f.batch_size or per_device * predictor.devices
    settings = {
        "model": region.model_fingerprint(model, spec),
        "window": f.window,
        "stride": f.stride,
        "blend": f.blend,
        "package": asanet_jax.__version__,
    }
    extras = dict(confidence=f.confidence, probabilities=f.probabilities, preview=f.preview)
    plan = region.check(
        pairs,
        spec,
        settings,
        window=f.window,
        stride=f.stride,
        min_side=2 ** (len(model.config.depths) + 1),
        align=f.align,
        extras=extras,
        overwrite=f.overwrite,
    )
    index, count = jax.process_index(), jax.process_count()
    if count > 1:
        _same_list_everywhere(plan)
    devices = f"{predictor.devices} {jax.local_devices()[0].platform} device(s)"
    hosts = f" on each of {count} processes" if count > 1 else ""
    if index == 0:
        print(
            f"{len(pairs)} scene(s), batches of {batch_size} windows over {devices}{hosts}",
            file=sys.stderr,
        )
    labelled = region.run(
        predictor,
        plan,
        spec,
        window=f.window,
        stride=f.stride,
        batch_size=batch_size,
        blend=f.blend,
        prefetch=f.prefetch,
        process_index=index,
        process_count=count,
        progress=f.progress,
    )
    if count > 1:
        from jax.experimental import multihost_utils

        # A barrier: every process's scenes are written before process 0 sums them up.
        everyone = multihost_utils.process_allgather(
            _as_mask(labelled, len(pairs)), tiled=False
        ).any(0)
        labelled = [i for i in range(len(pairs)) if everyone[i]]
    summary_path = f.summary or (
        plan.outputs[0].labels.parent / "predict_summary.json" if len(pairs) > 1 else None
    )
    if index == 0 and summary_path:
        data = region.summary(plan, settings, set(labelled), time.perf_counter() - start)
        region.write_summary(summary_path, data)
        t = data["total"]
        print(
            f"labelled {t['labelled']} scene(s), {t['complete_before']} complete before; "
            f"{t['pixels']:,} pixels, {t['km2']:,.2f} km² in {t['seconds']:.1f} s; "
            f"summary in {summary_path}",
            file=sys.stderr,
        )
    elif index == 0:
        written = ", ".join(str(p) for p in plan.outputs[0].all())
        print(f"wrote {written}" if labelled else f"complete already: {written}")
    return 0


def _same_list_everywhere(plan) -> None:
    """Every process must share out the same list; this first collective also sets up
    the processes' links early, while they start together, for the final gathering."""
    import hashlib

    import numpy as np
    from jax.experimental import multihost_utils

    digest = hashlib.sha256("\n".join(plan.keys).encode()).digest()[:8]
    mine = np.frombuffer(digest, np.uint8)
    everyone = multihost_utils.process_allgather(mine, tiled=False)
    if not (everyone == mine).all():
        raise ValueError(
            "the processes were given different scene lists, settings or models; every "
            "process must run the same command on the same files"
        )


def _as_mask(indices, n):
    import numpy as np

    mask = np.zeros(n, bool)
    mask[list(indices)] = True
    return mask


if __name__ == "__main__":
    cli.run_absl(main)
