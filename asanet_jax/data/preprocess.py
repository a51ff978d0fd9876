"""From raster values to model inputs: the one transformation that the dataset builders,
the input pipeline and scene prediction share (docs/design.md, section 5).

For one image, or one window of a scene:

1. **SAR scaling** (``DatasetSpec.sar_scaling``), on every stored SAR band:
   ``{"kind": "none"}`` keeps the values; ``{"kind": "db_range", "min": a, "max": b}``
   maps a..b linearly to 0..255 and clips outside (a and b may be lists, one value per
   stored band, e.g. VV and VH); ``{"kind": "percentile", "low": p, "high": q}``
   stretches each band's p-th..q-th percentile to 0..255 and clips outside, the
   percentiles taken over the image (when predicting a scene: over the whole scene,
   ``percentile_limits``). Scaled values are rounded to integers, as 8-bit images are.
2. **Band selection** (``optical_bands``, ``sar_bands``): the stored bands that feed the
   model's three channels, numbered from 1 as GDAL and rasterio number them. Unset means
   OpenCV's colour decoding, as the official loaders do: one band replicated, three or
   more bands the first three reversed.
3. **Missing pixels**: a pixel is missing when any selected band is NaN. Files' nodata
   values become NaN when read (``io.nodata_as_nan``), so a nodata value in a band the
   model does not see never drops a pixel. Missing pixels feed the model 0 (before
   normalisation) and their labels are ignored.
4. **Normalisation**: ``(x - mean) / std`` per model channel, in float32.

Steps 1 to 3 are ``model_bands``; the training augmentation runs between them and step 4
(``normalise``), as the official pipeline resizes decoded images before normalising.
"""

from __future__ import annotations

import numpy as np

from asanet_jax.data import io

SCALINGS = ("none", "db_range", "percentile")


def check_scaling(scaling: dict, where: str) -> None:
    """DataError naming `where` unless `scaling` is a valid ``sar_scaling``."""
    kind = scaling.get("kind")
    if kind not in SCALINGS:
        raise io.DataError(f"{where}: sar_scaling.kind={kind!r}; expected one of {SCALINGS}")
    keys = {"db_range": ("min", "max"), "percentile": ("low", "high")}.get(kind, ())
    missing = [k for k in keys if k not in scaling]
    if missing:
        raise io.DataError(f"{where}: sar_scaling {kind!r} needs {missing}")
    unknown = sorted(set(scaling) - {"kind", *keys})
    if unknown:
        raise io.DataError(f"{where}: sar_scaling {kind!r} has unknown keys {unknown}")
    if keys:
        lo, hi = np.atleast_1d(scaling[keys[0]]), np.atleast_1d(scaling[keys[1]])
        if lo.shape != hi.shape or not np.all(lo < hi):
            raise io.DataError(
                f"{where}: sar_scaling needs {keys[0]} < {keys[1]} (one value, or one per band)"
            )


def band_indices(numbers, count: int, modality: str, where) -> list[int]:
    """0-based indices of the stored bands feeding the model, from 1-based band numbers
    (None: OpenCV's colour decoding). DataError naming `where` and its band count."""
    if numbers is None:
        if count == 1:
            return [0, 0, 0]
        if count >= 3:
            return [2, 1, 0]
        raise io.DataError(
            f"{where}: {count} bands have no OpenCV colour decoding; give {modality}_bands "
            "explicitly (band numbers from 1, e.g. [1, 2, 1])"
        )
    numbers = [int(n) for n in numbers]
    if any(n < 1 or n > count for n in numbers):
        raise io.DataError(
            f"{where}: {modality}_bands {numbers} asks for band "
            f"{next(n for n in numbers if n < 1 or n > count)}, but the {modality} image "
            f"has {count} band(s), numbered 1 to {count} (as GDAL and rasterio number them)"
        )
    return [n - 1 for n in numbers]


