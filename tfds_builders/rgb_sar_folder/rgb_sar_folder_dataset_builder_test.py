"""Builds rgb_sar_folder from a user's GeoTIFFs: uint16 optical, dB SAR with NaN, int16 labels."""

import json

import numpy as np
import pytest

from asanet_jax.data import build, fake_sources, io

SIZE = 24


def write_user_dataset(root, names=("a", "b", "c"), **overrides):
    rng = np.random.default_rng(0)
    for name in names:
        optical = rng.integers(0, 10000, (SIZE, SIZE, 4)).astype(np.uint16)
        fake_sources.write_geotiff(root / "opt" / f"{name}.tif", optical)
        sar = rng.uniform(-30, 5, (SIZE, SIZE, 2)).astype(np.float32)
        sar[0, :3] = np.nan
        fake_sources.write_geotiff(root / "sar" / f"{name}_sar.tif", sar, nodata=np.nan)
        label = rng.integers(0, 3, (SIZE, SIZE)).astype(np.int16) * 10
        label[5, 5] = -1
        fake_sources.write_geotiff(root / "gt" / f"{name}.tif", label, nodata=-1)
    (root / "train.txt").write_text("a\nb\n")
    (root / "val.txt").write_text("c\n")
    spec = {
        "name": "fields",
        "optical_dir": "opt",
        "sar_dir": "sar",
        "label_dir": "gt",
        "sar_suffix": "_sar.tif",
        "splits": {"train": "train.txt", "val": "val.txt"},
        "classes": ["crop", "forest", "water"],
        "palette": [[255, 200, 0], [0, 128, 0], [0, 0, 255]],
        "label_map": {"0": 0, "10": 1, "20": 2},
        "optical_bands": [2, 1, 0],
        "sar_bands": [0, 1, 0],
        "sar_scaling": {"kind": "db_range", "min": -25.0, "max": 0.0},
    } | overrides
    (root / "rgb_sar_folder.json").write_text(json.dumps(spec))
    return root


def test_user_geotiffs_are_stored_with_recorded_scaling_nodata_and_statistics(tmp_path):
    root = write_user_dataset(tmp_path / "src")
    build.build("rgb_sar_folder", tmp_path / "data", manual_dir=root)
    source, info = build.open_split(tmp_path / "data", "rgb_sar_folder", "val")
    r = source[0]
    optical = io.read_raster(root / "opt" / "c.tif")
    sar = io.read_raster(root / "sar" / "c_sar.tif").data
    label = io.read_raster(root / "gt" / "c.tif").data[..., 0]
    missing = np.isnan(sar).any(-1)
    expected_sar = np.clip(np.rint((sar + 25) / 25 * 255), 0, 255)
    expected_sar[missing] = 0
    np.testing.assert_array_equal(r["sar"], expected_sar)
    expected_label = np.where(label == -1, 255, label // 10)
    expected_label[missing] = 255
    np.testing.assert_array_equal(r["label"], expected_label)
    expected_optical = optical.data.astype(np.float32)
    expected_optical[missing] = 0
    np.testing.assert_array_equal(r["optical"], expected_optical)
    assert r["crs"].decode() == optical.crs
    spec = info.metadata["spec"]
    assert spec["classes"] == ["crop", "forest", "water"]
    assert info.metadata["folder_spec"]["sar_scaling"]["kind"] == "db_range"
    # Statistics over the valid train pixels, in model channel order, computed here directly.
    opt_px, sar_px = [], []
    for name in ("a", "b"):
        o = io.read_raster(root / "opt" / f"{name}.tif").data[..., [2, 1, 0]].astype(np.float64)
        s = io.read_raster(root / "sar" / f"{name}_sar.tif").data
        lab = io.read_raster(root / "gt" / f"{name}.tif").data[..., 0]
        valid = (lab != -1) & ~np.isnan(s).any(-1)
        opt_px.append(o[valid])
        sar_px.append(np.clip(np.rint((s + 25) / 25 * 255), 0, 255)[..., [0, 1, 0]][valid])
    opt_px, sar_px = np.concatenate(opt_px), np.concatenate(sar_px)
    np.testing.assert_allclose(spec["optical_mean"], opt_px.mean(0), rtol=1e-6)
    np.testing.assert_allclose(spec["optical_std"], opt_px.std(0), rtol=1e-6)
    np.testing.assert_allclose(spec["sar_mean"], sar_px.mean(0), rtol=1e-6)


def test_percentile_stretch_is_applied_per_image(tmp_path):
    root = write_user_dataset(
        tmp_path / "src", sar_scaling={"kind": "percentile", "low": 2, "high": 98}
    )
    build.build("rgb_sar_folder", tmp_path / "data", manual_dir=root)
    r = build.open_split(tmp_path / "data", "rgb_sar_folder", "val")[0][0]
    sar = io.read_raster(root / "sar" / "c_sar.tif").data
    lo, hi = np.nanpercentile(sar, [2, 98])
    expected = np.clip(np.rint((sar - lo) / (hi - lo) * 255), 0, 255)
    expected[np.isnan(sar).any(-1)] = 0
    np.testing.assert_allclose(r["sar"], expected, atol=1)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"sar_bands": [0, 2, 0]},
            r"sar_bands \[0, 2, 0\] selects band 2 but the stored sar image has 2",
        ),
        (
            {"label_map": {"0": 0, "10": 1}},
            r"gt/a\.tif: label values \[20\] are outside the class set",
        ),
        ({"nodata": "error"}, r"pixels have no optical or SAR value"),
        ({"sar_scaling": {"kind": "log"}}, r"sar_scaling.kind='log'"),
        ({"colour": 1}, r"unknown keys \['colour'\]"),
    ],
)
def test_bad_description_or_data_is_a_clear_error(tmp_path, overrides, message):
    root = write_user_dataset(tmp_path / "src", **overrides)
    with pytest.raises(io.DataError, match=message):
        build.build("rgb_sar_folder", tmp_path / "data", manual_dir=root)
    assert not (tmp_path / "data" / "rgb_sar_folder" / "1.0.0").exists()


def test_missing_partner_names_the_expected_file(tmp_path):
    root = write_user_dataset(tmp_path / "src")
    (root / "sar" / "b_sar.tif").unlink()
    with pytest.raises(io.DataError, match=r"missing SAR file for 'b': none of .*sar/b_sar\.tif"):
        build.build("rgb_sar_folder", tmp_path / "data", manual_dir=root)
