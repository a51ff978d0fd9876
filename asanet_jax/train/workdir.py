"""A training run's work directory: what it holds, its lock, and what --overwrite removes.

Layout::

    run.lock             held while a run uses the folder (host, pid and start time inside)
    config.json          the resolved config
    checkpoints/last/    the last `keep_checkpoints` saves (orbax, async)
    checkpoints/best/    the best save by validation mIoU
    checkpoints/damaged/ saves that did not restore completely, moved aside on resume
    model/               the final model as a model directory (checkpointing.save_model)
    metrics.json         the final evaluation (mIoU, OA, Kappa, mF1 in percent, per class)
    tensorboard/         scalars: loss, learning rate, throughput, eval metrics
    run.json             {"finished": true, "steps": ..., "images_per_s": ...} at the end

The lock is an exclusive ``flock`` on ``run.lock``: the operating system releases it when
its holder exits in any way (SIGKILL and power loss of a local disk included), so a
second run on the folder is refused only while the first is alive. On a network
filesystem whose locks outlive a crashed host, delete ``run.lock`` to break it, once
sure that the run it names is gone.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import pathlib
import shutil
import socket

LOCK = "run.lock"
CONFIG = "config.json"
RUN = "run.json"
METRICS = "metrics.json"
# Everything a run writes; --overwrite of a finished run removes these and nothing else.
WRITTEN = (CONFIG, "checkpoints", "model", METRICS, "tensorboard", RUN)


class WorkdirBusy(RuntimeError):
    """Another live process holds the work directory."""


class Lock:
    """An exclusive lock on a work directory for the life of a run (see module docstring)."""

    def __init__(self, workdir: pathlib.Path):
        self.path = pathlib.Path(workdir) / LOCK
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            busy = self._busy(fd)
            os.close(fd)
            raise busy from None
        except OSError as e:
            os.close(fd)
            raise OSError(
                e.errno, f"cannot lock the work directory ({e.strerror})", str(self.path)
            ) from None
        holder = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        self._fd = fd

    def check_free(self) -> None:
        """WorkdirBusy if a live run holds the lock; creates nothing (the checks before a
        run starts come before its first write)."""
        try:
            fd = os.open(self.path, os.O_RDWR)
        except OSError:
            return  # no lock yet, or one acquire() will report
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise self._busy(fd) from None
        finally:
            os.close(fd)  # also releases the probe's lock

    def _busy(self, fd: int) -> WorkdirBusy:
        return WorkdirBusy(
            f"{self.path.parent} is in use by another training run ({_read_holder(fd)}); "
            "wait for it or stop it, or use another work directory. If that run is gone and "
            f"the lock stayed (network filesystems), delete {self.path}"
        )

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing releases the flock
            self._fd = None

    def __enter__(self) -> Lock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except ValueError:
        info = {}
    if not info:
        return "holder unknown"
    return f"host {info.get('host')}, pid {info.get('pid')}, started {info.get('started')}"


def is_finished(workdir: pathlib.Path) -> bool:
    run = pathlib.Path(workdir) / RUN
    try:
        return bool(json.loads(run.read_text()).get("finished"))
    except (OSError, ValueError):
        return False


def _json_with(path: pathlib.Path, keys: set[str]) -> bool:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and keys <= set(data)


def not_written_by_a_run(workdir: pathlib.Path) -> list[str]:
    """What a run would write over, or remove with --overwrite, that no run wrote: a
    ``config.json``, ``run.json`` or ``metrics.json`` that is not ours, and files inside
    ``model/``, ``checkpoints/`` and ``tensorboard/`` that are neither what
    ``checkpointing.save_model`` nor orbax nor TensorBoard wrote (everything under a save
    a kill cut short is orbax's). [] for a fresh folder or one that only runs used."""
    from asanet_jax import checkpointing, files
    from asanet_jax.train import checkpoints

    workdir = pathlib.Path(workdir)
    found = []
    for name, keys, what in (
        (CONFIG, {"model", "data", "train", "optim"}, "not a training config"),
        (RUN, {"finished"}, "not a run record"),
        (METRICS, {"mIoU"}, "not a metrics record"),
    ):
        path = workdir / name
        if (path.exists() or path.is_symlink()) and not _json_with(path, keys):
            found.append(f"{name} ({what})")
    item = rf"((state|opt_state|data|metrics)/)?{checkpointing.ORBAX_FILE}"
    # Anything under an unfinished save: orbax named the folder, and the next start
    # removes it whole.
    saves = rf"(last|best)/(\d+/{item}|{checkpoints.UNFINISHED_SAVE.pattern}/.+)"
    for name, pattern in (
        ("checkpoints", rf"({saves}|damaged/\d+-\d{{8}}-\d{{6}}/{item})"),
        ("tensorboard", r"events\.out\.tfevents\.[^/]+"),
    ):
        folder = workdir / name
        if folder.is_dir() and not folder.is_symlink():
            found += [f"{name}/{f}" for f in checkpointing.foreign_files(folder, pattern)]
        elif folder.exists() or folder.is_symlink():
            found.append(f"{name} (not a folder)")
    model = workdir / "model"
    if model.exists() or model.is_symlink():
        foreign = None if model.is_symlink() else checkpointing.not_written_by_save(model)
        if foreign is None:
            held = checkpointing.files_under(model) if model.is_dir() else []
            listing = f": it holds {files.listed(held)}" if held else ""
            found.append(f"model/ (not a model directory{listing})")
        found += [f"model/{f}" for f in foreign or ()]
    return found


def clear_finished_run(workdir: pathlib.Path) -> list[str]:
    """Remove what a run wrote (``WRITTEN``); other files stay. Returns what was removed."""
    removed = []
    for name in WRITTEN:
        path = pathlib.Path(workdir) / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(name)
    return removed
