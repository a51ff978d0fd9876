"""Writing outputs without losing data: the one place for atomic writes.

- Every output is written under a temporary name beside its destination and renamed into
  place only when complete, so an interrupted or failed write never leaves something
  that looks complete. Temporaries are named ``.<name>.asanet-partial-<host>-<pid>-<hex>``.
- A folder that replaces another (``--overwrite``) is swapped in: the old one moves to a
  temporary name first and is removed only once the new one is in place.
- A later write into the same folder removes the temporaries that a killed process of
  this library left there (same host, process gone), and nothing else.
- A writer that cannot be cancelled holds Ctrl-C back while it finishes
  (``interrupts.deferred``), so that the cleanup after it removes everything it wrote.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import secrets
import shutil
import socket

TAG = "asanet-partial"


def _host() -> str:
    return socket.gethostname().replace("-", "_").replace(".", "_")


def temporary_name(dest: pathlib.Path) -> pathlib.Path:
    """A fresh hidden sibling of ``dest`` that names this host and process."""
    return dest.with_name(f".{dest.name}.{TAG}-{_host()}-{os.getpid()}-{secrets.token_hex(4)}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def remove_stale_temporaries(folder: pathlib.Path) -> list[pathlib.Path]:
    """Remove this library's temporaries in `folder` whose process (on this host) is gone.

    Returns the paths removed. Temporaries of live processes, of other hosts, and
    anything not named by `temporary_name` are left alone.
    """
    removed = []
    if not folder.is_dir():
        return removed
    for path in folder.glob(f".*.{TAG}-*"):
        owner = path.name.rsplit(f".{TAG}-", 1)[1].split("-")
        if len(owner) != 3 or owner[0] != _host() or not owner[1].isdigit():
            continue
        if _alive(int(owner[1])):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _remove(path: pathlib.Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_output(dest, *, folder: bool = False):
    """Yield a temporary path to write `dest`'s content to; rename it into place on success.

    With ``folder`` the temporary is an empty directory and an existing folder at
    `dest` is replaced (the caller decides whether that is allowed); otherwise `dest`
    is a file and is replaced with ``os.replace``. On any exception, KeyboardInterrupt
    included, the temporary is removed and the exception propagates; `dest` is untouched.
    Stale temporaries of killed processes in `dest`'s folder are removed first.
    """
    dest = pathlib.Path(dest).absolute()
    if not dest.parent.is_dir():
        raise FileNotFoundError(
            errno.ENOENT, "the folder to write into does not exist", str(dest.parent)
        )
    remove_stale_temporaries(dest.parent)
    tmp = temporary_name(dest)
    if folder:
        tmp.mkdir()
    try:
        yield tmp
        if folder and dest.exists():
            old = temporary_name(dest)
            dest.rename(old)
            tmp.rename(dest)
            _remove(old)
        else:
            os.replace(tmp, dest)
    except BaseException:
        _remove(tmp)
        raise


def check_free_space(folder, needed_bytes: int) -> None:
    """OSError (ENOSPC) naming `folder` if its disk has less than `needed_bytes` free."""
    free = shutil.disk_usage(folder).free
    if free < needed_bytes:
        raise OSError(
            errno.ENOSPC,
            f"no space left on device: the output needs about {needed_bytes / 2**20:.1f} MB, "
            f"{free / 2**20:.1f} MB are free",
            str(folder),
        )


# A disk with less free space than this after a failed write is taken as full: GDAL
# (through rasterio) and torch report a full disk as "write failed", without the reason.
_FULL = 1 << 20


@contextlib.contextmanager
def disk_errors_as_oserror(path, quiet: tuple[str, ...] = ("absl",)):
    """Re-raise a writer's 'no space', 'read-only' or 'permission' failure as the OSError
    it is, naming `path` (the output, not the temporary that was being written).

    Orbax and TensorStore report them as ValueErrors (RESOURCE_EXHAUSTED ...), torch as
    RuntimeErrors and GDAL as rasterio errors that say only "write failed"; a failure
    that leaves `path`'s disk (nearly) full is reported as a full disk. The loggers in
    `quiet`, with which the writers log each failed write, are held back while the block
    runs, since the raised error says it once.
    """
    import logging

    loggers = [logging.getLogger(name) for name in quiet]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    except Exception as e:
        named = getattr(e, "filename", None)
        if named is not None and not _ours(pathlib.Path(named), pathlib.Path(path)):
            raise  # another file's failure (a source that cannot be read) names that file
        code = e.errno if isinstance(e, OSError) else None
        text = str(e)
        for errno_code, marker in _DISK_ERRORS:
            if code == errno_code or marker in text:
                raise OSError(errno_code, marker, str(path)) from None
        # ValueErrors are ours (a bad input) or orbax's, which say what happened.
        if not isinstance(e, ValueError) and _free_bytes(pathlib.Path(path)) < _FULL:
            raise OSError(errno.ENOSPC, "No space left on device", str(path)) from None
        raise
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


_DISK_ERRORS = (
    (errno.ENOSPC, "No space left on device"),
    (errno.EDQUOT, "Disk quota exceeded"),
    (errno.EROFS, "Read-only file system"),
    (errno.EACCES, "Permission denied"),
)


def _ours(named: pathlib.Path, path: pathlib.Path) -> bool:
    """Whether `named` is `path`, lies below it, or is one of its temporaries."""
    named, path = named.absolute(), path.absolute()
    if named == path or path in named.parents:
        return True
    return named.parent == path.parent and named.name.startswith(f".{path.name}.{TAG}-")


def _free_bytes(path: pathlib.Path) -> int:
    """Free bytes on the disk of `path`, or of its nearest existing folder."""
    for folder in (path, *path.absolute().parents):
        if folder.is_dir():
            return shutil.disk_usage(folder).free
    return _FULL


def listed(names, at_most: int = 5) -> str:
    """A message's short listing of names: the first `at_most`, then how many more."""
    names = list(names)
    more = f" and {len(names) - at_most} more" if len(names) > at_most else ""
    return ", ".join(map(str, names[:at_most])) + more


def write_text(dest, text: str) -> pathlib.Path:
    """Write `text` to `dest` atomically."""
    with atomic_output(dest) as tmp:
        tmp.write_text(text)
    return pathlib.Path(dest)
