"""asanet-jax: ASANet (optical + SAR land-cover segmentation) in JAX/Flax NNX.

``asanet_jax.load(path)`` opens a model directory or an official checkpoint; see
``asanet_jax.loading``. Submodules import their own dependencies, so importing the
package is cheap.
"""

__version__ = "0.4.0"


def __getattr__(name: str):
    if name == "load":
        from asanet_jax.loading import load

        return load
    raise AttributeError(f"module 'asanet_jax' has no attribute {name!r}")
