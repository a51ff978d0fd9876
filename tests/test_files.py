"""Outputs are never half-written: atomic writes, stale temporaries, Ctrl-C in a conversion."""

import errno
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
import torch

from asanet_jax import files, interrupts

REPO = pathlib.Path(__file__).resolve().parents[1]


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_failed_write_leaves_nothing_and_the_old_output_stays(tmp_path):
    dest = tmp_path / "out.txt"
    dest.write_text("old")
    with pytest.raises(RuntimeError), files.atomic_output(dest) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer failed")
    assert dest.read_text() == "old" and sorted(tmp_path.iterdir()) == [dest]
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "a").write_text("old")
    with pytest.raises(KeyboardInterrupt), files.atomic_output(folder, folder=True) as tmp:
        (tmp / "a").write_text("new")
        raise KeyboardInterrupt
    assert (folder / "a").read_text() == "old"
    with files.atomic_output(folder, folder=True) as tmp:
        (tmp / "b").write_text("new")
    assert sorted(p.name for p in folder.iterdir()) == ["b"]
    assert sorted(tmp_path.iterdir()) == [folder, dest]


def test_only_our_temporaries_of_dead_processes_are_removed(tmp_path):
    target = tmp_path / "model"
    stale = files.temporary_name(target).with_name(
        files.temporary_name(target).name.replace(f"-{os.getpid()}-", f"-{dead_pid()}-")
    )
    stale.mkdir()
    (stale / "weights").write_bytes(b"0" * 100)
    live = files.temporary_name(target)  # this process's own: alive
    live.mkdir()
    mine = [tmp_path / ".notes", tmp_path / ".model.backup", tmp_path / "data"]
    for path in mine:
        path.mkdir()
    assert files.remove_stale_temporaries(tmp_path) == [stale]
    assert sorted(tmp_path.iterdir()) == sorted([live, *mine])


def test_writer_disk_errors_become_the_os_error_they_are(tmp_path):
    message = 'RESOURCE_EXHAUSTED: Failed writing "x": No space left on device [os_error_code=28]'
    with pytest.raises(OSError) as info, files.disk_errors_as_oserror(tmp_path):
        raise ValueError(message)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path)
    with pytest.raises(ValueError, match="something else"), files.disk_errors_as_oserror(tmp_path):
        raise ValueError("something else")
    # A temporary of the output is named as the output; another file's failure (a source
    # that cannot be read) keeps its own name.
    out = tmp_path / "out.tif"
    with pytest.raises(OSError) as info, files.disk_errors_as_oserror(out):
        raise OSError(errno.ENOSPC, "No space left", str(files.temporary_name(out)))
    assert info.value.filename == str(out)
    with pytest.raises(PermissionError) as info, files.disk_errors_as_oserror(out):
        raise PermissionError(errno.EACCES, "Permission denied", "/data/source.tif")
    assert info.value.filename == "/data/source.tif"


def test_a_deferred_interrupt_finishes_the_block_then_raises():
    done = []
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt), interrupts.deferred():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        done.append(True)
    assert done == [True]
    assert signal.getsignal(signal.SIGINT) is before


@pytest.fixture(scope="module")
def big_official_checkpoint(tmp_path_factory):
    """An official-format ASANet-tiny checkpoint (330 MB), so a write takes a while."""
    from benchmarks.torch_asanet import TorchASANet

    path = tmp_path_factory.mktemp("big") / "asanet_tiny.pth"
    torch.save({"state_dict": TorchASANet().state_dict()}, path)
    return path


def wait_for(stream, needle, seen: list[str]) -> None:
    """Read `stream` line by line (into `seen`) until a line holds `needle` (a string),
    or `needle(line)` is true."""
    for line in stream:
        seen.append(line)
        if needle(line) if callable(needle) else needle in line:
            return
    raise AssertionError(f"{needle!r} never came:\n{''.join(seen)[-3000:]}")


