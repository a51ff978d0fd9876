"""The rasters a scene prediction writes, as Cloud-Optimized GeoTIFFs (COGs).

For a label raster ``x.tif``:

- ``x.tif``: uint8 class ids, 255 (nodata) where a band the model sees has no data; the
  class palette as its colour table; overviews by the most frequent class (MODE).
- ``x_confidence.tif`` (optional): the top class's probability in percent.
- ``x_probabilities.tif`` (optional): one band per class, that class's probability in
  percent; the band descriptions are the class names.
- ``x.png`` (optional): a colour preview, at most 1024 pixels a side.

Percent bands are uint8 0..100 with 255 as nodata and a scale of 0.01 recorded, so GDAL
and rasterio users who apply scales read probabilities 0..1 (the convention of
land-cover products). Their overviews average. Every raster has the optical image's CRS
and geotransform, and carries the run's tags (``ASANET_PREDICTION``, ``ASANET_SCENE``); the preview
carries them as PNG text.

Rows arrive top to bottom (``write``). They go into tiled staging GeoTIFFs beside each
output, which ``finish`` turns into COGs with GDAL's COG driver (512-pixel tiles,
DEFLATE, internal overviews down to one tile) under temporary names. The COGs are then
renamed into place, the label raster last, so an existing label raster means a
complete scene. On any failure every temporary is removed; nothing that looks complete
is left.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

import numpy as np

from asanet_jax import files, visualize
from asanet_jax.labels import IGNORE

NODATA = IGNORE  # labels' and percent bands' nodata
COG_OPTIONS = dict(
    driver="COG", compress="DEFLATE", blocksize=512, overviews="AUTO", bigtiff="IF_SAFER"
)


@dataclasses.dataclass(frozen=True)
class OutputPaths:
    """Where one scene's rasters go; the optional ones are None when not asked for."""

    labels: pathlib.Path
    confidence: pathlib.Path | None = None
    probabilities: pathlib.Path | None = None
    preview: pathlib.Path | None = None

    @classmethod
    def beside(cls, labels, confidence=False, probabilities=False, preview=False):
        """The optional outputs named after the label raster (see the module docstring)."""
        labels = pathlib.Path(labels)

        def sibling(suffix):
            return labels.with_name(f"{labels.stem}{suffix}")

        return cls(
            labels,
            sibling("_confidence.tif") if confidence else None,
            sibling("_probabilities.tif") if probabilities else None,
            labels.with_suffix(".png") if preview else None,
        )

    def all(self) -> list[pathlib.Path]:
        """Every path, the label raster last (the order they are renamed into place)."""
        extras = [self.confidence, self.probabilities, self.preview]
        return [p for p in extras if p is not None] + [self.labels]

    def rasters(self) -> list[pathlib.Path]:
        """The GeoTIFFs (not the preview), the label raster last."""
        return [p for p in self.all() if p.suffix.lower() != ".png"]


def softmax(logits: np.ndarray) -> np.ndarray:
    """(..., K) float32 probabilities."""
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def percent(p: np.ndarray) -> np.ndarray:
    """Probabilities 0..1 -> uint8 percent 0..100."""
    return np.rint(p * 100).astype(np.uint8)


