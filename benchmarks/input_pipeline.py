"""Throughput of the training input pipeline: augmented 256x256 examples per second.

    python -m benchmarks.input_pipeline                 # writes results/input_pipeline_<host>.json

Builds a PIE-format dataset (256x256 GeoTIFF triples, synthetic scenes rendered at 256)
with the pie_rgb_sar builder, then times the full training pipeline (ArrayRecord read,
zlib decode, OpenCV channel order, random rescale 0.5-2x, category-limited crop, flips,
normalisation, padding, batching) after a warm-up, for several reader thread counts.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import tempfile
import time

import numpy as np

from asanet_jax.data import build, pipeline, synthetic
from tests.support import fake_sources

RESULTS = pathlib.Path(__file__).parent / "results"


def write_pie_dataset(root: pathlib.Path, count: int) -> None:
    names = [f"{i:05d}" for i in range(count)]
    for i, name in enumerate(names):
        scene = synthetic.generate_scene((1, i), size=256)
        fake_sources.write_geotiff(root / "rgb" / f"{name}.tif", scene.optical)
        fake_sources.write_geotiff(root / "sar" / f"{name}.tif", scene.sar)
        fake_sources.write_geotiff(root / "label" / f"{name}.tif", scene.label)
    (root / "train.txt").write_text("\n".join(names[: count - 8]) + "\n")
    (root / "val.txt").write_text("\n".join(names[count - 8 :]) + "\n")


def measure(source, threads: int, batch: int, batches: int, warmup: int) -> float:
    ds = pipeline.train_dataset(
        source, batch, seed=0, process_index=0, process_count=1, num_threads=threads
    )
    it = iter(ds)
    for _ in range(warmup):
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=264)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batches", type=int, default=150)
    parser.add_argument("--threads", default="1,2,4,8")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        write_pie_dataset(tmp / "src", args.examples)
        build.build("pie_rgb_sar", tmp / "data", manual_dir=tmp / "src")
        source = build.open_source(tmp / "data", "pie_rgb_sar", "train")
        rates = {}
        for threads in map(int, args.threads.split(",")):
            rates[threads] = measure(source, threads, args.batch, args.batches, warmup=10)
            print(f"threads={threads}: {rates[threads]:.0f} examples/s", flush=True)
    result = {
        "what": "augmented 256x256 training examples/s (pie_rgb_sar format, batch of 8)",
        "examples_per_s_by_threads": {str(k): round(v, 1) for k, v in rates.items()},
        "best_examples_per_s": round(max(rates.values()), 1),
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"input_pipeline_{os.cpu_count()}cpu.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
