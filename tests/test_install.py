"""The model, the converter and whole-image inference need only the package's core
dependencies (jax, flax, optax, orbax, numpy, ml_collections, safetensors), as on an
accelerator machine with `pip install --no-deps asanet-jax`.

The test builds a site-packages folder that holds exactly those distributions and what
they themselves require (links to their installed files, dist-info included), runs a
Python that sees only it, the standard library and this checkout's package, and there
converts an official checkpoint (.safetensors), loads the model directory and runs
whole-image inference against the official outputs.
"""

import importlib.metadata
import json
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
from conftest import GOLDEN
from packaging.requirements import Requirement

REPO = pathlib.Path(__file__).resolve().parents[1]
CORE = {"jax", "flax", "optax", "orbax-checkpoint", "numpy", "ml-collections", "safetensors"}


def _name(dist: str) -> str:
    return dist.lower().replace("_", "-")


def core_requirements() -> set[str]:
    """asanet-jax's requirements outside any extra, from its installed metadata."""
    reqs = [Requirement(r) for r in importlib.metadata.requires("asanet-jax")]
    return {_name(r.name) for r in reqs if r.marker is None or "extra" not in str(r.marker)}


def closure(names: set[str]) -> set[str]:
    """The distributions `names` need, transitively (extras excluded, markers evaluated)."""
    seen, todo = set(), [_name(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue  # an optional platform package that is not installed here
        for raw in requires:
            req = Requirement(raw)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            todo.append(_name(req.name))
    return seen


def site_with_only(dists: set[str], target: pathlib.Path) -> list[str]:
    """Link every installed file of `dists` into `target`, laid out as in site-packages.

    Returns the distributions linked (those of `dists` installed here)."""
    linked = []
    for dist in importlib.metadata.distributions():
        if _name(dist.metadata["Name"]) not in dists or dist.files is None:
            continue
        linked.append(_name(dist.metadata["Name"]))
        for f in dist.files:
            if f.parts[0] == ".." or "__pycache__" in f.parts:
                continue  # scripts outside site-packages, and bytecode
            dest = target / f
            dest.parent.mkdir(parents=True, exist_ok=True)
            if not dest.exists():
                dest.symlink_to(pathlib.Path(dist.locate_file(f)).resolve())
    return sorted(linked)


CHILD = textwrap.dedent(
    """
    import importlib.metadata, json, sys

    import jax
    import numpy as np

    jax.config.update("jax_default_matmul_precision", "highest")
    from asanet_jax import checkpointing
    from asanet_jax.predict.predictor import Predictor
    from asanet_jax.convert.cli import convert_main

    source, out, io_path = sys.argv[1:4]
    assert convert_main(["--torch_checkpoint", source, "--output", out]) == 0
    model, _, _ = checkpointing.load_model_dir(out)
    io = np.load(io_path)
    x = np.ascontiguousarray(io["s96x136.input"].transpose(0, 2, 3, 1))
    logits = np.asarray(Predictor(model)(x[..., :3], x[..., 3:]))
    ref = io["s96x136.logits"].transpose(0, 2, 3, 1)
    rel = float(np.linalg.norm(logits - ref) / np.linalg.norm(ref))
    dists = sorted(d.metadata["Name"] for d in importlib.metadata.distributions())
    print(json.dumps({"rel_l2": rel, "distributions": dists, "path": sys.path}))
    """
)


def test_core_dependencies_are_the_model_only_set():
    assert core_requirements() == CORE


def test_convert_and_infer_with_only_the_core_dependencies(tmp_path, golden_state):
    from safetensors.numpy import save_file

    source = tmp_path / "official.safetensors"
    save_file({k: np.array(v, order="C") for k, v in golden_state.items()}, str(source))
    needed = closure(CORE)
    for heavy in ("torch", "tensorflow", "tensorflow-datasets", "grain", "rasterio"):
        assert heavy not in needed, heavy  # the check would be void otherwise
    site = tmp_path / "site-packages"
    linked = site_with_only(needed, site)
    assert set(CORE) <= set(linked)
    # -S: no site-packages of this interpreter; only the folder above, the standard
    # library and this checkout (for asanet_jax itself, as `pip install --no-deps`).
    env = {"PYTHONPATH": f"{site}:{REPO}", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run(
        [
            sys.executable,
            "-S",
            "-c",
            CHILD,
            str(source),
            str(tmp_path / "model"),
            str(GOLDEN / "io.npz"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["rel_l2"] <= 1e-4, report
    seen = {_name(d) for d in report["distributions"]} - {"asanet-jax"}
    assert seen == set(linked), seen ^ set(linked)  # nothing else was importable
    assert (tmp_path / "model" / "model.json").is_file()


PROGRAMS = ("train", "eval", "predict", "convert", "export", "build-dataset")


def test_the_wheel_installs_the_programs_the_configs_and_the_builders(tmp_path):
    """What `pip install asanet-jax` puts in place: a console script per program, the
    training configs and the TFDS builders inside the package."""
    import zipfile

    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(REPO)],
        check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("asanet_jax-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    for program in PROGRAMS:
        module = program.replace("-", "_")
        assert f"asanet-{program} = asanet_jax.commands.{module}:run" in scripts, scripts
    for config in ("pie", "ddhr", "whu", "ablations", "demo", "folder"):
        assert f"asanet_jax/configs/{config}.py" in names
    for builder in ("pie_rgb_sar", "ddhr_sk", "whu_opt_sar", "rgb_sar_folder", "synthetic_rgb_sar"):
        assert any(n.startswith(f"asanet_jax/tfds_builders/{builder}/") for n in names), builder
    assert not any(n.startswith(("tests/", "benchmarks/", "configs/")) for n in names)


def test_the_programs_find_the_installed_configs_from_any_folder(tmp_path):
    """`asanet-train --config configs/demo.py:...` outside a checkout reads the config
    installed with the package (this one stops at its unknown variant)."""
    bin_dir = pathlib.Path(sys.executable).parent
    for program in PROGRAMS:
        assert (bin_dir / f"asanet-{program}").is_file(), program
    proc = subprocess.run(
        [str(bin_dir / "asanet-train"), "--config", "configs/demo.py:bogus"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "configs/demo.py: unknown variant 'bogus'" in proc.stderr.strip().splitlines()[-1]
    proc = subprocess.run(
        [str(bin_dir / "asanet-train"), "--config", "configs/nothing.py"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert proc.stderr.strip().splitlines()[-1] == "error: configs/nothing.py: no such config file"
    # --help describes the program and lists its flags, whichever file started it.
    for started in ([bin_dir / "asanet-predict"], [sys.executable, REPO / "scripts/predict.py"]):
        proc = subprocess.run([*map(str, started), "--help"], capture_output=True, text=True)
        assert "Label whole optical + SAR GeoTIFF scenes" in proc.stdout, proc.stdout[-2000:]
        assert "--checkpoint: Model directory" in proc.stdout, proc.stdout[-2000:]