class SceneWriter:
    """Writes one scene's outputs; a context manager (see the module docstring).

    ``write(top, logits, missing)`` takes blended logits (rows, W, K) float32 and the
    missing mask (rows, W) of the rows starting at ``top``; ``finish()`` publishes the
    files. Leaving the block without ``finish()`` (an error, Ctrl-C) removes everything.
    `pixel_areas` (height,) gives each row's pixel area in km² (None: no area); the
    writer counts the labelled pixels (``labelled``) and their area (``km2``).
    """

    def __init__(
        self, paths: OutputPaths, height, width, crs, transform, spec, tags: dict, pixel_areas=None
    ):
        self.paths, self.spec, self.tags, self.pixel_areas = paths, spec, tags, pixel_areas
        self.profile = dict(
            driver="GTiff",
            height=height,
            width=width,
            dtype="uint8",
            crs=crs,
            transform=transform,
            nodata=NODATA,
            tiled=True,
            blockxsize=512,
            blockysize=512,
            compress="deflate",
            zlevel=1,  # staging only: fast, and the COG is compressed again
            bigtiff="IF_SAFER",
        )
        self._staging: dict[pathlib.Path, pathlib.Path] = {}
        self._open: dict[pathlib.Path, object] = {}
        # Every temporary, recorded before it is created; removed on failure.
        self._temporaries: set[pathlib.Path] = set()
        self.labelled = 0  # pixels given a class
        self.km2 = 0.0  # their area

    def _disk(self, path=None):
        """GDAL's failures of a full or read-only disk as one OSError naming the output."""
        return files.disk_errors_as_oserror(path or self.paths.labels, quiet=("rasterio",))

    def __enter__(self):
        try:
            with self._disk():
                self._create()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _create(self) -> None:
        import rasterio

        for path in self.paths.rasters():
            if not path.absolute().parent.is_dir():
                raise FileNotFoundError(2, "the folder to write into does not exist", str(path))
            files.remove_stale_temporaries(path.absolute().parent)
            staging = files.temporary_name(path.absolute())
            self._temporaries.add(staging)
            count = self.spec.num_classes if path == self.paths.probabilities else 1
            dst = rasterio.open(staging, "w", **{**self.profile, "count": count})
            self._staging[path] = staging
            self._open[path] = dst
            dst.update_tags(**self.tags)
            if path == self.paths.labels:
                dst.write_colormap(1, {i: (*c, 255) for i, c in enumerate(self.spec.palette)})
                dst.set_band_description(1, "class")
            else:
                names = self.spec.classes if count > 1 else ("confidence",)
                for band, name in enumerate(names, 1):
                    dst.set_band_description(band, f"{name} (percent)")
                dst.scales = (0.01,) * count

    def write(self, top: int, logits: np.ndarray, missing: np.ndarray) -> None:
        with self._disk():
            self._write(top, logits, missing)

    def _write(self, top: int, logits: np.ndarray, missing: np.ndarray) -> None:
        from rasterio.windows import Window

        window = Window(0, top, logits.shape[1], logits.shape[0])
        label = logits.argmax(-1).astype(np.uint8)
        label[missing] = NODATA
        self.labelled += int(missing.size - missing.sum())
        if self.pixel_areas is not None:
            rows = self.pixel_areas[top : top + missing.shape[0]]
            self.km2 += float((~missing).sum(1) @ rows)
        self._open[self.paths.labels].write(label[None], window=window)
        if self.paths.confidence is None and self.paths.probabilities is None:
            return
        p = softmax(logits)
        if self.paths.confidence is not None:
            conf = percent(p.max(-1))
            conf[missing] = NODATA
            self._open[self.paths.confidence].write(conf[None], window=window)
        if self.paths.probabilities is not None:
            probs = np.moveaxis(percent(p), -1, 0)
            probs[:, missing] = NODATA
            self._open[self.paths.probabilities].write(probs, window=window)

    def finish(self, tags: dict | None = None) -> None:
        """Add `tags`, make the COGs and the preview, and rename them into place, the
        label raster last."""
        with self._disk():
            self._finish(tags)

    def _finish(self, tags: dict | None) -> None:
        import rasterio.shutil

        for dst in self._open.values():
            dst.update_tags(**(tags or {}))
        self._close()
        published = {}
        for path, staging in self._staging.items():
            cog = files.temporary_name(path.absolute())
            self._temporaries.add(cog)
            published[path] = cog
            resampling = "MODE" if path == self.paths.labels else "AVERAGE"
            rasterio.shutil.copy(
                staging, cog, **COG_OPTIONS, overview_resampling=resampling, num_threads="2"
            )
            staging.unlink()
            self._temporaries.discard(staging)
        if self.paths.preview is not None:
            preview = files.temporary_name(self.paths.preview.absolute())
            self._temporaries.add(preview)
            published[self.paths.preview] = preview
            write_preview(published[self.paths.labels], preview, self.spec, self.tags)
        for path in self.paths.all():
            os.replace(published[path], path)
            self._temporaries.discard(published[path])
        self._staging = {}

    def _close(self) -> None:
        for dst in self._open.values():
            dst.close()
        self._open = {}

    def __exit__(self, *exc) -> None:
        self._close()
        for tmp in self._temporaries:
            tmp.unlink(missing_ok=True)
        self._temporaries, self._staging = set(), {}


def write_preview(label_path, preview_path, spec, tags=None, max_side: int = 1024) -> None:
    """A colour PNG of the label raster, decimated (from its overviews) so that its longer
    side is at most max_side; `tags` become its text chunks."""
    import rasterio
    from PIL import Image, PngImagePlugin

    with rasterio.open(label_path) as src:
        scale = max(src.height, src.width) / max_side
        shape = (
            max(1, round(src.height / max(scale, 1))),
            max(1, round(src.width / max(scale, 1))),
        )
        label = src.read(1, out_shape=shape, resampling=rasterio.enums.Resampling.nearest)
    info = PngImagePlugin.PngInfo()
    for key, value in (tags or {}).items():
        info.add_text(key, value)
    Image.fromarray(visualize.colorize(label, spec.palette, NODATA)).save(
        preview_path, format="PNG", pnginfo=info
    )
