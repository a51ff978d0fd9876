"""Reading source images exactly as stored, with clear errors naming the file.

GeoTIFFs are read with rasterio (any dtype, any band count, CRS and geotransform kept);
JPEG and PNG with Pillow, unchanged (no palette conversion, no colour conversion). Arrays
come back as (H, W, bands) in the file's band order; the model's channel order is chosen
later from the dataset spec.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

GEOTIFF_SUFFIXES = (".tif", ".tiff")
PILLOW_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
NO_TRANSFORM = (np.nan,) * 6


class DataError(ValueError):
    """A source file or folder is missing, unreadable or inconsistent."""


@dataclasses.dataclass(frozen=True)
class Raster:
    """An image as stored: `data` is (H, W, bands); `crs` is WKT or ''; `transform` is the
    affine (a, b, c, d, e, f) or NaNs when the file has none; `nodata` per the file."""

    data: np.ndarray
    crs: str = ""
    transform: tuple[float, ...] = NO_TRANSFORM
    nodata: float | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.data.shape[:2]

    @property
    def bands(self) -> int:
        return self.data.shape[2]


def read_raster(path: str | pathlib.Path) -> Raster:
    """Read a GeoTIFF, JPEG or PNG as (H, W, bands), raising DataError naming the file."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix in GEOTIFF_SUFFIXES:
        return _read_geotiff(path)
    if suffix in PILLOW_SUFFIXES:
        return _read_pillow(path)
    raise DataError(
        f"{path}: unsupported file type {suffix!r}; expected one of "
        f"{GEOTIFF_SUFFIXES + PILLOW_SUFFIXES}"
    )


def _read_geotiff(path: pathlib.Path) -> Raster:
    import rasterio
    from rasterio.errors import RasterioError

    try:
        with rasterio.open(path) as src:
            data = src.read()
            crs = src.crs.to_wkt() if src.crs else ""
            # rasterio reports an identity transform for files without georeferencing.
            has_transform = src.transform is not None and not src.transform.is_identity
            transform = tuple(src.transform)[:6] if has_transform else NO_TRANSFORM
            nodata = src.nodata
    except (RasterioError, OSError) as e:
        raise DataError(f"{path}: unreadable or truncated GeoTIFF ({e})") from e
    return Raster(np.moveaxis(data, 0, -1), crs, transform, nodata)


def _read_pillow(path: pathlib.Path) -> Raster:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            data = np.asarray(im)
    except OSError as e:
        raise DataError(f"{path}: unreadable or truncated image ({e})") from e
    if data.ndim == 2:
        data = data[:, :, None]
    return Raster(data)


def find_file(
    folder: pathlib.Path, stem: str, suffixes: tuple[str, ...], role: str
) -> pathlib.Path:
    """The file `folder/stem<suffix>` for the first suffix that exists, else DataError."""
    for suffix in suffixes:
        candidate = folder / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    tried = ", ".join(str(folder / f"{stem}{s}") for s in suffixes)
    raise DataError(f"missing {role} file for {stem!r}: none of {tried} exists")


def read_name_list(path: pathlib.Path) -> list[str]:
    """A split file: one name per line, blank lines ignored; DataError if missing or empty."""
    if not path.is_file():
        raise DataError(f"{path}: split file not found")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise DataError(f"{path}: split file lists no examples")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError(f"{path}: names listed more than once: {duplicates[:10]}")
    return names


def check_same_size(rasters: dict[str, tuple[pathlib.Path, Raster]]) -> None:
    """DataError naming the files if the modalities of one example differ in size."""
    sizes = {role: r.shape for role, (_, r) in rasters.items()}
    if len(set(sizes.values())) > 1:
        detail = ", ".join(f"{role} {p} is {sizes[role]}" for role, (p, _) in rasters.items())
        raise DataError(f"modalities differ in size (H, W): {detail}")


def check_same_georeference(rasters: dict[str, tuple[pathlib.Path, Raster]]) -> None:
    """DataError naming the files if those that have a CRS or geotransform disagree."""
    with_crs = {role: (p, r) for role, (p, r) in rasters.items() if r.crs}
    if len({r.crs for _, r in with_crs.values()}) > 1:
        detail = "; ".join(f"{role} {p} has {r.crs[:60]}..." for role, (p, r) in with_crs.items())
        raise DataError(
            f"modalities differ in CRS: {detail} (check_georeference=False / "
            "--accept_misaligned accepts them)"
        )
    georef = {role: (p, r) for role, (p, r) in rasters.items() if not np.isnan(r.transform[0])}
    transforms = [np.asarray(r.transform) for _, r in georef.values()]
    if any(
        not np.allclose(t, transforms[0], rtol=0, atol=1e-9 * max(1.0, abs(t).max()))
        for t in transforms[1:]
    ):
        detail = "; ".join(
            f"{role} {p} has {tuple(r.transform)}" for role, (p, r) in georef.items()
        )
        raise DataError(
            f"modalities differ in geotransform: {detail} (check_georeference=False / "
            "--accept_misaligned accepts them)"
        )


def check_disjoint_splits(names: dict[str, list[str]], where) -> None:
    """DataError if an example is listed in more than one split."""
    splits = list(names)
    for i, a in enumerate(splits):
        for b in splits[i + 1 :]:
            both = sorted(set(names[a]) & set(names[b]))
            if both:
                raise DataError(
                    f"{where}: {len(both)} example(s) listed in both {a!r} and {b!r}: {both[:10]}"
                )


def check_band_count(path: pathlib.Path, raster: Raster, allowed: tuple[int, ...], role: str):
    if raster.bands not in allowed:
        raise DataError(
            f"{path}: {role} image has {raster.bands} band(s); "
            f"expected {' or '.join(map(str, allowed))}"
        )


def check_label_values(path: pathlib.Path, label: np.ndarray, valid: np.ndarray) -> None:
    """DataError if `label` holds a value outside `valid` (the classes plus ignore)."""
    values = np.unique(label)
    bad = values[~np.isin(values, valid)]
    if bad.size:
        raise DataError(
            f"{path}: label values {bad.tolist()[:10]} are outside the class set {valid.tolist()}"
        )
