"""Whole-scene prediction speed: windows/s and km²/hour of 10 m pixels, ASANet-tiny,
512-pixel windows every 341 pixels.

    python -m benchmarks.scene                  # this machine; about 10 minutes on 2 cores
    python -m benchmarks.scene --side 1535 --batches 1,4

Cases, each in a fresh process that first labels a small scene (compilation, excluded):

- ``loop``: the scene predictor before batching, kept here as the baseline. It opens
  both rasters again for every row of windows and runs one window per forward pass on
  the calling thread, then writes a plain tiled GeoTIFF.
- ``ours:B``: ``scene.predict_scene`` with batches of B windows over this host's devices,
  reading and writing in threads beside the model, and writing Cloud-Optimized GeoTIFFs.
  ``ours:B:D`` splits the host's CPU into D devices
  (``--xla_force_host_platform_device_count``), each running its share of a batch.
- ``model:B``: our compiled model alone on as many windows, B at a time: the ceiling
  that any scene predictor built on it can reach on this machine.
- ``torch-amp:B``: the PyTorch baseline's best mode (autocast: bfloat16 on a CPU,
  float16 with torch.compile on a GPU; channels_last, inference mode) on the same number
  of 512x512 windows, B at a time, logits fetched to the host:
  the model alone, no reading, blending or writing, so an upper bound for a PyTorch
  scene predictor.

Results go to ``benchmarks/results/scene_<platform>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time

from benchmarks.run import (
    MODELS,
    NUM_CLASSES,
    RESULTS,
    case_processes,
    environment,
    peak_rss_mb,
)

WINDOW, STRIDE, PIXEL_M = 512, 341, 10.0


def write_scene(root: pathlib.Path, side: int, seed: int = 0) -> tuple[pathlib.Path, pathlib.Path]:
    """A side x side scene: 3-band uint8 optical, 1-band uint8 SAR, 10 m pixels."""
    import numpy as np

    from tests.support import fake_sources

    rng = np.random.default_rng(seed)
    optical = rng.integers(1, 256, (side, side, 3)).astype(np.uint8)
    sar = rng.integers(0, 256, (side, side)).astype(np.uint8)
    o, s = root / f"optical_{side}.tif", root / f"sar_{side}.tif"
    fake_sources.write_geotiff(o, optical, photometric="RGB", nodata=0)
    fake_sources.write_geotiff(s, sar)
    return o, s


def loop(predictor, optical_path, sar_path, output_path, spec, window, stride) -> int:
    """The scene predictor before batching; returns the windows run."""
    import jax  # noqa: F401 -- the predictor's arrays
    import numpy as np
    import rasterio
    from rasterio.windows import Window

    from asanet_jax.data import io, preprocess
    from asanet_jax.predict.windows import window_starts

    def read(path, window, nodata):
        with rasterio.open(path) as src:  # opened again for every row, as it was
            data = src.read(window=window)
        return io.nodata_as_nan(io.Raster(np.moveaxis(data, 0, -1), nodata=nodata))

    with rasterio.open(optical_path) as src:
        height, width, crs, transform, onod = (
            src.height,
            src.width,
            src.crs,
            src.transform,
            src.nodata,
        )
    with rasterio.open(sar_path) as src:
        snod = src.nodata
    ys = window_starts(height, window, stride)
    xs = window_starts(width, window, stride)
    k = spec.num_classes
    profile = dict(
        driver="GTiff",
        height=height,
        width=width,
        count=1,
        dtype="uint8",
        crs=crs,
        transform=transform,
        nodata=255,
        tiled=True,
        blockxsize=256,
        blockysize=256,
        compress="deflate",
    )
    with rasterio.open(output_path, "w", **profile) as dst:
        top, acc, cnt, missing = ys[0], None, None, None
        for i, y in enumerate(ys):
            band = Window(0, y, width, window)
            o_in, s_in, band_missing = preprocess.model_inputs(
                read(optical_path, band, onod), read(sar_path, band, snod), spec
            )
            if acc is None:
                acc = np.zeros((0, width, k), np.float32)
                cnt = np.zeros((0, width, 1), np.float32)
                missing = np.zeros((0, width), bool)
            grow = y + window - (top + acc.shape[0])
            if grow > 0:
                acc = np.concatenate([acc, np.zeros((grow, width, k), np.float32)])
                cnt = np.concatenate([cnt, np.zeros((grow, width, 1), np.float32)])
                missing = np.concatenate([missing, np.zeros((grow, width), bool)])
            rows = slice(y - top, y - top + window)
            missing[rows] |= band_missing
            for x in xs:
                cols = slice(x, x + window)
                acc[rows, cols] += np.asarray(
                    predictor(o_in[None][:, :, cols], s_in[None][:, :, cols])
                )[0]
                cnt[rows, cols] += 1
            done = (ys[i + 1] if i + 1 < len(ys) else height) - top
            label = (acc[:done] / np.maximum(cnt[:done], 1)).argmax(-1).astype(np.uint8)
            label[missing[:done]] = 255
            dst.write(label[None], window=Window(0, top, width, done))
            acc, cnt, missing = acc[done:], cnt[done:], missing[done:]
            top += done
    return len(ys) * len(xs)


def run_case(case: str, side: int, model_name: str) -> dict:
    """One case in this process: warm up on a small scene, then time the scene."""
    kind, batch = [*case.split(":"), "1"][:2]
    batch = int(batch)
    root = pathlib.Path(tempfile.mkdtemp())
    if kind in ("torch-amp", "model"):
        fn = torch_windows if kind == "torch-amp" else model_windows
        return {**fn(side, batch, model_name), "case": case}
    from flax import nnx

    from asanet_jax import multihost
    from asanet_jax.data import specs
    from asanet_jax.models import ASANet
    from asanet_jax.predict import outputs, rasters, scene
    from asanet_jax.predict.predictor import Predictor

    spec = specs.synthetic_spec(NUM_CLASSES)
    model = ASANet({**MODELS[model_name], "num_classes": NUM_CLASSES}, rngs=nnx.Rngs(0))
    warm = write_scene(root, WINDOW + STRIDE, seed=1)
    optical, sar = write_scene(root, side)
    if kind == "loop":
        predictor = Predictor(model)
        loop(predictor, *warm, root / "warm.tif", spec, WINDOW, STRIDE)
        start = time.perf_counter()
        windows = loop(predictor, optical, sar, root / "out.tif", spec, WINDOW, STRIDE)
        seconds = time.perf_counter() - start
    else:
        predictor = Predictor(model, multihost.local_mesh())

        def label(pair, out):
            return scene.predict_scene(
                predictor,
                rasters.open_scene(*pair, spec),
                outputs.OutputPaths(root / out),
                spec,
                window=WINDOW,
                stride=STRIDE,
                batch_size=batch,
            )

        label(warm, "warm.tif")
        start = time.perf_counter()
        windows = label((optical, sar), "out.tif").windows
        seconds = time.perf_counter() - start
    return {
        "case": case,
        "windows": windows,
        "seconds": seconds,
        "windows_per_s": windows / seconds,
        "km2_per_hour": side * side * (PIXEL_M / 1000) ** 2 / seconds * 3600,
        "peak_memory_mb": peak_rss_mb(),
    }


def _timed_windows(step, side: int, batch: int) -> dict:
    """Run `step` (B windows) for as many windows as the scene has, after a warm-up."""
    from asanet_jax.predict.windows import window_starts

    count = len(window_starts(side, WINDOW, STRIDE)) ** 2
    step()
    start = time.perf_counter()
    for _ in range(-(-count // batch)):
        step()
    seconds = time.perf_counter() - start
    return {
        "windows": count,
        "seconds": seconds,
        "windows_per_s": count / seconds,
        "km2_per_hour": side * side * (PIXEL_M / 1000) ** 2 / seconds * 3600,
        "peak_memory_mb": peak_rss_mb(),
    }


def model_windows(side: int, batch: int, model_name: str) -> dict:
    """Our compiled model alone, B windows at a time, results fetched to the host."""
    import numpy as np
    from flax import nnx

    from asanet_jax.models import ASANet
    from asanet_jax.predict.predictor import Predictor

    model = ASANet({**MODELS[model_name], "num_classes": NUM_CLASSES}, rngs=nnx.Rngs(0))
    predictor = Predictor(model)
    x = np.random.default_rng(0).normal(size=(batch, WINDOW, WINDOW, 3)).astype(np.float32)
    return _timed_windows(lambda: np.asarray(predictor(x, x)), side, batch)


def torch_windows(side: int, batch: int, model_name: str) -> dict:
    """The PyTorch baseline's model alone on as many windows as the scene has."""
    import torch

    from benchmarks.torch_asanet import TorchASANet

    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    torch.manual_seed(0)
    model = TorchASANet(**MODELS[model_name], num_classes=NUM_CLASSES).eval()
    model = model.to(dev).to(memory_format=torch.channels_last)
    x = torch.randn(batch, 6, WINDOW, WINDOW, device=dev).to(memory_format=torch.channels_last)
    forward = torch.compile(model) if cuda else model  # as benchmarks/run.py

    def step():
        amp = torch.float16 if cuda else torch.bfloat16
        with torch.inference_mode(), torch.autocast(dev.type, dtype=amp):
            forward(x)["logits"].float().cpu()  # to the host, as a scene predictor must

    return _timed_windows(step, side, batch)


