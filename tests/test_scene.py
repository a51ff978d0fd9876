"""Whole-scene prediction from GeoTIFFs: equal to in-memory inference, georeferenced
output with a colour table, nodata kept, and clear errors for inputs that do not fit."""

import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
import rasterio
from micro import micro_model

from asanet_jax import checkpointing
from asanet_jax.data import io, specs, transforms
from asanet_jax.predict import rasters, scene
from asanet_jax.predict.predictor import Predictor, whole
from asanet_jax.predict.windows import blend_weights, slide
from tests.support import fake_sources

REPO = pathlib.Path(__file__).resolve().parents[1]
SPEC = specs.synthetic_spec()


@pytest.fixture(scope="module")
def model():
    return micro_model(6, seed=2)


@pytest.fixture(scope="module")
def predictor(model):
    return Predictor(model)


def write_scene(root, shape, crs="EPSG:32650", sar_crs=None, optical_bands=3):
    rng = np.random.default_rng(0)
    optical = rng.integers(1, 256, (*shape, optical_bands)).astype(np.uint8)
    optical[:5, :7] = 0  # no data
    sar = rng.integers(0, 256, shape).astype(np.uint8)
    fake_sources.write_geotiff(
        root / "opt.tif",
        optical,
        crs=crs,
        nodata=0,
        photometric="RGB" if optical_bands == 3 else None,
    )
    fake_sources.write_geotiff(root / "sar.tif", sar, crs=sar_crs or crs)
    return optical, sar


def in_memory(predict, optical, sar, window, stride):
    """Inference on the whole scene in memory; where the optical image has no data (all
    bands 0, its nodata value), both images are fed 0, as in training."""
    sar = np.where((optical == 0).all(-1), 0, sar)
    ex = transforms.eval_example(
        {"optical": optical, "sar": sar[..., None], "label": np.zeros(sar.shape, np.uint8)}, SPEC
    )
    if window is None:
        return whole(predict, ex["optical"][None], ex["sar"][None])[0]
    return slide(predict, ex["optical"][None], ex["sar"][None], window, stride, 6)[0]


def assert_labels_match(labels, logits, missing, margin=1e-4):
    """`labels` equal the argmax of reference `logits` (nodata where `missing`), except
    where the top two logits are within float32 rounding of each other."""
    expected = np.where(missing, scene.NODATA, logits.argmax(-1))
    top2 = np.sort(logits, -1)[..., -2:]
    near_tie = (top2[..., 1] - top2[..., 0]) < margin
    differ = (labels != expected) & ~near_tie
    assert not differ.any(), f"{differ.sum()} pixels differ beyond float32 rounding"
    assert (labels == expected).mean() > 0.999


def read_band(path, band=1):
    with rasterio.open(path) as src:
        return src.read(band)


@pytest.mark.parametrize("batch_size", [1, 5, 8])
def test_batched_scene_equals_in_memory_sliding_inference(predictor, tmp_path, batch_size):
    optical, sar = write_scene(tmp_path, (150, 170))
    missing = np.zeros((150, 170), bool)
    missing[:5, :7] = True
    stats = scene.label_scene(
        predictor,
        tmp_path / "opt.tif",
        tmp_path / "sar.tif",
        tmp_path / "labels.tif",
        SPEC,
        window=64,
        stride=48,
        batch_size=batch_size,  # 5 and 8 leave a padded last batch (3 x 4 windows)
        confidence=True,
        preview=True,
    )
    logits = in_memory(predictor, optical, sar, (64, 64), (48, 48))
    assert_labels_match(read_band(tmp_path / "labels.tif"), logits, missing)
    with rasterio.open(tmp_path / "labels.tif") as dst, rasterio.open(tmp_path / "opt.tif") as src:
        assert dst.crs == src.crs and dst.transform == src.transform and dst.nodata == 255
        assert dst.colormap(1)[1] == (*SPEC.palette[1], 255)
    conf = read_band(tmp_path / "labels_confidence.tif")
    p = np.asarray(jax.nn.softmax(logits, -1)).max(-1)
    assert (conf[missing] == 255).all()
    np.testing.assert_allclose(conf[~missing], np.rint(p * 100)[~missing], atol=1)
    assert (tmp_path / "labels.png").stat().st_size > 100
    assert stats.windows == 12 and stats.pixels == 150 * 170 - 35 and stats.nodata_pixels == 35
    assert stats.km2 == pytest.approx((150 * 170 - 35) * 100 / 1e6)  # 10 m pixels
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["opt.tif", "sar.tif", "labels.tif", "labels_confidence.tif", "labels.png"]
    )


