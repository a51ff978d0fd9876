"""Label a whole optical + SAR GeoTIFF scene with a trained model.

    python scripts/predict.py --checkpoint runs/pie/model \
        --optical scene_rgb.tif --sar scene_sar.tif --output scene_labels.tif \
        [--window 512 --stride 341 --confidence scene_conf.tif --preview scene.png]

A model directory written by training (or by convert_torch_weights.py --dataset) records
how raster values become its inputs (bands, SAR scaling, nodata, normalisation), its
classes and palette, so it needs nothing else. An official .pth/.safetensors records
none: name its dataset with --dataset (pie_rgb_sar, ddhr_sk, whu_opt_sar, or one built
under --data_dir). The scene is read window by window, so it may be far larger than
memory. The output is a uint8 GeoTIFF of class ids (255 = no data) with the input's
CRS and geotransform and the class palette as colour table.
"""

from __future__ import annotations

import pathlib

from absl import flags, logging

import asanet_jax
from asanet_jax import cli, evaluation, inference, loading, scene

flags.DEFINE_string("checkpoint", None, "Model directory or official .pth/.safetensors.")
flags.DEFINE_string("optical", None, "Optical GeoTIFF.")
flags.DEFINE_string("sar", None, "SAR GeoTIFF, co-registered with the optical one.")
flags.DEFINE_string("output", None, "Output label GeoTIFF.")
flags.DEFINE_string(
    "dataset", None, "Dataset of a checkpoint that records none (default: the recorded one)."
)
flags.DEFINE_string("data_dir", None, "Where a --dataset that is not built in was built.")
flags.DEFINE_integer("window", 512, "Window size in pixels.")
flags.DEFINE_integer("stride", None, "Window stride (default: 2/3 of the window).")
flags.DEFINE_string("confidence", None, "Optional confidence GeoTIFF (top probability x 255).")
flags.DEFINE_string("preview", None, "PNG preview (default: <output>.png).")
flags.DEFINE_bool("overwrite", False, "Replace existing output files.")
flags.mark_flags_as_required(["checkpoint", "optical", "sar", "output"])


def main(argv) -> int:
    del argv
    logging.set_verbosity(logging.WARNING)
    f = flags.FLAGS
    preview = f.preview or str(pathlib.Path(f.output).with_suffix(".png"))
    outputs = [f.output, preview] + ([f.confidence] if f.confidence else [])
    scene.check_outputs(outputs, inputs=[f.optical, f.sar], overwrite=f.overwrite)
    model, _, meta = asanet_jax.load(f.checkpoint)
    spec = loading.model_dataset(meta, f.checkpoint, f.dataset, f.data_dir)
    evaluation.check_fits(model.config, spec)
    out = scene.predict_scene(
        inference.Predictor(model),
        f.optical,
        f.sar,
        f.output,
        spec,
        f.window,
        f.stride,
        f.confidence,
        preview,
    )
    print(f"wrote {out} and {preview}" + (f" and {f.confidence}" if f.confidence else ""))
    return 0


if __name__ == "__main__":
    cli.run_absl(main)
