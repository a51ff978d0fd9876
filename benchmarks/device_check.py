"""The accelerator check: one command on a bare GPU machine with no network.

    python -m benchmarks.device_check --out DIR            # the whole check, < 8 min on an H100
    python -m benchmarks.device_check --out DIR --smoke    # tiny sizes; on CPU in `make test`

It runs on the machine's own jax and torch. The few packages such a machine lacks
(ml_collections, tensorflow_datasets, grain, ...) travel as wheels: `make device-wheels`
downloads those listed in `benchmarks/device_wheels.txt` (about 45 MB) into `.whl/`, and
the machine installs them without network (README, "Accelerators").

Sections, each recorded even when another fails (``SECTIONS``, in order):

1. ``environment``: devices, platform and package versions;
2. ``parity``, ``cmx_parity``, ``sagate_parity``, ``vfusenet_parity``: each official
   fixture (tests/fixtures/golden_*) on this device, float32 at highest matmul
   precision: rel-L2 of every output and gradient against the official ones, with the
   CPU tolerances, and bfloat16 argmax agreement;
3. ``training``: the demo recipe (configs/demo.py) trained for 300 steps: images/s and
   the final mIoU;
4. ``benchmarks``: ASANet-tiny at 256x256, ours against the PyTorch baseline in its best
   mode (AMP, channels_last, torch.compile), one process per case (benchmarks/run.py),
   images/s and peak device memory: inference at batch 1, 8, 64 and 256 (ours in float32
   and bfloat16), training steps at batch 8, 32 and 64 (ours in bfloat16);
   ``cmx_benchmarks``: the same for CMX-B2 at batch 8;
5. ``scene``: whole-scene prediction (benchmarks/scene.py): windows/s and km²/hour of
   the scene predictor before batching, ours at several batch sizes, our model alone,
   and the PyTorch baseline alone, on a 3581x3581 scene (100 windows of 512);
6. ``profile``: op-level device times of our bfloat16 training step and inference from a
   ``jax.profiler`` trace;
7. ``models``: the paper's table (benchmarks/models.py) at batch 8, as far as the budget
   goes.

Writes into DIR: ``check.json`` (everything), ``check.md`` (the summary), ``gpu.json`` and
``gpu.md`` (the benchmark table in benchmarks/run.py's format, to commit under
benchmarks/results/; ``gpu_cmx-b2.*`` for CMX), ``models_gpu.json`` / ``.md``,
``log.txt``. Benchmark cases that would start after ``--budget`` seconds are listed as
not run rather than dropped. Exit status 1 if a section failed.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import importlib.metadata
import json
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

from benchmarks import models, run
from tests.support import golden

SECTIONS = (
    "environment",
    "parity",
    "cmx_parity",
    "sagate_parity",
    "vfusenet_parity",
    "training",
    "benchmarks",
    "cmx_benchmarks",
    "scene",
    "profile",
    "models",
)

PACKAGES = (
    "jax",
    "jaxlib",
    "jax-cuda12-plugin",
    "jax-cuda13-plugin",
    "libtpu",
    "flax",
    "optax",
    "orbax-checkpoint",
    "numpy",
    "ml-collections",
    "tensorflow-datasets",
    "grain",
    "torch",
)
FULL = {
    "arch": "tiny",
    "size": 256,
    "cases": [
        *[f"jax:infer:{p}:{b}" for b in (1, 8, 64, 256) for p in ("bf16", "fp32")],
        *[f"torch:infer:amp:{b}" for b in (1, 8, 64, 256)],
        *[
            f"{f}:train:{p}:{b}"
            for b in (8, 32, 64)
            for f, p in (("jax", "bf16"), ("torch", "amp"))
        ],
    ],
    "repeats": 5,
    # CMX-B2, as the official recipe runs it (batch 8, float32) and in bfloat16 / AMP.
    "cmx": {
        "arch": "cmx-b2",
        "cases": [
            f"{f}:{mode}:{p}:8"
            for mode in ("infer", "train")
            for f, p in (("jax", "fp32"), ("jax", "bf16"), ("torch", "fp32"), ("torch", "amp"))
        ],
    },
    # The paper's table (benchmarks/models.py), at batch 8, as far as the budget goes.
    "models": {
        "models": ["tiny", "cmx-b2", "sagate-r101", "vfusenet-vgg16", "upernet-optical"],
        "size": 256,
        "cases": ["jax:infer:fp32:8", "jax:infer:bf16:8", "jax:train:bf16:8"],
    },
    "train_steps": 300,
    "profile_batches": {"train": 32, "infer": 64},
    "scene": {
        "arch": "tiny",
        "side": 512 + 9 * 341,
        "cases": ["loop", "model:8", "ours:1", "ours:8", "ours:32", "torch-amp:8", "torch-amp:32"],
        "budget_s": 150,
    },
}
SMOKE = {
    # The cheapest models to compile: the smoke run checks the code, not the models. Each
    # framework and each mode once: our training step in `cases`, our inference in
    # `models` and `scene`, PyTorch's in `cmx` (every case is a process of its own).
    "arch": "micro-sum",
    "size": 64,
    "cases": ["jax:train:bf16:2"],
    "repeats": 1,
    "cmx": {"arch": "cmx-micro", "cases": ["torch:infer:amp:1"]},
    "models": {"models": ["vfusenet-micro"], "size": 64, "cases": ["jax:infer:fp32:1"]},
    # configs/demo.py:runlocal as it is: `make demo`'s programs, which the notebook's
    # test compiles too (the compilation cache serves whichever runs second).
    "train_steps": None,
    "profile_batches": {"train": 2, "infer": 2},
    "scene": {"arch": "micro-sum", "side": 512 + 341, "cases": ["ours:2"], "budget_s": 300},
}


class Log:
    """Print with elapsed time, and keep a copy for log.txt."""

    def __init__(self, path: pathlib.Path):
        self.path, self.start = path, time.perf_counter()

    def __call__(self, message: str) -> None:
        line = f"[{time.perf_counter() - self.start:6.1f}s] {message}"
        print(line, flush=True)
        with self.path.open("a") as f:
            f.write(line + "\n")


def environment() -> dict:
    import jax

    versions = {}
    for name in PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    smi = None
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
    return {
        "platform": jax.default_backend(),
        "devices": [f"{d.platform}:{d.id} {d.device_kind}" for d in jax.devices()],
        "process_count": jax.process_count(),
        "python": platform.python_version(),
        "versions": versions,
        "nvidia_smi": smi.stdout.strip() if smi and smi.returncode == 0 else None,
    }


def parity(fixture: golden.Fixture = golden.ASANET) -> dict:
    """A golden fixture under config.model.kernels='auto' (XLA's own ops off CPU)."""
    return golden.full_report("auto", fixture)


def training(steps: int | None, work: pathlib.Path, log: Log) -> dict:
    """The demo recipe for `steps` (None: its runlocal variant)."""
    import jax

    from asanet_jax.train import recipe, trainer

    config = recipe.demo_config(None if steps else "runlocal")
    config.data.data_dir = str(work / "data")
    if steps:
        config.train.steps = steps
        config.train.eval_every = config.train.checkpoint_every = steps
    if jax.default_backend() != "cpu":
        config.model.dtype = "bfloat16"
    log(f"training: demo recipe, {config.train.steps} steps of batch {config.train.batch_size}")
    start = time.perf_counter()
    result = trainer.train(config, work / "run")
    run_info = json.loads((work / "run" / "run.json").read_text())
    return {
        "steps": config.train.steps,
        "batch_size": config.train.batch_size,
        "dtype": config.model.dtype,
        "images_per_s": run_info["images_per_s"],
        "seconds_total": time.perf_counter() - start,
        "mIoU": result["mIoU"],
        "OA": result["OA"],
    }


def benchmarks(settings: dict, deadline: float, log: Log, model: dict | None = None) -> dict:
    """`settings`' cases of its model, or of `model` (``{"arch", "cases"}``) at its size."""
    model = model or settings
    results, not_run = run.run_in_subprocesses(
        model["cases"],
        settings["repeats"],
        model["arch"],
        settings["size"],
        deadline=deadline,
        log=log,
    )
    return {"results": results, "not_run": not_run}


def scene_speed(settings: dict, log: Log) -> dict:
    from benchmarks import scene

    s = settings["scene"]
    deadline = time.perf_counter() + s["budget_s"]
    results, not_run = scene.run_cases(s["cases"], s["side"], s["arch"], deadline, log)
    return {"side": s["side"], "model": s["arch"], "results": results, "not_run": not_run}


def profile(settings: dict, work: pathlib.Path) -> dict:
    """Top device ops by time in one traced bfloat16 step of each program."""
    import jax

    out = {}
    for mode, batch in settings["profile_batches"].items():
        step = run.jax_step(mode, "bf16", batch, settings["arch"], settings["size"])
        step()  # compile and warm up outside the trace
        trace_dir = work / f"trace_{mode}"
        with jax.profiler.trace(str(trace_dir)):
            step()
        out[mode] = {"batch": batch, **top_ops(trace_dir)}
    return out


def top_ops(trace_dir: pathlib.Path, count: int = 25) -> dict:
    """Device time per HLO op from the trace's XSpace: accelerator planes' op events, or
    on CPU the host events that carry an `hlo_op` stat."""
    from jax.profiler import ProfileData

    files = glob.glob(str(trace_dir / "**" / "*.xplane.pb"), recursive=True)
    data = ProfileData.from_file(max(files, key=lambda f: pathlib.Path(f).stat().st_mtime))
    totals: dict[str, list] = {}
    for plane in data.planes:
        on_device = plane.name.startswith("/device:")
        for line in plane.lines:
            if on_device and line.name not in ("XLA Ops", "Ops"):
                continue
            for event in line.events:
                stats = dict(event.stats)
                if not on_device and "hlo_op" not in stats:
                    continue
                name = str(stats.get("hlo_op", event.name))
                entry = totals.setdefault(name, [0.0, 0, str(stats.get("tf_op", ""))[:120]])
                entry[0] += event.duration_ns / 1e6
                entry[1] += 1
    total_ms = sum(v[0] for v in totals.values())
    ranked = sorted(totals.items(), key=lambda kv: -kv[1][0])[:count]
    return {
        "total_op_ms": total_ms,
        "top": [
            {"op": k, "ms": round(v[0], 4), "calls": v[1], "share": v[0] / total_ms, "source": v[2]}
            for k, v in ranked
        ],
        "planes": [p.name for p in data.planes],
    }


def summary(report: dict) -> str:
    env = report.get("environment", {})
    lines = [
        "# Accelerator check",
        "",
        f"Devices: {', '.join(env.get('devices', []))}; versions: "
        + ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items()),
        "",
    ]
    for section, model in (
        ("parity", "ASANet"),
        ("cmx_parity", "CMX"),
        ("sagate_parity", "SA-Gate"),
        ("vfusenet_parity", "vFuseNet"),
    ):
        p = report.get(section)
        if not (isinstance(p, dict) and "passed" in p):
            continue
        lines += [
            f"## Parity of {model} with the official model (float32, highest precision)",
            "",
            f"- worst output rel-L2 {p['worst_output']:.2e} (tolerance {golden.OUTPUT_TOL:g})",
            f"- worst gradient rel-L2 {p['worst_gradient']['rel_l2']:.2e} "
            f"({p['worst_gradient']['name']}; tolerance {p['grad_tol']:g}); all together "
            f"{p['global_gradient']:.2e}",
            f"- float32 pooling ties reversed (tests/support/ties.py): {p['ties']}",
            f"- loss relative errors {max(p['losses'].values()):.1e} "
            f"(tolerance {golden.LOSS_TOL:g})",
            *(
                f"- bfloat16 argmax agreement on {name}: {b['overall']:.4f} overall, "
                f"{b['confident']:.5f} on confident pixels"
                for name, b in p["bfloat16"].items()
            ),
            f"- passed: {p['passed']}",
            "",
        ]
    t = report.get("training")
    if isinstance(t, dict) and "mIoU" in t:
        lines += [
            "## Demo training",
            "",
            f"{t['steps']} steps of batch {t['batch_size']} in {t['dtype']}: "
            f"{t['images_per_s']} images/s, final mIoU {t['mIoU']:.2f} (OA {t['OA']:.2f}); "
            f"{t['seconds_total']:.0f} s with data, compilation and evaluation.",
            "",
        ]
    for section in ("benchmarks", "cmx_benchmarks"):
        b = report.get(section)
        if isinstance(b, dict) and b.get("results"):
            lines += ["## Speed", "", run.table(b["results"], benchmark_env(report)), ""]
            if b["not_run"]:
                lines += ["Not run: " + "; ".join(b["not_run"]), ""]
    s = report.get("scene")
    if isinstance(s, dict) and s.get("results"):
        from benchmarks import scene

        lines += ["## Whole scenes", ""]
        lines += [scene.table(s["results"], benchmark_env(report), s["side"], s["model"]), ""]
        if s["not_run"]:
            lines += ["Not run: " + "; ".join(s["not_run"]), ""]
    m = report.get("models")
    if isinstance(m, dict) and m.get("rows"):
        lines += [
            "## The paper's models",
            "",
            models.table(m["rows"], benchmark_env(report), m["size"]),
            "",
        ]
    for name, error in report.get("errors", {}).items():
        lines += [f"## {name}: FAILED", "", "```", error[-3000:], "```", ""]
    return "\n".join(lines)


