"""A scene's rasters: checked on opening, read window by window as float32 with missing
values NaN, the SAR warped onto the optical grid on request.

With ``align``, a SAR raster on another grid or CRS is warped onto the optical grid as
it is read (GDAL's warper through rasterio's WarpedVRT, bilinear); pixels the warp
leaves empty count as missing. A percentile SAR stretch takes its limits from the whole
scene, in a first pass over the SAR raster decimated to at most 2048 pixels a side.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from asanet_jax.data import io, preprocess, specs

PERCENTILE_PASS_SIDE = 2048


@dataclasses.dataclass(frozen=True)
class SceneInputs:
    """A checked optical + SAR pair; `warp_sar` when the SAR is on another grid."""

    optical: pathlib.Path
    sar: pathlib.Path
    height: int
    width: int
    crs: object
    transform: object
    optical_nodata: float | None
    sar_nodata: float | None
    warp_sar: bool = False

    @property
    def pixels(self) -> int:
        return self.height * self.width


def _header(path: pathlib.Path, role: str) -> dict:
    import rasterio
    from rasterio.errors import RasterioError

    if not path.is_file():
        raise io.DataError(f"{path}: {role} file not found")
    try:
        with rasterio.open(path) as src:
            return dict(
                height=src.height,
                width=src.width,
                crs=src.crs,
                transform=src.transform,
                count=src.count,
                nodata=src.nodata,
                bounds=src.bounds,
            )
    except (RasterioError, OSError) as e:
        raise io.DataError(f"{path}: unreadable {role} raster ({e})") from e


def open_scene(optical_path, sar_path, spec: specs.DatasetSpec, align: bool = False):
    """Check that the rasters are readable, have the bands the model needs, and are on
    one grid (or, with `align`, overlap in known CRSs); DataError naming the files."""
    op, sp = pathlib.Path(optical_path), pathlib.Path(sar_path)
    o, s = _header(op, "optical"), _header(sp, "SAR")
    preprocess.band_indices(spec.optical_bands, o["count"], "optical", op)
    preprocess.band_indices(spec.sar_bands, s["count"], "sar", sp)
    mismatch = None
    if (o["height"], o["width"]) != (s["height"], s["width"]):
        mismatch = f"{op} is {o['height']}x{o['width']} but {sp} is {s['height']}x{s['width']}"
    elif o["crs"] != s["crs"]:
        mismatch = f"{op} has CRS {o['crs']} but {sp} has {s['crs']}"
    elif not o["transform"].almost_equals(s["transform"]):
        mismatch = (
            f"{op} has geotransform {tuple(o['transform'])[:6]} "
            f"but {sp} has {tuple(s['transform'])[:6]}"
        )
    if mismatch and not align:
        raise io.DataError(
            f"optical and SAR are not co-registered: {mismatch} "
            "(--align warps the SAR onto the optical grid)"
        )
    if mismatch:
        _check_overlap(op, o, sp, s)
    return SceneInputs(
        op,
        sp,
        o["height"],
        o["width"],
        o["crs"],
        o["transform"],
        o["nodata"],
        s["nodata"],
        warp_sar=bool(mismatch),
    )


def _check_overlap(op, o, sp, s) -> None:
    from rasterio.warp import transform_bounds

    for path, header in ((op, o), (sp, s)):
        if header["crs"] is None:
            raise io.DataError(f"{path} has no CRS; the SAR cannot be aligned without one")
    left, bottom, right, top = transform_bounds(s["crs"], o["crs"], *s["bounds"])
    b = o["bounds"]
    if left >= b.right or right <= b.left or bottom >= b.top or top <= b.bottom:
        raise io.DataError(f"{sp} does not overlap {op}; nothing to align")


class SceneRasters:
    """Both rasters of a scene, each opened once; windows read as (H, W, bands) float32
    with missing values NaN."""

    def __init__(self, scene: SceneInputs):
        import rasterio
        from rasterio.enums import Resampling
        from rasterio.vrt import WarpedVRT

        self.scene = scene
        self._optical = rasterio.open(scene.optical)
        self._sar_file = rasterio.open(scene.sar)
        self._sar, self._alpha = self._sar_file, None
        if scene.warp_sar:
            nodata, alpha = scene.sar_nodata, False
            if nodata is None and np.issubdtype(np.dtype(self._sar_file.dtypes[0]), np.floating):
                nodata = float("nan")
            elif nodata is None:  # integers and no nodata value: an alpha band marks the gaps
                alpha = True
            self._sar = WarpedVRT(
                self._sar_file,
                crs=scene.crs,
                transform=scene.transform,
                width=scene.width,
                height=scene.height,
                resampling=Resampling.bilinear,
                nodata=nodata,
                add_alpha=alpha,
            )
            self._alpha = self._sar.count if alpha else None
        self.sar_bands = self._sar_file.count

    def read(self, window) -> tuple[np.ndarray, np.ndarray]:
        data = np.moveaxis(self._optical.read(window=window), 0, -1)
        optical = io.nodata_as_nan(io.Raster(data, nodata=self.scene.optical_nodata))
        return optical, self._read_sar(window)

    def _read_sar(self, window, out_shape=None) -> np.ndarray:
        bands = list(range(1, self.sar_bands + 1))
        shape = None if out_shape is None else (len(bands), *out_shape)
        data = self._sar.read(bands, window=window, out_shape=shape)
        nodata = self._sar.nodata if self.scene.warp_sar else self.scene.sar_nodata
        sar = io.nodata_as_nan(io.Raster(np.moveaxis(data, 0, -1), nodata=nodata))
        if self._alpha is not None:
            shape = None if out_shape is None else out_shape
            alpha = self._sar.read(self._alpha, window=window, out_shape=shape)
            sar[alpha == 0] = np.nan
        return sar

    def sar_limits(self, spec, max_side: int = PERCENTILE_PASS_SIDE) -> np.ndarray | None:
        """(bands, 2) limits of a percentile SAR stretch over the whole scene, from the SAR
        decimated (nearest) to at most `max_side` pixels a side; None for other scalings.
        Training stretched each example by its own percentiles; a scene's are the closest
        a window-by-window prediction can come to that."""
        if spec.sar_scaling["kind"] != "percentile":
            return None
        h, w = self.scene.height, self.scene.width
        factor = max(h, w) / max_side
        shape = (max(1, round(h / factor)), max(1, round(w / factor))) if factor > 1 else None
        return preprocess.percentile_limits(self._read_sar(None, shape), spec.sar_scaling)

    def close(self) -> None:
        if self._sar is not self._sar_file:
            self._sar.close()
        self._sar_file.close()
        self._optical.close()


def scene_sar_limits(scene: SceneInputs, spec) -> np.ndarray | None:
    """The percentile stretch's limits over the scene (``SceneRasters.sar_limits``)."""
    rasters = SceneRasters(scene)
    try:
        return rasters.sar_limits(spec)
    finally:
        rasters.close()


def pixel_area_km2(crs, transform, height: int) -> np.ndarray | None:
    """(height,) area of one pixel of each row in km²: exact in a projected CRS; on the
    sphere of the mean Earth radius in a geographic one; None without a CRS."""
    if crs is None:
        return None
    a, b, _, d, e, f = tuple(transform)[:6]
    if crs.is_geographic:
        radius = 6371.0088  # km, IUGG mean radius
        top = np.radians(f + e * np.arange(height))
        bottom = np.radians(f + e * np.arange(1, height + 1))
        return radius**2 * np.radians(abs(a)) * np.abs(np.sin(top) - np.sin(bottom))
    from rasterio.errors import CRSError

    try:
        metres = crs.linear_units_factor[1]
    except CRSError:  # a CRS without linear units: no area
        return None
    return np.full(height, abs(a * e - b * d) * metres**2 / 1e6)
