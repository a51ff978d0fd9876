"""asanet-jax: ASANet (optical + SAR land-cover segmentation) in JAX/Flax NNX."""

__version__ = "0.1.0"
