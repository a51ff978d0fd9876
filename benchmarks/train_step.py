"""Training-step throughput and peak memory of our full training step (official optimiser,
sharded jit, donated state) for ASANet-tiny at 256x256.

    python -m benchmarks.train_step                  # batch 8, float32 and bfloat16
    python -m benchmarks.train_step --batches 8,32 --repeats 5

One subprocess per case (so peak memory is its own); each compiles ahead of time, warms
up, then times `repeats` steps one by one (blocking on the result) and reports the median.
Results go to benchmarks/results/train_step_<cpu|gpu>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import statistics
import subprocess
import sys
import time

RESULTS = pathlib.Path(__file__).parent / "results"
REPO = pathlib.Path(__file__).resolve().parents[1]


def run_case(batch: int, dtype: str, repeats: int) -> dict:
    import jax
    import numpy as np

    from asanet_jax.data import pipeline
    from asanet_jax.models.config import resolve
    from asanet_jax.train import optimizer, recipe, sharding, trainer
    from benchmarks import run

    config = recipe.for_dataset("pie_rgb_sar")
    config.model.dtype = dtype
    config.train.batch_size = batch
    mesh = sharding.make_mesh(config.mesh)
    model_config = resolve(config.model)

    def tx_factory(params):
        return optimizer.make_optimizer(params, config.optim, config.optim.total_steps)

    state, tx, _ = trainer.create_state(config, mesh, tx_factory)
    step = trainer.make_train_step(state, tx, model_config, config.train.aux_weight, mesh)
    rng = np.random.default_rng(0)
    local = {
        "optical": rng.standard_normal((batch, 256, 256, 3)).astype(np.float32),
        "sar": rng.standard_normal((batch, 256, 256, 3)).astype(np.float32),
        "label": rng.integers(0, 6, (batch, 256, 256)).astype(np.uint8),
    }
    data = pipeline.global_batch(local, sharding.batch_sharding(mesh))
    compiled = step.lower(state.state, state.opt_state, data).compile()
    carry = [state.state, state.opt_state]

    def one():
        s, o, out = compiled(*carry, data)
        carry[:] = [s, o]
        jax.block_until_ready(out["loss"])

    one()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        one()
        times.append(time.perf_counter() - t)
    device = jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    peak = stats["peak_bytes_in_use"] / 2**20 if stats else run.peak_rss_mb()
    median = statistics.median(times)
    return {
        "batch": batch,
        "dtype": dtype,
        "step_s_median": median,
        "images_per_s": batch / median,
        "peak_memory_mb": round(peak),
        "device": f"{jax.device_count()} x {device.device_kind}",
        "platform": device.platform,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="8")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        batch, dtype = args.case.split(",")
        print(json.dumps(run_case(int(batch), dtype, args.repeats)))
        return
    rows = []
    for batch in map(int, args.batches.split(",")):
        for dtype in args.dtypes.split(","):
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.train_step",
                    "--case",
                    f"{batch},{dtype}",
                    "--repeats",
                    str(args.repeats),
                ],
                capture_output=True,
                text=True,
                cwd=REPO,
            )
            if out.returncode:
                raise SystemExit(out.stderr[-3000:])
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    import jax

    kind = "gpu" if rows[0]["platform"] == "gpu" else "cpu"
    result = {
        "machine": platform.processor() or platform.machine(),
        "jax": jax.__version__,
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"train_step_{kind}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "| batch | compute | images/s | step (s) | peak MB |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r['batch']} | {r['dtype']} | {r['images_per_s']:.2f} | {r['step_s_median']:.2f} "
        f"| {r['peak_memory_mb']} |"
        for r in rows
    ]
    (RESULTS / f"train_step_{kind}.md").write_text(
        f"ASANet-tiny 256x256 training step ({rows[0]['device']}, jax {jax.__version__})\n\n"
        + "\n".join(lines)
        + "\n"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
