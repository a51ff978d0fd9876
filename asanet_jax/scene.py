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
   (``inference.blend_weights``) and hands rows to ``scene_outputs.SceneWriter`` as soon
   as no later window can touch them.

Queues of ``prefetch`` batches link the stages. Memory therefore holds about
(window height + stride) x scene width pixels of logits, plus the batches in flight,
whatever the scene's size. The result is sliding-window inference over the whole scene
in memory (``inference.slide``), up to float32 rounding.

A percentile SAR stretch takes its limits from the whole scene, in a first pass over
the SAR raster decimated to at most 2048 pixels a side. With ``align``, a SAR raster on
another grid or CRS is warped onto the optical grid as it is read (GDAL's warper through
rasterio's WarpedVRT, bilinear). Pixels the warp leaves empty count as missing.
"""

from __future__ import annotations

import dataclasses
import pathlib
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from asanet_jax import files, inference, scene_outputs
from asanet_jax.data import io, preprocess, specs

NODATA = scene_outputs.NODATA
PERCENTILE_PASS_SIDE = 2048


@dataclasses.dataclass(frozen=True)
class SceneInputs:
    """A checked optical + SAR pair; `warp_sar` when the SAR is on another grid."""

    optical: pathlib.Path
    sar: pathlib.Path
    height: int
    width: int
    crs: object
    transform: object
    optical_nodata: float | None
    sar_nodata: float | None
    warp_sar: bool = False

    @property
    def pixels(self) -> int:
        return self.height * self.width


def _header(path: pathlib.Path, role: str) -> dict:
    import rasterio
    from rasterio.errors import RasterioError

    if not path.is_file():
        raise io.DataError(f"{path}: {role} file not found")
    try:
        with rasterio.open(path) as src:
            return dict(
                height=src.height,
                width=src.width,
                crs=src.crs,
                transform=src.transform,
                count=src.count,
                nodata=src.nodata,
                bounds=src.bounds,
            )
    except (RasterioError, OSError) as e:
        raise io.DataError(f"{path}: unreadable {role} raster ({e})") from e


def open_scene(optical_path, sar_path, spec: specs.DatasetSpec, align: bool = False):
    """Check that the rasters are readable, have the bands the model needs, and are on
    one grid (or, with `align`, overlap in known CRSs); DataError naming the files."""
    op, sp = pathlib.Path(optical_path), pathlib.Path(sar_path)
    o, s = _header(op, "optical"), _header(sp, "SAR")
    preprocess.band_indices(spec.optical_bands, o["count"], "optical", op)
    preprocess.band_indices(spec.sar_bands, s["count"], "sar", sp)
    mismatch = None
    if (o["height"], o["width"]) != (s["height"], s["width"]):
        mismatch = f"{op} is {o['height']}x{o['width']} but {sp} is {s['height']}x{s['width']}"
    elif o["crs"] != s["crs"]:
        mismatch = f"{op} has CRS {o['crs']} but {sp} has {s['crs']}"
    elif not o["transform"].almost_equals(s["transform"]):
        mismatch = (
            f"{op} has geotransform {tuple(o['transform'])[:6]} "
            f"but {sp} has {tuple(s['transform'])[:6]}"
        )
    if mismatch and not align:
        raise io.DataError(
            f"optical and SAR are not co-registered: {mismatch} "
            "(--align warps the SAR onto the optical grid)"
        )
    if mismatch:
        _check_overlap(op, o, sp, s)
    return SceneInputs(
        op,
        sp,
        o["height"],
        o["width"],
        o["crs"],
        o["transform"],
        o["nodata"],
        s["nodata"],
        warp_sar=bool(mismatch),
    )


def _check_overlap(op, o, sp, s) -> None:
    from rasterio.warp import transform_bounds

    for path, header in ((op, o), (sp, s)):
        if header["crs"] is None:
            raise io.DataError(f"{path} has no CRS; the SAR cannot be aligned without one")
    left, bottom, right, top = transform_bounds(s["crs"], o["crs"], *s["bounds"])
    b = o["bounds"]
    if left >= b.right or right <= b.left or bottom >= b.top or top <= b.bottom:
        raise io.DataError(f"{sp} does not overlap {op}; nothing to align")


class _Rasters:
    """Both rasters of a scene, each opened once; windows read as (H, W, bands) float32
    with missing values NaN."""

    def __init__(self, scene: SceneInputs):
        import rasterio
        from rasterio.enums import Resampling
        from rasterio.vrt import WarpedVRT

        self.scene = scene
        self._optical = rasterio.open(scene.optical)
        self._sar_file = rasterio.open(scene.sar)
        self._sar, self._alpha = self._sar_file, None
        if scene.warp_sar:
            nodata, alpha = scene.sar_nodata, False
            if nodata is None and np.issubdtype(np.dtype(self._sar_file.dtypes[0]), np.floating):
                nodata = float("nan")
            elif nodata is None:  # integers and no nodata value: an alpha band marks the gaps
                alpha = True
            self._sar = WarpedVRT(
                self._sar_file,
                crs=scene.crs,
                transform=scene.transform,
                width=scene.width,
                height=scene.height,
                resampling=Resampling.bilinear,
                nodata=nodata,
                add_alpha=alpha,
            )
            self._alpha = self._sar.count if alpha else None
        self.sar_bands = self._sar_file.count

    def read(self, window) -> tuple[np.ndarray, np.ndarray]:
        data = np.moveaxis(self._optical.read(window=window), 0, -1)
        optical = io.nodata_as_nan(io.Raster(data, nodata=self.scene.optical_nodata))
        return optical, self._read_sar(window)

    def _read_sar(self, window, out_shape=None) -> np.ndarray:
        bands = list(range(1, self.sar_bands + 1))
        shape = None if out_shape is None else (len(bands), *out_shape)
        data = self._sar.read(bands, window=window, out_shape=shape)
        nodata = self._sar.nodata if self.scene.warp_sar else self.scene.sar_nodata
        sar = io.nodata_as_nan(io.Raster(np.moveaxis(data, 0, -1), nodata=nodata))
        if self._alpha is not None:
            shape = None if out_shape is None else out_shape
            alpha = self._sar.read(self._alpha, window=window, out_shape=shape)
            sar[alpha == 0] = np.nan
        return sar

    def sar_limits(self, spec, max_side: int = PERCENTILE_PASS_SIDE) -> np.ndarray | None:
        """(bands, 2) limits of a percentile SAR stretch over the whole scene, from the SAR
        decimated (nearest) to at most `max_side` pixels a side; None for other scalings.
        Training stretched each example by its own percentiles; a scene's are the closest
        a window-by-window prediction can come to that."""
        if spec.sar_scaling["kind"] != "percentile":
            return None
        h, w = self.scene.height, self.scene.width
        factor = max(h, w) / max_side
        shape = (max(1, round(h / factor)), max(1, round(w / factor))) if factor > 1 else None
        return preprocess.percentile_limits(self._read_sar(None, shape), spec.sar_scaling)

    def close(self) -> None:
        if self._sar is not self._sar_file:
            self._sar.close()
        self._sar_file.close()
        self._optical.close()


def scene_sar_limits(scene: SceneInputs, spec) -> np.ndarray | None:
    """The percentile stretch's limits over the scene (``_Rasters.sar_limits``)."""
    rasters = _Rasters(scene)
    try:
        return rasters.sar_limits(spec)
    finally:
        rasters.close()


@dataclasses.dataclass(frozen=True)
class WindowPlan:
    """Window starts over a scene: rows `ys`, columns `xs`, each window `size` (h, w)."""

    size: tuple[int, int]
    ys: list[int]
    xs: list[int]

    @property
    def count(self) -> int:
        return len(self.ys) * len(self.xs)


def default_stride(window: int) -> int:
    """Two thirds of the window (341 for 512), the stride when none is given."""
    return max(window * 2 // 3, 1)


def plan_windows(height, width, window: int, stride: int | None, min_side: int, where):
    """mmseg's window grid. Along a side shorter than the window, the window is the whole
    side, so a scene within one window is whole-image inference."""
    if min(height, width) < min_side:
        raise io.DataError(
            f"{where} is {height}x{width} pixels; the model downsamples by {min_side}, so "
            f"a scene must be at least {min_side}x{min_side}"
        )
    stride = stride or default_stride(window)
    if window < min_side or not 0 < stride <= window:
        raise io.DataError(
            f"window {window} and stride {stride}: the window must be at least {min_side} "
            "and the stride between 1 and the window"
        )
    size = (min(window, height), min(window, width))
    ys = inference.window_starts(height, size[0], min(stride, size[0]))
    xs = inference.window_starts(width, size[1], min(stride, size[1]))
    return WindowPlan(size, ys, xs)


@dataclasses.dataclass
class _Batch:
    optical: np.ndarray  # (batch_size, h, w, 3) float32, padded with zeros
    sar: np.ndarray
    windows: list[tuple[int, int]]  # (row index, x) of the real windows
    rows: list[tuple[int, np.ndarray]]  # (row index, missing (h, W)) of rows begun here


def _batches(rasters: _Rasters, plan: WindowPlan, spec, batch_size: int) -> Iterator[_Batch]:
    """The scene's windows as model inputs, in batches (stage 1)."""
    from rasterio.windows import Window

    scene = rasters.scene
    limits = rasters.sar_limits(spec)
    (h, w), width = plan.size, scene.width
    where = f"{scene.optical} / {scene.sar}"

    def empty():
        zeros = np.zeros((batch_size, h, w, 3), np.float32)
        return _Batch(zeros, zeros.copy(), [], [])

    batch = empty()
    for i, y in enumerate(plan.ys):
        optical, sar, missing = preprocess.model_inputs(
            *rasters.read(Window(0, y, width, h)), spec, where, limits
        )
        batch.rows.append((i, missing))
        for x in plan.xs:
            n = len(batch.windows)
            batch.optical[n] = optical[:, x : x + w]
            batch.sar[n] = sar[:, x : x + w]
            batch.windows.append((i, x))
            if len(batch.windows) == batch_size:
                yield batch
                batch = empty()
    if batch.windows:
        yield batch


class _Blender:
    """Stage 3: sums weighted logits of the rows from `top` on, and writes the rows that
    no later window touches."""

    def __init__(self, plan: WindowPlan, width, num_classes, blend, writer, on_windows):
        self.plan, self.width, self.k = plan, width, num_classes
        # mean: plain sums and counts (what weights of 1 give, without the products)
        self.weights = None if blend == "mean" else inference.blend_weights(*plan.size, blend)
        self.writer, self.on_windows = writer, on_windows
        self.top = plan.ys[0]
        self.total = np.zeros((0, width, num_classes), np.float32)
        self.count = np.zeros((0, width, 1), np.float32)
        self.missing = np.zeros((0, width), bool)
        self.left = {i: len(plan.xs) for i in range(len(plan.ys))}  # windows to come per row
        self.next_row = 0  # the first row of windows not yet complete

    def add(self, batch: _Batch, logits) -> None:
        h, w = self.plan.size
        for i, missing in batch.rows:
            end = self.plan.ys[i] + h - self.top
            grow = end - self.total.shape[0]
            if grow > 0:
                self.total = np.concatenate(
                    [self.total, np.zeros((grow, self.width, self.k), np.float32)]
                )
                self.count = np.concatenate(
                    [self.count, np.zeros((grow, self.width, 1), np.float32)]
                )
                self.missing = np.concatenate([self.missing, np.zeros((grow, self.width), bool)])
            self.missing[end - h : end] |= missing
        logits = np.asarray(logits)  # waits for the device
        for n, (i, x) in enumerate(batch.windows):
            rows = slice(self.plan.ys[i] - self.top, self.plan.ys[i] - self.top + h)
            if self.weights is None:
                self.total[rows, x : x + w] += logits[n]
                self.count[rows, x : x + w] += 1
            else:
                self.total[rows, x : x + w] += logits[n] * self.weights
                self.count[rows, x : x + w] += self.weights
            self.left[i] -= 1
        self.on_windows(len(batch.windows))
        while self.next_row < len(self.plan.ys) and self.left[self.next_row] == 0:
            self.next_row += 1
            self._flush()

    def _flush(self) -> None:
        """Write the rows above the next incomplete row of windows."""
        i = self.next_row
        end = self.plan.ys[i] if i < len(self.plan.ys) else self.top + self.total.shape[0]
        done = end - self.top
        if done <= 0:
            return
        logits = self.total[:done] / self.count[:done]
        self.writer.write(self.top, logits, self.missing[:done])
        self.total, self.count = self.total[done:], self.count[done:]
        self.missing = self.missing[done:]
        self.top = end


_END = object()


class _Reader:
    """Stage 1 in a daemon thread: iterates `items` at most `size` ahead of the caller,
    whom its error reaches. ``close`` stops and joins it (before the rasters close)."""

    def __init__(self, items: Iterable, size: int):
        self.q: queue.Queue = queue.Queue(maxsize=size)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(items,), daemon=True)
        self.thread.start()

    def _run(self, items) -> None:
        try:
            for item in items:
                if not self._put(item):
                    return
            self._put(_END)
        except BaseException as e:  # raised in the caller
            self._put(e)

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator:
        while (item := self.q.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


class _Writer:
    """Stage 3 in a daemon thread: ``fn(*item)`` for each ``put`` item, at most `size`
    queued. Its error is raised by the next ``put`` or by ``join``; after one, or after
    ``close``, items are dropped. ``close`` joins it (before the outputs close)."""

    def __init__(self, fn: Callable, size: int):
        self.fn, self.error, self.stop = fn, None, threading.Event()
        self.q: queue.Queue = queue.Queue(maxsize=size)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (item := self.q.get()) is not _END:
            if self.error is None and not self.stop.is_set():
                try:
                    self.fn(*item)
                except BaseException as e:  # raised in the caller
                    self.error = e

    def put(self, *item) -> None:
        if self.error is not None:
            raise self.error
        self.q.put(item)

    def join(self) -> None:
        self.q.put(_END)
        self.thread.join()
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        if self.thread.is_alive():
            self.stop.set()  # the thread drops what is queued, so this put returns
            self.q.put(_END)
            self.thread.join()


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


def pixel_area_km2(crs, transform, height: int) -> np.ndarray | None:
    """(height,) area of one pixel of each row in km²: exact in a projected CRS; on the
    sphere of the mean Earth radius in a geographic one; None without a CRS."""
    if crs is None:
        return None
    a, b, _, d, e, f = tuple(transform)[:6]
    if crs.is_geographic:
        radius = 6371.0088  # km, IUGG mean radius
        top = np.radians(f + e * np.arange(height))
        bottom = np.radians(f + e * np.arange(1, height + 1))
        return radius**2 * np.radians(abs(a)) * np.abs(np.sin(top) - np.sin(bottom))
    from rasterio.errors import CRSError

    try:
        metres = crs.linear_units_factor[1]
    except CRSError:  # a CRS without linear units: no area
        return None
    return np.full(height, abs(a * e - b * d) * metres**2 / 1e6)


def predict_scene(
    predictor: inference.Predictor,
    scene: SceneInputs,
    outputs: scene_outputs.OutputPaths,
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
    `batch_size` defaults to the predictor's device count and must be a multiple of it.
    """
    start = time.perf_counter()
    if prefetch < 1:
        raise ValueError(f"prefetch {prefetch}: expected at least 1 batch")
    plan = plan_windows(
        scene.height, scene.width, window, stride, predictor.config.min_input_side, scene.optical
    )
    batch_size = batch_size or predictor.devices
    predictor.check_batch(batch_size)
    areas = pixel_area_km2(scene.crs, scene.transform, scene.height)
    rasters = _Rasters(scene)
    try:
        with scene_outputs.SceneWriter(
            outputs, scene.height, scene.width, scene.crs, scene.transform, spec, tags or {}, areas
        ) as writer:
            blender = _Blender(plan, scene.width, spec.num_classes, blend, writer, on_windows)
            reader = _Reader(_batches(rasters, plan, spec, batch_size), prefetch)
            stage3 = _Writer(blender.add, prefetch)
            try:
                for batch in reader:
                    stage3.put(batch, predictor(batch.optical, batch.sar))
                stage3.join()
            finally:
                # The threads must stop before the rasters and outputs close under them,
                # so a second Ctrl-C waits for that.
                with files.deferred_interrupt("interrupt received: stopping the scene's threads"):
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
    predictor: inference.Predictor,
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
    outputs = scene_outputs.OutputPaths.beside(output, confidence, probabilities, preview)
    return predict_scene(
        predictor, open_scene(optical, sar, spec, align), outputs, spec, **settings
    )
