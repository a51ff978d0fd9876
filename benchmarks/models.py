"""The paper's comparison table, measured: every model at 256x256 with 6 classes.

    python -m benchmarks.models                       # this machine, every model
    python -m benchmarks.models --models cmx-b2,sagate-r101 --repeats 2
    python -m benchmarks.models --smoke               # the golden fixtures' sizes, 64x64
    python -m benchmarks.models --cases jax:infer:fp32:1,jax:infer:fp32:8 --no-train

Per model: parameters (against the count of the genuine official model), GFLOPs of one
256x256 image from XLA's cost analysis, inference images/s at batch 1 and 8 in float32
and bfloat16, and one training step (forward, backward, AdamW) at batch 8 with its peak
memory. Results go to ``benchmarks/results/models_<cpu|gpu>.json`` and ``.md``.

FLOPs convention: XLA counts a multiply-add as two floating-point operations. The
table gives both XLA's FLOPs and multiply-adds (FLOPs / 2), because mmcv's
``get_model_complexity_info``, with which the paper's column was counted, reports
multiply-adds (it calls them FLOPs). Counted with ``kernels='xla'`` (the standard
convolutions and products), at float32. vFuseNet's official forward pass also runs three
decoder stages (and the encoder stages that feed them) whose outputs nothing uses; ours
skips them, so its row gives both counts.

The counts are of the graph that produces the logits, so XLA drops what only the aux
head reads (for vFuseNet that is its whole second encoder stage).

Speed cases run each in a fresh process through benchmarks/run.py (its own peak memory).
"""

from __future__ import annotations

import argparse
import json
import pathlib

from benchmarks import run

SIZE = 256
# model -> (the official parameter count, built by the genuine code; the paper's row:
# GFLOPs, params (M), FPS, mIoU on PIE, DDHR, WHU).
OFFICIAL = {
    "tiny": (82_904_764, (25, 82, 48.7, 78.31, 94.48, 56.11)),
    "cmx-b2": (66_563_982, (15, 67, 33.5, 77.10, 94.32, 55.68)),
    "sagate-r101": (130_691_540, (46, 121, 34.9, 73.84, 90.89, 53.17)),
    "vfusenet-vgg16": (55_169_548, (66, 55, 88.8, 60.62, 48.87, 38.01)),
    "upernet-optical": (None, None),
    "upernet-sar": (None, None),
}
SMOKE = ("micro", "cmx-micro", "sagate-micro", "vfusenet-micro")
CASES = ("jax:infer:fp32:1", "jax:infer:bf16:1", "jax:infer:fp32:8", "jax:infer:bf16:8")
TRAIN_CASE = "jax:train:fp32:8"


def static_figures(arch: str, size: int) -> dict:
    """Parameters and XLA's FLOPs of one image (float32, standard kernels)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from asanet_jax.models import count_params, segmentor

    fields = {**run.MODELS[arch], "kernels": "xla", "dtype": "float32"}
    model = nnx.eval_shape(lambda: segmentor.build(fields, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)

    def flops(fn) -> float:
        lowered = jax.jit(lambda s, a, b: fn(nnx.merge(graphdef, s), a, b)).lower(state, x, x)
        cost = lowered.compile().cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        return float(cost["flops"])

    out = {"params": count_params(model), "flops": flops(lambda m, a, b: m(a, b)["logits"])}
    if hasattr(model, "official_features"):  # vFuseNet: the official graph, unused stages too

        def official(m, a, b):  # every output, so that XLA keeps every stage
            feats = m.official_features(a, b)
            return feats, m.decode_head(feats[-1])

        out["official_graph_flops"] = flops(official)
    return out


def table(rows: list[dict], env: dict, size: int) -> str:
    lines = [
        f"Every model at {size}x{size}, 6 classes; images/s (median), peak memory in MB. "
        f"Machine: {env['accelerator'] or env['cpu']} ({env['cpu_cores']} CPU cores); "
        f"jax {env['jax']}, flax {env['flax']}. GMACs = XLA's FLOPs / 2 (the convention "
        "of mmcv's counter and the paper's column).",
        "",
        "| model | params | official params | GMACs (XLA GFLOPs) | infer b1 fp32 / bf16 "
        "| infer b8 fp32 / bf16 | train b8 fp32 (peak MB) | paper: GFLOPs, M, FPS |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        speed = {(c["mode"], c["precision"], c["batch"]): c for c in r["speed"]}

        def ips(mode, precision, batch, speed=speed):
            c = speed.get((mode, precision, batch))
            return f"{c['images_per_s']:.2f}" if c else "-"

        train = speed.get(("train", "fp32", 8))
        train_cell = (
            f"{train['images_per_s']:.2f} ({train['peak_memory_mb']:.0f})" if train else "-"
        )
        gmacs = f"{r['flops'] / 2e9:.1f} ({r['flops'] / 1e9:.1f})"
        if "official_graph_flops" in r:
            gmacs += f"; official graph {r['official_graph_flops'] / 2e9:.1f}"
        official = f"{r['official_params']:,}" if r["official_params"] else "-"
        paper = ", ".join(f"{v:g}" for v in r["paper"][:3]) if r["paper"] else "-"
        lines.append(
            f"| {run.title(r['model'])} | {r['params']:,} | {official} | {gmacs} "
            f"| {ips('infer', 'fp32', 1)} / {ips('infer', 'bf16', 1)} "
            f"| {ips('infer', 'fp32', 8)} / {ips('infer', 'bf16', 8)} "
            f"| {train_cell} "
            f"| {paper} |"
        )
    if not_run := [c for r in rows for c in r["not_run"]]:
        lines += ["", "Not run: " + "; ".join(not_run)]
    return "\n".join(lines) + "\n"


def measure(models, size: int, repeats: int, cases, deadline=None, log=print) -> list[dict]:
    """One row per model: its static figures and the speed `cases` (benchmarks/run.py's
    'framework:mode:precision:batch'); cases past the `deadline` are listed as not run."""
    rows = []
    for i, arch in enumerate(models, 1):
        log(f"model {i}/{len(models)}: {run.title(arch)}")
        official, paper = OFFICIAL.get(arch, (None, None))
        row = {"model": arch, "size": size, "official_params": official, "paper": paper}
        row.update(static_figures(arch, size))
        row["speed"], row["not_run"] = run.run_in_subprocesses(
            list(cases), repeats, arch, size, deadline, log
        )
        rows.append(row)
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(OFFICIAL), help="comma-separated")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-train", action="store_true", help="skip the training step")
    p.add_argument("--cases", help=f"comma-separated, instead of {','.join(CASES)}")
    p.add_argument("--smoke", action="store_true", help="the fixtures' sizes at 64x64")
    p.add_argument("--out", type=pathlib.Path, default=run.RESULTS)
    args = p.parse_args(argv)
    models = SMOKE if args.smoke else tuple(args.models.split(","))
    unknown = [m for m in models if m not in run.MODELS]
    if unknown:
        p.error(f"unknown models {unknown}: expected some of {sorted(run.MODELS)}")
    size = 64 if args.smoke else SIZE
    env = run.environment()
    cases = args.cases.split(",") if args.cases else list(CASES)
    cases += [] if args.no_train else [TRAIN_CASE]
    rows = measure(models, size, args.repeats, cases)
    name = f"models_{'gpu' if env['accelerator'] else 'cpu'}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(
        json.dumps({"environment": env, "rows": rows}, indent=2) + "\n"
    )
    (args.out / f"{name}.md").write_text(table(rows, env, size))
    print(table(rows, env, size))
    print(f"wrote {args.out / name}.json and .md")


if __name__ == "__main__":
    main()
