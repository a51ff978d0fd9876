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

from asanet_jax import cli

cli.hold_interrupts()  # first: a Ctrl-C during the imports below ends cleanly too

import pathlib
import sys
import time
import types

from absl import flags, logging

import asanet_jax
from asanet_jax import evaluation, inference, loading, region, scene
from asanet_jax.data import io

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
        return region.match_globs(f.optical, f.sar, f.output_dir)
    if not f.output or f.output_dir:
        raise ValueError("one scene writes --output (--output_dir is for globs)")
    return [region.Pair(pathlib.Path(f.optical), pathlib.Path(f.sar), pathlib.Path(f.output))]


def main(argv) -> int:
    if len(argv) > 1:
        raise ValueError(
            f"unexpected arguments {argv[1:]}; quote globs ('S2/*.tif') so that the shell "
            "does not expand them"
        )
    logging.set_verbosity(logging.WARNING)
    f = flags.FLAGS
    for name, least in (("window", 1), ("stride", 1), ("batch_size", 1), ("prefetch", 1)):
        if f[name].value is not None and f[name].value < least:
            raise ValueError(f"--{name}={f[name].value}: expected a positive number")
    pairs = pairs_from_flags(f)
    summary_path = f.summary or (
        pairs[0].output.parent / "predict_summary.json" if len(pairs) > 1 else None
    )
    extras = dict(confidence=f.confidence, probabilities=f.probabilities, preview=f.preview)
    # A glob's output folder is created once every check has passed.
    new_folders = [f.output_dir] if f.output_dir else []
    from asanet_jax.train import sharding

    sharding.maybe_initialize_distributed(
        types.SimpleNamespace(
            coordinator_address=f.coordinator_address,
            num_processes=f.num_processes,
            process_id=f.process_id,
        )
    )
    import jax

    count = jax.process_count()
    # Folders that cannot be written are reported before the model is read (the full check
    # below needs it). This first gathering also sets up the processes' links.
    problems = region.unwritable_outputs(pairs, summary_path)
    _agree(count, io.DataError(region.listing(problems)) if problems else None, b"")
    start = time.perf_counter()
    model, _, meta = asanet_jax.load(f.checkpoint)
    spec = loading.model_dataset(meta, f.checkpoint, f.dataset, f.data_dir)
    evaluation.check_fits(model.config, spec)
    predictor = inference.Predictor(model, sharding.local_mesh())
    # On CPUs one window per device is fastest (larger batches fall out of cache: 44 vs
    # 30 windows/s for micro at batch 1 vs 8); accelerators want full batches.
    per_device = 1 if jax.local_devices()[0].platform == "cpu" else 8
    batch_size = f.batch_size if f.batch_size is not None else per_device * predictor.devices
    settings = {  # what the outputs depend on: the run key (with the inputs)
        "model": region.model_fingerprint(model, spec),
        "window": f.window,
        "stride": f.stride if f.stride is not None else scene.default_stride(f.window),
        "blend": f.blend,
    }
    index = jax.process_index()
    plan, failure = None, None
    try:
        plan = region.check(
            pairs,
            spec,
            settings,
            window=f.window,
            stride=f.stride,
            min_side=model.config.min_input_side,
            align=f.align,
            extras=extras,
            summary=summary_path,
            new_folders=new_folders,
            overwrite=f.overwrite,
        )
    except (ValueError, OSError) as e:
        failure = e
    # Every process reaches each gathering, failed or not, so none waits for a process
    # that has stopped.
    _agree(count, failure, _plan_digest(plan, extras, f.overwrite) if plan else b"")
    for folder in new_folders:
        pathlib.Path(folder).mkdir(parents=True, exist_ok=True)
    devices = f"{predictor.devices} {jax.local_devices()[0].platform} device(s)"
    hosts = f" on each of {count} processes" if count > 1 else ""
    if index == 0:
        print(
            f"{len(pairs)} scene(s), batches of {batch_size} windows over {devices}{hosts}",
            file=sys.stderr,
        )
    labelled = []
    try:
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
    except (ValueError, OSError) as e:
        failure = e
    # A barrier: every process's scenes are written before process 0 sums them up.
    labelled = _agree(count, failure, b"", labelled, len(pairs))
    if index == 0 and summary_path:
        data = region.summary(plan, settings, set(labelled), time.perf_counter() - start)
        data["settings"]["package"] = asanet_jax.__version__
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


def _plan_digest(plan, extras, overwrite) -> bytes:
    """What every process must agree on: the scenes, their keys and outputs, the options."""
    import hashlib

    text = "\n".join(
        f"{key}|{[str(p) for p in paths.all()]}"
        for key, paths in zip(plan.keys, plan.outputs, strict=True)
    )
    return hashlib.sha256(f"{text}|{sorted(extras.items())}|{overwrite}".encode()).digest()[:8]


def _agree(count, failure, digest: bytes, labelled=(), n: int = 0) -> list[int]:
    """Gather every process's (failed, digest, labelled scenes); raise this process's
    failure, or name another's; refuse processes that were given different lists.
    Returns the scenes any process labelled."""
    if count == 1:
        if failure is not None:
            raise failure
        return list(labelled)
    import numpy as np
    from jax.experimental import multihost_utils

    row = np.zeros(1 + 8 + n, np.uint8)
    row[0] = failure is not None
    row[1 : 1 + len(digest)] = np.frombuffer(digest, np.uint8)
    row[9 + np.asarray(list(labelled), int)] = 1
    rows = multihost_utils.process_allgather(row, tiled=False)
    if failure is not None:
        raise failure
    failed = [i for i in range(count) if rows[i, 0]]
    if failed:
        raise ValueError(f"process(es) {failed} failed; their messages say why")
    if digest and not (rows[:, 1:9] == rows[0, 1:9]).all():
        raise ValueError(
            "the processes were given different scene lists, outputs, settings or models; "
            "every process must run the same command on the same files"
        )
    return [i for i in range(n) if rows[:, 9 + i].any()]


if __name__ == "__main__":
    cli.run_absl(main)
