"""Label a whole optical + SAR GeoTIFF scene of any size with sliding windows.

Windows are read from disk with rasterio one row of windows at a time, and rows of the
output are written as soon as no later window can touch them, so memory holds about
(window height + stride) x scene width pixels whatever the scene's height. The result
equals sliding-window inference over the whole scene in memory (`inference.slide`).

Raster values become model inputs exactly as in training (``preprocess.model_inputs``:
the files' nodata values as missing, SAR scaling, band selection, normalisation). A
percentile SAR stretch takes its limits from the whole scene, in a first pass over the
SAR raster decimated to at most 2048 pixels a side.

Output: a single-band uint8 GeoTIFF of class ids with the input's CRS and geotransform,
255 as nodata (where a band the model sees has no data), the
class palette as its colour table; optionally a confidence raster (uint8, the top class
probability x 255) and a PNG preview. Files are written under temporary names and
renamed when complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib

import jax
import numpy as np

from asanet_jax import files, inference, visualize
from asanet_jax.data import io, preprocess, specs
from asanet_jax.labels import IGNORE

NODATA = IGNORE  # label maps' nodata: where an input has no data


@dataclasses.dataclass(frozen=True)
class SceneInputs:
    optical: pathlib.Path
    sar: pathlib.Path
    height: int
    width: int
    crs: object
    transform: object
    optical_nodata: float | None
    sar_nodata: float | None


def open_scene(optical_path, sar_path, spec: specs.DatasetSpec) -> SceneInputs:
    """Check that the two rasters are co-registered and have usable bands."""
    import rasterio
    from rasterio.errors import RasterioError

    meta = {}
    for role, path in (("optical", optical_path), ("SAR", sar_path)):
        path = pathlib.Path(path)
        if not path.is_file():
            raise io.DataError(f"{path}: {role} file not found")
        try:
            with rasterio.open(path) as src:
                meta[role] = (
                    path,
                    src.height,
                    src.width,
                    src.crs,
                    src.transform,
                    src.count,
                    src.nodata,
                )
        except (RasterioError, OSError) as e:
            raise io.DataError(f"{path}: unreadable {role} raster ({e})") from e
    (op, oh, ow, ocrs, otr, ocount, onod), (sp, sh, sw, scrs, str_, scount, snod) = (
        meta["optical"],
        meta["SAR"],
    )
    if (oh, ow) != (sh, sw):
        raise io.DataError(
            f"optical and SAR are not co-registered: {op} is {oh}x{ow} but {sp} is {sh}x{sw}"
        )
    if ocrs != scrs:
        raise io.DataError(
            f"optical and SAR are not co-registered: {op} has CRS {ocrs} but {sp} has {scrs}"
        )
    if not otr.almost_equals(str_):
        raise io.DataError(
            f"optical and SAR are not co-registered: {op} has geotransform {tuple(otr)[:6]} "
            f"but {sp} has {tuple(str_)[:6]}"
        )
    preprocess.band_indices(spec.optical_bands, ocount, "optical", op)
    preprocess.band_indices(spec.sar_bands, scount, "sar", sp)
    return SceneInputs(op, sp, oh, ow, ocrs, otr, onod, snod)


def check_outputs(outputs, inputs, overwrite: bool) -> None:
    """Refuse output paths that are inputs, repeat, exist (unless `overwrite`), are
    folders, or lie in a folder that does not exist; before any work starts."""
    seen = []
    for out in map(pathlib.Path, outputs):
        for given in inputs:
            if files.same_file(out, given):
                raise io.DataError(f"{out}: this is the input {given}; choose another output")
        if any(files.same_file(out, other) or out.absolute() == other for other in seen):
            raise io.DataError(f"{out}: given for two outputs")
        seen.append(out.absolute())
        if out.is_dir():
            raise io.DataError(f"{out} is a folder; expected the path of a file to write")
        if out.exists() and not overwrite:
            raise io.DataError(f"{out} already exists; --overwrite replaces it")
        if not out.absolute().parent.is_dir():
            raise io.DataError(f"{out}: the folder {out.absolute().parent} does not exist")


def _read(path, window, nodata, out_shape=None) -> np.ndarray:
    """(H, W, bands) float32 of a window, the file's nodata value as NaN."""
    import rasterio

    with rasterio.open(path) as src:
        shape = None if out_shape is None else (src.count, *out_shape)
        data = src.read(window=window, out_shape=shape)
    return io.nodata_as_nan(io.Raster(np.moveaxis(data, 0, -1), nodata=nodata))


def scene_sar_limits(scene: SceneInputs, spec, max_side: int = 2048) -> np.ndarray | None:
    """(bands, 2) limits of a percentile SAR stretch over the whole scene, from the SAR
    raster decimated (nearest) to at most `max_side` pixels a side; None for the other
    scalings. Training stretched each example by its own percentiles: a scene's are the
    closest a window-by-window prediction can come to that."""
    if spec.sar_scaling["kind"] != "percentile":
        return None
    factor = max(scene.height, scene.width) / max_side
    shape = (
        (max(1, round(scene.height / factor)), max(1, round(scene.width / factor)))
        if factor > 1
        else None
    )
    return preprocess.percentile_limits(
        _read(scene.sar, None, scene.sar_nodata, shape), spec.sar_scaling
    )


