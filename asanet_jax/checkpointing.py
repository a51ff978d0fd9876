"""Model checkpoints on disk. Every orbax call of the project lives here.

A model directory holds:

- ``weights/``: an orbax checkpoint of every parameter and BatchNorm statistic;
- ``model.json``: ``{"model": <config.model>, ...metadata}`` (for converted weights:
  the source file, its sha256, its format and the mapping version).

Directories are written under a temporary name and renamed when complete (see
``files``), so a failed or interrupted write never leaves something that looks like a
checkpoint, and ``overwrite`` replaces only a model directory: a folder holding just
``model.json`` and ``weights/``.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import time

import jax
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx

from asanet_jax import files
from asanet_jax.models.asanet import WEIGHTS, ASANet, build_with_weights
from asanet_jax.models.config import resolve, to_config
from asanet_jax.weights import CheckpointError, check_finite, check_fit

CONFIG_FILE = "model.json"
WEIGHTS_DIR = "weights"


class ModelCheckpointError(ValueError):
    """A model directory that is missing, incomplete or does not fit its config."""


# The files orbax writes for one checkpoint item (OCDBT layout), relative to the item's
# folder: how a folder of orbax's is told from one that also holds someone else's files.
ORBAX_FILE = (
    r"(_CHECKPOINT_METADATA|_METADATA|_sharding|manifest\.ocdbt|commit_success\.txt|metadata"
    r"|metrics|array_metadatas/process_\d+|d/[0-9a-f]+|ocdbt\.process_\d+/(manifest\.ocdbt|d/[0-9a-f]+))"
)
# model.json's list of the files orbax wrote under weights/ (relative paths).
WEIGHTS_FILES = "weights_files"


def files_under(folder: pathlib.Path) -> list[str]:
    """Every file (and link) below `folder`, as sorted relative POSIX paths."""
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_symlink() or not p.is_dir()
    )


def foreign_files(folder: pathlib.Path, pattern: str) -> list[str]:
    """The files below `folder` whose relative path does not fully match `pattern`."""
    ours = re.compile(pattern)
    return [name for name in files_under(folder) if not ours.fullmatch(name)]


def not_written_by_save(path) -> list[str] | None:
    """What the folder `path` holds that ``save_model`` did not write: [] for a model
    directory exactly as written, None when it is no model directory at all (no
    ``model.json`` and ``weights/`` side by side).

    The files under ``weights/`` are compared with the list ``model.json`` records; a
    directory written before that list existed is compared with orbax's file names.
    """
    path = pathlib.Path(path)
    if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_DIR).is_dir():
        return None
    extra = sorted(
        p.name + ("/" if p.is_dir() else "")
        for p in path.iterdir()
        if p.name not in (CONFIG_FILE, WEIGHTS_DIR)
    )
    try:
        recorded = json.loads((path / CONFIG_FILE).read_text()).get(WEIGHTS_FILES)
    except (ValueError, AttributeError):
        return [*extra, f"{CONFIG_FILE} (not a model description)"]
    weights = path / WEIGHTS_DIR
    if isinstance(recorded, list):
        unknown = sorted(set(files_under(weights)) - set(recorded))
    else:
        unknown = foreign_files(weights, ORBAX_FILE)
    return extra + [f"{WEIGHTS_DIR}/{name}" for name in unknown]


def is_model_dir(path) -> bool:
    """A folder holding just ``model.json`` and the weights, exactly as ``save_model``
    writes them (not a link to one)."""
    path = pathlib.Path(path)
    return path.is_dir() and not path.is_symlink() and not_written_by_save(path) == []


def check_replaceable(directory: pathlib.Path, overwrite: bool) -> None:
    """Refuse to write a model directory over anything but a model directory.

    Raises:
      FileExistsError: `directory` exists and is a file or a link, or overwrite is off,
        or it is not a model directory exactly as written (naming what else it holds).
    """
    if not (directory.exists() or directory.is_symlink()):
        return
    if directory.is_symlink():
        raise FileExistsError(
            f"{directory} is a symbolic link (to {os.readlink(directory)}); a model directory "
            "is never written through a link: give the folder itself"
        )
    if not directory.is_dir():
        raise FileExistsError(f"{directory} is a file; a model directory cannot be written there")
    if not overwrite:
        raise FileExistsError(f"{directory} already exists; --overwrite replaces it")
    foreign = not_written_by_save(directory)
    if foreign is None:
        held = sorted(p.name + ("/" if p.is_dir() else "") for p in directory.iterdir())
        shown = files.listed(held)
        raise FileExistsError(
            f"{directory} is not a model directory (it holds {shown or 'nothing'}); "
            "--overwrite replaces only a folder holding just model.json and weights/"
        )
    if foreign:
        raise FileExistsError(
            f"{directory} holds files that no model save wrote ({files.listed(foreign)}); "
            "--overwrite replaces only a model directory exactly as written: move them out first"
        )


def save_model(
    directory, model: ASANet, *, metadata: dict | None = None, overwrite: bool = False
) -> pathlib.Path:
    """Write ``model`` (weights + config + metadata) to ``directory``.

    The folder is written under a temporary name and swapped in when complete; Ctrl-C
    during the weights' write waits for orbax's writer, then removes everything.

    Raises:
      FileExistsError: see ``check_replaceable``.
    """
    directory = pathlib.Path(directory).absolute()
    check_replaceable(directory, overwrite)
    directory.parent.mkdir(parents=True, exist_ok=True)
    pure = nnx.to_pure_dict(nnx.state(model, WEIGHTS))
    # Written by this process alone (in multi-host training, process 0 writes the model
    # directory from gathered weights), so no cross-process barriers.
    only_me = ocp.options.MultiprocessingOptions(
        primary_host=jax.process_index(), active_processes={jax.process_index()}
    )
    # The weights plus orbax's metadata; refused up front rather than half-written.
    files.check_free_space(directory.parent, sum(x.nbytes for x in jax.tree.leaves(pure)) + 2**20)
    # Ctrl-C is held from before the temporary folder exists until the write is done,
    # then raised inside atomic_output, which removes the folder instead of renaming it.
    with (
        files.deferred_interrupt() as interrupts,
        files.atomic_output(directory, folder=True) as tmp,
    ):
        with (
            files.disk_errors_as_oserror(directory),
            ocp.StandardCheckpointer(multiprocessing_options=only_me) as ckptr,
        ):
            ckptr.save(tmp / WEIGHTS_DIR, pure)
        doc = {"model": to_config(model.config).to_dict(), **(metadata or {})}
        # What orbax wrote, so that --overwrite can tell it from anything added later.
        doc[WEIGHTS_FILES] = files_under(tmp / WEIGHTS_DIR)
        (tmp / CONFIG_FILE).write_text(json.dumps(doc, indent=2, default=list) + "\n")
        interrupts.check()
    return directory


def read_metadata(directory) -> dict:
    """``model.json`` of a model directory.

    Raises:
      ModelCheckpointError: the directory or its files are missing.
    """
    directory = pathlib.Path(directory)
    path = directory / CONFIG_FILE
    if not path.is_file() or not (directory / WEIGHTS_DIR).is_dir():
        raise ModelCheckpointError(
            f"{directory}: not a model checkpoint (expected {CONFIG_FILE} and {WEIGHTS_DIR}/ "
            "as written by scripts/convert_torch_weights.py or training)"
        )
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ModelCheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict):
        raise ModelCheckpointError(f'{path}: not a model description (no "model" object)')
    meta.pop(WEIGHTS_FILES, None)  # bookkeeping of save_model, not metadata
    return meta


def _on_this_process(target):
    """Restore targets on this process's first device: in a multi-process run every
    process loads its own copy (scene prediction), and a leaf without a sharding would
    take the saving process's device, which another process cannot address."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), target)