def test_scene_within_one_window_equals_whole_image_inference(predictor, tmp_path):
    optical, sar = write_scene(tmp_path, (64, 64))
    scene.label_scene(
        predictor,
        tmp_path / "opt.tif",
        tmp_path / "sar.tif",
        tmp_path / "labels.tif",
        SPEC,
        window=96,
    )
    missing = np.zeros((64, 64), bool)
    missing[:5, :7] = True
    logits = in_memory(predictor, optical, sar, None, None)
    assert_labels_match(read_band(tmp_path / "labels.tif"), logits, missing)


def test_blend_weights_are_numpys_triangle_and_hann_windows():
    for blend, window in (("linear", np.bartlett), ("hann", np.hanning)):
        w = blend_weights(40, 24, blend)[..., 0]
        # numpy's windows end in zeros; ours are their positive interior.
        expected = np.outer(window(42)[1:-1], window(26)[1:-1])
        np.testing.assert_allclose(w, expected, rtol=1e-6, atol=1e-7)
    assert (blend_weights(5, 7, "mean") == 1).all()


@pytest.mark.parametrize("blend", ["linear", "hann"])
def test_weighted_blending_equals_an_independent_numpy_blend(predictor, tmp_path, blend):
    optical, sar = write_scene(tmp_path, (100, 130))
    scene.label_scene(
        predictor,
        tmp_path / "opt.tif",
        tmp_path / "sar.tif",
        tmp_path / "labels.tif",
        SPEC,
        window=64,
        stride=40,
        batch_size=4,
        blend=blend,
        probabilities=True,
    )
    # One window at a time, weighted by numpy's own window functions.
    window = {"linear": np.bartlett, "hann": np.hanning}[blend]
    weight = np.outer(window(66)[1:-1], window(66)[1:-1])[..., None]
    sar_in = np.where((optical == 0).all(-1), 0, sar)
    ex = transforms.eval_example(
        {"optical": optical, "sar": sar_in[..., None], "label": np.zeros(sar.shape, np.uint8)},
        SPEC,
    )
    total, count = np.zeros((100, 130, 6)), np.zeros((100, 130, 1))
    for y in (0, 36):
        for x in (0, 40, 66):
            tile = (slice(y, y + 64), slice(x, x + 64))
            logits = np.asarray(
                predictor(
                    ex["optical"][None][:, tile[0], tile[1]], ex["sar"][None][:, tile[0], tile[1]]
                )
            )[0]
            total[tile] += logits * weight
            count[tile] += weight
    blended = total / count
    missing = np.zeros((100, 130), bool)
    missing[:5, :7] = True
    assert_labels_match(read_band(tmp_path / "labels.tif"), blended, missing)
    # Differs from the mean blend somewhere: the weights matter.
    mean = in_memory(predictor, optical, sar, (64, 64), (40, 40))
    assert (mean.argmax(-1) != blended.argmax(-1)).any()
    with rasterio.open(tmp_path / "labels_probabilities.tif") as src:
        probs = src.read()
        assert src.descriptions == tuple(f"{c} (percent)" for c in SPEC.classes)
        assert src.scales == (0.01,) * 6
    e = np.exp(blended - blended.max(-1, keepdims=True))
    p = np.moveaxis(e / e.sum(-1, keepdims=True), -1, 0)
    np.testing.assert_allclose(probs[:, ~missing], np.rint(p * 100)[:, ~missing], atol=1)
    assert (probs[:, missing] == 255).all()


def test_outputs_are_valid_cloud_optimized_geotiffs_with_overviews(predictor, tmp_path):
    from rio_cogeo.cogeo import cog_validate

    write_scene(tmp_path, (700, 600))
    scene.label_scene(
        predictor,
        tmp_path / "opt.tif",
        tmp_path / "sar.tif",
        tmp_path / "m.tif",
        SPEC,
        window=256,
        batch_size=2,
        confidence=True,
        probabilities=True,
    )
    for name, resampling in (
        ("m", "MODE"),
        ("m_confidence", "AVERAGE"),
        ("m_probabilities", "AVERAGE"),
    ):
        path = tmp_path / f"{name}.tif"
        valid, errors, warnings = cog_validate(str(path), strict=True)
        assert valid and not errors and not warnings, (name, errors, warnings)
        with rasterio.open(path) as src:
            assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
            assert src.overviews(1) == [2] and src.block_shapes[0] == (512, 512)
            assert src.nodata == 255 and src.compression.name.lower() == "deflate"
            overview = src.read(1, out_shape=(350, 300))
            if resampling == "MODE":  # an overview of class ids holds class ids
                assert set(np.unique(overview)) <= set(range(6)) | {255}
                assert src.colormap(1)[2] == (*SPEC.palette[2], 255)


