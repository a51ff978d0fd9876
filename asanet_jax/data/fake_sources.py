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
    text = "Training set:\n" + "\n".join(f"{s}.tif" for s in train)
    text += "\n\nTest set:\n" + "\n".join(f"{s}.tif" for s in test) + "\n"
    (root / WHU_DIVISION_FILE).write_text(text)
    return root
