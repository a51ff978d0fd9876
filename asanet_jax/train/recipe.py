"""The training recipe as ConfigDicts: the official one, per dataset, and the demo.

`configs/*.py` are thin files over these functions (``get_config(arg)``, loaded by path
with ``--config configs/pie.py:variant``); the library holds the content so that it
works from an installed package too (the notebook's demo training). Every field can be
overridden on the command line (``--config.optim.lr=2e-4``). Derived values are
references, so they follow the overrides: the poly schedule ends at ``train.steps``, and
the model's class count follows ``data.num_classes``, which is the dataset's (left unset,
training sets it from the dataset it opens).

How a dataset is trained and evaluated is ``config.data``'s, with the dataset's official
values (``asanet_jax/data/config.py``, from the official mmseg configs):

- ``config.data.augment``: the training augmentation, field for field
  ``transforms.Augment`` (``Augment.from_config(config.data)``): ``crop_size`` (h, w),
  ``scale`` (the random resize's target (long, short) edges, times a ratio drawn from
  ``ratio_range``), ``cat_max_ratio`` and ``crop_tries`` (the crop's category limit),
  ``hflip_prob``, ``vflip_prob``, and ``flip_sar`` (False: SAR left unflipped, as the
  official PIE pipeline; this was ``config.data.flip_sar``);
- ``config.data.tta``: the test-time augmentation of ``scripts/eval.py --tta``
  (``evaluation.Settings.from_config``): ``ratios`` (image scale factors) and ``flip``
  (also the horizontally flipped image).

``--config.data.augment.crop_size='(512, 512)' --config.data.augment.flip_sar=False``
overrides them on the command line. They are the defaults of the dataset the config
file is for: after ``--config.data.name=...`` set them too, or use that dataset's file.

A config file's argument (``--config configs/pie.py:official_flips,runlocal``) is read by
``parse_arg``: comma-separated words, each ``key=value`` or a flag's name.
"""

from __future__ import annotations

import importlib.util
import pathlib

import ml_collections
from ml_collections import config_dict

from asanet_jax.data import config as data_config
from asanet_jax.data import specs
from asanet_jax.models.config import default_model_config

# Per architecture, the official optimiser and schedule over the shared defaults of
# base_config: AdamW, LinearLR warm-up (start factor 1e-6) chained with PolyLR.
OFFICIAL_OPTIM = {
    # ASANet: lr 1e-4, wd 0.05, layer decay 0.9; warm-up 0-1500, then poly from 1500.
    "asanet": {},
    # CMX (configs/cmx/*): lr 6e-5, wd 0.01, no layer decay; the poly decay begins at 1000,
    # inside the 1500-step warm-up, and mmengine multiplies the two there.
    "cmx": {"lr": 6e-5, "weight_decay": 0.01, "layer_decay": 1.0, "poly_start": 1000},
}
# SA-Gate and vFuseNet (configs/SA-Gate/*, configs/FuseNet/*) take mmseg's schedule_80k:
# SGD lr 0.01, momentum 0.9, weight decay 5e-4 on every parameter, no warm-up, PolyLR
# (power 0.9, eta_min 1e-4) over all 80k iterations.
SCHEDULE_80K = {
    "name": "sgd",
    "lr": 0.01,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "decay_norms_and_biases": True,
    "layer_decay": 1.0,
    "warmup_steps": 0,
    "power": 0.9,
    "eta_min": 1e-4,
}
OFFICIAL_OPTIM.update(sagate=SCHEDULE_80K, vfusenet=SCHEDULE_80K)
# The compute dtype of each recipe: the official ASANet, SA-Gate and vFuseNet runs use
# fp16 AMP, for which bfloat16 stands in here; CMX's run in fp32.
OFFICIAL_DTYPE = {
    "asanet": "bfloat16",
    "cmx": "float32",
    "sagate": "bfloat16",
    "vfusenet": "bfloat16",
}
# The aux head's loss weight (CMX has none: decode CE only).
OFFICIAL_AUX_WEIGHT = {"asanet": 0.4, "cmx": 0.0, "sagate": 0.2, "vfusenet": 0.4}
# A small model of each architecture, for `runlocal` checks.
LOCAL_MODEL = {
    # Every stage with a block (two in stage 3), so a 4-step run compiles in seconds.
    "asanet": {
        "backbone": "atto",
        "depths": (1, 1, 2, 1),
        "channels": (16, 32, 64, 128),
        "decoder_channels": 32,
        "aux_channels": 16,
    },
    "cmx": {
        "embed_dims": (16, 32, 64, 128),
        "num_heads": (1, 2, 2, 4),
        "depths": (1, 1, 2, 1),
        "decoder_channels": 32,
    },
    # The golden fixtures' sizes: one bottleneck per ResNet layer; VGG11.
    "sagate": {
        "layers": (1, 1, 1, 1),
        "decoder_channels": 64,
        "c1_channels": 16,
        "aux_channels": 32,
    },
    "vfusenet": {"depth": 11},
}