def _warp_scene(tmp_path, sar_crs, sar_transform, sar_shape):
    """An optical scene on a 10 m UTM grid, and a smooth float SAR field on another grid
    that leaves the scene's left edge uncovered."""
    from affine import Affine

    rng = np.random.default_rng(1)
    optical = rng.integers(1, 256, (96, 112, 3)).astype(np.uint8)
    fake_sources.write_geotiff(tmp_path / "opt.tif", optical, photometric="RGB")
    yy, xx = np.mgrid[: sar_shape[0], : sar_shape[1]]
    sar = (127 + 100 * np.sin(yy / 7.0) * np.cos(xx / 5.0)).astype(np.float32)
    fake_sources.write_geotiff(
        tmp_path / "sar_other_grid.tif",
        sar,
        crs=sar_crs,
        transform=Affine(*sar_transform),
        nodata=np.nan,
    )
    return sar


@pytest.mark.parametrize("grid", ["20 m UTM", "EPSG:4326"])
def test_align_warps_the_sar_like_rasterio_reproject(predictor, tmp_path, grid):
    from rasterio.warp import Resampling, reproject, transform_bounds

    opt_transform = fake_sources.fake_transform()
    if grid == "20 m UTM":
        crs, transform, shape = "EPSG:32650", (20, 0, 500200.0 + 7, 0, -20, 3400000.0 + 9), (52, 52)
    else:
        left, bottom, right, top = transform_bounds(
            "EPSG:32650", "EPSG:4326", 500000, 3399040, 501120, 3400000
        )
        step = (top - bottom) / 80
        crs, transform = "EPSG:4326", (step, 0, left + (right - left) * 0.1, 0, -step, top + step)
        shape = (84, int((right - left) / step) + 2)
    sar = _warp_scene(tmp_path, crs, transform, shape)
    # The same data aligned beforehand with rasterio's own reprojection.
    aligned = np.full((96, 112), np.nan, np.float32)
    from affine import Affine

    reproject(
        sar,
        aligned,
        src_transform=Affine(*transform),
        src_crs=crs,
        src_nodata=np.nan,
        dst_transform=opt_transform,
        dst_crs="EPSG:32650",
        dst_nodata=np.nan,
        resampling=Resampling.bilinear,
    )
    assert np.isnan(aligned[:, 0]).all() and np.isfinite(aligned).mean() > 0.7
    fake_sources.write_geotiff(tmp_path / "sar_aligned.tif", aligned, nodata=np.nan)
    with pytest.raises(io.DataError, match=r"not co-registered.*--align warps"):
        rasters.open_scene(tmp_path / "opt.tif", tmp_path / "sar_other_grid.tif", SPEC)
    common = dict(window=64, stride=48, batch_size=2)
    scene.label_scene(
        predictor,
        tmp_path / "opt.tif",
        tmp_path / "sar_other_grid.tif",
        tmp_path / "warped.tif",
        SPEC,
        align=True,
        **common,
    )
    scene.label_scene(
        predictor,
        tmp_path / "opt.tif",
        tmp_path / "sar_aligned.tif",
        tmp_path / "pre.tif",
        SPEC,
        **common,
    )
    warped, pre = read_band(tmp_path / "warped.tif"), read_band(tmp_path / "pre.tif")
    np.testing.assert_array_equal(warped, pre)
    np.testing.assert_array_equal(warped == scene.NODATA, np.isnan(aligned))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sar_crs": "EPSG:4326"}, "not co-registered: .*opt.tif has CRS EPSG:32650"),
        ({"optical_bands": 2}, "2 bands have no OpenCV colour decoding"),
    ],
)
def test_inputs_that_do_not_fit_are_clear_errors(predictor, tmp_path, kwargs, message):
    write_scene(tmp_path, (40, 40), **kwargs)
    with pytest.raises(io.DataError, match=message):
        scene.label_scene(
            predictor, tmp_path / "opt.tif", tmp_path / "sar.tif", tmp_path / "out.tif", SPEC
        )
    assert not (tmp_path / "out.tif").exists()


