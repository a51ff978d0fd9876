"""Which CPU formulations moved the numbers: ours, fp32, switched on one at a time.

    python -m benchmarks.cpu_ablation                 # inference and training, batch 8
    python -m benchmarks.cpu_ablation --modes infer --repeats 5

Each rung of the ladder below is a ``config.model.kernels`` setting (see
``asanet_jax/models/kernels.py``). The script compiles one program per rung, then times
the rungs interleaved, round after round, so that a slow spell of a shared machine hits
every rung alike. Results go to ``benchmarks/results/cpu_ablation.json`` and ``.md``.

Rungs (cumulative):
  xla              XLA's own operations throughout (what other platforms run)
  + depthwise      7x7 depthwise convs as 49 shifted products
  + layernorm      LayerNorm's channel sums as products with a ones vector
  + winograd       3x3 head convs on maps >= 64x64 by Winograd (= 'cpu', what 'auto' runs
                   on a CPU)
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import time

SIZE = 256
NUM_CLASSES = 6
RESULTS = pathlib.Path(__file__).parent / "results"
RUNGS = {
    "xla": "xla",
    "+ depthwise": "depthwise",
    "+ layernorm": "depthwise+layernorm",
    "+ winograd": "cpu",
}


def compile_case(mode: str, batch: int, kernels: str):
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from asanet_jax.losses import segmentation_loss
    from asanet_jax.models import ASANet

    rng = np.random.default_rng(0)
    rgb = jnp.asarray(rng.normal(size=(batch, SIZE, SIZE, 3)), jnp.float32)
    sar = jnp.asarray(rng.normal(size=(batch, SIZE, SIZE, 3)), jnp.float32)
    model = ASANet({"dtype": "float32", "kernels": kernels}, rngs=nnx.Rngs(0))
    if mode == "infer":
        model.eval()
        graphdef, state = nnx.split(model)

        def forward(state, rgb, sar):
            return nnx.merge(graphdef, state)(rgb, sar)["logits"]

        args = (state, rgb, sar)
        return jax.jit(forward).lower(*args).compile(), args
    labels = jnp.asarray(rng.integers(0, NUM_CLASSES, size=(batch, SIZE, SIZE)), jnp.int32)
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss_and_grads(params, rest, rgb, sar, labels):
        m = nnx.merge(graphdef, params, rest)
        return nnx.value_and_grad(lambda m: segmentation_loss(m(rgb, sar), labels)[0])(m)

    args = (params, rest, rgb, sar, labels)
    return jax.jit(loss_and_grads).lower(*args).compile(), args


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--modes", default="infer,train", help="comma-separated: infer, train")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3, help="rounds over all rungs")
    args = p.parse_args()

    import jax

    if jax.default_backend() != "cpu":
        raise SystemExit(
            f"this ablation is of the CPU formulations; backend is {jax.default_backend()}"
        )
    results = []
    for mode in args.modes.split(","):
        programs = {}
        for rung, kernels in RUNGS.items():
            t = time.perf_counter()
            programs[rung] = compile_case(mode, args.batch, kernels)
            jax.block_until_ready(programs[rung][0](*programs[rung][1]))  # warm-up
            print(f"{mode}: compiled {rung!r} in {time.perf_counter() - t:.0f}s", flush=True)
        times = {rung: [] for rung in RUNGS}
        start = time.perf_counter()
        for r in range(args.repeats):
            for rung, (compiled, call_args) in programs.items():
                t = time.perf_counter()
                jax.block_until_ready(compiled(*call_args))
                times[rung].append(time.perf_counter() - t)
            done = r + 1
            eta = (time.perf_counter() - start) / done * (args.repeats - done)
            print(f"{mode}: round {done}/{args.repeats} (ETA {eta:.0f}s)", flush=True)
        for rung in RUNGS:
            median = statistics.median(times[rung])
            results.append(
                {
                    "mode": mode,
                    "batch": args.batch,
                    "rung": rung,
                    "times_s": times[rung],
                    "median_s": median,
                    "images_per_s": args.batch / median,
                }
            )
    RESULTS.mkdir(exist_ok=True)
    env = {"jax": jax.__version__, "cpu_cores": __import__("os").cpu_count()}
    (RESULTS / "cpu_ablation.json").write_text(
        json.dumps({"environment": env, "results": results}, indent=2) + "\n"
    )
    lines = [
        f"Ours, fp32, ASANet-tiny {SIZE}x{SIZE}, batch {args.batch}, {env['cpu_cores']} CPU "
        f"cores, jax {env['jax']}: images/s (median of {args.repeats} interleaved rounds), "
        "and the gain over the rung above.",
        "",
        "| change | " + " | ".join(args.modes.split(",")) + " |",
        "| --- |" + " --- |" * len(args.modes.split(",")),
    ]
    by = {(r["mode"], r["rung"]): r["images_per_s"] for r in results}
    names = list(RUNGS)
    for i, rung in enumerate(names):
        cells = []
        for mode in args.modes.split(","):
            v = by[(mode, rung)]
            gain = f" ({v / by[(mode, names[i - 1])]:.2f}x)" if i else ""
            cells.append(f"{v:.2f}{gain}")
        lines.append(f"| {rung} (`{RUNGS[rung]}`) | " + " | ".join(cells) + " |")
    (RESULTS / "cpu_ablation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
