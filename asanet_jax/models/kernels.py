"""Which arithmetic computes the operations XLA:CPU is slow at: ``config.model.kernels``.

Three operations of the model have a second formulation that computes the same function
with different arithmetic, much faster under XLA:CPU (measured in
``benchmarks/cpu_ablation.py``):

- ``depthwise``: the 7x7 depthwise convolutions as 49 shifted products (XLA:CPU's grouped
  convolution runs about 25x slower);
- ``layernorm``: LayerNorm's channel sums as products with a ones vector;
- ``winograd``: the heads' 3x3 convolutions on float32 maps of at least
  ``winograd_min_pixels`` pixels by Winograd F(4x4, 3x3).

The setting is one string:

- ``auto`` (default): the CPU formulations where the program runs on a CPU, XLA's own
  operations on every other platform. The choice is made when the program is lowered for
  its platform (``jax.lax.platform_dependent``), not when it is traced, so it is right for
  ahead-of-time lowering and ``jax.export`` for another platform, and for a CPU device on
  a GPU host;
- ``xla``: XLA's own operations everywhere;
- ``cpu``: the CPU formulations everywhere;
- a ``+``-joined subset such as ``depthwise+layernorm``: exactly those CPU formulations,
  XLA's own for the rest (for ablations).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax

FORMULATIONS = ("depthwise", "layernorm", "winograd")
SETTINGS = ("auto", "xla", "cpu")
# Below this many output pixels per image Winograd's tile overhead eats its saving on
# XLA:CPU: inference breaks even near 32x32 with 256 channels, and lowering the bound to
# 32x32 gained nothing measurable in inference or training.
WINOGRAD_MIN_PIXELS = 64 * 64


@dataclasses.dataclass(frozen=True)
class Kernels:
    """Per formulation: 'cpu' (always), 'xla' (never) or 'auto' (on CPU only)."""

    depthwise: str = "auto"
    layernorm: str = "auto"
    winograd: str = "auto"
    winograd_min_pixels: int = WINOGRAD_MIN_PIXELS

    @classmethod
    def from_setting(cls, setting: str, winograd_min_pixels: int = WINOGRAD_MIN_PIXELS):
        """Parse ``config.model.kernels``; ValueError naming the setting otherwise."""
        if setting in ("auto", "xla", "cpu"):
            modes = dict.fromkeys(FORMULATIONS, setting)
        else:
            names = setting.split("+")
            unknown = [n for n in names if n not in FORMULATIONS]
            if unknown or len(set(names)) != len(names):
                raise ValueError(
                    f"config.model.kernels={setting!r}: expected one of {SETTINGS} or a "
                    f"'+'-joined subset of {FORMULATIONS}"
                )
            modes = {n: "cpu" if n in names else "xla" for n in FORMULATIONS}
        return cls(**modes, winograd_min_pixels=winograd_min_pixels)


AUTO = Kernels()


def choose(mode: str, cpu: Callable, xla: Callable, *args):
    """``cpu(*args)`` or ``xla(*args)`` per ``mode``; 'auto' decides at lowering time."""
    if mode == "cpu":
        return cpu(*args)
    if mode == "xla":
        return xla(*args)
    return jax.lax.platform_dependent(*args, cpu=cpu, default=xla)
