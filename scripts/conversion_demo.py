"""A first run: official-format weights -> converter -> model directory -> inference.

    python scripts/conversion_demo.py --workdir runs/conversion_demo

It writes a randomly initialised ASANet as an official mmseg checkpoint (standing in
for weights trained with the official code), converts it exactly as
``scripts/convert_torch_weights.py`` does, reloads the model directory, checks that
the reloaded model gives the same logits, and times jitted inference on this machine.
"""

from __future__ import annotations

from asanet_jax import interrupts

interrupts.hold()  # first: a Ctrl-C during the imports below ends cleanly too

import argparse
import pathlib
import shutil
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import asanet_jax
from asanet_jax import errors
from asanet_jax.convert.cli import convert, convert_args
from asanet_jax.convert.official import export_state_dict
from asanet_jax.convert.state_dicts import write_state_dict
from asanet_jax.models import ASANet, count_params
from asanet_jax.predict.predictor import Predictor


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", default="runs/conversion_demo")
    p.add_argument("--backbone", default="atto", help="ConvNeXt V2 variant (tiny = the paper)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=2)
    args = p.parse_args()

    work = pathlib.Path(args.workdir)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)

    model = ASANet({"backbone": args.backbone}, rngs=nnx.Rngs(0))
    model.eval()
    print(f"ASANet with ConvNeXt V2 {args.backbone}: {count_params(model):,} parameters")
    official = work / "official_format.pth"
    write_state_dict(export_state_dict(model), official, meta={"note": "random init"})
    print(f"1. wrote an official-format mmseg checkpoint: {official}")

    converted = work / "converted"
    convert(convert_args(["--torch_checkpoint", str(official), "--output", str(converted)]))
    print(f"2. converted it to a model directory: {converted}")

    reloaded, config, meta = asanet_jax.load(converted)
    print(f"3. reloaded it (source sha256 {meta['source']['sha256'][:12]}...)")

    rng = np.random.default_rng(0)
    shape = (args.batch, args.size, args.size, 3)
    rgb = rng.normal(size=shape).astype(np.float32)  # inputs are normalised images
    sar = rng.normal(size=shape).astype(np.float32)

    predictor = Predictor(reloaded)
    logits = predictor(rgb, sar)
    labels = np.asarray(logits.argmax(-1))
    ref = Predictor(model)(rgb, sar)
    diff = float(jnp.abs(logits - ref).max())
    print(f"4. reloaded logits equal the original's (max |diff| {diff:.1e})")
    assert diff == 0.0, "conversion changed the model"

    for dtype in ("float32", "bfloat16"):
        m, _, _ = asanet_jax.load(converted, {"dtype": dtype})
        predict = Predictor(m)
        jax.block_until_ready(predict(rgb, sar))  # compile
        times = []
        for _ in range(3):
            t = time.perf_counter()
            jax.block_until_ready(predict(rgb, sar))
            times.append(time.perf_counter() - t)
        rate = args.batch / float(np.median(times))
        print(f"5. {dtype} inference at {args.size}x{args.size}: {rate:.1f} images/s")

    np.save(work / "prediction.npy", np.asarray(labels))
    counts = np.bincount(np.asarray(labels).ravel(), minlength=config.num_classes)
    print(f"6. wrote {work / 'prediction.npy'}; predicted class counts {counts.tolist()}")


if __name__ == "__main__":
    sys.exit(errors.run(main))
