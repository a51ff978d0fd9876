"""Procedural optical + SAR land-cover scenes: the built-in dataset the demo trains on.

A scene is a label map of irregular patches (field, forest, bare soil) crossed by roads,
sometimes a river and an urban district of blocks and streets. It is rendered to:
- an optical image (R, G, B as a file stores it): a per-class colour with a per-class
  texture, a global illumination change and sensor noise; some scenes are partly covered
  by cloud (fractal-noise opacity, bright, soft-edged), hiding the ground;
- a SAR image: per-class mean backscatter times multiplicative speckle (gamma, 4 looks),
  in dB stretched from [-25, 0] dB to 0..255. Clouds do not affect it.
Everything comes from one seeded generator, so a scene is a pure function of its seed.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from asanet_jax.noise import smooth_noise

FIELD, URBAN, ROAD, WATER, FOREST, BARE = range(6)

# Per-class optical colour (R, G, B) and texture amplitude.
OPTICAL_RGB = np.array(
    [(185, 175, 95), (175, 160, 165), (115, 115, 120), (35, 70, 120), (40, 95, 45), (165, 130, 95)],
    np.float32,
)
OPTICAL_TEXTURE = np.array([14, 30, 6, 5, 22, 12], np.float32)
# Per-class mean SAR backscatter (linear intensity).
SAR_SIGMA0 = np.array([0.06, 0.7, 0.015, 0.004, 0.18, 0.035], np.float32)
SAR_DB_RANGE = (-25.0, 0.0)
SAR_LOOKS = 4
CLOUD_RGB = np.array([238, 238, 242], np.float32)


@dataclasses.dataclass(frozen=True)
class Scene:
    optical: np.ndarray  # (H, W, 3) uint8, R,G,B
    sar: np.ndarray  # (H, W, 1) uint8
    label: np.ndarray  # (H, W) uint8 class ids
    cloud_fraction: float  # share of pixels more than half covered by cloud


def land_cover(rng, size: int) -> np.ndarray:
    """(size, size) uint8 label map of the six classes."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    # Irregular patches: nearest of a few seeds, with coordinates warped by smooth noise.
    n_seeds = rng.integers(5, 10)
    seeds = rng.random((n_seeds, 2)) * size
    kinds = rng.choice([FIELD, FIELD, FOREST, BARE], size=n_seeds)
    warp = (smooth_noise(rng, size, 3) - 0.5) * size * 0.3
    d = (yy[None] + warp - seeds[:, 0, None, None]) ** 2 + (
        xx[None] - warp - seeds[:, 1, None, None]
    ) ** 2
    label = kinds[np.argmin(d, axis=0)].astype(np.uint8)

    if rng.random() < 0.6:  # an urban district: blocks separated by streets
        h, w = rng.integers(size // 4, size // 2, size=2)
        y0, x0 = rng.integers(0, size - h), rng.integers(0, size - w)
        block = rng.integers(10, 18)
        district = np.zeros((size, size), bool)
        district[y0 : y0 + h, x0 : x0 + w] = True
        street = ((yy - y0) % block < 3) | ((xx - x0) % block < 3)
        label[district] = URBAN
        label[district & street] = ROAD

    if rng.random() < 0.6:  # a river meandering across the scene
        phase, period = rng.random() * 2 * np.pi, size * (0.4 + 0.6 * rng.random())
        centre = size * (0.2 + 0.6 * rng.random()) + size * 0.12 * np.sin(
            yy / period * 2 * np.pi + phase
        )
        width = rng.uniform(4, 10)
        river = np.abs(xx - centre) < width
        label[river if rng.random() < 0.5 else river.T] = WATER

    for _ in range(rng.integers(1, 3)):  # straight roads
        angle = rng.random() * np.pi
        offset = (rng.random() - 0.5) * size * 0.8
        dist = (xx - size / 2) * np.cos(angle) + (yy - size / 2) * np.sin(angle) - offset
        label[np.abs(dist) < 1.8] = ROAD
    return label


def render_optical(rng, label: np.ndarray, cloud_prob: float) -> tuple[np.ndarray, float]:
    size = label.shape[0]
    texture = smooth_noise(rng, size, size // 4, octaves=2) - 0.5
    fine = rng.standard_normal((size, size)).astype(np.float32)
    image = OPTICAL_RGB[label] + (OPTICAL_TEXTURE[label] * (2 * texture + 0.3 * fine))[..., None]
    image *= rng.uniform(0.85, 1.15)  # illumination
    image += rng.normal(0, 3, image.shape).astype(np.float32)  # sensor noise
    cloud_fraction = 0.0
    if rng.random() < cloud_prob:
        noise = smooth_noise(rng, size, 3, octaves=4)
        threshold = np.quantile(noise, rng.uniform(0.2, 0.7))
        opacity = np.clip((noise - threshold) * 6.0, 0.0, 1.0)[..., None]
        shade = 1.0 - 0.08 * smooth_noise(rng, size, 6)[..., None]
        image = image * (1 - opacity) + CLOUD_RGB * shade * opacity
        cloud_fraction = float((opacity > 0.5).mean())
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), cloud_fraction


def render_sar(rng, label: np.ndarray) -> np.ndarray:
    speckle = rng.gamma(SAR_LOOKS, 1.0 / SAR_LOOKS, label.shape).astype(np.float32)
    db = 10 * np.log10(SAR_SIGMA0[label] * speckle + 1e-6)
    lo, hi = SAR_DB_RANGE
    return np.clip(np.rint((db - lo) / (hi - lo) * 255), 0, 255).astype(np.uint8)[..., None]


def generate_scene(seed, size: int = 128, num_classes: int = 6, cloud_prob: float = 0.3) -> Scene:
    """One scene from `seed` (an int or a sequence of ints). Classes >= num_classes become
    fields, so any class count from 2 to 6 gives a consistent map."""
    rng = np.random.default_rng(seed)
    label = land_cover(rng, size)
    label[label >= num_classes] = FIELD
    optical, cloud_fraction = render_optical(rng, label, cloud_prob)
    return Scene(optical, render_sar(rng, label), label, cloud_fraction)
