"""Careless, hostile and unlucky input through the real scripts, as a user runs them.

Each case runs a script in a subprocess and asserts: the exit status; one error line
that names the path or value (no traceback); nothing partial left behind; and the
user's files untouched (checksums before and after). Full disks and read-only folders
are real: a small or read-only tmpfs mounted in a private mount namespace.
"""

import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import GOLDEN
from micro import micro_model

from asanet_jax import checkpointing
from tests.support import fake_sources

REPO = pathlib.Path(__file__).resolve().parents[1]
CHECKPOINT = GOLDEN / "checkpoint.pth"


def can_mount() -> bool:
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
        capture_output=True,
    )
    return probe.returncode == 0


MOUNTS = pytest.mark.skipif(
    shutil.which("unshare") is None or not can_mount(),
    reason="needs `unshare -rm` to mount a private tmpfs (a full or read-only disk)",
)


def script(name: str, *args, tmpfs: tuple | None = None, cwd=REPO):
    """Run scripts/<name>; with tmpfs=(folder, options[, ro]) inside a private mount
    namespace where `folder` is a fresh tmpfs (made read-only after setup when asked);
    the folder's listing just before the namespace ends is returned too."""
    cmd = [sys.executable, str(REPO / "scripts" / name), *map(str, args)]
    listing = None
    if tmpfs is not None:
        folder, options, *ro = tmpfs
        folder.mkdir(parents=True, exist_ok=True)
        listing_file = folder.parent / f"{folder.name}.listing"
        shell = (
            f"mount -t tmpfs -o {options} tmpfs {folder} && "
            + (f"mount -o remount,ro {folder} && " if ro else "")
            + '"$@"; rc=$?; ls -A '
            + f"{folder} > {listing_file}; exit $rc"
        )
        cmd = ["unshare", "-rm", "sh", "-c", shell, "sh", *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    if tmpfs is not None:
        listing = listing_file.read_text().split()
    return proc, listing


def assert_one_line_error(proc, *needles, status=1):
    err = proc.stderr.strip()
    assert proc.returncode == status, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in err, err[-3000:]
    last = err.splitlines()[-1]
    assert last.startswith("error: "), err[-2000:]
    for needle in needles:
        assert str(needle) in last, (needle, last)


def checksums(folder: pathlib.Path) -> dict:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "micro"
    checkpointing.save_model(path, micro_model(6, seed=3))
    return path


def convert(*args, **kwargs):
    return script("convert_torch_weights.py", "--torch_checkpoint", *args, **kwargs)


# --- data loss ---------------------------------------------------------------------------


def test_overwrite_never_deletes_a_folder_that_is_not_a_model_directory(tmp_path):
    notes = tmp_path / "work"
    notes.mkdir()
    (notes / "notes.txt").write_text("three months of field notes")
    (notes / "runs").mkdir()
    before = checksums(notes)
    proc, _ = convert(CHECKPOINT, "--output", notes, "--overwrite")
    assert_one_line_error(proc, notes, "not a model directory", "notes.txt")
    assert checksums(notes) == before
    # `--output .` from inside the folder, as the report had it.
    proc, _ = convert(CHECKPOINT, "--output", ".", "--overwrite", cwd=notes)
    assert_one_line_error(proc, "not a model directory")
    assert checksums(notes) == before


def test_overwrite_replaces_a_model_directory_and_only_that(tmp_path, model_dir):
    target = tmp_path / "model"
    shutil.copytree(model_dir, target)
    proc, _ = convert(CHECKPOINT, "--output", target, "--overwrite")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "checkpoint.pth" in (target / "model.json").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporaries left
    (target / "mine.txt").write_text("not written by asanet")
    proc, _ = convert(CHECKPOINT, "--output", target, "--overwrite")
    assert_one_line_error(proc, "not a model directory", "mine.txt")


def test_predict_refuses_to_write_over_its_input_or_an_existing_output(tmp_path, model_dir):
    fake_sources.write_geotiff(tmp_path / "opt.tif", np.full((40, 40, 3), 9, np.uint8))
    fake_sources.write_geotiff(tmp_path / "sar.tif", np.full((40, 40), 7, np.uint8))
    (tmp_path / "old.tif").write_bytes(b"yesterday's map")
    common = ["--checkpoint", model_dir, "--dataset", "synthetic_rgb_sar"]
    common += ["--optical", tmp_path / "opt.tif", "--sar", tmp_path / "sar.tif"]
    before = checksums(tmp_path)
    for output, message in (
        (tmp_path / "opt.tif", "this is the input"),
        (tmp_path / "." / "sar.tif", "this is the input"),
        (tmp_path / "old.tif", "already exists and was not written by scene prediction"),
        (tmp_path / "no" / "such" / "out.tif", "does not exist"),
    ):
        proc, _ = script("predict.py", *common, "--output", output)
        assert_one_line_error(proc, output, message)
        assert checksums(tmp_path) == before
    (tmp_path / "link.tif").symlink_to(tmp_path / "opt.tif")
    before = checksums(tmp_path)
    proc, _ = script("predict.py", *common, "--output", tmp_path / "link.tif", "--overwrite")
    assert_one_line_error(proc, "this is the input")
    assert checksums(tmp_path) == before


def scene_files(folder, side=40):
    fake_sources.write_geotiff(folder / "opt.tif", np.full((side, side, 3), 9, np.uint8))
    fake_sources.write_geotiff(folder / "sar.tif", np.full((side, side), 7, np.uint8))


def test_the_summary_is_an_output_like_the_others(tmp_path, model_dir):
    scene_files(tmp_path)
    shutil.copy(tmp_path / "opt.tif", tmp_path / "victim.tif")  # a user's raster
    (tmp_path / "o").mkdir()
    listing = tmp_path / "two.csv"
    listing.write_text("opt.tif,sar.tif,o/s1.tif\nvictim.tif,sar.tif,o/s2.tif\n")
    common = ["--checkpoint", model_dir, "--dataset", "synthetic_rgb_sar", "--window", 64]
    before = checksums(tmp_path)
    proc, _ = script("predict.py", *common, "--scenes", listing, "--summary", "victim.tif",
                     cwd=tmp_path)  # fmt: skip
    assert_one_line_error(proc, "--summary victim.tif", "this is the input")
    assert checksums(tmp_path) == before
    # A user's own predict_summary.json (the default) is not ours to replace.
    one = tmp_path / "one.csv"
    one.write_text("opt.tif,sar.tif,o/s1.tif\nopt.tif,sar.tif,o/s2.tif\n")
    (tmp_path / "o" / "predict_summary.json").write_text('{"mine": 1}\n')
    before = checksums(tmp_path)
    proc, _ = script("predict.py", *common, "--scenes", one)
    assert_one_line_error(proc, "predict_summary.json already exists and was not written")
    assert checksums(tmp_path) == before
    # With --overwrite it is replaced; a summary we wrote is replaced without it.
    proc, _ = script("predict.py", *common, "--scenes", one, "--overwrite")
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc, _ = script("predict.py", *common, "--scenes", one)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert '"labelled": 0' in (tmp_path / "o" / "predict_summary.json").read_text()


def test_convert_overwrite_keeps_what_it_did_not_write(tmp_path, model_dir):
    target = tmp_path / "model"
    shutil.copytree(model_dir, target)
    shutil.copy(CHECKPOINT, target / "weights" / "src.pth")
    (target / "weights" / "notes.txt").write_text("n\n")
    before = checksums(tmp_path)
    proc, _ = convert(target / "weights" / "src.pth", "--output", target, "--overwrite")
    assert_one_line_error(proc, target / "weights" / "src.pth", "the source is inside --output")
    assert checksums(tmp_path) == before
    proc, _ = convert(CHECKPOINT, "--output", target, "--overwrite")
    assert_one_line_error(proc, "not a model directory as written", "weights/notes.txt")
    assert checksums(tmp_path) == before
    # A model directory written before model.json listed its weights' files: orbax's
    # names are told from others.
    (target / "weights" / "src.pth").unlink()
    (target / "weights" / "notes.txt").unlink()
    meta = json.loads((target / "model.json").read_text())
    del meta["weights_files"]
    (target / "model.json").write_text(json.dumps(meta))
    assert checkpointing.not_written_by_save(target) == []
    (target / "weights" / "d" / "notes.txt").write_text("n\n")
    assert checkpointing.not_written_by_save(target) == ["weights/d/notes.txt"]
    # A link to a model directory is named as a link.
    (target / "weights" / "d" / "notes.txt").unlink()
    (tmp_path / "link").symlink_to(target)
    proc, _ = convert(CHECKPOINT, "--output", tmp_path / "link", "--overwrite")
    assert_one_line_error(proc, tmp_path / "link", "is a symbolic link", "give the folder itself")


def test_export_refuses_an_output_inside_its_model_directory(tmp_path, model_dir):
    target = tmp_path / "model"
    shutil.copytree(model_dir, target)
    before = checksums(target)
    for output in (target / "weights" / "_METADATA", target / "model.json", target / "x.pth"):
        proc, _ = script("export_torch_weights.py", "--checkpoint", target, "--output", output,
                         "--overwrite")  # fmt: skip
        assert_one_line_error(proc, output, "is inside the model directory")
        assert checksums(target) == before


def test_training_refuses_files_it_did_not_write_before_step_0(tmp_path):
    demo = str(REPO / "configs" / "demo.py") + ":runlocal"
    work = tmp_path / "w"
    (work / "model").mkdir(parents=True)
    (work / "config.json").write_text('{"mine": 1}\n')
    (work / "model" / "mine.txt").write_text("m\n")
    (work / "checkpoints" / "last").mkdir(parents=True)
    (work / "checkpoints" / "last" / "notes.txt").write_text("n\n")
    before = checksums(work)
    data = f"--config.data.data_dir={tmp_path / 'data'}"
    for extra in ([], ["--config.train.overwrite=True"]):
        proc, _ = script("train.py", "--config", demo, "--workdir", work, data, *extra)
        assert_one_line_error(
            proc, "config.json (not a training config)", "it holds mine.txt",
            "checkpoints/last/notes.txt",
        )  # fmt: skip
        assert checksums(work) == before and sorted(p.name for p in work.iterdir()) == [
            "checkpoints", "config.json", "model",
        ]  # fmt: skip
        assert not (tmp_path / "data").exists()  # refused before the dataset was built


def test_predict_checks_its_numbers_and_folders_before_any_work(tmp_path, model_dir):
    scene_files(tmp_path)
    common = ["--checkpoint", model_dir, "--dataset", "synthetic_rgb_sar"]
    single = [*common, "--optical", tmp_path / "opt.tif", "--sar", tmp_path / "sar.tif"]
    for flag in ("--stride=0", "--batch_size=0", "--window=0", "--prefetch=0"):
        proc, _ = script("predict.py", *single, "--output", tmp_path / "out.tif", flag)
        assert_one_line_error(proc, flag, "expected a positive number")
    # Globs write into a new folder only once every check has passed.
    (tmp_path / "opt2.tif").write_bytes(b"not a raster")
    shutil.copy(tmp_path / "sar.tif", tmp_path / "sar2.tif")
    globs = [*common, "--optical", tmp_path / "opt*.tif", "--sar", tmp_path / "sar*.tif"]
    proc, _ = script("predict.py", *globs, "--output_dir", tmp_path / "maps" / "new")
    assert_one_line_error(proc, tmp_path / "opt2.tif")
    assert not (tmp_path / "maps").exists()


@MOUNTS
def test_predict_and_export_on_full_and_read_only_disks_are_one_line(tmp_path, model_dir):
    rng = np.random.default_rng(0)
    fake_sources.write_geotiff(tmp_path / "opt.tif", rng.integers(0, 255, (256, 256, 3), np.uint8))
    fake_sources.write_geotiff(tmp_path / "sar.tif", rng.integers(0, 255, (256, 256), np.uint8))
    disk = tmp_path / "disk"
    inputs = ["--dataset", "synthetic_rgb_sar", "--window", 64, "--probabilities"]
    inputs += ["--optical", tmp_path / "opt.tif", "--sar", tmp_path / "sar.tif"]
    out = disk / "out.tif"
    proc, listing = script("predict.py", "--checkpoint", model_dir, *inputs, "--output", out,
                           tmpfs=(disk, "size=32k"))  # fmt: skip
    assert_one_line_error(proc, out, "no space left on device")
    assert listing == []
    # A read-only folder is refused before the model is read (this one does not exist).
    proc, listing = script("predict.py", "--checkpoint", tmp_path / "nothing", *inputs,
                           "--output", out, tmpfs=(disk, "size=8m", "ro"))  # fmt: skip
    assert_one_line_error(proc, out, "read-only file system")
    for name in ("m.pth", "m.safetensors"):
        proc, listing = script("export_torch_weights.py", "--checkpoint", model_dir,
                               "--output", disk / name, tmpfs=(disk, "size=64k"))  # fmt: skip
        assert_one_line_error(proc, disk, "no space left on device")
        assert listing == []


# --- non-finite weights -----------------------------------------------------------------


def test_non_finite_weights_are_refused_naming_the_tensors(tmp_path):
    state = torch.load(CHECKPOINT, weights_only=True)
    state["state_dict"]["decode_head.conv_seg.weight"][0, 0] = float("nan")
    state["state_dict"]["backbone.backbone.norm3.bias"][1] = float("inf")
    torch.save(state, tmp_path / "nan.pth")
    proc, _ = convert(tmp_path / "nan.pth", "--output", tmp_path / "out")
    assert_one_line_error(
        proc, "decode_head.conv_seg.weight (1 NaN", "backbone.backbone.norm3.bias (0 NaN and 1 Inf"
    )
    assert not (tmp_path / "out").exists()
    proc, _ = convert(tmp_path / "nan.pth", "--output", tmp_path / "out", "--allow_nonfinite")
    assert proc.returncode == 0, proc.stderr[-2000:]
    # Loading that model directory refuses it too (eval.py here).
    proc, _ = script(
        "eval.py", "--config", REPO / "configs" / "demo.py:runlocal", "--checkpoint",
        tmp_path / "out", f"--config.data.data_dir={tmp_path / 'data'}",
    )  # fmt: skip
    assert_one_line_error(proc, tmp_path / "out", "decode_head/conv_seg/kernel")


def test_float64_weights_are_recorded_and_reported(tmp_path):
    state = torch.load(CHECKPOINT, weights_only=True)
    state["state_dict"] = {
        k: v.double() if v.is_floating_point() else v for k, v in state["state_dict"].items()
    }
    torch.save(state, tmp_path / "f64.pth")
    proc, _ = convert(tmp_path / "f64.pth", "--output", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "stored 361 float64 source tensors as float32" in proc.stdout
    meta = checkpointing.read_metadata(tmp_path / "out")
    assert meta["source"]["dtypes"] == {"float64": 361, "int64": 29}


# --- one line, not a traceback -----------------------------------------------------------


def test_converter_errors_are_one_line(tmp_path, model_dir):
    (tmp_path / "a_file").write_text("x")
    cases = [
        ((tmp_path / "a_file",), "is a file"),
        ((model_dir,), "already exists; --overwrite replaces it"),
    ]
    for output, message in cases:
        proc, _ = convert(CHECKPOINT, "--output", *output)
        assert_one_line_error(proc, output[0], message)
    proc, _ = convert(model_dir, "--output", tmp_path / "x")
    assert_one_line_error(proc, model_dir, "is a folder; expected a checkpoint file")


@MOUNTS
def test_full_and_read_only_disks_are_one_line_and_leave_nothing(tmp_path):
    disk = tmp_path / "disk"
    proc, listing = convert(CHECKPOINT, "--output", disk / "out", tmpfs=(disk, "size=256k"))
    assert_one_line_error(proc, "no space left on device")
    assert listing == []
    proc, listing = convert(CHECKPOINT, "--output", disk / "out", tmpfs=(disk, "size=8m", "ro"))
    assert_one_line_error(proc, disk, "read-only file system")
    assert listing == []
    src = fake_sources.write_pie(tmp_path / "PIE", ["1", "2"], ["3"])
    proc, listing = script(
        "build_dataset.py", "pie_rgb_sar", "--manual_dir", src, "--data_dir", disk / "data",
        tmpfs=(disk, "size=64k"),
    )  # fmt: skip
    assert_one_line_error(proc, "no space left on device")
    assert listing in ([], ["data"]) and not (disk / "data" / "pie_rgb_sar").exists()
    proc, listing = script(
        "build_dataset.py", "pie_rgb_sar", "--manual_dir", src, "--data_dir", disk,
        tmpfs=(disk, "size=8m", "ro"),
    )  # fmt: skip
    assert_one_line_error(proc, disk, "read-only file system")
    proc, listing = script(
        "train.py", "--config", REPO / "configs" / "demo.py:runlocal", "--workdir",
        disk / "run", f"--config.data.data_dir={tmp_path / 'data'}",
        tmpfs=(disk, "size=8m", "ro"),
    )  # fmt: skip
    assert_one_line_error(proc, disk / "run", "read-only file system")


def test_training_refuses_bad_settings_before_writing_anything(tmp_path):
    demo = str(REPO / "configs" / "demo.py") + ":runlocal"
    for flag, message in (
        ("--config.train.stepz=3", "stepz"),
        ("--config.train.batch_size=-2", "config.train.batch_size=-2"),
        ("--config.data.eval_batch_size=0", "config.data.eval_batch_size=0"),
        ("--config.mesh.platform=gpu", "config.mesh.platform='gpu' but JAX"),
        ("--config.model.kernels=fast", "config.model.kernels='fast'"),
        ("--config.optim.lr=nan", "config.optim.lr=nan: expected a finite number"),
        ("--config.optim.lr=0", "config.optim.lr=0.0: expected a positive rate"),
    ):
        run = tmp_path / flag.split("=")[0].rsplit(".", 1)[-1]
        data = f"--config.data.data_dir={tmp_path / 'data'}"
        proc, _ = script("train.py", "--config", demo, "--workdir", run, data, flag)
        assert_one_line_error(proc, message)
        assert not run.exists(), flag  # no config.json, no folder


def test_eval_and_predict_explain_a_model_directory_without_weights(tmp_path, model_dir):
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    shutil.rmtree(broken / "weights")
    proc, _ = script(
        "eval.py", "--config", REPO / "configs" / "demo.py:runlocal", "--checkpoint", broken,
        f"--config.data.data_dir={tmp_path / 'data'}",
    )  # fmt: skip
    assert_one_line_error(proc, broken, "not a model checkpoint")
    fake_sources.write_geotiff(tmp_path / "opt.tif", np.full((1, 1, 3), 9, np.uint8))
    fake_sources.write_geotiff(tmp_path / "sar.tif", np.full((1, 1), 7, np.uint8))
    common = ["--dataset", "synthetic_rgb_sar", "--optical", tmp_path / "opt.tif"]
    common += ["--sar", tmp_path / "sar.tif", "--output", tmp_path / "out.tif"]
    proc, _ = script("predict.py", "--checkpoint", broken, *common)
    assert_one_line_error(proc, broken, "not a model checkpoint")
    proc, _ = script("predict.py", "--checkpoint", model_dir, *common)
    assert_one_line_error(proc, tmp_path / "opt.tif", "1x1 pixels", "at least 32x32")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "opt.tif", "sar.tif"]


# --- datasets ----------------------------------------------------------------------------


def build(*args):
    return script("build_dataset.py", "pie_rgb_sar", *args)


def test_a_rebuild_after_the_sources_changed_is_refused_then_done_on_request(tmp_path):
    src = fake_sources.write_pie(tmp_path / "PIE", ["1", "2", "3", "4", "5"], ["6"])
    data = tmp_path / "data"
    proc, _ = build("--manual_dir", src, "--data_dir", data)
    assert proc.returncode == 0 and "train: 5 examples" in proc.stdout, proc.stderr[-2000:]
    (src / "train.txt").write_text("1\n2\n3\n4\n")  # shortened
    fake_sources.write_geotiff(src / "label" / "2.tif", np.zeros((32, 32), np.uint8))
    proc, _ = build("--manual_dir", src, "--data_dir", data)
    assert_one_line_error(proc, "label changed", "train.txt changed", "--overwrite")
    # Reading it is refused too: stale records are never served as current.
    proc, _ = script(
        "train.py", "--config", REPO / "configs" / "pie.py:runlocal", "--workdir",
        tmp_path / "run", f"--config.data.data_dir={data}",
    )  # fmt: skip
    assert_one_line_error(proc, "since then", "label changed", "--overwrite")
    proc, _ = build("--manual_dir", src, "--data_dir", data, "--overwrite")
    assert proc.returncode == 0 and "train: 4 examples" in proc.stdout, proc.stderr[-2000:]


def test_dataset_errors_name_the_files(tmp_path):
    src = fake_sources.write_pie(tmp_path / "PIE", ["1", "2"], ["3"])
    (src / "val.txt").write_text("3\n2\n")
    proc, _ = build("--manual_dir", src, "--data_dir", tmp_path / "data")
    assert_one_line_error(proc, "listed in both 'train' and 'val': ['2']")
    (src / "val.txt").write_text("3\n")
    fake_sources.write_geotiff(
        src / "sar" / "2.tif",
        np.zeros((32, 32), np.uint8),
        transform=fake_sources.fake_transform(x0=500010.0),
    )
    proc, _ = build("--manual_dir", src, "--data_dir", tmp_path / "data")
    assert_one_line_error(proc, "differ in geotransform", src / "sar" / "2.tif")
    assert not (tmp_path / "data" / "pie_rgb_sar").exists()
    proc, _ = build("--manual_dir", src, "--data_dir", tmp_path / "data", "--accept_misaligned")
    assert proc.returncode == 0, proc.stderr[-2000:]


# --- datasets: content, types, BOM, leftovers ---


def sentinel(root, **description):
    """A small rgb_sar_folder dataset (train a, b; val c) with `description` overriding."""
    return fake_sources.write_sentinel_folder(root, ["a", "b"], ["c"], **description)


def test_an_edit_that_keeps_the_size_and_time_of_a_file_is_detected(tmp_path):
    src = fake_sources.write_pie(tmp_path / "PIE", ["1", "2", "3"], ["4"])
    data = tmp_path / "data"
    proc, _ = build("--manual_dir", src, "--data_dir", data)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # Relabelled, then given back the original's time, as `tar` and `rsync -t` leave files.
    label = src / "label" / "2.tif"
    before = label.stat()
    fake_sources.write_geotiff(label, np.full((32, 32), 5, np.uint8))
    os.utime(label, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = label.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    proc, _ = build("--manual_dir", src, "--data_dir", data)
    assert_one_line_error(proc, "since then", "label changed", "--overwrite")
    proc, _ = script(
        "train.py", "--config", REPO / "configs" / "pie.py:runlocal", "--workdir",
        tmp_path / "run", f"--config.data.data_dir={data}",
    )  # fmt: skip
    assert_one_line_error(proc, "since then", "label changed", "--overwrite")


def test_a_build_whose_fingerprint_has_no_content_hashes_is_not_taken_as_current(tmp_path):
    from asanet_jax.data import build as datasets

    src = fake_sources.write_pie(tmp_path / "PIE", ["1", "2"], ["3"])
    data = tmp_path / "data"
    datasets.build("pie_rgb_sar", data, src)
    # What asanet-jax recorded before content hashes: folders by names, sizes and times.
    old = {}
    for part in ("rgb", "sar", "label"):
        paths = sorted(p for p in (src / part).rglob("*") if p.is_file())
        entries = [
            (p.relative_to(src / part).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
            for p in paths
        ]
        digest = hashlib.sha256(json.dumps(entries).encode()).hexdigest()
        old[part] = {"digest": digest, "files": len(entries)}
    for part in ("train.txt", "val.txt"):
        old[part] = {"digest": hashlib.sha256((src / part).read_bytes()).hexdigest(), "files": 1}
    (meta,) = data.glob("pie_rgb_sar/*/metadata.json")
    recorded = json.loads(meta.read_text())
    recorded["source"] = {"manual_dir": str(src.resolve()), "parts": old}
    meta.write_text(json.dumps(recorded))
    proc, _ = build("--manual_dir", src, "--data_dir", data)
    assert_one_line_error(proc, "content", "--overwrite")
    with pytest.raises(datasets.StaleError, match=r"content.*--overwrite"):
        datasets.open_source(data, "pie_rgb_sar", "train")
    proc, _ = build("--manual_dir", src, "--data_dir", data, "--overwrite")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(datasets.open_source(data, "pie_rgb_sar", "train")) == 2


def test_a_folder_description_with_a_fraction_for_a_band_is_refused(tmp_path):
    src = sentinel(tmp_path / "src", optical_bands=[3.5, 2, 1])
    proc, _ = script(
        "build_dataset.py", "rgb_sar_folder", "--manual_dir", src, "--data_dir", tmp_path / "data"
    )
    assert_one_line_error(
        proc, src / "rgb_sar_folder.json", "optical_bands=[3.5, 2, 1]", "expected"
    )
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    ("description", "needles"),
    [
        ({"optical_bands": [3.5, 2, 1]}, ["optical_bands=[3.5, 2, 1]", "band numbers"]),
        ({"optical_bands": "3,2,1"}, ['optical_bands="3,2,1"', "list"]),
        ({"sar_bands": [1, True, 1]}, ["sar_bands=[1, true, 1]", "integers"]),
        ({"classes": "a,b,c"}, ['classes="a,b,c"', "list"]),
        ({"classes": ["crop", 3, "water"]}, ['classes=["crop", 3, "water"]', "names"]),
        ({"palette": [[0, 0, 0], [0, 0], [1, 2, 3]]}, ["palette=", "[0, 0]", "RGB"]),
        ({"palette": [[0, 0, 0], [0, 0, 256], [1, 2, 3]]}, ["palette=", "256", "0..255"]),
        ({"splits": ["train.txt"]}, ['splits=["train.txt"]', "object"]),
        ({"splits": {"train": 3}}, ['splits={"train": 3}', "file"]),
        ({"optical_dir": 1}, ["optical_dir=1", "folder"]),
        ({"label_suffix": [".tif"]}, ['label_suffix=[".tif"]', "string"]),
        ({"ignore_index": 1.5}, ["ignore_index=1.5", "integer"]),
        ({"ignore_index": True}, ["ignore_index=true", "integer"]),
        ({"label_nodata": "none"}, ['label_nodata="none"', "integer"]),
        ({"label_map": {"1.5": 0, "2": 1}}, ['label_map key "1.5"', "integer"]),
        ({"label_map": {"1": 1.5, "2": 0}}, ['label_map["1"]=1.5', "class id"]),
        ({"label_map": {"1": 7, "2": 0}}, ['label_map["1"]=7', "0..2"]),
        ({"label_map": [[1, 0]]}, ["label_map=[[1, 0]]", "object"]),
        ({"sar_scaling": "db"}, ['sar_scaling="db"', "object"]),
        (
            {"sar_scaling": {"kind": "db_range", "min": "-25", "max": 0}},
            ['sar_scaling.min="-25"', "number"],
        ),
        (
            {"sar_scaling": {"kind": "percentile", "low": 2, "high": 150}},
            ["sar_scaling.high=150", "0..100"],
        ),
        ({"nodata": False}, ["nodata=false", "'ignore' or 'error'"]),
        ({"optical_mean": 3}, ["optical_mean=3", "list"]),
        ({"sar_std": [1, "2", 3]}, ['sar_std=[1, "2", 3]', "numbers"]),
        ({"name": 5}, ["name=5", "string"]),
    ],
)
def test_folder_description_fields_of_the_wrong_type_are_refused_by_name(
    tmp_path, description, needles
):
    from asanet_jax.data import folder_spec, io

    path = tmp_path / folder_spec.SPEC_FILE
    base = {
        "name": "fields",
        "splits": {"train": "train.txt", "val": "val.txt"},
        "classes": ["crop", "forest", "water"],
        "palette": [[255, 200, 0], [0, 128, 0], [0, 0, 255]],
        "ignore_index": -1,
    }
    path.write_text(json.dumps(base))
    folder_spec.FolderSpec.load(path)  # the base is valid
    path.write_text(json.dumps(base | description))
    with pytest.raises(io.DataError) as raised:
        folder_spec.FolderSpec.load(path)
    message = str(raised.value)
    assert "\n" not in message and message.startswith(f"{path}: "), message
    for needle in [*needles, "expected"]:
        assert needle in message, (needle, message)


def test_a_folder_description_that_is_not_an_object_is_refused(tmp_path):
    from asanet_jax.data import folder_spec, io

    path = tmp_path / folder_spec.SPEC_FILE
    path.write_text('["fields"]')
    with pytest.raises(io.DataError, match="a JSON object"):
        folder_spec.FolderSpec.load(path)


def test_fractional_label_values_are_refused_not_truncated(tmp_path):
    import rasterio

    src = sentinel(tmp_path / "src")
    label = src / "label" / "b.tif"
    with rasterio.open(label) as f:
        values, transform = f.read(1).astype(np.float32), f.transform
    values[3, 4] = 1.5
    fake_sources.write_geotiff(
        label, values, crs=fake_sources.SENTINEL_CRS, transform=transform, nodata=-1
    )
    proc, _ = script(
        "build_dataset.py", "rgb_sar_folder", "--manual_dir", src, "--data_dir", tmp_path / "data"
    )
    assert_one_line_error(proc, label, "1.5", "integer")
    assert not (tmp_path / "data").exists()


def test_a_byte_order_mark_is_not_part_of_the_first_name(tmp_path):
    from asanet_jax.data import folder_spec, io

    names = tmp_path / "train.txt"
    names.write_text("c0\nc1\n", encoding="utf-8-sig")
    assert names.read_bytes().startswith(b"\xef\xbb\xbf")
    assert io.read_name_list(names) == ["c0", "c1"]
    names.write_bytes(b"c0\n\xff\xfec1\n")
    with pytest.raises(io.DataError, match=f"{names}: .*UTF-8"):
        io.read_name_list(names)
    src = sentinel(tmp_path / "src")
    spec = src / folder_spec.SPEC_FILE
    spec.write_text(spec.read_text(), encoding="utf-8-sig")
    assert folder_spec.FolderSpec.load(spec).name == "s1s2_fields"


def test_a_failed_build_leaves_nothing_in_the_data_dir(tmp_path):
    def listing(folder):
        return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))

    bad = sentinel(tmp_path / "bad", name="forests")
    fake_sources.write_geotiff(
        bad / "sar" / "b.tif", np.zeros((32, 32, 2), np.float32), crs=fake_sources.SENTINEL_CRS
    )
    data = tmp_path / "data"
    build_folder = ("build_dataset.py", "rgb_sar_folder", "--manual_dir")
    proc, _ = script(*build_folder, bad, "--data_dir", data)
    assert_one_line_error(proc, "differ in geotransform", bad / "sar" / "b.tif")
    assert not data.exists()
    data.mkdir()
    (data / "notes.txt").write_text("mine")
    proc, _ = script(*build_folder, bad, "--data_dir", data)
    assert_one_line_error(proc, "differ in geotransform")
    assert listing(data) == ["notes.txt"]
    pie = fake_sources.write_pie(tmp_path / "PIE", ["1", "2"], ["3"])
    (pie / "label" / "3.tif").unlink()
    proc, _ = build("--manual_dir", pie, "--data_dir", data)
    assert_one_line_error(proc, pie / "label" / "3.tif")
    assert listing(data) == ["notes.txt"]
    # Beside a dataset built before, a failed one leaves no folder of its own either.
    proc, _ = script(*build_folder, sentinel(tmp_path / "good", name="fields"), "--data_dir", data)
    assert proc.returncode == 0, proc.stderr[-2000:]
    before = listing(data)
    proc, _ = script(*build_folder, bad, "--data_dir", data)
    assert_one_line_error(proc, "differ in geotransform")
    assert listing(data) == before