def predict_scene(
    predictor: inference.Predictor,
    optical_path,
    sar_path,
    output_path,
    spec: specs.DatasetSpec,
    window: int = 512,
    stride: int | None = None,
    confidence_path=None,
    preview_path=None,
    progress: bool = True,
) -> pathlib.Path:
    """Label the scene; returns the output path. See the module docstring."""
    import rasterio
    from rasterio.windows import Window
    from tqdm import tqdm

    scene = open_scene(optical_path, sar_path, spec)
    min_side = 2 ** (len(predictor.config.depths) + 1)
    if min(scene.height, scene.width) < min_side:
        raise io.DataError(
            f"{scene.optical} is {scene.height}x{scene.width} pixels; the model downsamples "
            f"by {min_side}, so a scene must be at least {min_side}x{min_side}"
        )
    stride = stride or max(window * 2 // 3, 1)
    sar_limits = scene_sar_limits(scene, spec)
    # Along a side shorter than the window, the window is the whole side; a scene within
    # one window is therefore whole-image inference.
    win = (min(window, scene.height), min(window, scene.width))
    ys = inference.window_starts(scene.height, win[0], min(stride, win[0]))
    xs = inference.window_starts(scene.width, win[1], min(stride, win[1]))
    k = spec.num_classes
    output_path = pathlib.Path(output_path)
    profile = dict(
        driver="GTiff",
        height=scene.height,
        width=scene.width,
        count=1,
        dtype="uint8",
        crs=scene.crs,
        transform=scene.transform,
        nodata=NODATA,
        tiled=True,
        blockxsize=256,
        blockysize=256,
        compress="deflate",
    )
    with contextlib.ExitStack() as outputs:
        tmp_out = outputs.enter_context(files.atomic_output(output_path))
        tmp_conf = (
            outputs.enter_context(files.atomic_output(confidence_path))
            if confidence_path is not None
            else None
        )
        with rasterio.open(tmp_out, "w", **profile) as dst:
            dst.write_colormap(1, {i: (*c, 255) for i, c in enumerate(spec.palette)})
            conf_dst = (
                rasterio.open(tmp_conf, "w", **{**profile, "nodata": 0}) if tmp_conf else None
            )
            # Logit sums and window counts for rows [top, top + rows) of the scene.
            top, acc, cnt, missing = 0, None, None, None
            bar = tqdm(
                total=len(ys) * len(xs), unit="window", disable=not progress, desc=output_path.name
            )
            for i, y in enumerate(ys):
                band = Window(0, y, scene.width, win[0])
                o_in, s_in, band_missing = preprocess.model_inputs(
                    _read(scene.optical, band, scene.optical_nodata),
                    _read(scene.sar, band, scene.sar_nodata),
                    spec,
                    f"{scene.optical} / {scene.sar}",
                    sar_limits,
                )
                o_in, s_in = o_in[None], s_in[None]
                if acc is None:
                    top = y
                    acc = np.zeros((0, scene.width, k), np.float32)
                    cnt = np.zeros((0, scene.width, 1), np.float32)
                    missing = np.zeros((0, scene.width), bool)
                grow = y + win[0] - (top + acc.shape[0])
                if grow > 0:
                    acc = np.concatenate([acc, np.zeros((grow, scene.width, k), np.float32)])
                    cnt = np.concatenate([cnt, np.zeros((grow, scene.width, 1), np.float32)])
                    missing = np.concatenate([missing, np.zeros((grow, scene.width), bool)])
                rows = slice(y - top, y - top + win[0])
                missing[rows] |= band_missing
                for x in xs:
                    cols = slice(x, x + win[1])
                    acc[rows, cols] += np.asarray(predictor(o_in[:, :, cols], s_in[:, :, cols]))[0]
                    cnt[rows, cols] += 1
                    bar.update(1)
                # Rows above the next window row are final: write and drop them.
                done = (ys[i + 1] if i + 1 < len(ys) else scene.height) - top
                if done > 0:
                    _write_rows(dst, conf_dst, top, acc[:done], cnt[:done], missing[:done])
                    acc, cnt, missing = acc[done:], cnt[done:], missing[done:]
                    top += done
            bar.close()
            if conf_dst is not None:
                conf_dst.close()
    if preview_path is not None:
        write_preview(output_path, preview_path, spec)
    return output_path


def _write_rows(dst, conf_dst, top, acc, cnt, missing):
    from rasterio.windows import Window

    logits = acc / np.maximum(cnt, 1)
    label = logits.argmax(-1).astype(np.uint8)
    label[missing] = NODATA
    window = Window(0, top, label.shape[1], label.shape[0])
    dst.write(label[None], window=window)
    if conf_dst is not None:
        p = np.asarray(jax.nn.softmax(logits, -1)).max(-1)
        conf = np.clip(np.rint(p * 255), 1, 255).astype(np.uint8)
        conf[missing] = 0
        conf_dst.write(conf[None], window=window)


def write_preview(label_path, preview_path, spec, max_side: int = 1024) -> None:
    """A colour PNG of the label raster, decimated so its longer side is at most max_side."""
    import rasterio

    with rasterio.open(label_path) as src:
        scale = max(src.height, src.width) / max_side
        shape = (
            max(1, round(src.height / max(scale, 1))),
            max(1, round(src.width / max(scale, 1))),
        )
        label = src.read(1, out_shape=shape, resampling=rasterio.enums.Resampling.nearest)
    visualize.save_png(visualize.colorize(label, spec.palette, NODATA), preview_path)