def load_model_dir(
    directory,
    model_config: ml_collections.ConfigDict | dict | None = None,
    *,
    allow_nonfinite: bool = False,
) -> tuple[ASANet, ml_collections.ConfigDict, dict]:
    """(model in eval mode, config.model, metadata) from a model directory.

    ``model_config`` overrides fields that do not change the weights' shapes (for
    example ``dtype``); a config whose shapes differ from the stored weights is an
    error naming the mismatched variables. Weights holding NaN or Inf are an error
    naming them, unless ``allow_nonfinite``.
    """
    directory = pathlib.Path(directory).absolute()
    meta = read_metadata(directory)
    stored = dict(meta["model"])
    if model_config is not None:
        given = (
            model_config.to_dict()
            if isinstance(model_config, ml_collections.ConfigDict)
            else dict(model_config)
        )
        stored.update(given)
    try:
        config = resolve(stored)
    except ValueError as e:
        raise ModelCheckpointError(f"{directory}: {e}") from None

    def fill(weights):
        target = nnx.to_pure_dict(weights)
        with ocp.StandardCheckpointer() as ckptr:
            on_disk = ckptr.metadata(directory / WEIGHTS_DIR).item_metadata
            _check_shapes(directory, target, on_disk)
            restored = ckptr.restore(directory / WEIGHTS_DIR, _on_this_process(target))
        if not allow_nonfinite:
            try:
                check_finite(_flat(restored))
            except CheckpointError as e:
                raise ModelCheckpointError(f"{directory}: {e}") from None
        nnx.replace_by_pure_dict(weights, restored)
        return weights

    model = build_with_weights(config, fill)
    return model, to_config(config), meta


