"""The official recipe (DESIGN.md section 4) as one ConfigDict; dataset configs adjust it.

Every field can be overridden on the command line (`--config.optim.lr=2e-4`). Derived
values are references, so they follow the overrides: the poly schedule ends at
`train.steps`, and the model's class count follows the dataset's.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from asanet_jax.models.config import default_model_config


def base_config() -> ml_collections.ConfigDict:
    steps = config_dict.FieldReference(80_000)
    num_classes = config_dict.FieldReference(6)
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
    config.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1})

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
