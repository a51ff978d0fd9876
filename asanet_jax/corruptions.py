"""Optical corruptions for the robustness suite: clouds and fog at five severities, and
missing modalities. Each is deterministic given (seed, image index, severity).

They act on decoded images in model channel order, before normalisation: (H, W, 3)
arrays in 0..255 (float32 out).

- clouds: fractal-noise opacity (5 octaves) thresholded so that about 10, 25, 40, 60 and
  80% of the image is covered, with soft edges (opacity ramps over 0.12 of the noise
  range), blended towards a bright, slightly shaded cloud colour.
- fog: the atmospheric scattering model I = J t + A (1 - t), airlight A = 0.85 x 255 and
  transmission t = exp(-beta d) with a smooth depth map d in [0.7, 1.3] and beta 0.25,
  0.5, 0.9, 1.4, 2.0 for severities 1..5 (t falls with severity).
- optical_missing: the optical image is all zeros; sar_missing: the SAR image is.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from asanet_jax.noise import smooth_noise

SEVERITIES = (1, 2, 3, 4, 5)
CLOUD_COVER = (0.10, 0.25, 0.40, 0.60, 0.80)
FOG_BETA = (0.25, 0.5, 0.9, 1.4, 2.0)
CLOUD_RGB = np.array([240.0, 240.0, 244.0], np.float32)
AIRLIGHT = 0.85 * 255.0


def _rng(seed: int, index: int, severity: int, kind: int) -> np.random.Generator:
    return np.random.default_rng([seed, index, severity, kind])


def _noise(rng, shape, cells: int, octaves: int) -> np.ndarray:
    import cv2

    side = max(shape)
    noise = smooth_noise(rng, side, cells, octaves)
    return cv2.resize(noise, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)


def clouds(optical: np.ndarray, severity: int, seed: int = 0, index: int = 0) -> np.ndarray:
    optical = optical.astype(np.float32)
    rng = _rng(seed, index, severity, 1)
    noise = _noise(rng, optical.shape[:2], 3, 5)
    threshold = np.quantile(noise, 1.0 - CLOUD_COVER[severity - 1])
    opacity = np.clip((noise - threshold) / 0.12 + 0.5, 0.0, 1.0)[..., None]
    shade = 1.0 - 0.1 * _noise(rng, optical.shape[:2], 6, 2)[..., None]
    return (optical * (1 - opacity) + CLOUD_RGB * shade * opacity).astype(np.float32)


def fog(optical: np.ndarray, severity: int, seed: int = 0, index: int = 0) -> np.ndarray:
    optical = optical.astype(np.float32)
    rng = _rng(seed, index, severity, 2)
    depth = 0.7 + 0.6 * _noise(rng, optical.shape[:2], 2, 3)[..., None]
    transmission = np.exp(-FOG_BETA[severity - 1] * depth)
    return (optical * transmission + AIRLIGHT * (1 - transmission)).astype(np.float32)


Corruption = Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray]]


def suite(seed: int = 0) -> dict[str, Corruption]:
    """Name -> corruption of (optical, sar, index), for every entry of the robustness table."""
    out: dict[str, Corruption] = {"clean": lambda o, s, i: (o, s)}
    for severity in SEVERITIES:
        out[f"clouds_{severity}"] = lambda o, s, i, sv=severity: (clouds(o, sv, seed, i), s)
        out[f"fog_{severity}"] = lambda o, s, i, sv=severity: (fog(o, sv, seed, i), s)
    out["optical_missing"] = lambda o, s, i: (np.zeros_like(o, np.float32), s)
    out["sar_missing"] = lambda o, s, i: (o, np.zeros_like(s, np.float32))
    return out