def assert_interrupted(proc, seen: list[str]) -> str:
    """Ctrl-C was answered as one line and status 130; returns stderr."""
    stdout, stderr = proc.communicate()
    stderr = "".join(seen) + stderr
    assert proc.returncode == 130, stdout + stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == "interrupted", stderr[-3000:]
    for noise in ("Traceback", "Exception ignored", "KeyboardInterrupt", "terminate called"):
        assert noise not in stderr, stderr[-3000:]
    return stderr


@pytest.mark.parametrize("when", ["while_reading", "as_the_write_starts"])
def test_ctrl_c_during_a_conversion_is_one_line_and_leaves_nothing(
    big_official_checkpoint, tmp_path, when
):
    """Ctrl-C before the output exists, or as its temporary folder appears (orbax then
    writes the weights from background threads). Before the fix, an interrupt 0.3 to
    0.8 s into the write left a 300 MB hidden folder in 3 tries of 3."""
    out = tmp_path / "out" / "model"
    out.parent.mkdir()
    script = str(REPO / "scripts" / "convert_torch_weights.py")
    args = ["--torch_checkpoint", str(big_official_checkpoint), "--output", str(out)]
    proc = subprocess.Popen(
        [sys.executable, script, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if when == "while_reading":
        wait_for(proc.stdout, "reading", [])  # the converter's first word, before the read
    else:
        while not list(out.parent.glob(f".model.{files.TAG}-*")):  # or the run ends: fails
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    stderr = assert_interrupted(proc, [])
    assert list(out.parent.iterdir()) == []  # no model, no temporaries
    if when != "while_reading":
        assert "interrupt received: finishing the current write first" in stderr


@pytest.mark.parametrize(
    ("name", "after_import"),
    [
        ("convert_torch_weights.py", "numpy"),
        ("convert_torch_weights.py", "flax"),
        ("export_torch_weights.py", "jax"),
        ("predict.py", "jax"),
        ("train.py", "orbax.checkpoint"),
        ("train.py", "tensorflow_datasets"),
    ],
)
def test_ctrl_c_while_a_script_starts_is_one_line_and_writes_nothing(tmp_path, name, after_import):
    """Ctrl-C during a script's imports: before the fix it was ignored (the run then wrote
    its outputs), crashed the interpreter, or printed a traceback. The signal is sent when
    `python -X importtime` reports that `after_import` has been imported, so it lands
    while the next heavy modules import; wherever it lands, the answer must be the same."""
    from conftest import GOLDEN
    from micro import micro_model

    from asanet_jax import checkpointing

    out = tmp_path / "out"
    out.mkdir()
    if name == "export_torch_weights.py":
        checkpointing.save_model(tmp_path / "model", micro_model(6, seed=0))
    args = {
        "convert_torch_weights.py": ["--torch_checkpoint", GOLDEN / "checkpoint.pth"],
        "export_torch_weights.py": ["--checkpoint", tmp_path / "model"],
        "predict.py": ["--checkpoint", GOLDEN / "checkpoint.pth", "--optical", "a.tif"],
        "train.py": ["--config", REPO / "configs" / "demo.py:runlocal"],
    }[name]
    args += {
        "predict.py": ["--sar", "b.tif", "--output", out / "map.tif"],
        "train.py": ["--workdir", out / "run", f"--config.data.data_dir={out / 'data'}"],
        "export_torch_weights.py": ["--output", out / "m.pth"],
    }.get(name, ["--output", out / "model"])
    cmd = [sys.executable, "-X", "importtime", str(REPO / "scripts" / name), *map(str, args)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: list[str] = []
    # `import time: <us> | <us> | <indent><module>`, once the module has been imported.
    wait_for(proc.stderr, lambda line: line.rsplit("|", 1)[-1].strip() == after_import, seen)
    proc.send_signal(signal.SIGINT)
    assert_interrupted(proc, seen)
    assert list(out.iterdir()) == []
