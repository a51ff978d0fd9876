"""Tracing a model's construction in time linear in its size.

flax NNX's ``Variable.__setitem__`` probes ``getattr(value, "sharding", None)`` on every
assignment, and every draw from an ``nnx.Rngs`` stream is one (its counter). Under a
trace the value is a tracer, whose ``sharding`` property raises AttributeError; jax
(0.10 to 0.12 at least) first builds that error's message from every equation traced so
far, and the probe discards it. Building a model under ``nnx.eval_shape`` or ``jax.jit``
(every load and every training start does both) was therefore quadratic in the model's
size: on 2 CPU cores, ASANet-tiny's abstract construction took 4.1 s and CMX-B2's 10.1 s,
against 1.0 s and 1.1 s without the message (benchmarks/model_build.py).

``install()``, run on importing ``asanet_jax.models``, gives traced arrays a ``sharding``
property that raises AttributeError at once. What anyone sees is unchanged: Python then
calls the tracer's ``__getattr__``, and jax's message from there is the one shown, as
before (the property's own message was always built and discarded); ``hasattr`` and
``getattr`` with a default answer as before.
"""

from __future__ import annotations

from jax._src.interpreters import partial_eval


def _no_sharding(tracer):
    raise AttributeError("sharding")  # jax's __getattr__ words the message


_PROPERTY = property(_no_sharding)


def _tracer_class():
    """The traced arrays' class, where it still inherits jax's generic property (or has
    ours); None where a jax defines its own, which is left alone."""
    tracer = getattr(partial_eval, "DynamicJaxprTracer", None)
    if tracer is None or vars(tracer).get("sharding", _PROPERTY) is not _PROPERTY:
        return None
    return tracer


def install() -> None:
    """Replace the traced arrays' ``sharding`` property (idempotent)."""
    if (tracer := _tracer_class()) is not None:
        tracer.sharding = _PROPERTY


def uninstall() -> None:
    """jax's own property again (benchmarks/model_build.py times both)."""
    if (tracer := _tracer_class()) is not None and "sharding" in vars(tracer):
        del tracer.sharding