def base_config(architecture: str = "asanet") -> ml_collections.ConfigDict:
    """The official recipe of ``architecture`` (ASANet: ConvNeXt V2 tiny streams; CMX:
    MiT-B2 streams; SA-Gate: ResNet-101; vFuseNet: VGG16-BN), 80k steps of batch 8,
    AdamW (ASANet, CMX) or SGD (SA-Gate, vFuseNet)."""
    steps = config_dict.FieldReference(80_000)
    # None: the dataset's class count, set when training opens the dataset.
    num_classes = config_dict.FieldReference(None, field_type=int)
    config = ml_collections.ConfigDict()

    config.model = default_model_config(architecture)
    config.model.num_classes = num_classes
    config.model.dtype = OFFICIAL_DTYPE[architecture]  # compute dtype

    config.data = data_config.defaults(num_classes)

    config.optim = ml_collections.ConfigDict(
        {
            "name": "adamw",  # or 'sgd' (with momentum, as PyTorch's)
            "lr": 1e-4,
            "b1": 0.9,
            "b2": 0.999,
            "eps": 1e-8,
            "momentum": 0.9,  # SGD's
            "weight_decay": 0.05,
            # False: no weight decay on norms and biases (mmengine's *_decay_mult=0).
            "decay_norms_and_biases": False,
            "layer_decay": 0.9,
            "warmup_steps": 1500,
            "warmup_factor": 1e-6,
            # The poly decay's first step; None: where the warm-up ends.
            "poly_start": config_dict.placeholder(int),
            "power": 1.0,
            "eta_min": 0.0,
            "total_steps": steps,
            "grad_clip_norm": config_dict.placeholder(float),
        }
    )
    config.optim.update(OFFICIAL_OPTIM[architecture])

    config.train = ml_collections.ConfigDict(
        {
            "steps": steps,
            "batch_size": 8,  # global, over all devices and hosts
            "seed": 42,
            "aux_weight": OFFICIAL_AUX_WEIGHT[architecture],
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
    # `heartbeat_timeout_s`: how long a process may go silent before the others count it
    # dead and stop (jax.distributed's default, 100 s, when unset). Raise it where hosts
    # are heavily oversubscribed: a starved process misses heartbeats without having died.
    config.distributed = ml_collections.ConfigDict(
        {
            "coordinator_address": config_dict.placeholder(str),
            "num_processes": config_dict.placeholder(int),
            "process_id": config_dict.placeholder(int),
            "heartbeat_timeout_s": config_dict.placeholder(int),
        }
    )
    return config


def shrink_for_local_run(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A few steps of a small model: checks that a config runs end to end on a laptop."""
    config.model.update(LOCAL_MODEL[config.model.get("architecture", "asanet")])
    config.model.dtype = "float32"
    config.train.steps = 4
    config.train.batch_size = 2
    config.train.log_every = 1
    config.train.eval_every = 4
    config.train.checkpoint_every = 2
    if config.optim.warmup_steps:  # schedule_80k has none
        config.optim.warmup_steps = 2
    if config.optim.poly_start is not None:  # an overlapping decay stays overlapping
        config.optim.poly_start = 1
    config.data.eval_batch_size = 2
    return config


def for_dataset(
    name: str,
    variant: str | None = None,
    where: str = "",
    *,
    runlocal: bool = False,
    architecture: str = "asanet",
) -> ml_collections.ConfigDict:
    """The official recipe of ``architecture`` on a built-in dataset, or on a user's own
    (``rgb_sar_folder``, whose class count is read from the dataset), with the dataset's
    official augmentation and TTA. The class count is always the dataset's (the official
    CMX WHU config's ``num_classes=40`` for 7 classes is not followed). `runlocal` (or
    `variant` 'runlocal', a config file's argument read by ``parse_arg``; `where` names
    the file in errors) shrinks it to a local check."""
    if variant is not None:
        runlocal = parse_arg(variant, where or name, runlocal=False).runlocal or runlocal
    config = base_config(architecture)
    config.data.name = name
    if name in specs.BUILTIN:
        config.data.num_classes = specs.BUILTIN[name].num_classes
    config.data.augment.update(data_config.augment_defaults(name))
    config.data.tta.update(data_config.tta_defaults(name))
    if runlocal:
        shrink_for_local_run(config)
    return config


def demo_config(variant: str | None = None, *, runlocal: bool = False) -> ml_collections.ConfigDict:
    """`make demo`: a small ASANet trained on the built-in synthetic_rgb_sar in minutes on
    a CPU. `runlocal` (or `variant` 'runlocal') shrinks it to 4 steps on the tiny
    synthetic dataset."""
    if variant is not None:
        runlocal = parse_arg(variant, "configs/demo.py", runlocal=False).runlocal or runlocal
    config = base_config()
    config.data.name = "synthetic_rgb_sar"
    config.data.tfds_config = "default"
    config.data.num_classes = specs.BUILTIN["synthetic_rgb_sar"].num_classes
    config.data.augment.update(data_config.synthetic_augment(128))  # the "default" config's tiles
    config.data.tta.update(data_config.tta_defaults("synthetic_rgb_sar"))
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
    if runlocal:
        shrink_for_local_run(config)
        config.data.tfds_config = "tiny"
        config.data.augment.update(data_config.synthetic_augment(64))  # the "tiny" config's tiles
    return config


_TRUE, _FALSE = ("true", "yes", "1"), ("false", "no", "0")


def parse_arg(arg: str | None, where: str, /, **spec) -> ml_collections.ConfigDict:
    """A config file's argument (``--config path:arg``) as typed options, in the manner of
    big_vision's ``parse_arg``.

    `spec` names each option with its default. A bool makes a flag: its name sets it
    (``runlocal``), ``runlocal=false`` clears it. An int, float or str takes ``key=value``
    of that type; ``(default, choices)`` takes one of the strings `choices`. The first
    option that is not a flag is positional: a word that names no flag is its value
    (``optical_only`` is ``variant=optical_only``). Words are separated by commas, in
    any order; options left out keep their defaults. `where` (the config file) starts
    every error message.

        parse_arg("sar_only,runlocal", "configs/ablations.py",
                  variant=("sfm_cfm", ("sfm_cfm", "sar_only")), runlocal=False)
        # ConfigDict: variant='sar_only', runlocal=True

    Raises:
      ValueError: an unknown word or option, a value of the wrong type or not among the
        choices, or an option given twice; naming `where`, the word and what is accepted.
    """
    options = {}  # key: (default, kind, choices)
    for key, default in spec.items():
        choices = None
        if isinstance(default, tuple):
            if len(default) != 2 or not all(isinstance(c, str) for c in default[1]):
                raise TypeError(f"parse_arg option {key}: expected (default, (choice, ...))")
            default, choices = default[0], tuple(default[1])
        if not isinstance(default, bool | int | float | str):
            raise TypeError(
                f"parse_arg option {key}: default {default!r} is not bool/int/float/str"
            )
        options[key] = (default, type(default), choices)
    positional = next((k for k, (_, kind, _) in options.items() if kind is not bool), None)

    def accepted() -> str:
        parts = []
        for key, (_, kind, choices) in options.items():
            if kind is bool:
                parts.append(key)
            elif choices is not None and key == positional:
                parts.append(f"{' | '.join(choices)} (the {key}, or {key}=...)")
            elif choices is not None:
                parts.append(f"{key}={'|'.join(choices)}")
            else:
                parts.append(f"{key}=<{kind.__name__}>")
        if not parts:
            return "nothing (the file takes no argument)"
        return "accepted, comma-separated: " + ", ".join(parts)

    def convert(key: str, raw: str):
        _, kind, choices = options[key]
        if choices is not None:
            if raw in choices:
                return raw
            raise ValueError(f"{where}: unknown {key} {raw!r} in {arg!r}; {accepted()}")
        if kind is bool:
            if raw.lower() in _TRUE + _FALSE:
                return raw.lower() in _TRUE
            expected = "true or false"
        elif kind is str:
            return raw
        else:
            try:
                return kind(raw)
            except ValueError:
                expected = "an integer" if kind is int else "a number"
        raise ValueError(f"{where}: {key}={raw!r}: expected {expected}; {accepted()}")

    given = {}
    for word in (w.strip() for w in (arg or "").split(",")):
        if not word:
            continue
        key, has_value, raw = word.partition("=")
        key = key.strip()
        if has_value:
            if key not in options:
                raise ValueError(f"{where}: unknown option {key!r} in {arg!r}; {accepted()}")
            value = convert(key, raw.strip())
        elif key in options and options[key][1] is bool:
            value = True
        elif positional is not None:
            key, value = positional, convert(positional, word)
        else:
            raise ValueError(f"{where}: unknown variant {word!r} in {arg!r}; {accepted()}")
        if key in given:
            raise ValueError(f"{where}: {key} given twice in {arg!r}; {accepted()}")
        given[key] = value
    return ml_collections.ConfigDict(
        {key: given.get(key, default) for key, (default, _, _) in options.items()}
    )


def load(path: str | pathlib.Path) -> ml_collections.ConfigDict:
    """A config file's ``get_config(arg)``, as ``--config path[:arg]`` loads it."""
    path, _, arg = str(path).partition(":")
    spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, path)
    if spec is None or not pathlib.Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such config file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg or None)
