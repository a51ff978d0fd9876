"""One transformation from raster values to model inputs, shared by the dataset builders,
the input pipeline and scene prediction: on the same Sentinel-1/-2 rasters all three
agree with each other and with the rule computed here from the files."""

import numpy as np
import pytest
import rasterio
from micro import micro_model

from asanet_jax.data import build, io, preprocess, specs, transforms
from asanet_jax.predict import rasters, scene
from asanet_jax.predict.predictor import Predictor, whole
from tests.support import fake_sources

SIZE = 32  # the micro model's smallest input side


@pytest.fixture(scope="module")
def predictor():
    return Predictor(micro_model(3, seed=3))


def plain_spec(percentile):
    scaling = {"kind": "percentile", "low": 2, "high": 98} if percentile else {"kind": "none"}
    return specs.DatasetSpec(
        name="t",
        classes=("a", "b"),
        palette=((0, 0, 0), (1, 1, 1)),
        optical_mean=(0.0,) * 3,
        optical_std=(1.0,) * 3,
        sar_mean=(0.0,) * 3,
        sar_std=(1.0,) * 3,
        sar_bands=(1, 2, 1),
        sar_scaling=scaling,
    )


def build_folder(tmp_path, **description):
    root = fake_sources.write_sentinel_folder(tmp_path / "src", ["a"], ["c"], SIZE, **description)
    build.build("rgb_sar_folder", tmp_path / "data", manual_dir=root)
    source = build.open_source(tmp_path / "data", "rgb_sar_folder", "val")
    return root, source


def read(path):
    with rasterio.open(path) as src:
        return np.moveaxis(src.read(), 0, -1), src.nodata


def expected_inputs(root, name, spec):
    """The rule written out from the files: B2, B3, B4 and VV, VH, VV; VV scaled by
    -25..0 dB and VH by -32..-5 dB to 0..255 (rounded, clipped); missing where a band the
    model sees is nodata (optical 0, SAR NaN), fed as 0; then (x - mean) / std."""
    optical, onod = read(root / "optical" / f"{name}.tif")
    sar, _ = read(root / "sar" / f"{name}.tif")
    missing = (optical[..., 1:4] == onod).any(-1) | np.isnan(sar).any(-1)
    lo, hi = np.array([-25.0, -32.0]), np.array([0.0, -5.0])
    with np.errstate(invalid="ignore"):
        scaled = np.clip(np.rint((sar - lo) / (hi - lo) * 255), 0, 255)
    o = np.where(missing[..., None], 0, optical[..., [1, 2, 3]].astype(np.float64))
    s = np.where(missing[..., None], 0, scaled[..., [0, 1, 0]])
    o = (o - np.array(spec.optical_mean)) / np.array(spec.optical_std)
    s = (s - np.array(spec.sar_mean)) / np.array(spec.sar_std)
    return o, s, missing


def predict_file(predictor, root, name, spec, out):
    scene.label_scene(
        predictor,
        root / "optical" / f"{name}.tif",
        root / "sar" / f"{name}.tif",
        out,
        spec,
        window=64,  # the chip fits one window: whole-image inference
    )
    return out


