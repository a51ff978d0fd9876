"""The depthwise 7x7 conv of ConvNeXt stage 0 (8x64x64x96): shifted sum vs XLA's grouped conv.

    python -m benchmarks.depthwise_conv

Writes ``benchmarks/results/depthwise_conv_<platform>.json``: the median time of the
forward and of forward + backward for both formulations of
``asanet_jax.models.layers.depthwise_conv`` (``kernels`` 'cpu' and 'xla').
"""

from __future__ import annotations

import json
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from asanet_jax.models.layers import depthwise_conv

SHAPE = (8, 64, 64, 96)


def median_ms(fn, *args, repeats: int = 10) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def main() -> None:
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=SHAPE), jnp.float32)
    k = jnp.asarray(rng.normal(size=(7, 7, 1, SHAPE[-1])), jnp.float32)
    results = {}
    for name, mode in (("shifted_sum", "cpu"), ("grouped_conv", "xla")):
        fwd = jax.jit(lambda a, b, m=mode: depthwise_conv(a, b, m))
        bwd = jax.jit(jax.grad(lambda a, b, m=mode: depthwise_conv(a, b, m).sum(), (0, 1)))
        results[name] = {
            "forward_ms": median_ms(fwd, x, k),
            "forward_backward_ms": median_ms(bwd, x, k),
        }
        print(f"{name}: {results[name]}")
    out = pathlib.Path(__file__).parent / "results" / f"depthwise_conv_{jax.default_backend()}.json"
    out.parent.mkdir(exist_ok=True)
    doc = {"shape": SHAPE, "backend": jax.default_backend(), "jax": jax.__version__, **results}
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