def model_table(settings: dict, deadline: float, log) -> dict:
    m = settings["models"]
    rows = models.measure(m["models"], m["size"], settings["repeats"], m["cases"], deadline, log)
    return {"size": m["size"], "rows": rows}


def benchmark_env(report: dict) -> dict:
    """The environment block of benchmarks/run.py's result files."""
    env = report["environment"]
    versions = env["versions"]
    return {
        "cpu": platform.processor() or platform.machine(),
        "cpu_cores": __import__("os").cpu_count(),
        "accelerator": env["devices"][0].split(" ", 1)[1] if env["platform"] != "cpu" else None,
        "python": env["python"],
        "jax": versions.get("jax"),
        "flax": versions.get("flax"),
        "torch": versions.get("torch"),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder for the results (created)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, for CPU tests")
    p.add_argument("--budget", type=float, default=420, help="seconds before benchmark cases stop")
    p.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help="comma-separated subset to run",
    )
    args = p.parse_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = Log(out / "log.txt")
    settings = SMOKE if args.smoke else FULL
    deadline = time.perf_counter() + args.budget
    report: dict = {"settings": {**settings, "smoke": args.smoke}, "errors": {}}
    wanted = args.sections.split(",")
    with tempfile.TemporaryDirectory(prefix="asanet_device_check_") as tmp:
        work = pathlib.Path(tmp)
        sections = {
            "environment": environment,
            "parity": parity,
            "cmx_parity": lambda: parity(golden.CMX),
            "sagate_parity": lambda: parity(golden.SAGATE),
            "vfusenet_parity": lambda: parity(golden.VFUSENET),
            "models": lambda: model_table(settings, deadline, log),
            "training": lambda: training(settings["train_steps"], work, log),
            "benchmarks": lambda: benchmarks(settings, deadline, log),
            "cmx_benchmarks": lambda: benchmarks(settings, deadline, log, settings["cmx"]),
            "scene": lambda: scene_speed(settings, log),
            "profile": lambda: profile(settings, work),
        }
        for name in wanted:
            log(f"{name} ...")
            try:
                report[name] = sections[name]()
            except Exception:
                report["errors"][name] = traceback.format_exc()
                log(f"{name} FAILED:\n{report['errors'][name]}")
            else:
                log(f"{name} done")
            (out / "check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    for section, arch in (
        ("benchmarks", "tiny"),  # ASANet's table keeps its name, gpu.json / gpu.md
        ("cmx_benchmarks", settings["cmx"]["arch"]),
    ):
        if isinstance(report.get(section), dict) and "environment" in report:
            doc = {"environment": benchmark_env(report), "results": report[section]["results"]}
            name = run.results_name("gpu", arch)
            (out / f"{name}.json").write_text(json.dumps(doc, indent=2) + "\n")
            (out / f"{name}.md").write_text(run.table(doc["results"], doc["environment"]))
    if isinstance(report.get("models"), dict) and "environment" in report:
        env, m = benchmark_env(report), report["models"]
        doc = {"environment": env, "rows": m["rows"]}
        (out / "models_gpu.json").write_text(json.dumps(doc, indent=2) + "\n")
        (out / "models_gpu.md").write_text(models.table(m["rows"], env, m["size"]))
    (out / "check.md").write_text(summary(report))
    print(summary(report))
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