def table(results: list[dict], env: dict, side: int, model_name: str) -> str:
    by = {r["case"]: r for r in results}
    base = by.get("loop")
    best_torch = max(
        (r for r in results if r["case"].startswith("torch")),
        default=None,
        key=lambda r: r["windows_per_s"],
    )
    lines = [
        f"ASANet-{model_name}, a {side}x{side} scene of 10 m pixels "
        f"({side * side / 1e4:.0f} ha), {WINDOW}-pixel windows every {STRIDE}. "
        f"Machine: {env['accelerator'] or env['cpu']} ({env['cpu_cores']} CPU cores); "
        f"jax {env['jax']}, torch {env['torch']}.",
        "",
        "| case | windows/s | km²/hour | peak memory (MB) | vs loop | vs best torch AMP |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        vs_loop = f"{r['windows_per_s'] / base['windows_per_s']:.2f}x" if base else "-"
        vs_torch = f"{r['windows_per_s'] / best_torch['windows_per_s']:.2f}x" if best_torch else "-"
        lines.append(
            f"| {r['case']} | {r['windows_per_s']:.3f} | {r['km2_per_hour']:.1f} "
            f"| {r['peak_memory_mb']:.0f} | {vs_loop} | {vs_torch} |"
        )
    return "\n".join(lines) + "\n"


def run_cases(todo, side: int, model_name: str, deadline: float | None = None, log=None):
    """Each case in a fresh process (``run.case_processes``); ``ours:B:D`` cases run with
    D CPU devices. Returns (results, not run)."""

    def devices(case):
        count = case.split(":")[2:]
        return (
            {"XLA_FLAGS": f"--xla_force_host_platform_device_count={count[0]}"} if count else None
        )

    return case_processes(
        "benchmarks.scene",
        todo,
        ["--side", str(side), "--model", model_name],
        lambda r: f"{r['windows_per_s']:.3f} windows/s, peak {r['peak_memory_mb']:.0f} MB",
        deadline,
        log or (lambda message: print(message, file=sys.stderr)),
        devices,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--side", type=int, default=WINDOW + 3 * STRIDE, help="scene side (px)")
    p.add_argument("--batches", default="1,4", help="batch sizes of ours and torch")
    p.add_argument(
        "--cpu-devices", type=int, default=2, help="also ours split over this many CPU devices"
    )
    p.add_argument("--model", default="tiny", choices=sorted(MODELS))
    p.add_argument("--output", help="results file stem (default: scene_<platform>)")
    p.add_argument("--case", help=argparse.SUPPRESS)  # one case, in this process
    args = p.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.side, args.model)))
        return
    env = environment()
    batches = [int(b) for b in args.batches.split(",") if b]
    todo = ["loop", "model:1"] + [f"ours:{b}" for b in batches]
    if not env["accelerator"] and args.cpu_devices > 1:
        todo.append(f"ours:{args.cpu_devices}:{args.cpu_devices}")
    todo += [f"torch-amp:{b}" for b in batches]
    results, _ = run_cases(todo, args.side, args.model)
    name = args.output or f"scene_{'gpu' if env['accelerator'] else 'cpu'}"
    RESULTS.mkdir(exist_ok=True)
    data = {"environment": env, "side": args.side, "model": args.model, "results": results}
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(table(results, env, args.side, args.model))
    print(table(results, env, args.side, args.model))
    print(f"wrote {RESULTS / name}.json and .md")


if __name__ == "__main__":
    main()
