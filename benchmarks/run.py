"""Side-by-side speed of ASANet-tiny and CMX-B2 at 256x256: ours (JAX) against PyTorch.

    make bench                                   # full suite, this machine, both models
    python -m benchmarks.run --infer-batches 1,8 --train-batches 8 --repeats 3
    python -m benchmarks.run --model cmx-b2      # CMX-B2 against benchmarks/torch_cmx.py

Every case runs in a fresh process, so peak memory is its own: resident set size on
CPU, the accelerator's peak allocation on a GPU. Each case compiles ahead of time
(JAX: ``jit(...).lower().compile()``; PyTorch on GPU: ``torch.compile``), warms up,
blocks until ready, and reports the median of repeated runs. Results go to
``benchmarks/results/<platform>.json`` and ``.md`` (ASANet-tiny) and
``<platform>_<model>.json`` / ``.md`` for the other models.

Cases: inference at batch 1, 8 and 64 and one training step (forward, backward,
AdamW update) at batch 8 and 32. Ours in float32 and bfloat16 compute; PyTorch in
float32 and AMP (bfloat16 autocast on CPU, float16 with a loss scaler on GPU), in
channels_last memory format. Both models are randomly initialised with the same
architecture (ASANet-tiny 82,904,764 parameters, CMX-B2 66,563,982); speed does not depend
on the weights. The PyTorch models (benchmarks/torch_asanet.py, torch_cmx.py) are checked
against the official golden fixtures as ours are.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import time

SIZE = 256
NUM_CLASSES = 6
RESULTS = pathlib.Path(__file__).parent / "results"
# Models both frameworks build, as config.model fields: the paper's ASANet and CMX, and
# the golden fixtures' sizes (smoke runs).
MODELS = {
    "tiny": {},
    "micro": dict(
        depths=(1, 1, 2, 1), channels=(16, 32, 64, 128), decoder_channels=32, aux_channels=16
    ),
    "cmx-b2": {"architecture": "cmx"},
    "cmx-micro": dict(
        architecture="cmx",
        embed_dims=(16, 32, 64, 128),
        num_heads=(1, 2, 2, 4),
        depths=(1, 1, 2, 1),
        decoder_channels=32,
    ),
}
# The other models of the paper's table (benchmarks/models.py), ours only.
MODELS.update(
    {
        "sagate-r101": {"architecture": "sagate"},
        "vfusenet-vgg16": {"architecture": "vfusenet"},
        "upernet-optical": dict(modalities="optical", sfm=False, fusion="none"),
        "upernet-sar": dict(modalities="sar", sfm=False, fusion="none"),
        "sagate-micro": dict(
            architecture="sagate",
            layers=(1, 1, 1, 1),
            decoder_channels=64,
            c1_channels=16,
            aux_channels=32,
        ),
        "vfusenet-micro": dict(architecture="vfusenet", depth=11),
        # The accelerator check's smoke run (benchmarks/device_check.py --smoke, on a CPU
        # in the tests): the micro ASANet with its streams summed and no SFM, which
        # compiles in half the time.
        "micro-sum": dict(MODELS["micro"], fusion="sum", sfm=False),
    }
)
TITLES = {
    "tiny": "ASANet-tiny",
    "micro": "ASANet-micro",
    "cmx-b2": "CMX-B2",
    "sagate-r101": "SA-Gate-R101",
    "vfusenet-vgg16": "vFuseNet-VGG16",
    "upernet-optical": "UPerNet (optical only)",
    "upernet-sar": "UPerNet (SAR only)",
}


def title(arch: str) -> str:
    return TITLES.get(arch, arch)


def results_name(platform_name: str, arch: str) -> str:
    """'cpu' / 'gpu' for ASANet-tiny (the files the README quotes), else 'cpu_cmx-b2'..."""
    return platform_name if arch == "tiny" else f"{platform_name}_{arch}"


def torch_model(arch: str):
    """(the PyTorch baseline of `arch`, its training loss)."""
    fields = dict(MODELS[arch])
    if fields.pop("architecture", "asanet") == "cmx":
        from benchmarks.torch_cmx import TorchCMX, loss

        return TorchCMX(**fields), loss
    from benchmarks.torch_asanet import TorchASANet, loss

    return TorchASANet(**fields), loss


def peak_rss_mb() -> float:
    """This process's peak resident set. Linux's VmHWM belongs to the process image, while
    getrusage's ru_maxrss survives exec and so reports the parent's peak if larger."""
    try:
        for line in pathlib.Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn, repeats: int) -> list[float]:
    """Seconds of each of `repeats` calls of `fn`."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def jax_step(mode: str, precision: str, batch: int, arch: str, size: int):
    """A function running one compiled, blocking inference or training step of ours."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx

    from asanet_jax.losses import segmentation_loss
    from asanet_jax.models import segmentor

    dtype = {"fp32": "float32", "bf16": "bfloat16"}[precision]
    model = segmentor.build({**MODELS[arch], "dtype": dtype}, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    rgb = jnp.asarray(rng.normal(size=(batch, size, size, 3)), jnp.float32)
    sar = jnp.asarray(rng.normal(size=(batch, size, size, 3)), jnp.float32)
    if mode == "infer":
        model.eval()
        graphdef, state = nnx.split(model)

        def forward(state, rgb, sar):
            return nnx.merge(graphdef, state)(rgb, sar)["logits"]

        compiled = jax.jit(forward).lower(state, rgb, sar).compile()

        def step():
            jax.block_until_ready(compiled(state, rgb, sar))

    else:
        labels = jnp.asarray(rng.integers(0, NUM_CLASSES, size=(batch, size, size)), jnp.int32)
        model.train()
        tx = optax.adamw(1e-4, b1=0.9, b2=0.999, weight_decay=0.05)
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        opt_state = tx.init(params)

        def train_step(params, rest, opt_state, rgb, sar, labels):
            model = nnx.merge(graphdef, params, rest)

            def loss_fn(m):
                return segmentation_loss(m(rgb, sar), labels)[0]

            loss, grads = nnx.value_and_grad(loss_fn)(model)  # w.r.t. nnx.Param
            updates, opt_state = tx.update(grads, opt_state, params)
            _, _, rest = nnx.split(model, nnx.Param, ...)  # BN statistics, RNG counts
            return optax.apply_updates(params, updates), rest, opt_state, loss

        compiled = (
            jax.jit(train_step, donate_argnums=(0, 1, 2))
            .lower(params, rest, opt_state, rgb, sar, labels)
            .compile()
        )
        carry = [params, rest, opt_state]

        def step():
            p, r, o, loss = compiled(*carry, rgb, sar, labels)
            carry[:] = [p, r, o]
            jax.block_until_ready(loss)

    step.compiled = compiled  # for its HLO (benchmarks/cpu_profile.py)
    return step


def run_jax(mode: str, precision: str, batch: int, repeats: int, arch: str, size: int) -> dict:
    import jax

    step = jax_step(mode, precision, batch, arch, size)
    step()  # warm-up
    times = timed(step, repeats)
    device = jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    peak = stats["peak_bytes_in_use"] / 2**20 if stats else peak_rss_mb()
    return {"times_s": times, "peak_memory_mb": peak, "device": device.device_kind}


def torch_step(mode: str, precision: str, batch: int, arch: str, size: int):
    """A function running one inference or training step (AdamW) of the PyTorch baseline,
    synchronised on a GPU; channels_last, and AMP when `precision` is 'amp'."""
    import torch

    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    torch.manual_seed(0)
    model, loss = torch_model(arch)
    model = model.to(dev).to(memory_format=torch.channels_last)
    x = torch.randn(batch, 6, size, size, device=dev).to(memory_format=torch.channels_last)
    amp_dtype = torch.float16 if cuda else torch.bfloat16
    autocast = torch.autocast(dev.type, dtype=amp_dtype, enabled=precision == "amp")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    fwd = torch.compile(model) if cuda else model
    if mode == "infer":
        model.eval()

        def step():
            with torch.inference_mode(), autocast:
                fwd(x)["logits"]
            sync()

        return step
    model.train()
    labels = torch.randint(0, NUM_CLASSES, (batch, size, size), device=dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    scaler = torch.amp.GradScaler(enabled=cuda and precision == "amp")

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast:
            total = loss(fwd(x), labels)
        scaler.scale(total).backward()
        scaler.step(opt)
        scaler.update()
        sync()

    return step


def run_torch(mode: str, precision: str, batch: int, repeats: int, arch: str, size: int) -> dict:
    import torch

    cuda = torch.cuda.is_available()
    step = torch_step(mode, precision, batch, arch, size)
    step()  # warm-up (and compilation on GPU)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = timed(step, repeats)
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_mb()
    name = torch.cuda.get_device_name() if cuda else platform.processor() or "cpu"
    return {"times_s": times, "peak_memory_mb": peak, "device": name}


def run_case(case: str, repeats: int, arch: str = "tiny", size: int = SIZE) -> dict:
    framework, mode, precision, batch = case.split(":")
    fn = run_jax if framework == "jax" else run_torch
    out = fn(mode, precision, int(batch), repeats, arch, size)
    median = statistics.median(out["times_s"])
    return {
        "framework": framework,
        "mode": mode,
        "precision": precision,
        "batch": int(batch),
        "median_s": median,
        "images_per_s": int(batch) / median,
        "model": arch,
        "size": size,
        **out,
    }


def case_processes(
    module: str,
    todo: list[str],
    args: list[str],
    describe,
    deadline: float | None = None,
    log=print,
    env_for=lambda case: None,
) -> tuple[list[dict], list[str]]:
    """Run ``python -m <module> --case CASE <args>`` for each case, each in a fresh
    process (its own peak memory), which prints its result as the last line of JSON.

    Returns (results, not run). A case that fails is logged with its error and counted
    as not run; with a `deadline` (time.perf_counter() value), cases that would start
    after it are not run either. `describe(result)` is the log line's figure;
    `env_for(case)` adds environment variables."""
    results, not_run, start = [], [], time.perf_counter()
    for i, case in enumerate(todo, 1):
        if deadline is not None and time.perf_counter() > deadline:
            not_run.append(f"{case} (time budget spent)")
            continue
        proc = subprocess.run(
            [sys.executable, "-m", module, "--case", case, *args],
            capture_output=True,
            text=True,
            cwd=pathlib.Path(__file__).resolve().parents[1],
            env={**os.environ, **(env_for(case) or {})},
        )
        if proc.returncode != 0:
            log(f"[{i}/{len(todo)}] {case}: FAILED\n{proc.stderr[-2000:]}")
            not_run.append(f"{case} (failed: {proc.stderr.strip().splitlines()[-1:]})")
            continue
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(result)
        elapsed = time.perf_counter() - start
        eta = elapsed / i * (len(todo) - i)
        log(
            f"[{i}/{len(todo)}] {case}: {describe(result)}  "
            f"(elapsed {elapsed:.0f}s, ETA {eta:.0f}s)"
        )
    return results, not_run


def run_in_subprocesses(
    todo: list[str],
    repeats: int,
    arch: str = "tiny",
    size: int = SIZE,
    deadline: float | None = None,
    log=print,
) -> tuple[list[dict], list[str]]:
    """Each inference or training case in a fresh process (``case_processes``)."""
    return case_processes(
        "benchmarks.run",
        todo,
        ["--repeats", str(repeats), "--model", arch, "--size", str(size)],
        lambda r: f"{r['images_per_s']:.2f} images/s, peak {r['peak_memory_mb']:.0f} MB",
        deadline,
        log,
    )


def cases(infer: list[int], train: list[int]) -> list[str]:
    out = []
    for mode, batches in (("infer", infer), ("train", train)):
        for batch in batches:
            for framework, precisions in (("jax", ("fp32", "bf16")), ("torch", ("fp32", "amp"))):
                out += [f"{framework}:{mode}:{p}:{batch}" for p in precisions]
    return out


def environment() -> dict:
    import flax
    import jax
    import torch

    with open("/proc/cpuinfo") as f:
        models = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    cpu = models[0] if models else platform.processor()
    return {
        "cpu": cpu,
        "cpu_cores": __import__("os").cpu_count(),
        "accelerator": jax.devices()[0].device_kind if jax.default_backend() != "cpu" else None,
        "python": platform.python_version(),
        "jax": jax.__version__,
        "flax": flax.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def table(results: list[dict], env: dict) -> str:
    by_key = {(r["mode"], r["batch"], r["framework"], r["precision"]): r for r in results}
    arch, size = (results[0]["model"], results[0]["size"]) if results else ("tiny", SIZE)
    lines = [
        f"{title(arch)}, {size}x{size}, images/s (median) and peak memory (MB). "
        f"Machine: {env['accelerator'] or env['cpu']} ({env['cpu_cores']} CPU cores); "
        f"jax {env['jax']}, flax {env['flax']}, torch {env['torch']}.",
        "",
        "| mode | batch | ours fp32 | ours bf16 | torch fp32 | torch AMP "
        "| fp32 ratio | bf16/AMP ratio |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for mode, batch in sorted({(r["mode"], r["batch"]) for r in results}):
        row = [
            by_key.get((mode, batch, f, p))
            for f, p in (("jax", "fp32"), ("jax", "bf16"), ("torch", "fp32"), ("torch", "amp"))
        ]
        cells = [f"{r['images_per_s']:.2f} ({r['peak_memory_mb']:.0f})" if r else "-" for r in row]
        ratio = lambda a, b: f"{a['images_per_s'] / b['images_per_s']:.2f}x" if a and b else "-"  # noqa: E731
        lines.append(
            f"| {mode} | {batch} | "
            + " | ".join(cells)
            + f" | {ratio(row[0], row[2])} | {ratio(row[1], row[3])} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--infer-batches", default="1,8,64", help="comma-separated")
    p.add_argument(
        "--train-batches",
        help="comma-separated; default 8,32 on a GPU and 8 on a CPU, where our batch-8 "
        "step already peaks near 11 GB",
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--only", help="comma-separated substrings a case must contain, e.g. infer,jax")
    p.add_argument("--model", default="tiny", choices=sorted(MODELS))
    p.add_argument("--size", type=int, default=SIZE)
    p.add_argument("--case", help=argparse.SUPPRESS)  # one case, in this process
    args = p.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.repeats, args.model, args.size)))
        return
    env = environment()
    if args.train_batches is None:
        args.train_batches = "8,32" if env["accelerator"] else "8"
    infer, train = (
        [int(b) for b in a.split(",") if b] for a in (args.infer_batches, args.train_batches)
    )
    todo = [
        c for c in cases(infer, train) if not args.only or all(s in c for s in args.only.split(","))
    ]
    results, _ = run_in_subprocesses(todo, args.repeats, args.model, args.size)
    name = results_name("gpu" if env["accelerator"] else "cpu", args.model)
    RESULTS.mkdir(exist_ok=True)
    previous = RESULTS / f"{name}.json"
    if args.only and previous.exists():
        # A partial re-run replaces its own cases and keeps the others.
        key = lambda r: (r["framework"], r["mode"], r["precision"], r["batch"])  # noqa: E731
        fresh = {key(r) for r in results}
        kept = [r for r in json.loads(previous.read_text())["results"] if key(r) not in fresh]
        results = sorted(kept + results, key=lambda r: (r["mode"], r["batch"], r["framework"]))
    (RESULTS / f"{name}.json").write_text(
        json.dumps({"environment": env, "results": results}, indent=2) + "\n"
    )
    (RESULTS / f"{name}.md").write_text(table(results, env))
    print(table(results, env))
    print(f"wrote {RESULTS / name}.json and .md")


if __name__ == "__main__":
    main()
