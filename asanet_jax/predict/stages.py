"""The threads that overlap a scene's reading and writing with the model (see
``predict.scene``): a reader of input batches ahead of the model, a writer behind it.

Each stage is a daemon thread linked to the caller by a queue of at most ``size`` items;
an error in a stage is raised in the caller, and ``close`` stops and joins the thread
before the rasters and outputs close under it.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from asanet_jax.data import preprocess
from asanet_jax.predict.rasters import SceneRasters
from asanet_jax.predict.windows import WindowPlan


@dataclasses.dataclass
class Batch:
    optical: np.ndarray  # (batch_size, h, w, 3) float32, padded with zeros
    sar: np.ndarray
    windows: list[tuple[int, int]]  # (row index, x) of the real windows
    rows: list[tuple[int, np.ndarray]]  # (row index, missing (h, W)) of rows begun here


def batches(rasters: SceneRasters, plan: WindowPlan, spec, batch_size: int) -> Iterator[Batch]:
    """The scene's windows as model inputs, in batches (stage 1)."""
    from rasterio.windows import Window

    scene = rasters.scene
    limits = rasters.sar_limits(spec)
    (h, w), width = plan.size, scene.width
    where = f"{scene.optical} / {scene.sar}"

    def empty():
        zeros = np.zeros((batch_size, h, w, 3), np.float32)
        return Batch(zeros, zeros.copy(), [], [])

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


_END = object()


class Reader:
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


class Writer:
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
