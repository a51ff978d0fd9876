"""The training recipe as ConfigDicts: the official one, per dataset, and the demo.

`configs/*.py` are thin files over these functions (``get_config(arg)``, loaded by path
with ``--config configs/pie.py:variant``); the library holds the content so that it
works from an installed package too (the notebook's demo training). Every field can be
overridden on the command line (``--config.optim.lr=2e-4``). Derived values are
references, so they follow the overrides: the poly schedule ends at ``train.steps``, and
the model's class count follows ``data.num_classes``, which is the dataset's (left unset,
training sets it from the dataset it opens).
"""

from __future__ import annotations

import importlib.util
import pathlib

import ml_collections
from ml_collections import config_dict

from asanet_jax.data import specs
from asanet_jax.models.config import default_model_config


def base_config() -> ml_collections.ConfigDict:
    """The official recipe (ConvNeXt V2 tiny streams, 80k steps of batch 8, AdamW)."""
    steps = config_dict.FieldReference(80_000)
    # None: the dataset's class count, set when training opens the dataset.
    num_classes = config_dict.FieldReference(None, field_type=int)
    config = ml_collections.ConfigDict()

    config.model = default_model_config()
    config.model.num_classes = num_classes
    config.model.dtype = "bfloat16"  # compute dtype; "float32" on request

    config.data = ml_collections.ConfigDict(
        {
            "name": "pie_rgb_sar",
            "tfds_config": config_dict.placeholder(str),
            "data_dir": "data",
            # Where the source dataset lies; when set and the TFDS dataset is not built
            # yet under data_dir, training builds it first.
            "manual_dir": config_dict.placeholder(str),
            "num_classes": num_classes,
            # False reproduces the official PIE pipeline (SAR left unflipped).
            "flip_sar": True,
            "num_threads": config_dict.placeholder(int),
            "eval_batch_size": 8,
        }
    )

    config.optim = ml_collections.ConfigDict(
        {
            "lr": 1e-4,
            "b1": 0.9,
            "b2": 0.999,
            "eps": 1e-8,
            "weight_decay": 0.05,
            "layer_decay": 0.9,
            "warmup_steps": 1500,
            "warmup_factor": 1e-6,
            "power": 1.0,
            "total_steps": steps,
            "grad_clip_norm": config_dict.placeholder(float),
        }
    )

    config.train = ml_collections.ConfigDict(
        {
            "steps": steps,
            "batch_size": 8,  # global, over all devices and hosts
            "seed": 42,
            "aux_weight": 0.4,
            # 1: one mean over the global batch's labelled pixels. N > 1 reproduces the
            # official N-GPU averaging: a mean over each of N equal parts of the batch,
            # then the mean of those (the official runs: 2 GPUs x 4 images, so 2).
            "loss_replicas": 1,
            "log_every": 50,
            "eval_every": 8000,
            "checkpoint_every": 8000,
            "keep_checkpoints": 3,
            # A converted ImageNet ConvNeXt V2 (model directory or .pth/.safetensors);
            # both streams start from it.
            "init_from": config_dict.placeholder(str),
            "overwrite": False,
        }
    )

    # Device mesh: `data` x `fsdp` devices. data=-1 takes the devices fsdp leaves.
    # `platform` ('gpu', 'tpu' or 'cpu') makes a run refuse to start on any other.
    config.mesh = ml_collections.ConfigDict(
        {"data": -1, "fsdp": 1, "platform": config_dict.placeholder(str)}
    )

    # Multi-host: set when not auto-detected (TPU pods and SLURM are detected).
    config.distributed = ml_collections.ConfigDict(
        {
            "coordinator_address": config_dict.placeholder(str),
            "num_processes": config_dict.placeholder(int),
            "process_id": config_dict.placeholder(int),
        }
    )
    return config


def shrink_for_local_run(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A few steps of a small model: checks that a config runs end to end on a laptop."""
    config.model.backbone = "atto"
    config.model.decoder_channels = 32
    config.model.aux_channels = 16
    config.model.dtype = "float32"
    config.train.steps = 4
    config.train.batch_size = 2
    config.train.log_every = 1
    config.train.eval_every = 4
    config.train.checkpoint_every = 2
    config.optim.warmup_steps = 2
    config.data.eval_batch_size = 2
    return config


def for_dataset(
    name: str, variant: str | None = None, where: str = ""
) -> ml_collections.ConfigDict:
    """The official recipe on a built-in dataset, or on a user's own (``rgb_sar_folder``,
    whose class count is read from the dataset); variant None or 'runlocal'."""
    config = base_config()
    config.data.name = name
    if name in specs.BUILTIN:
        config.data.num_classes = specs.BUILTIN[name].num_classes
    if variant == "runlocal":
        shrink_for_local_run(config)
    elif variant:
        raise ValueError(f"{where or name}: unknown variant {variant!r}; expected runlocal")
    return config


def demo_config(variant: str | None = None) -> ml_collections.ConfigDict:
    """`make demo`: a small ASANet trained on the built-in synthetic_rgb_sar in minutes on
    a CPU. 'runlocal' shrinks it to 4 steps on the tiny synthetic dataset."""
    config = base_config()
    config.data.name = "synthetic_rgb_sar"
    config.data.tfds_config = "default"
    config.data.num_classes = specs.BUILTIN["synthetic_rgb_sar"].num_classes
    config.data.eval_batch_size = 16
    config.model.backbone = "atto"
    config.model.decoder_channels = 64
    config.model.aux_channels = 32
    config.model.drop_path_rate = 0.0
    config.model.dtype = "float32"  # bfloat16 is slower than float32 on XLA:CPU
    config.optim.lr = 1e-3
    config.optim.warmup_steps = 50
    config.train.steps = 600
    config.train.batch_size = 8
    config.train.log_every = 25
    config.train.eval_every = 300
    config.train.checkpoint_every = 300
    config.train.keep_checkpoints = 2
    if variant == "runlocal":
        shrink_for_local_run(config)
        config.data.tfds_config = "tiny"
    elif variant:
        raise ValueError(f"demo config: unknown variant {variant!r}; expected runlocal")
    return config


def load(path: str | pathlib.Path) -> ml_collections.ConfigDict:
    """A config file's ``get_config(arg)``, as ``--config path[:arg]`` loads it."""
    path, _, arg = str(path).partition(":")
    spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, path)
    if spec is None or not pathlib.Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such config file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg or None)