def test_builder_pipeline_and_scene_prediction_feed_the_model_the_same_inputs(predictor, tmp_path):
    root, source = build_folder(tmp_path)
    spec = source.spec
    o, s, missing = expected_inputs(root, "c", spec)
    # The pipeline, from the built record.
    example = transforms.eval_example(source.records[0], spec)
    np.testing.assert_allclose(example["optical"], o, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(example["sar"], s, rtol=1e-6, atol=1e-5)
    assert (example["label"][missing] == 255).all()
    # Scene prediction, from the files: its output is the model's argmax on those inputs.
    logits = whole(predictor, example["optical"][None], example["sar"][None])[0]
    expected = np.where(missing, scene.NODATA, logits.argmax(-1))
    with rasterio.open(predict_file(predictor, root, "c", spec, tmp_path / "out.tif")) as dst:
        np.testing.assert_array_equal(dst.read(1), expected)
    # Fed raw dB values instead, the model predicts otherwise (what the scaling changes).
    raw_sar = preprocess.normalise(
        np.nan_to_num(read(root / "sar" / "c.tif")[0][..., [0, 1, 0]]), spec.sar_mean, spec.sar_std
    )
    raw_logits = whole(predictor, example["optical"][None], raw_sar[None])[0]
    assert (raw_logits.argmax(-1) != logits.argmax(-1))[~missing].any()


def test_missing_pixels_are_counted_alike_and_unused_bands_drop_none(predictor, tmp_path):
    root, source = build_folder(tmp_path)
    record = source.records[0]
    _, _, missing = preprocess.model_bands(record["optical"], record["sar"], source.spec)
    _, _, from_files = expected_inputs(root, "c", source.spec)
    np.testing.assert_array_equal(missing, from_files)
    assert not missing[0, :4].any()  # band 1 (unused) is nodata there
    assert missing[1, :3].all() and missing[2, :2].all()  # band 2 nodata; SAR NaN
    with rasterio.open(predict_file(predictor, root, "c", source.spec, tmp_path / "o.tif")) as d:
        np.testing.assert_array_equal(d.read(1) == scene.NODATA, from_files)


def test_percentile_stretch_at_prediction_takes_the_scenes_limits(predictor, tmp_path):
    root, source = build_folder(tmp_path, sar_scaling={"kind": "percentile", "low": 2, "high": 98})
    spec = source.spec
    # A chip is its own scene: the scene's limits are the chip's, as in training.
    example = transforms.eval_example(source.records[0], spec)
    logits = whole(predictor, example["optical"][None], example["sar"][None])[0]
    _, _, missing = expected_inputs(root, "c", spec)
    with rasterio.open(predict_file(predictor, root, "c", spec, tmp_path / "out.tif")) as dst:
        np.testing.assert_array_equal(dst.read(1), np.where(missing, 255, logits.argmax(-1)))
    # The stretch itself: each band's 2nd..98th percentile over the image to 0..255.
    sar, _ = read(root / "sar" / "c.tif")
    lo, hi = np.nanpercentile(sar.reshape(-1, 2), [2, 98], axis=0)
    with np.errstate(invalid="ignore"):
        expected = np.clip(np.rint((sar - lo) / (hi - lo) * 255), 0, 255)
    np.testing.assert_array_equal(
        preprocess.scale_sar(source.records[0]["sar"], spec.sar_scaling), expected
    )


def test_percentile_limits_of_a_large_scene_come_from_a_decimated_first_pass(tmp_path):
    rng = np.random.default_rng(0)
    sar = rng.normal(-15, 4, (4100, 60, 2)).astype(np.float32)
    sar[:100] = np.nan
    fake_sources.write_geotiff(tmp_path / "sar.tif", sar, nodata=np.nan)
    fake_sources.write_geotiff(tmp_path / "opt.tif", np.ones((4100, 60, 3), np.uint8))
    spec = plain_spec(percentile=True)
    inputs = rasters.open_scene(tmp_path / "opt.tif", tmp_path / "sar.tif", spec)
    limits = rasters.scene_sar_limits(inputs, spec)
    exact = np.nanpercentile(sar.reshape(-1, 2), [2, 98], axis=0).T
    np.testing.assert_allclose(limits, exact, atol=0.1)  # 2048 of 4100 rows sampled


def test_band_numbers_out_of_range_name_the_files_band_count(tmp_path):
    fake_sources.write_geotiff(tmp_path / "opt.tif", np.ones((40, 40, 3), np.uint8))
    fake_sources.write_geotiff(tmp_path / "sar.tif", np.ones((40, 40, 1), np.float32))
    spec = plain_spec(percentile=False)
    with pytest.raises(io.DataError, match=r"sar_bands \[1, 2, 1\] asks for band 2, but the sar"):
        rasters.open_scene(tmp_path / "opt.tif", tmp_path / "sar.tif", spec)
