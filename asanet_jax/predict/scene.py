"""Label a whole optical + SAR GeoTIFF scene of any size with sliding windows.

Three stages overlap in time:

1. A reader thread opens each raster once. It reads one row of windows at a time (the
   scene's full width, the window's height), turns raster values into model inputs as
   training did (``preprocess.model_inputs``: the files' nodata values as missing, SAR
   scaling, band selection, normalisation), cuts the row into windows and packs them
   into batches of ``batch_size`` (the scene's last batch padded with zeros).
2. The calling thread runs each batch through the predictor, data-parallel over the
   predictor's devices; JAX dispatches it asynchronously.
3. A writer thread blends each window's logits into the rows it covers
   (``windows.blend_weights``) and hands rows to ``outputs.SceneWriter`` as soon
   as no later window can touch them.

Queues of ``prefetch`` batches link the stages. Memory therefore holds about
(window height + stride) x scene width pixels of logits, plus the batches in flight,
whatever the scene's size. The result is sliding-window inference over the whole scene
in memory (``windows.slide``), up to float32 rounding.

The modules: `rasters` (opening, warping, reading), `windows` (the grid and the
blender), `stages` (the reader and writer threads), `outputs` (the COGs).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from asanet_jax import interrupts
from asanet_jax.data import specs
from asanet_jax.predict.outputs import NODATA, OutputPaths, SceneWriter
from asanet_jax.predict.predictor import Predictor
from asanet_jax.predict.rasters import SceneInputs, SceneRasters, open_scene, pixel_area_km2
from asanet_jax.predict.stages import Reader, Writer, batches
from asanet_jax.predict.windows import Blender, plan_windows

__all__ = ["NODATA", "SceneStats", "label_scene", "predict_scene"]


@dataclasses.dataclass(frozen=True)
class SceneStats:
    """What one scene's prediction did: `pixels` labelled (not nodata), their area (None
    without a CRS), the windows run, and the wall time."""

    pixels: int
    nodata_pixels: int
    km2: float | None
    windows: int
    seconds: float

    @property
    def windows_per_s(self) -> float:
        return self.windows / self.seconds if self.seconds > 0 else float("nan")

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "windows_per_s": round(self.windows_per_s, 3)}


def predict_scene(
    predictor: Predictor,
    scene: SceneInputs,
    outputs: OutputPaths,
    spec: specs.DatasetSpec,
    *,
    window: int = 512,
    stride: int | None = None,
    batch_size: int | None = None,
    blend: str = "mean",
    prefetch: int = 2,
    tags: dict | None = None,
    stats_tag: Callable[[SceneStats], dict] | None = None,
    on_windows: Callable[[int], None] = lambda n: None,
) -> SceneStats:
    """Label `scene` into `outputs` (see the module docstring).

    `tags` go into every raster, and so do those `stats_tag(stats)` returns once the
    windows are done. `on_windows(n)` is called as windows finish, for progress.
    `batch_size` defaults to ``Predictor.default_batch_size`` and must be a multiple of the
    predictor's device count.
    """
    start = time.perf_counter()
    if prefetch < 1:
        raise ValueError(f"prefetch {prefetch}: expected at least 1 batch")
    plan = plan_windows(
        scene.height, scene.width, window, stride, predictor.config.min_input_side, scene.optical
    )
    if batch_size is None:
        batch_size = predictor.default_batch_size
    predictor.check_batch(batch_size)
    areas = pixel_area_km2(scene.crs, scene.transform, scene.height)
    rasters = SceneRasters(scene)
    try:
        with SceneWriter(
            outputs, scene.height, scene.width, scene.crs, scene.transform, spec, tags or {}, areas
        ) as writer:
            blender = Blender(plan, scene.width, spec.num_classes, blend, writer, on_windows)
            reader = Reader(batches(rasters, plan, spec, batch_size), prefetch)
            stage3 = Writer(blender.add, prefetch)
            try:
                for batch in reader:
                    stage3.put(batch, predictor(batch.optical, batch.sar))
                stage3.join()
            finally:
                # The threads must stop before the rasters and outputs close under them,
                # so a second Ctrl-C waits for that.
                with interrupts.deferred("interrupt received: stopping the scene's threads"):
                    try:
                        reader.close()
                    finally:
                        stage3.close()
            stats = SceneStats(
                pixels=writer.labelled,
                nodata_pixels=scene.pixels - writer.labelled,
                km2=None if areas is None else round(writer.km2, 6),
                windows=plan.count,
                seconds=round(time.perf_counter() - start, 3),
            )
            writer.finish(stats_tag(stats) if stats_tag else None)
    finally:
        rasters.close()
    return stats


def label_scene(
    predictor: Predictor,
    optical,
    sar,
    output,
    spec: specs.DatasetSpec,
    *,
    align: bool = False,
    confidence: bool = False,
    probabilities: bool = False,
    preview: bool = False,
    **settings,
) -> SceneStats:
    """`predict_scene` from paths: checks the pair, names the optional outputs after
    `output` (``OutputPaths.beside``), and takes the same keyword settings."""
    paths = OutputPaths.beside(output, confidence, probabilities, preview)
    return predict_scene(predictor, open_scene(optical, sar, spec, align), paths, spec, **settings)
