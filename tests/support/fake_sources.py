"""Small copies of each source dataset in its exact on-disk format, for tests and dummy data.

Each writer lays out files, folder names and split files as the real dataset is
distributed (GeoTIFF via rasterio, JPEG/PNG via Pillow), with random content.
"""

from __future__ import annotations

import pathlib

import numpy as np

from asanet_jax.labels import IGNORE

# An arbitrary UTM zone and 10 m pixels: enough for CRS/transform round-trip checks.
FAKE_CRS = "EPSG:32650"


def fake_transform(x0: float = 500000.0, y0: float = 3400000.0, pixel: float = 10.0):
    from affine import Affine

    return Affine(pixel, 0.0, x0, 0.0, -pixel, y0)


def write_geotiff(
    path, data: np.ndarray, crs=FAKE_CRS, transform=None, nodata=None, photometric=None
) -> None:
    """Write (H, W) or (H, W, bands) `data` as a GeoTIFF."""
    import rasterio

    data = data[..., None] if data.ndim == 2 else data
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = dict(
        driver="GTiff",
        height=data.shape[0],
        width=data.shape[1],
        count=data.shape[2],
        dtype=data.dtype.name,
    )
    if crs is not None:
        profile.update(crs=crs, transform=transform or fake_transform())
    if nodata is not None:
        profile["nodata"] = nodata
    if photometric is not None:
        profile["photometric"] = photometric
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.moveaxis(data, -1, 0))


def write_pillow(path, data: np.ndarray, quality: int = 90) -> None:
    from PIL import Image

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(data[..., 0] if data.ndim == 3 and data.shape[2] == 1 else data)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        image.save(path, quality=quality)
    else:
        image.save(path)


