"""Building each model under a trace, with and without asanet_jax.models.tracing's fix.

    python -m benchmarks.model_build

Every model load (``segmentor.build_with_weights``) and every training start
(``trainer.create_state``) builds the model twice under a trace: ``nnx.eval_shape`` for
the abstract state, then ``jax.jit`` for the initial values. This times both traces
(nothing is compiled) of each architecture at its official size, with the fix installed
and removed, and writes ``benchmarks/results/model_build_<platform>.{json,md}``.
"""

from __future__ import annotations

import json
import pathlib
import statistics

import jax
from flax import nnx

from asanet_jax.models import resolve, segmentor, tracing
from benchmarks import run

RESULTS = pathlib.Path(__file__).parent / "results"
MODELS = {
    "ASANet-tiny": {"architecture": "asanet"},
    "CMX-B2": {"architecture": "cmx"},
    "SA-Gate-R101": {"architecture": "sagate"},
    "vFuseNet-VGG16": {"architecture": "vfusenet"},
}
REPEATS = 3


def median_s(fn) -> float:
    return statistics.median(run.timed(fn, REPEATS))


def traces(config) -> dict:
    """Seconds for the abstract build and for tracing the jitted initialisation."""

    def make():
        return segmentor.build(config, rngs=nnx.Rngs(0))

    return {
        "eval_shape_s": median_s(lambda: nnx.eval_shape(make)),
        "jit_trace_s": median_s(lambda: jax.jit(lambda: nnx.state(make())).trace()),
    }


def main() -> None:
    rows = []
    for name, overrides in MODELS.items():
        config = resolve({**overrides, "num_classes": 6})
        tracing.install()
        fixed = traces(config)
        tracing.uninstall()
        unfixed = traces(config)
        tracing.install()
        rows.append({"model": name, "fixed": fixed, "unfixed": unfixed})
        print(name, {"fixed": fixed, "unfixed": unfixed}, flush=True)
    env = run.environment()
    report = {"environment": env, "repeats": REPEATS, "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"model_build_{jax.default_backend()}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"Building each model under a trace (median of {REPEATS}), seconds: without / with "
        f"asanet_jax.models.tracing. Machine: {env['cpu']} ({env['cpu_cores']} CPU cores); "
        f"jax {env['jax']}, flax {env['flax']}.",
        "",
        "| model | nnx.eval_shape | jax.jit trace of the initialisation |",
        "| --- | --- | --- |",
    ]
    for r in rows:
        u, f = r["unfixed"], r["fixed"]
        lines.append(
            f"| {r['model']} | {u['eval_shape_s']:.2f} / {f['eval_shape_s']:.2f} "
            f"| {u['jit_trace_s']:.2f} / {f['jit_trace_s']:.2f} |"
        )
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
