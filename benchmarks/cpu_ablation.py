"""Which CPU changes moved the numbers: ours, fp32, with each change switched on in turn.

    python -m benchmarks.cpu_ablation                 # inference and training, batch 8
    python -m benchmarks.cpu_ablation --modes infer --repeats 5

The model picks its CPU formulations at trace time (``layers.channel_mean``,
``winograd.preferred``). This script rebuilds the plain
formulations by swapping those module attributes back, compiles one program per
rung of the ladder below, and then times the rungs interleaved, round after round,
so that a slow spell of a shared machine hits every rung alike. Results go to
``benchmarks/results/cpu_ablation.json`` and ``.md``.

Rungs (cumulative):
  plain            XLA's reductions, convolutions and autodiff throughout
  + layernorm      LayerNorm's channel sums as products with a ones vector
  + winograd       3x3 head convs on maps >= 64x64 by Winograd, autodiff backward
  + winograd vjp   ... with the hand-written backward (the library's default)
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
RUNGS = ("plain", "+ layernorm", "+ winograd", "+ winograd vjp")


def configure(rung: str) -> None:
    """Switch the library's CPU formulations to those of ``rung``."""
    import jax.numpy as jnp

    from asanet_jax.models import layers, winograd

    level = RUNGS.index(rung)
    layers.channel_mean = (
        _DEFAULTS["channel_mean"] if level >= 1 else (lambda x: jnp.mean(x, -1, keepdims=True))
    )
    winograd.MIN_PIXELS = _DEFAULTS["min_pixels"] if level >= 2 else float("inf")
    winograd.conv3x3 = _DEFAULTS["conv3x3"] if level >= 3 else winograd._conv3x3


_DEFAULTS: dict = {}


def compile_case(mode: str, batch: int):
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from asanet_jax.losses import segmentation_loss
    from asanet_jax.models import ASANet

    rng = np.random.default_rng(0)
    rgb = jnp.asarray(rng.normal(size=(batch, SIZE, SIZE, 3)), jnp.float32)
    sar = jnp.asarray(rng.normal(size=(batch, SIZE, SIZE, 3)), jnp.float32)
    model = ASANet({"dtype": "float32"}, rngs=nnx.Rngs(0))
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

    from asanet_jax.models import layers, winograd

    if jax.default_backend() != "cpu":
        raise SystemExit(
            f"this ablation is of the CPU formulations; backend is {jax.default_backend()}"
        )
    _DEFAULTS.update(
        channel_mean=layers.channel_mean,
        min_pixels=winograd.MIN_PIXELS,
        conv3x3=winograd.conv3x3,
    )
    results = []
    for mode in args.modes.split(","):
        programs = {}
        for rung in RUNGS:
            configure(rung)
            t = time.perf_counter()
            programs[rung] = compile_case(mode, args.batch)
            jax.block_until_ready(programs[rung][0](*programs[rung][1]))  # warm-up
            print(f"{mode}: compiled {rung!r} in {time.perf_counter() - t:.0f}s", flush=True)
        configure(RUNGS[-1])
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
    for i, rung in enumerate(RUNGS):
        cells = []
        for mode in args.modes.split(","):
            v = by[(mode, rung)]
            gain = f" ({v / by[(mode, RUNGS[i - 1])]:.2f}x)" if i else ""
            cells.append(f"{v:.2f}{gain}")
        lines.append(f"| {rung} | " + " | ".join(cells) + " |")
    (RESULTS / "cpu_ablation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
