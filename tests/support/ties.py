"""Float32 ties of vFuseNet's max-pool: the one discrete choice in its outputs.

vFuseNet unpools with the optical stream's pooling indices: each 2x2 window keeps the
pixel of its first maximum, and its decoder puts the value back there. Where a window's
two largest values lie within float32 rounding of each other, two float32 computations
that sum in different orders (PyTorch's kernels and XLA's, or XLA's on CPUs of different
vector widths) can keep different pixels, while every value still agrees to a few 1e-6.
One such window moves an unpooled map, and the decoder output after it, by more than the
output tolerance. Which windows are that close depends on the CPU, so no fixed list of
exceptions holds on every machine.

``resolve`` finds them: among the windows whose top two values lie within ``MARGIN`` of
each other (relative to the RMS of the pooled map), closest first and greedily, at most
``MAX_TIES`` that, keeping the runner-up as the official run must have, bring every
output (or gradient) within tolerance. A real error is not undone by moving a few values
by one pixel, so the comparison keeps its power; the tests assert how many ties it took
and how close each was.

While ``switched`` is active, every ``torch_ops.max_pool_2x2_with_indices`` call, in call
order, is recorded, or takes a per-window flip mask (a runtime input of the jitted
function, so that one compilation serves every trial).
"""

from __future__ import annotations

import contextlib
import dataclasses

import jax.numpy as jnp
import numpy as np

from asanet_jax.models import torch_ops

MARGIN = 2e-5  # of the RMS of the pooled map
MAX_TIES = 4

_pool = torch_ops.max_pool_2x2_with_indices


@dataclasses.dataclass
class _Active:
    flips: list | None = None  # per call: a bool mask over the pooled map
    seen: list | None = None  # filled with each call's input
    calls: int = 0


_active: _Active | None = None


def _switched_pool(x):
    s, i = _active, _active.calls
    s.calls += 1
    if s.seen is not None:
        s.seen.append(x)
    if s.flips is None or i >= len(s.flips):
        return _pool(x)
    # The first maximum of each window, or where flipped the runner-up; the gradient
    # follows the choice.
    win = torch_ops._windows_2x2(x)  # (B, h, w, 4, C)
    first = jnp.argmax(win, axis=3)
    slot = jnp.arange(4)[None, None, None, :, None]
    second = jnp.argmax(jnp.where(slot == first[:, :, :, None], -jnp.inf, win), axis=3)
    idx = jnp.where(s.flips[i], second, first).astype(jnp.int32)
    return jnp.take_along_axis(win, idx[:, :, :, None, :], axis=3)[:, :, :, 0, :], idx


@contextlib.contextmanager
def switched(flips: list | None = None, seen: list | None = None):
    """Route the 2x2 max-pool calls through ``flips`` (per call, in call order; None: as
    usual) and record their inputs into ``seen``."""
    global _active
    previous = _active
    _active = _Active(flips, seen)
    torch_ops.max_pool_2x2_with_indices = _switched_pool
    try:
        yield
    finally:
        _active = previous
        if previous is None:
            torch_ops.max_pool_2x2_with_indices = _pool


@dataclasses.dataclass(frozen=True)
class Tie:
    """A pooling window (``index`` into the pooled map of call ``call``) whose two largest
    values lie ``margin`` apart, relative to the RMS of the pooled map."""

    call: int
    index: tuple[int, ...]
    margin: float
    # The pooled shapes of every call up to this one: where another function makes the
    # same calls first (vFuseNet's call and its official_features), the tie is its too.
    path: tuple = dataclasses.field(default=(), repr=False)


def shapes(seen: list) -> list[tuple[int, ...]]:
    """The pooled map's shape per call: the shape of its flip mask."""
    return [(x.shape[0], x.shape[1] // 2, x.shape[2] // 2, x.shape[3]) for x in seen]


def near_ties(seen: list) -> list[Tie]:
    """Every window whose top two values lie within MARGIN, closest first. Exactly equal
    pairs are left out: they are zeros of a ReLU, which every implementation computes
    exactly and resolves by the same first-maximum rule."""
    layout = tuple(shapes(seen))
    ties = []
    for call, x in enumerate(seen):
        win = np.sort(np.asarray(torch_ops._windows_2x2(jnp.asarray(x))), axis=3)
        top, runner_up = win[:, :, :, -1].astype(np.float64), win[:, :, :, -2]
        rms = float(np.sqrt(np.mean(top**2))) or 1.0
        gap = top - runner_up
        for index in zip(*np.nonzero((gap > 0) & (gap <= MARGIN * rms)), strict=True):
            index = tuple(int(i) for i in index)
            ties.append(Tie(call, index, float(gap[index] / rms), layout[: call + 1]))
    return sorted(ties, key=lambda t: t.margin)


def flip_masks(layout: list, ties) -> list:
    """Bool masks per call of ``layout`` (``shapes``), True at the ``ties`` that are this
    layout's."""
    masks = [np.zeros(shape, bool) for shape in layout]
    for tie in ties:
        if tuple(layout[: tie.call + 1]) == tie.path:
            masks[tie.call][tie.index] = True
    return masks


def resolve(
    measure, candidates: list[Tie], tolerance: float, errors: dict | None = None
) -> tuple[dict, list[Tie]]:
    """Few ``candidates`` (greedily, at most MAX_TIES) that, reversed, bring
    ``measure(ties) -> {name: error}`` within ``tolerance`` everywhere.

    ``errors``: ``measure([])``, where already measured. Returns (the errors with those
    ties reversed, the ties); where no MAX_TIES do, those of the best set found, for the
    caller's assertion to show.
    """

    def excess(errors):
        return sum(max(v / tolerance, 1.0) ** 2 - 1.0 for v in errors.values())

    chosen: list[Tie] = []
    errors = measure(chosen) if errors is None else errors
    while excess(errors) > 0 and len(chosen) < MAX_TIES:
        best = None
        for tie in candidates:  # closest first; the first that suffices is taken
            if tie in chosen:
                continue
            trial = measure([*chosen, tie])
            if best is None or excess(trial) < excess(best[1]):
                best = (tie, trial)
            if excess(trial) == 0:
                break
        if best is None or excess(best[1]) >= excess(errors):
            break
        chosen.append(best[0])
        errors = best[1]
    return errors, chosen