def _flat(tree) -> dict:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path, simple=True, separator="/"): v for path, v in leaves}


def _shapes(tree) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in _flat(tree).items()}


def _check_shapes(directory, target, on_disk) -> None:
    try:
        check_fit(_shapes(target), _shapes(on_disk), all_required=True)  # unknown = stored only
    except CheckpointError as e:
        raise ModelCheckpointError(
            f"{directory}: the stored weights do not fit the model config; {e}"
        ) from None


# --- training checkpoints ---------------------------------------------------------------


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


class TrainCheckpoints:
    """Training state under ``<workdir>/checkpoints``: the last `keep` saves (``last/``) and
    the best by validation mIoU (``best/``). Saves are asynchronous; each holds the model
    state, the optimiser state, the step and the data iterator's position."""

    def __init__(self, workdir, keep: int):
        self.root = root = pathlib.Path(workdir).absolute() / "checkpoints"
        # cleanup_tmp_directories: a save cut short by a kill leaves a temporary that the
        # next start removes.
        self.last = ocp.CheckpointManager(
            root / "last",
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, cleanup_tmp_directories=True
            ),
        )
        self.best = ocp.CheckpointManager(
            root / "best",
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1,
                best_fn=lambda m: m["mIoU"],
                best_mode="max",
                create=True,
                cleanup_tmp_directories=True,
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
        """(state, opt_state, data_state) of `step`, laid out like the given templates."""

        def abstract(tree):
            return jax.tree.map(
                lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                _to_saveable(tree),
            )

        restored = self.last.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract(state)),
                opt_state=ocp.args.StandardRestore(abstract(opt_state)),
                data=ocp.args.JsonRestore(),
            ),
        )
        return (
            _from_saveable(restored.state, state),
            _from_saveable(restored.opt_state, opt_state),
            restored.data,
        )

    def restore_latest(self, state, opt_state, log=print):
        """(step, state, opt_state, data_state) of the newest save that restores completely,
        or None when there is none.

        Newer saves that fail to restore (a file missing or truncated) are moved to
        ``checkpoints/damaged/<step>-<time>`` once an older one has restored, and reported
        through `log`; they are never used.

        Raises:
          ModelCheckpointError: saves exist but none restores (with each reason); then
            nothing is moved, since the cause may be the templates (another model config).
        """
        failed = []
        for step in sorted(self.last.all_steps(), reverse=True):
            try:
                restored = self.restore(step, state, opt_state)
            except Exception as e:  # orbax and tensorstore raise plain Exceptions
                reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
                failed.append((step, reason))
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
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"checkpoint {step} set aside")
        self.last.reload()
        return target

    def wait(self) -> None:
        self.last.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.last.close()
        self.best.close()
