"""Training state under ``<workdir>/checkpoints``: the last saves, the best one, and resume
past damaged saves (``TrainCheckpoints``). Model directories are ``checkpointing.py``'s;
the two modules hold every orbax call of the project."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import re
import shutil
import time
import warnings

import jax
import orbax.checkpoint as ocp

from asanet_jax import multihost
from asanet_jax.checkpointing import ModelCheckpointError


def _to_saveable(tree):
    """Typed PRNG keys become their raw uint32 data (orbax stores plain arrays)."""
    return jax.tree.map(
        lambda x: (
            jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x
        ),
        tree,
    )


def _from_saveable(saved, like):
    return jax.tree.map(
        lambda s, x: (
            jax.random.wrap_key_data(s, impl=jax.random.key_impl(x))
            if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
            else s
        ),
        saved,
        like,
    )


class _SettlingLoop(asyncio.SelectorEventLoop):
    """An event loop that settles every task it ran before it closes.

    Orbax runs a restore on a fresh loop and closes it as soon as the restore returns or
    raises. When one array does not read (a truncated file), the reads of the others are
    still in flight: closed under them, the loop left tensorstore calling into a closed
    loop ("Event loop is closed") and each abandoned read printing its traceback and
    TensorStore spec when collected, tens of thousands of lines. Here the unfinished
    tasks are cancelled and awaited, worker threads joined, and the exceptions of the
    failed reads taken (the restore's own error is the one that is raised)."""

    def __init__(self):
        super().__init__()
        self._tasks: list[asyncio.Task] = []
        self.set_task_factory(self._track)

    def _track(self, loop, coro, **kwargs):
        task = asyncio.Task(coro, loop=loop, **kwargs)
        self._tasks.append(task)
        return task

    def close(self) -> None:
        if not self.is_closed() and not self.is_running():
            try:
                pending = [t for t in self._tasks if not t.done()]
                for task in pending:
                    task.cancel()
                if pending:
                    self.run_until_complete(asyncio.wait(pending, timeout=60))
                self.run_until_complete(self.shutdown_asyncgens())
                self.run_until_complete(self.shutdown_default_executor())
            finally:
                for task in self._tasks:
                    if task.done() and not task.cancelled():
                        task.exception()
                self._tasks.clear()
        super().close()


@contextlib.contextmanager
def _settling_event_loops():
    """New event loops (orbax's, one per restore) are `_SettlingLoop`s meanwhile."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the policy API, Python 3.14+
        previous = asyncio.get_event_loop_policy()

        class Settling(type(previous)):
            def new_event_loop(self):
                return _SettlingLoop()

        asyncio.set_event_loop_policy(Settling())
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            asyncio.set_event_loop_policy(previous)


# Where a message goes on to print a TensorStore spec (orbax appends `t.spec`).
_SPEC = re.compile(r"\s*(?:See full TensorStore details|<bound method|TensorStore\(|\{').*")
_OCDBT_FOLDER = re.compile(r' in OCDBT database at local file "[^"]*"')


def _why(error: BaseException) -> str:
    """Why a restore failed, in one clause: the first line of the innermost error that
    says something (orbax wraps tensorstore's in one that appends the store's whole
    spec), without specs, and without the OCDBT folder (the item is named already)."""
    chain = [error]
    while chain[-1].__cause__ is not None and all(e is not chain[-1].__cause__ for e in chain):
        chain.append(chain[-1].__cause__)
    for e in reversed(chain):
        text = (str(e).strip().split("\n") or [""])[0]
        text = _OCDBT_FOLDER.sub("", _SPEC.sub("", text)).strip(" .:;,")
        if text and isinstance(e, Exception):
            if type(e).__name__ not in ("Exception", "ValueError", "RuntimeError"):
                text = f"{type(e).__name__}: {text}"
            return text if len(text) <= 300 else text[:299] + "…"
    return type(error).__name__


class _ItemDoesNotRestore(ModelCheckpointError):
    def __init__(self, path: pathlib.Path, item: str, error: BaseException):
        self.reason = f"{item}: {_why(error)}"
        super().__init__(f"{path}: {self.reason}")


# Orbax writes each save under `<step>.orbax-checkpoint-tmp` and renames it once complete:
# a folder so named is a save that a kill cut short.
UNFINISHED_SAVE = re.compile(r"\d+\.orbax-checkpoint-tmp[^/]*")


def _remove_unfinished_saves(folders: list[pathlib.Path]) -> list[pathlib.Path]:
    """Remove the saves a kill cut short from `folders` (on process 0; every process then
    waits for it). Returns what was removed."""
    removed = []
    if jax.process_index() == 0:
        for folder in folders:
            if not folder.is_dir():
                continue
            for path in sorted(folder.iterdir()):
                if UNFINISHED_SAVE.fullmatch(path.name) and path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                    removed.append(path)
    multihost.sync("unfinished checkpoint saves removed")
    return removed


class TrainCheckpoints:
    """Training state under ``<workdir>/checkpoints``: the last `keep` saves (``last/``) and
    the best by validation mIoU (``best/``). Saves are asynchronous; each holds the model
    state, the optimiser state, the step and the data iterator's position.

    A save that a kill cut short is removed when this is built, before anything reads the
    folder; ``unfinished`` lists what was removed."""

    def __init__(self, workdir, keep: int):
        self.root = root = pathlib.Path(workdir).absolute() / "checkpoints"
        # Not orbax's cleanup_tmp_directories: it removes them in a background thread,
        # which races whatever lists or restores from the folder next.
        self.unfinished = _remove_unfinished_saves([root / "last", root / "best"])
        self.last = ocp.CheckpointManager(
            root / "last", options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        )
        self.best = ocp.CheckpointManager(
            root / "best",
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1,
                best_fn=lambda m: m["mIoU"],
                best_mode="max",
                create=True,
            ),
        )

    def latest_step(self) -> int | None:
        return self.last.latest_step()

    def _args(self, state, opt_state, data_state):
        return ocp.args.Composite(
            state=ocp.args.StandardSave(_to_saveable(state)),
            opt_state=ocp.args.StandardSave(_to_saveable(opt_state)),
            data=ocp.args.JsonSave(data_state),
        )

    def save(self, step: int, state, opt_state, data_state: dict) -> None:
        self.last.save(step, args=self._args(state, opt_state, data_state), force=True)

    def save_best(self, step: int, state, opt_state, data_state: dict, metrics: dict) -> None:
        summary = {k: v for k, v in metrics.items() if isinstance(v, float)}
        # Orbax names its multi-host barriers after the step: two managers must not save
        # the same step at once.
        self.last.wait_until_finished()
        if step in self.best.all_steps():
            # A run resumed before a damaged save retrains that step: its new state replaces
            # the old best of the same step.
            self.best.delete(step)
        self.best.save(
            step, args=self._args(state, opt_state, data_state), metrics=summary, force=True
        )

    def restore(self, step: int, state, opt_state):
        """(state, opt_state, data_state) of `step`, laid out like the given templates.

        Raises:
          ModelCheckpointError: an item does not restore (naming it and why, in a line).
        """

        def abstract(tree):
            return jax.tree.map(
                lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                _to_saveable(tree),
            )

        items = {
            "data": ocp.args.JsonRestore(),
            "state": ocp.args.StandardRestore(abstract(state)),
            "opt_state": ocp.args.StandardRestore(abstract(opt_state)),
        }
        restored = {}
        # One item at a time, so that a failure names its item.
        for name, args in items.items():
            try:
                with _settling_event_loops():
                    got = self.last.restore(step, args=ocp.args.Composite(**{name: args}))
            except Exception as e:  # orbax and tensorstore raise plain Exceptions
                raise _ItemDoesNotRestore(self.root / "last" / str(step), name, e) from e
            restored[name] = got[name]
        return (
            _from_saveable(restored["state"], state),
            _from_saveable(restored["opt_state"], opt_state),
            restored["data"],
        )

    def restore_latest(self, state, opt_state, log=print):
        """(step, state, opt_state, data_state) of the newest save that restores completely,
        or None when there is none.

        Newer saves that fail to restore (a file missing or truncated) are moved to
        ``checkpoints/damaged/<step>-<time>`` once an older one has restored, and reported
        through `log`, one line each (the item and why); they are never used.

        Raises:
          ModelCheckpointError: saves exist but none restores (with each reason); then
            nothing is moved, since the cause may be the templates (another model config).
        """
        failed = []
        for step in sorted(self.last.all_steps(), reverse=True):
            try:
                restored = self.restore(step, state, opt_state)
            except Exception as e:  # orbax and tensorstore raise plain Exceptions
                failed.append((step, e.reason if isinstance(e, _ItemDoesNotRestore) else _why(e)))
                continue
            for bad, reason in failed:
                moved = self._set_aside(bad)
                log(f"checkpoint step {bad} does not restore ({reason}); moved it to {moved}")
            return (step, *restored)
        if failed:
            raise ModelCheckpointError(
                f"{self.root / 'last'}: no checkpoint restores: "
                + "; ".join(f"step {step}: {reason}" for step, reason in failed)
            )
        return None

    def _set_aside(self, step: int) -> pathlib.Path:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = self.root / "damaged" / f"{step}-{stamp}"
        if jax.process_index() == 0:
            target.parent.mkdir(parents=True, exist_ok=True)
            (self.root / "last" / str(step)).rename(target)
        multihost.sync(f"checkpoint {step} set aside")
        self.last.reload()
        return target

    def wait(self) -> None:
        self.last.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.last.close()
        self.best.close()
