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


def nodata_as_nan(raster: Raster) -> np.ndarray:
    """The raster as float32 (exact for 8- and 16-bit integers) with the file's nodata
    value, band by band, made NaN: what ``preprocess`` treats as missing."""
    data = raster.data.astype(np.float32)
    if raster.nodata is not None and not np.isnan(raster.nodata):
        data[raster.data == raster.nodata] = np.nan
    return data


def tiff_tags(path: pathlib.Path, tags: tuple[int, ...] = (262, 338)) -> dict[int, tuple]:
    """Values of baseline TIFF tags in the first image of a (Big)TIFF file.

    Used for what GDAL does not report: whether a 4th band is tagged as unassociated
    alpha (ExtraSamples, tag 338 = 2), which OpenCV's colour decoding premultiplies.
    """
    import struct

    sizes = {1: 1, 2: 1, 3: 2, 4: 4, 6: 1, 7: 1, 8: 2, 9: 4, 16: 8}
    kinds = {1: "B", 2: "c", 3: "H", 4: "I", 6: "b", 7: "B", 8: "h", 9: "i", 16: "Q"}
    with open(path, "rb") as f:
        order = {b"II": "<", b"MM": ">"}.get(f.read(2))
        if order is None:
            raise DataError(f"{path}: not a TIFF file")
        (magic,) = struct.unpack(order + "H", f.read(2))
        big = magic == 43
        if big:
            f.read(4)
            (offset,) = struct.unpack(order + "Q", f.read(8))
        else:
            (offset,) = struct.unpack(order + "I", f.read(4))
        f.seek(offset)
        (count,) = struct.unpack(order + ("Q" if big else "H"), f.read(8 if big else 2))
        entry = 20 if big else 12
        inline = 8 if big else 4
        out = {}
        for _ in range(count):
            raw = f.read(entry)
            tag, kind = struct.unpack(order + "HH", raw[:4])
            (n,) = struct.unpack(order + ("Q" if big else "I"), raw[4 : 4 + (8 if big else 4)])
            if tag not in tags or kind not in kinds:
                continue
            payload = raw[4 + (8 if big else 4) :]
            if n * sizes[kind] > inline:
                (where,) = struct.unpack(order + ("Q" if big else "I"), payload)
                here = f.tell()
                f.seek(where)
                payload = f.read(n * sizes[kind])
                f.seek(here)
            out[tag] = struct.unpack(order + kinds[kind] * n, payload[: n * sizes[kind]])
        return out


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


def read_text(path: pathlib.Path, what: str = "text file") -> str:
    """The text of a UTF-8 file, without the byte order mark some editors write first;
    DataError naming the file if it is not UTF-8."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}: {what} is not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8"
        ) from e


def read_name_list(path: pathlib.Path) -> list[str]:
    """A split file: one name per line, blank lines ignored; DataError if missing or empty.

    The file is read as UTF-8; a byte order mark at its start is not part of the first name.
    """
    if not path.is_file():
        raise DataError(f"{path}: split file not found")
    names = [line.strip() for line in read_text(path, "split file").splitlines() if line.strip()]
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


def check_integer_labels(path: pathlib.Path, raster: Raster) -> None:
    """DataError if a float label file holds finite values that are not whole numbers
    (1.5 would otherwise become class 1); NaN is left to the nodata handling."""
    if not np.issubdtype(raster.data.dtype, np.floating):
        return
    values = np.unique(raster.data[np.isfinite(raster.data)])
    bad = values[values != np.round(values)]
    if bad.size:
        raise DataError(
            f"{path}: label values {bad.tolist()[:10]} are not integers; expected integer "
            "label values (class ids, or values your dataset description maps to them)"
        )


def check_label_values(path: pathlib.Path, label: np.ndarray, valid: np.ndarray) -> None:
    """DataError if `label` holds a value outside `valid` (the classes plus ignore)."""
    values = np.unique(label)
    bad = values[~np.isin(values, valid)]
    if bad.size:
        raise DataError(
            f"{path}: label values {bad.tolist()[:10]} are outside the class set {valid.tolist()}"
        )
