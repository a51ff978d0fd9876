"""``asanet_jax.load(path)``: the one way to get a model from disk.

It takes a model directory (``model.json`` + ``weights/``, as training and the converter
write) or an official checkpoint (.pth/.pt/.bin or .safetensors, converted on the fly by
``convert.load_torch_checkpoint``). ImageNet backbones initialise a model instead
(``convert.imagenet.init_from``).
"""

from __future__ import annotations

import pathlib

import ml_collections

from asanet_jax.models.asanet import ASANet
from asanet_jax.weights import CheckpointError


def load(
    path,
    model_config: ml_collections.ConfigDict | dict | None = None,
    *,
    allow_nonfinite: bool = False,
) -> tuple[ASANet, ml_collections.ConfigDict, dict]:
    """(model in eval mode, config.model, metadata) from a model directory or an official
    checkpoint file. For a file, metadata holds its path.

    ``model_config`` sets fields the weights do not fix (``dtype``, ``kernels``; for a
    single-stream official checkpoint, ``modalities``). Weights holding NaN or Inf are
    refused unless ``allow_nonfinite``.

    Raises:
      CheckpointError: no such file or folder, or weights that do not fit (one-line
        reason first).
    """
    from asanet_jax import checkpointing

    path = pathlib.Path(path)
    if path.is_dir():
        return checkpointing.load_model_dir(path, model_config, allow_nonfinite=allow_nonfinite)
    if not path.exists():
        raise CheckpointError(
            f"{path}: no such checkpoint (a model directory, or an official .pth/.safetensors)"
        )
    from asanet_jax.convert import load_torch_checkpoint

    model, config = load_torch_checkpoint(path, model_config, allow_nonfinite=allow_nonfinite)
    return model, config, {"source": {"path": str(path), "kind": "official"}}


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
    from asanet_jax.data import io
    from asanet_jax.train import recipe

    data = recipe.base_config().data
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
