"""Where a training step's time goes on a CPU, ours beside PyTorch's, op by op.

    python -m benchmarks.cpu_profile                    # ASANet-tiny, 256x256, batch 8
    python -m benchmarks.cpu_profile --arch micro --size 64 --batch 2

Ours: a ``jax.profiler`` trace of one step of benchmarks/run.py's compiled training step
(loss, gradients, AdamW), per HLO op (with the JAX primitive it came from), each put in
the forward pass, the backward pass (its JAX source is a ``transpose``) or the rest
(optimiser, norms, copies). PyTorch: one
step of the plain-PyTorch baseline under ``torch.profiler``, per aten op by self time,
split the same way by the ops each was called from (autograd's ``*Backward*`` nodes,
``Optimizer.step``, the rest). Both steps are warmed up first; op times are summed over
threads, so a phase's total can exceed the step's wall time. Results go to
``benchmarks/results/cpu_profile.json`` and ``.md`` (``cpu_profile_<arch>`` for other
models).
"""

from __future__ import annotations

import argparse
import collections
import json
import pathlib
import platform
import re
import tempfile
import time

from benchmarks import device_check, run

RESULTS = pathlib.Path(__file__).parent / "results"
PHASES = ("forward", "backward", "rest")


def hlo_sources(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> the JAX source path in its metadata (``op_name``)."""
    return dict(re.findall(r'%([\w.-]+) = .*?metadata=\{op_name="([^"]*)"', hlo_text))


def hlo_kind(name: str) -> str:
    """'multiply_add_fusion.12' -> 'multiply_add_fusion'."""
    return re.sub(r"\.\d+$", "", name)


def jax_phase(source: str) -> str:
    if "transpose(" in source:
        return "backward"
    return "forward" if "jvp(" in source else "rest"


def torch_phase(event) -> str:
    """An aten op's phase from itself and the ops it was called from: under an autograd
    node (``*Backward*``), under ``Optimizer.step``, or neither."""
    while event is not None:
        if "backward" in event.name.lower():
            return "backward"
        if event.name.startswith("Optimizer."):
            return "rest"
        event = event.cpu_parent
    return "forward"


def summarise(ops: list[dict], wall_s: float, top: int) -> dict:
    """ops: [{"op", "ms", "calls", "phase", "what"}] -> phase totals and the top ops."""
    phases = collections.Counter()
    kinds = collections.Counter()
    for o in ops:
        phases[o["phase"]] += o["ms"]
        kinds[(o["phase"], o["what"])] += o["ms"]
    return {
        "step_s": wall_s,
        "op_ms": {p: round(phases[p], 1) for p in PHASES},
        "by_kind": [
            {"phase": p, "what": w, "ms": round(ms, 1)} for (p, w), ms in kinds.most_common(top)
        ],
        "top_ops": sorted(ops, key=lambda o: -o["ms"])[:top],
    }


def profile_jax(arch: str, precision: str, batch: int, size: int, top: int) -> dict:
    import jax

    step = run.jax_step("train", precision, batch, arch, size)
    step()  # warm-up; compiled ahead of time in jax_step
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            start = time.perf_counter()
            step()
            wall = time.perf_counter() - start
        traced = device_check.top_ops(pathlib.Path(trace_dir), count=10**9)
    sources = hlo_sources(step.compiled.as_text())
    ops = []
    for o in traced["top"]:
        source = sources.get(o["op"], "")
        # The JAX primitive the op came from (the last element of its source path; XLA
        # may have folded others into it, as a transpose into a dot) and the HLO op.
        what = f"{source.rsplit('/', 1)[-1]} [{hlo_kind(o['op'])}]"
        ops.append({**o, "source": source, "phase": jax_phase(source), "what": what})
    return summarise(ops, wall, top)


def profile_torch(arch: str, precision: str, batch: int, size: int, top: int) -> dict:
    from torch.profiler import ProfilerActivity, profile

    step = run.torch_step("train", precision, batch, arch, size)
    step()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        step()
        wall = time.perf_counter() - start
    totals: dict[tuple[str, str], list] = {}
    for e in prof.events():
        entry = totals.setdefault((torch_phase(e), e.name), [0.0, 0])
        entry[0] += e.self_cpu_time_total / 1e3
        entry[1] += 1
    ops = [
        {"op": name, "ms": ms, "calls": calls, "phase": phase, "what": name}
        for (phase, name), (ms, calls) in totals.items()
        if ms > 0
    ]
    return summarise(ops, wall, top)


def table(name: str, result: dict) -> list[str]:
    totals = ", ".join(f"{p} {result['op_ms'][p]:.0f}" for p in PHASES)
    lines = [
        f"### {name}: one step in {result['step_s']:.2f} s; op time (ms): {totals}",
        "",
        "| phase | op | ms |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {k['phase']} | `{k['what'][:60]}` | {k['ms']:.1f} |" for k in result["by_kind"]]
    return [*lines, ""]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="tiny", choices=sorted(run.MODELS))
    p.add_argument("--size", type=int, default=run.SIZE)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="ours")
    p.add_argument("--torch-precision", default="amp", choices=["fp32", "amp"])
    p.add_argument("--top", type=int, default=20, help="rows per table")
    args = p.parse_args()

    ours = profile_jax(args.arch, args.precision, args.batch, args.size, args.top)
    print(f"ours: step {ours['step_s']:.2f} s, op ms {ours['op_ms']}", flush=True)
    theirs = profile_torch(args.arch, args.torch_precision, args.batch, args.size, args.top)
    print(f"torch: step {theirs['step_s']:.2f} s, op ms {theirs['op_ms']}", flush=True)
    env = run.environment()
    report = {
        "settings": vars(args),
        "machine": f"{env['cpu']} ({env['cpu_cores']} CPU cores)",
        "versions": {k: env[k] for k in ("jax", "flax", "torch")},
        "ours": ours,
        "torch": theirs,
    }
    stem = "cpu_profile" if args.arch == "tiny" else f"cpu_profile_{args.arch}"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    head = (
        f"{run.title(args.arch)}, {args.size}x{args.size}, batch {args.batch}, one training "
        f"step: ours {args.precision}, PyTorch {args.torch_precision}. Machine: "
        f"{report['machine']}; {platform.machine()}; "
        + ", ".join(f"{k} {v}" for k, v in report["versions"].items())
    )
    md = [head, "", *table("Ours", ours), *table("PyTorch", theirs)]
    (RESULTS / f"{stem}.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
