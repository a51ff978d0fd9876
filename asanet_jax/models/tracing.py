"""Tracing a model's construction in time linear in its size.

flax NNX's ``Variable.__setitem__`` probes ``getattr(value, "sharding", None)`` on every
assignment, and every draw from an ``nnx.Rngs`` stream is one (its counter). Under a
trace the value is a tracer, whose ``sharding`` property raises AttributeError; jax
(0.10 to 0.12 at least) first builds that error's message from every equation traced so
far, and the probe discards it. Building a model under ``nnx.eval_shape`` or ``jax.jit``
(every load and every training start does both) was therefore quadratic in the model's
size: on 2 CPU cores, ASANet-tiny's abstract construction took 4.0 s and CMX-B2's 9.7 s,
against 1.1 s and 1.7 s without the message.

``install()``, run on importing ``asanet_jax.models``, gives traced arrays a ``sharding``
property that raises the same AttributeError with a message naming the array but not
the lines it came from. Nothing else changes: ``hasattr`` and ``getattr`` with a default
answer as before.
"""

from __future__ import annotations

from jax._src.interpreters import partial_eval


def _no_sharding(tracer):
    raise AttributeError(
        f"The 'sharding' attribute is not available on {tracer._error_repr()}: it is only "
        "defined on concrete arrays, not on values being traced."
    )


def install() -> None:
    """Replace the traced arrays' ``sharding`` property (idempotent; a jax without the
    class is left alone)."""
    tracer = getattr(partial_eval, "DynamicJaxprTracer", None)
    if tracer is not None:
        tracer.sharding = property(_no_sharding)