def random_label(rng, shape, num_classes: int, ignore_fraction: float = 0.0) -> np.ndarray:
    """Blocky labels (8x8 cells) so crops hold several classes, with optional ignore."""
    cells = rng.integers(0, num_classes, size=(-(-shape[0] // 8), -(-shape[1] // 8)))
    label = np.kron(cells, np.ones((8, 8), np.int64))[: shape[0], : shape[1]].astype(np.uint8)
    if ignore_fraction:
        label[rng.random(shape) < ignore_fraction] = IGNORE
    return label


def write_pie(root, train: list[str], val: list[str], size: int = 32, seed: int = 0):
    """PIE-RGB-SAR: rgb/ sar/ label/ <name>.tif (3-band, 1-band, labels 0..5), split files."""
    rng = np.random.default_rng(seed)
    root = pathlib.Path(root)
    for name in train + val:
        write_geotiff(root / "rgb" / f"{name}.tif", rng.integers(0, 256, (size, size, 3), np.uint8))
        write_geotiff(root / "sar" / f"{name}.tif", rng.integers(0, 256, (size, size), np.uint8))
        write_geotiff(root / "label" / f"{name}.tif", random_label(rng, (size, size), 6))
    (root / "train.txt").write_text("".join(f"{n}\n" for n in train))
    (root / "val.txt").write_text("".join(f"{n}\n" for n in val))
    return root


def write_ddhr(root, num_ids: int, size: int = 32, seed: int = 0):
    """DDHR-SK (korea): GF2/<id>.jpg RGB, GF3/<id>.jpg grey SAR, label/<id>.png (0..4, 255)."""
    rng = np.random.default_rng(seed)
    root = pathlib.Path(root)
    for i in range(1, num_ids + 1):
        write_pillow(root / "GF2" / f"{i}.jpg", rng.integers(0, 256, (size, size, 3), np.uint8))
        write_pillow(root / "GF3" / f"{i}.jpg", rng.integers(0, 256, (size, size), np.uint8))
        label = random_label(rng, (size, size), 5, ignore_fraction=0.05)
        write_pillow(root / "label" / f"{i}.png", label)
    return root


WHU_DIVISION_FILE = "The division of the dataset.txt"


def write_whu(root, train: list[str], test: list[str], shape=(600, 1100), seed: int = 0):
    """WHU-OPT-SAR: optical/ (4-band B,G,R,NIR), sar/ (1 band), lbl/ (0, 10, ..., 70) tifs,
    and the dataset's division file listing the train and test scenes."""
    rng = np.random.default_rng(seed)
    root = pathlib.Path(root)
    for i, scene in enumerate(train + test):
        transform = fake_transform(x0=500000.0 + 20000.0 * i)
        optical = rng.integers(0, 256, (*shape, 4), np.uint8)
        # RGB photometric with an untagged extra band: OpenCV decodes bands 1-3 as colour
        # and drops the 4th (docs/design.md, section 5, for alpha-tagged files).
        write_geotiff(
            root / "optical" / f"{scene}.tif", optical, transform=transform, photometric="RGB"
        )
        sar = rng.integers(0, 256, shape, np.uint8)
        write_geotiff(root / "sar" / f"{scene}.tif", sar, transform=transform)
        label = random_label(rng, shape, 8) * 10
        write_geotiff(root / "lbl" / f"{scene}.tif", label, transform=transform)
    # The dataset's own format (tests/fixtures/whu holds the real file): CRLF, 'train:' and
    # 'test:' headings, names with .tif, a blank line between the parts and at the end.
    lines = ["train:", *(f"{s}.tif" for s in train), "", "test:", *(f"{s}.tif" for s in test), ""]
    (root / WHU_DIVISION_FILE).write_bytes("".join(f"{line}\r\n" for line in lines).encode())
    return root


# A UTM zone far north, where float32 cannot hold a northing to the metre, and an origin
# with more digits than float32 keeps.
SENTINEL_CRS = "EPSG:32633"
SENTINEL_ORIGIN = (500_000.123456789, 8_400_000.123456789)
SENTINEL_CLASSES = ("crop", "forest", "water")


def write_sentinel_folder(
    root,
    train: list[str],
    val: list[str],
    size: int = 32,
    seed: int = 0,
    name: str = "s1s2_fields",
    ignore: int = -1,
    **description,
):
    """A user's `rgb_sar_folder` dataset as Sentinel-1/-2 chips come.

    - optical/<name>.tif: Sentinel-2, 13 bands (B1..B12 with B8A) of int16 reflectance
      x 10000, nodata 0. Each chip has a 0 in band 1 (unused) at row 0, columns 0..3 (a
      legitimate value: the pixel keeps its label), and in band 2 (used) at row 1,
      columns 0..2 (no data: the pixel is missing).
    - sar/<name>.tif: Sentinel-1 VV and VH backscatter in dB, float32, NaN as nodata
      (row 2, columns 0..1); values reach beyond the dB ranges, to be clipped.
    - label/<name>.tif: int16 class ids 0..2 with `ignore` (the file's nodata) at (5, 5).
    - rgb_sar_folder.json: B2, B3, B4 (blue, green, red, the official models' channel
      order) and VV, VH, VV, per-band dB ranges (VV -25..0, VH -32..-5), `description`
      overriding any key.

    Chips are georeferenced side by side along x from ``SENTINEL_ORIGIN`` (10 m pixels).
    """
    import json

    from affine import Affine

    rng = np.random.default_rng(seed)
    root = pathlib.Path(root)
    for i, chip in enumerate(train + val):
        transform = Affine(
            10.0, 0.0, SENTINEL_ORIGIN[0] + 10.0 * size * i, 0.0, -10.0, SENTINEL_ORIGIN[1]
        )
        optical = rng.integers(1, 10000, (size, size, 13)).astype(np.int16)
        optical[0, :4, 0] = 0
        optical[1, :3, 1] = 0
        vv = rng.uniform(-30.0, 5.0, (size, size))
        vh = rng.uniform(-36.0, -1.0, (size, size))
        sar = np.stack([vv, vh], -1).astype(np.float32)
        sar[2, :2] = np.nan
        label = random_label(rng, (size, size), len(SENTINEL_CLASSES)).astype(np.int16)
        label[5, 5] = ignore
        for folder, data, nodata in (
            ("optical", optical, 0),
            ("sar", sar, np.nan),
            ("label", label, ignore),
        ):
            write_geotiff(
                root / folder / f"{chip}.tif",
                data,
                crs=SENTINEL_CRS,
                transform=transform,
                nodata=nodata,
            )
    (root / "train.txt").write_text("".join(f"{n}\n" for n in train))
    (root / "val.txt").write_text("".join(f"{n}\n" for n in val))
    spec = {
        "name": name,
        "splits": {"train": "train.txt", "val": "val.txt"},
        "classes": list(SENTINEL_CLASSES),
        "palette": [[255, 200, 0], [0, 128, 0], [0, 0, 255]],
        "ignore_index": ignore,
        "optical_bands": [2, 3, 4],
        "sar_bands": [1, 2, 1],
        "sar_scaling": {"kind": "db_range", "min": [-25.0, -32.0], "max": [0.0, -5.0]},
    } | description
    (root / "rgb_sar_folder.json").write_text(json.dumps(spec, indent=2) + "\n")
    return root
