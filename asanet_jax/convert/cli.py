"""Command-line conversion of official weights into model directories, and back."""

from __future__ import annotations

import argparse
import ast
import collections
import hashlib
import pathlib

import numpy as np

from asanet_jax import __version__, checkpointing, errors
from asanet_jax.checkpointing import check_replaceable, load_model_dir, save_model
from asanet_jax.convert import cmx, imagenet_cnn, imagenet_mit
from asanet_jax.convert.imagenet import imagenet_arch, init_from_imagenet
from asanet_jax.convert.mapping import MAPPING_VERSION
from asanet_jax.convert.official import export_state_dict, load_state_dict
from asanet_jax.convert.state_dicts import CheckpointError, read_state_dict, write_state_dict
from asanet_jax.data import specs
from asanet_jax.models import segmentor
from asanet_jax.models.config import default_model_config, resolve

OFFICIAL_DATASETS = specs.OFFICIAL  # the registry in asanet_jax/data/specs.py


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def parse_overrides(items: list[str]) -> dict:
    """``["num_classes=7", "modalities='sar'"]`` -> dict; values are Python literals."""
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE, e.g. --set num_classes=7")
        try:
            out[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[key] = raw  # a bare word such as optical+sar or bfloat16
    return out


def imagenet_config(state: dict, overrides: dict) -> dict:
    """``config.model`` of a model whose streams an ImageNet backbone initialises: CMX for
    a MiT (SegFormer) file, SA-Gate for a ResNet, vFuseNet for a VGG-BN, ASANet for a
    ConvNeXt V2 one, with its sizes and `overrides`."""
    if imagenet_mit.is_mit(state):
        cfg = default_model_config("cmx").to_dict()
        sizes = imagenet_mit.imagenet_arch(state)
        sizes["num_heads"] = cmx.heads_for(sizes["embed_dims"], overrides)
    elif imagenet_cnn.is_resnet(state) or imagenet_cnn.is_vgg(state):
        # Loaded partially by name, as the official init: the model's sizes are the config's.
        arch = "sagate" if imagenet_cnn.is_resnet(state) else "vfusenet"
        cfg, sizes = default_model_config(arch).to_dict(), {}
    else:
        cfg = default_model_config().to_dict()
        depths, channels = imagenet_arch(state)
        sizes = {"depths": depths, "channels": channels}
    for field, value in overrides.items():
        if field in sizes and tuple(np.atleast_1d(value)) != tuple(np.atleast_1d(sizes[field])):
            raise CheckpointError(
                f"--set {field}={value!r} contradicts the ImageNet weights, which have "
                f"{sizes[field]!r}"
            )
    return {**cfg, **sizes, **overrides}


def convert(args) -> pathlib.Path:
    src = pathlib.Path(args.torch_checkpoint)
    out = pathlib.Path(args.output).absolute()
    if src.exists() and _inside(src, out):
        raise ValueError(
            f"{src}: the source is inside --output {out}, which the conversion writes; "
            "move it out first"
        )
    check_replaceable(out, args.overwrite)  # before the (possibly long) read
    print(f"reading {src}", flush=True)
    overrides = parse_overrides(args.set)
    state = read_state_dict(src)  # read once: the checkpoint may be large
    try:
        if args.kind == "official":
            model, _ = load_state_dict(
                state, overrides or None, allow_nonfinite=args.allow_nonfinite
            )
            report = None
        else:
            from flax import nnx

            spec = resolve(imagenet_config(state, overrides))
            model = segmentor.build(spec, rngs=nnx.Rngs(params=args.seed, dropout=args.seed + 1))
            report = init_from_imagenet(model, state, allow_nonfinite=args.allow_nonfinite)
            model.eval()
    except (CheckpointError, ValueError) as e:
        raise CheckpointError(f"{src}: {e}") from None
    dtypes = collections.Counter(str(v.dtype) for v in state.values())
    metadata = {
        "source": {
            "path": src.name,
            "sha256": sha256(src),
            "kind": args.kind,
            # Tensors per source dtype; parameters are stored as float32, statistics
            # counters as int32.
            "dtypes": dict(sorted(dtypes.items())),
        },
        "mapping_version": MAPPING_VERSION,
        "asanet_jax_version": __version__,
    }
    if report is not None:
        metadata["imagenet_init"] = report | {"seed": args.seed}
    if args.dataset is not None:
        # The official preprocessing of the dataset the weights were trained on, so that
        # prediction and evaluation need nothing else.
        spec = specs.get_spec(args.dataset)
        if spec.num_classes != model.config.num_classes:
            raise CheckpointError(
                f"{src}: the weights predict {model.config.num_classes} classes but "
                f"--dataset {args.dataset} has {spec.num_classes} ({', '.join(spec.classes)})"
            )
        metadata.update(checkpointing.dataset_record(spec, args.dataset))
    out = save_model(out, model, metadata=metadata, overwrite=args.overwrite)
    print(f"wrote {out}")
    narrowed = {d: n for d, n in dtypes.items() if d in ("float64", "float16", "bfloat16")}
    if narrowed:
        listed = ", ".join(f"{n} {d}" for d, n in narrowed.items())
        print(f"  stored {listed} source tensors as float32 (model.json records the source dtypes)")
    print(f"  model: {model.config.describe()}")
    if report is not None:
        print(
            f"  {report['format']} ImageNet weights: {report['loaded']} tensors into "
            f"{' and '.join(report['streams'])}; skipped {len(report['skipped'])} unused "
            f"keys; left at initialisation: {len(report['left_at_init'])} "
            f"({', '.join(report['left_at_init'][:4])}{', ...' if report['left_at_init'] else ''})"
        )
        if report.get("shape_mismatch_skipped"):
            print(
                "  skipped for their shapes, as the official init does: "
                + "; ".join(report["shape_mismatch_skipped"])
            )
    return out


def convert_main(argv=None) -> int:
    """The converter's command line; returns the exit status."""
    args = convert_args(argv)
    return errors.run(lambda: 0 if convert(args) else 1)


def convert_args(argv=None) -> argparse.Namespace:
    """The converter's flags, parsed (`convert` takes them)."""
    p = argparse.ArgumentParser(
        description="Convert official ASANet, CMX, SA-Gate or vFuseNet (mmseg) weights, or "
        "ImageNet ConvNeXt V2 / MiT weights, into a model directory (orbax weights + "
        "model.json)."
    )
    p.add_argument("--torch_checkpoint", required=True, help=".pth/.pt/.bin or .safetensors")
    p.add_argument("--output", required=True, help="model directory to create")
    p.add_argument(
        "--kind",
        choices=("official", "imagenet"),
        default="official",
        help="official: a trained mmseg segmentor, ASANet, CMX, SA-Gate or vFuseNet "
        "(architecture inferred); "
        "imagenet: a classifier backbone that initialises every stream: ConvNeXt V2 "
        "(mmpretrain/FAIR/timm) for ASANet, MiT (NVlabs SegFormer/mmseg) for CMX",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="config.model field the weights do not record, e.g. --set modalities=sar, "
        "--set num_heads='(1,2,5,8)' (CMX) or, for --kind imagenet, --set num_classes=7",
    )
    p.add_argument(
        "--dataset",
        choices=OFFICIAL_DATASETS,
        help="the dataset the official weights were trained on: records its official "
        "preprocessing, classes and palette in the model directory, so that predict.py and "
        "eval.py need nothing else",
    )
    p.add_argument("--seed", type=int, default=0, help="init seed of non-backbone parts")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --output that is a model directory (nothing else)",
    )
    p.add_argument(
        "--allow_nonfinite",
        action="store_true",
        help="convert weights holding NaN or Inf instead of refusing them",
    )
    return p.parse_args(argv)


def export_main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description="Write a model directory as an official-format mmseg checkpoint "
        "that loads strictly into the official PyTorch model (any of the four)."
    )
    p.add_argument("--checkpoint", required=True, help="model directory")
    p.add_argument("--output", required=True, help=".pth (torch) or .safetensors file")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    return errors.run(lambda: export(args))


def _inside(path: pathlib.Path, folder: pathlib.Path) -> bool:
    """Whether `path` is `folder` or lies below it, links resolved."""
    return pathlib.Path(path).resolve().is_relative_to(pathlib.Path(folder).resolve())


def export(args) -> int:
    out = pathlib.Path(args.output)
    if _inside(out, args.checkpoint):
        raise ValueError(
            f"--output {out} is inside the model directory {args.checkpoint} it exports; "
            "write it elsewhere"
        )
    if out.is_dir():
        raise FileExistsError(f"{out} is a folder; expected the path of a .pth or .safetensors")
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} already exists; --overwrite replaces it")
    model, _, meta = load_model_dir(args.checkpoint)
    state = export_state_dict(model)
    write_state_dict(state, out, meta={"asanet_jax_version": __version__, **meta})
    print(f"wrote {out} ({len(state)} tensors)")
    return 0