def percentile_limits(sar: np.ndarray, scaling: dict) -> np.ndarray | None:
    """(bands, 2) low and high limits of a percentile stretch over `sar` (H, W, bands),
    NaN ignored; None for the other scalings."""
    if scaling["kind"] != "percentile":
        return None
    flat = sar.reshape(-1, sar.shape[-1]).astype(np.float64)
    limits = []
    for band in flat.T:
        finite = band[np.isfinite(band)]
        if finite.size == 0:
            limits.append((0.0, 1.0))  # every value is missing; nothing to stretch
            continue
        lo, hi = np.percentile(finite, [scaling["low"], scaling["high"]])
        limits.append((lo, max(hi, lo + 1e-6)))
    return np.asarray(limits)


def scale_sar(sar: np.ndarray, scaling: dict, limits: np.ndarray | None = None) -> np.ndarray:
    """(H, W, bands) stored SAR values -> scaled float32; NaN stays NaN.

    `limits` (bands, 2) fixes a percentile stretch's limits (a scene's); by default they
    are the image's own."""
    kind = scaling["kind"]
    if kind == "none":
        return sar
    x = sar.astype(np.float32)
    if kind == "db_range":
        lo = np.broadcast_to(np.asarray(scaling["min"], np.float64), (x.shape[-1],))
        hi = np.broadcast_to(np.asarray(scaling["max"], np.float64), (x.shape[-1],))
    else:
        limits = percentile_limits(x, scaling) if limits is None else limits
        lo, hi = limits[:, 0], limits[:, 1]
    with np.errstate(invalid="ignore"):
        scaled = np.clip(np.rint((x - lo) / (hi - lo) * 255.0), 0.0, 255.0)
    return scaled.astype(np.float32)


def model_bands(
    optical: np.ndarray, sar: np.ndarray, spec, where="", sar_limits=None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps 1 to 3: (optical, sar, missing) with optical and sar (H, W, 3) in model
    channel order and missing (H, W) bool.

    Integer images pass through in their dtype (uint8 stays uint8 and resizes as the
    official pipeline resizes decoded images); float images have their missing pixels
    set to 0.
    """
    scaling = spec.sar_scaling
    if scaling["kind"] == "db_range":
        ranges = np.atleast_1d(scaling["min"]).size
        if ranges not in (1, sar.shape[-1]):
            raise io.DataError(
                f"{where}: sar_scaling gives {ranges} dB ranges, but the SAR image has "
                f"{sar.shape[-1]} band(s); give one range, or one per stored band"
            )
    sar = scale_sar(sar, scaling, sar_limits)
    optical = optical[..., band_indices(spec.optical_bands, optical.shape[-1], "optical", where)]
    sar = sar[..., band_indices(spec.sar_bands, sar.shape[-1], "sar", where)]
    missing = np.zeros(optical.shape[:2], bool)
    for image in (optical, sar):
        if np.issubdtype(image.dtype, np.floating):
            missing |= ~np.isfinite(image).all(-1)
    if missing.any():
        optical, sar = (np.where(missing[..., None], 0, x).astype(x.dtype) for x in (optical, sar))
    return optical, sar, missing


def normalise(image: np.ndarray, mean, std) -> np.ndarray:
    """Step 4: (x - mean) / std in float32, per channel, as mmseg's data preprocessor."""
    return (image.astype(np.float32) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def normalise_both(optical: np.ndarray, sar: np.ndarray, spec) -> tuple[np.ndarray, np.ndarray]:
    """Step 4 for both images, each with the dataset's statistics of its modality."""
    return (
        normalise(optical, spec.optical_mean, spec.optical_std),
        normalise(sar, spec.sar_mean, spec.sar_std),
    )


def model_inputs(optical: np.ndarray, sar: np.ndarray, spec, where="", sar_limits=None):
    """Steps 1 to 4: (optical, sar, missing), inputs normalised (H, W, 3) float32."""
    optical, sar, missing = model_bands(optical, sar, spec, where, sar_limits)
    return (*normalise_both(optical, sar, spec), missing)
