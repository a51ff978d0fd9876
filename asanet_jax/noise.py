"""Fractal value noise: the texture of the synthetic scenes and of cloud and fog corruptions."""

from __future__ import annotations

import cv2
import numpy as np


def smooth_noise(rng: np.random.Generator, size: int, cells: int, octaves: int = 1) -> np.ndarray:
    """(size, size) float32 noise in [0, 1]: bilinear-upsampled random grids of `cells`,
    2 x `cells`, ... cells a side, each octave at half the amplitude of the one before."""
    total = np.zeros((size, size), np.float32)
    amplitude, norm = 1.0, 0.0
    for octave in range(octaves):
        n = cells * 2**octave + 1
        grid = rng.random((n, n), dtype=np.float32)
        total += amplitude * cv2.resize(grid, (size, size), interpolation=cv2.INTER_LINEAR)
        norm += amplitude
        amplitude /= 2
    return total / norm
