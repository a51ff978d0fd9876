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

from asanet_jax import checkpointing, inference, loading, scene
from asanet_jax.data import fake_sources, io, specs, transforms

REPO = pathlib.Path(__file__).resolve().parents[1]
SPEC = specs.synthetic_spec()


@pytest.fixture(scope="module")
def model():
    return micro_model(6, seed=2)


@pytest.fixture(scope="module")
def predictor(model):
    return inference.Predictor(model)


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
        return inference.whole(predict, ex["optical"][None], ex["sar"][None])[0]
    return inference.slide(predict, ex["optical"][None], ex["sar"][None], window, stride, 6)[0]


def test_scene_larger_than_a_window_equals_in_memory_sliding_inference(predictor, tmp_path):
    optical, sar = write_scene(tmp_path, (150, 170))
    out = scene.predict_scene(
        predictor,
        tmp_path / "opt.tif",
        tmp_path / "sar.tif",
        tmp_path / "labels.tif",
        SPEC,
        window=64,
        stride=48,
        confidence_path=tmp_path / "conf.tif",
        preview_path=tmp_path / "preview.png",
        progress=False,
    )
    logits = in_memory(predictor, optical, sar, (64, 64), (48, 48))
    expected = logits.argmax(-1)
    expected[:5, :7] = scene.NODATA
    with rasterio.open(out) as dst, rasterio.open(tmp_path / "opt.tif") as src:
        np.testing.assert_array_equal(dst.read(1), expected)
        assert dst.crs == src.crs and dst.transform == src.transform and dst.nodata == 255
        assert dst.colormap(1)[1] == (*SPEC.palette[1], 255)
    with rasterio.open(tmp_path / "conf.tif") as conf:
        p = np.asarray(jax.nn.softmax(logits, -1)).max(-1)
        np.testing.assert_allclose(conf.read(1)[5:], np.clip(np.rint(p * 255), 1, 255)[5:], atol=1)
    assert (tmp_path / "preview.png").stat().st_size > 100
    assert not list(tmp_path.glob(".*partial"))


def test_scene_within_one_window_equals_whole_image_inference(predictor, tmp_path):
    optical, sar = write_scene(tmp_path, (64, 64))
    scene.predict_scene(
        predictor,
        tmp_path / "opt.tif",
        tmp_path / "sar.tif",
        tmp_path / "labels.tif",
        SPEC,
        window=96,
        progress=False,
    )
    expected = in_memory(predictor, optical, sar, None, None).argmax(-1)
    expected[:5, :7] = scene.NODATA
    with rasterio.open(tmp_path / "labels.tif") as dst:
        np.testing.assert_array_equal(dst.read(1), expected)


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
        scene.predict_scene(
            predictor,
            tmp_path / "opt.tif",
            tmp_path / "sar.tif",
            tmp_path / "out.tif",
            SPEC,
            progress=False,
        )
    assert not (tmp_path / "out.tif").exists()


def test_predict_script_and_its_error_messages(model, tmp_path):
    # The model directory records its dataset, as training and --dataset conversion write it.
    record = loading.dataset_record(SPEC, "synthetic_rgb_sar", "default")
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
    ok = subprocess.run(
        [*cmd, "--output", str(tmp_path / "o.tif")], capture_output=True, text=True, timeout=600
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert (tmp_path / "o.png").is_file()
    # Default stride: 2/3 of the window.
    expected = in_memory(inference.Predictor(model), optical, sar, (64, 64), (42, 42)).argmax(-1)
    expected[:5, :7] = scene.NODATA
    with rasterio.open(tmp_path / "o.tif") as out:
        np.testing.assert_array_equal(out.read(1), expected)
    bare = [*cmd[:3], str(tmp_path / "bare"), *cmd[4:], "--output", str(tmp_path / "n.tif")]
    refused = subprocess.run(bare, capture_output=True, text=True, timeout=600)
    assert refused.returncode == 1 and "does not record the dataset" in refused.stderr
    named = subprocess.run(
        [*bare, "--dataset", "synthetic_rgb_sar"], capture_output=True, text=True, timeout=600
    )
    assert named.returncode == 0, named.stderr[-2000:]
    fake_sources.write_geotiff(tmp_path / "sar.tif", np.zeros((80, 91), np.uint8))
    bad = subprocess.run(
        [*cmd, "--output", str(tmp_path / "b.tif")], capture_output=True, text=True, timeout=600
    )
    assert bad.returncode == 1 and "is 80x90 but" in bad.stderr and "Traceback" not in bad.stderr
    (tmp_path / "sar.tif").write_bytes(b"not a tiff")
    bad = subprocess.run(
        [*cmd, "--output", str(tmp_path / "b.tif")], capture_output=True, text=True, timeout=600
    )
    assert bad.returncode == 1 and "unreadable SAR raster" in bad.stderr
