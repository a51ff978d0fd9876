"""Command-line conversion of official weights into model directories, and back."""

from __future__ import annotations

import argparse
import ast
import hashlib
import os
import pathlib
import sys
import tempfile

import numpy as np

from asanet_jax import __version__
from asanet_jax.checkpointing import ModelCheckpointError, load_model, save_model
from asanet_jax.convert.imagenet import imagenet_arch, init_from_imagenet
from asanet_jax.convert.mapping import MAPPING_VERSION
from asanet_jax.convert.official import export_state_dict, load_torch_checkpoint
from asanet_jax.convert.reader import CheckpointError, read_state_dict
from asanet_jax.models.asanet import ASANet
from asanet_jax.models.config import default_model_config, resolve


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
            out[key] = raw  # a bare word such as rgb+sar or bfloat16
    return out


def convert(args) -> pathlib.Path:
    src = pathlib.Path(args.torch_checkpoint)
    overrides = parse_overrides(args.set)
    if args.kind == "official":
        model, _ = load_torch_checkpoint(src, overrides or None)
        report = None
    else:
        from flax import nnx

        state = read_state_dict(src)  # read once: the checkpoint may be large
        try:
            depths, channels = imagenet_arch(state)
            cfg = default_model_config().to_dict()
            cfg.update(depths=depths, channels=channels, **overrides)
            spec = resolve(cfg)
            model = ASANet(spec, rngs=nnx.Rngs(params=args.seed, dropout=args.seed + 1))
            report = init_from_imagenet(model, state)
        except (CheckpointError, ValueError) as e:
            raise CheckpointError(f"{src}: {e}") from None
        model.eval()
    metadata = {
        "source": {
            "path": src.name,
            "sha256": sha256(src),
            "kind": args.kind,
        },
        "mapping_version": MAPPING_VERSION,
        "asanet_jax_version": __version__,
    }
    if report is not None:
        metadata["imagenet_init"] = report | {"seed": args.seed}
    out = save_model(args.output, model, metadata=metadata, overwrite=args.overwrite)
    print(f"wrote {out}")
    spec = model.spec
    print(
        f"  model: {spec.modalities}, depths {spec.depths}, channels {spec.channels}, "
        f"{spec.num_classes} classes, sfm={spec.sfm}, fusion={spec.fusion}"
    )
    if report is not None:
        print(
            f"  {report['format']} ImageNet weights: {report['loaded']} tensors into "
            f"{' and '.join(report['streams'])}; skipped {len(report['skipped'])} classifier "
            f"keys; left at initialisation: {len(report['left_at_init'])} "
            f"({', '.join(report['left_at_init'][:4])}{', ...' if report['left_at_init'] else ''})"
        )
    return out


def convert_main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description="Convert official ASANet (mmseg) or ImageNet ConvNeXt V2 weights "
        "into a model directory (orbax weights + model.json)."
    )
    p.add_argument("--torch_checkpoint", required=True, help=".pth/.pt/.bin or .safetensors")
    p.add_argument("--output", required=True, help="model directory to create")
    p.add_argument(
        "--kind",
        choices=("official", "imagenet"),
        default="official",
        help="official: a trained mmseg segmentor (architecture inferred); imagenet: a "
        "ConvNeXt V2 classifier (mmpretrain/FAIR/timm) that initialises every stream",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="config.model field the weights do not record, e.g. --set modalities=sar "
        "or, for --kind imagenet, --set num_classes=7",
    )
    p.add_argument("--seed", type=int, default=0, help="init seed of non-backbone parts")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    args = p.parse_args(argv)
    try:
        convert(args)
    except (CheckpointError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def export_main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description="Write a model directory as an official-format mmseg checkpoint "
        "that loads strictly into the official PyTorch ASANet."
    )
    p.add_argument("--checkpoint", required=True, help="model directory")
    p.add_argument("--output", required=True, help=".pth (torch) or .safetensors file")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    out = pathlib.Path(args.output)
    try:
        if out.exists() and not args.overwrite:
            raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
        model, _, meta = load_model(args.checkpoint)
        state = export_state_dict(model)
        write_state_dict(state, out, meta={"asanet_jax_version": __version__, **meta})
    except (ModelCheckpointError, FileExistsError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out} ({len(state)} tensors)")
    return 0


def write_state_dict(state: dict[str, np.ndarray], path, meta: dict) -> None:
    """Atomically write ``{'meta': ..., 'state_dict': ...}`` (.pth) or a .safetensors file."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        if path.suffix == ".safetensors":
            from safetensors.numpy import save_file

            save_file({k: np.array(v, order="C", copy=True) for k, v in state.items()}, tmp)
        else:
            import torch

            # np.array copies: writable, contiguous, and 0-d counters stay 0-d.
            tensors = {
                k: torch.from_numpy(np.array(v, order="C", copy=True)) for k, v in state.items()
            }
            torch.save({"meta": meta, "state_dict": tensors}, tmp)
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