def test_predict_script_and_its_error_messages(model, tmp_path):
    # The model directory records its dataset, as training and --dataset conversion write it.
    record = checkpointing.dataset_record(SPEC, "synthetic_rgb_sar", "default")
    checkpointing.save_model(tmp_path / "model", model, metadata=record)
    checkpointing.save_model(tmp_path / "bare", model)  # records none
    optical, sar = write_scene(tmp_path, (80, 90))
    cmd = [
        sys.executable,
        str(REPO / "scripts" / "predict.py"),
        "--checkpoint",
        str(tmp_path / "model"),
        "--window",
        "64",
        "--optical",
        str(tmp_path / "opt.tif"),
        "--sar",
        str(tmp_path / "sar.tif"),
    ]
    ok = subprocess.run([*cmd, "--output", str(tmp_path / "o.tif")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert (tmp_path / "o.png").is_file()
    # Default stride: 2/3 of the window.
    expected = in_memory(Predictor(model), optical, sar, (64, 64), (42, 42)).argmax(-1)
    expected[:5, :7] = scene.NODATA
    with rasterio.open(tmp_path / "o.tif") as out:
        np.testing.assert_array_equal(out.read(1), expected)
    bare = [*cmd[:3], str(tmp_path / "bare"), *cmd[4:], "--output", str(tmp_path / "n.tif")]
    refused = subprocess.run(bare, capture_output=True, text=True)
    assert refused.returncode == 1 and "does not record the dataset" in refused.stderr
    named = subprocess.run(
        [*bare, "--dataset", "synthetic_rgb_sar"], capture_output=True, text=True
    )
    assert named.returncode == 0, named.stderr[-2000:]
    fake_sources.write_geotiff(tmp_path / "sar.tif", np.zeros((80, 91), np.uint8))
    bad = subprocess.run(
        [*cmd, "--output", str(tmp_path / "b.tif")], capture_output=True, text=True
    )
    assert bad.returncode == 1 and "is 80x90 but" in bad.stderr and "Traceback" not in bad.stderr
    (tmp_path / "sar.tif").write_bytes(b"not a tiff")
    bad = subprocess.run(
        [*cmd, "--output", str(tmp_path / "b.tif")], capture_output=True, text=True
    )
    assert bad.returncode == 1 and "unreadable SAR raster" in bad.stderr


def test_memory_is_bounded_by_the_window_rows_not_the_scene_height(predictor, tmp_path):
    import gc
    import tracemalloc

    peaks = {}
    for height in (500, 2000):
        folder = tmp_path / str(height)
        folder.mkdir()
        write_scene(folder, (height, 200))
        settings = dict(window=64, stride=48, batch_size=2, probabilities=True)
        if not peaks:  # compiled and warm before measuring
            scene.label_scene(
                predictor,
                folder / "opt.tif",
                folder / "sar.tif",
                folder / "w.tif",
                SPEC,
                **settings,
            )
        gc.collect()
        tracemalloc.start()
        scene.label_scene(
            predictor,
            folder / "opt.tif",
            folder / "sar.tif",
            folder / "m.tif",
            SPEC,
            **settings,
        )
        peaks[height] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    # Four times the rows, about the same peak. Holding the whole scene's logits would
    # add (2000 - 500) x 200 x 6 x 4 bytes = 7.2 MB.
    assert peaks[2000] - peaks[500] < 2e6 and peaks[2000] < 9.6e6, peaks


def test_align_marks_gaps_of_an_integer_sar_without_nodata_as_missing(predictor, tmp_path):
    """No nodata value to warp with: an alpha band from the warper marks the gaps."""
    from affine import Affine

    rng = np.random.default_rng(1)
    fake_sources.write_geotiff(
        tmp_path / "opt.tif", rng.integers(1, 256, (96, 112, 3)).astype(np.uint8)
    )
    transform = Affine(20, 0, 500200.0 + 7, 0, -20, 3400000.0 + 9)
    sar = rng.integers(0, 256, (52, 52)).astype(np.uint8)  # 0 is a value here
    fake_sources.write_geotiff(tmp_path / "sar.tif", sar, transform=transform)
    scene.label_scene(
        predictor,
        tmp_path / "opt.tif",
        tmp_path / "sar.tif",
        tmp_path / "w.tif",
        SPEC,
        window=64,
        align=True,
    )
    # The SAR covers x >= 500207 m: columns from 21 on are inside, 0..19 outside.
    nodata = read_band(tmp_path / "w.tif") == scene.NODATA
    assert nodata[:, :20].all() and not nodata[:, 22:].any()
