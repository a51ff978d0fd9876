"""Model directories on disk, and what they record. Every orbax call of the project lives
here or, for training state, in ``train/checkpoints.py``.

A model directory holds:

- ``weights/``: an orbax checkpoint of every parameter and BatchNorm statistic;
- ``model.json``: ``{"model": <config.model>, ...metadata}`` (for converted weights:
  the source file, its sha256, its format and the mapping version; for trained or
  ``--dataset`` converted ones, the dataset's preprocessing, classes and palette:
  ``dataset_record``, read back by ``model_dataset``), and the list of files orbax
  wrote under ``weights/``.

Directories are written under a temporary name and renamed when complete (see
``files``), so a failed or interrupted write never leaves something that looks like a
checkpoint, and ``overwrite`` replaces only a model directory exactly as written.
"""

from __future__ import annotations

import json
import os
import pathlib
import re

import jax
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx

from asanet_jax import files, interrupts
from asanet_jax.models.config import resolve, to_config
from asanet_jax.models.segmentor import WEIGHTS, build_with_weights
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
            f"{directory} is not a model directory as written: it also holds "
            f"{files.listed(foreign)}; --overwrite replaces only a model directory exactly "
            "as written (move those out first)"
        )


def save_model(
    directory, model: nnx.Module, *, metadata: dict | None = None, overwrite: bool = False
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
        interrupts.deferred() as held,
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
        held.check()
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


# --- what a model directory records about its dataset ------------------------------------


def model_dataset(meta: dict, where, dataset: str | None = None, data_dir=None):
    """The ``DatasetSpec`` a model is used with: how raster values become its inputs, its
    classes and palette.

    A model directory written by training or by ``convert_torch_weights.py --dataset``
    records it (``model.json`` "dataset"), and nothing else is needed. For one that
    records none (an official checkpoint file), `dataset` names it: a built-in dataset,
    or one built under `data_dir`. Naming a dataset other than the recorded one is an
    error, since the model's inputs would be prepared differently from its training.

    Raises:
      DataError: no dataset recorded and none named, or a disagreeing name.
    """
    from asanet_jax.data import build, io, specs

    recorded = meta.get("dataset")
    if recorded is not None:
        spec = specs.DatasetSpec.from_dict(recorded, f"{where}: model.json dataset")
        if dataset is not None and dataset not in (spec.name, meta.get("tfds", {}).get("name")):
            raise io.DataError(
                f"{where} was trained for dataset {spec.name!r}, but {dataset!r} was given; "
                "leave the dataset out to use the one the model records"
            )
        return spec
    if dataset is None:
        raise io.DataError(
            f"{where} does not record the dataset it was trained for (an official checkpoint, "
            "or a model directory converted without --dataset); name it: "
            f"{', '.join(sorted(specs.BUILTIN))}, or a dataset built under a data directory"
        )
    if data_dir is not None:
        return build.open_source(data_dir, dataset).spec
    try:
        return specs.get_spec(dataset)
    except KeyError as e:
        raise io.DataError(f"{e.args[0]}; for your own dataset give its data directory") from None


def dataset_record(spec, tfds_name: str, tfds_config: str | None = None) -> dict:
    """What a model directory's ``model.json`` records about its dataset: the spec, and
    the TFDS dataset (builder and config) that evaluation opens by default."""
    return {"dataset": spec.to_dict(), "tfds": {"name": tfds_name, "config": tfds_config}}


def model_data(
    meta: dict, where, data_dir, dataset: str | None = None, manual_dir=None, tfds_config=None
):
    """``config.data`` of the TFDS dataset a model was trained on, as its model directory
    records it (builder and config), under `data_dir`; `dataset` (and `tfds_config`)
    name it for a checkpoint that records none, and `manual_dir` is the source to build
    it from if missing.

    Raises:
      DataError: no dataset recorded and none named.
    """
    from asanet_jax.data import config as data_config
    from asanet_jax.data import io

    data = data_config.defaults()
    data.data_dir, data.manual_dir = str(data_dir), manual_dir
    recorded = meta.get("tfds")
    if recorded is not None and dataset in (None, recorded["name"]):
        data.name, data.tfds_config = recorded["name"], recorded["config"]
    elif dataset is not None:
        data.name, data.tfds_config = dataset, tfds_config
    else:
        raise io.DataError(
            f"{where} does not record the dataset it was trained for; name it (pie_rgb_sar, "
            "ddhr_sk, whu_opt_sar, ...)"
        )
    return data


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
) -> tuple[nnx.Module, ml_collections.ConfigDict, dict]:
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
