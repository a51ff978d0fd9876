"""Builds rgb_sar_folder from a user's Sentinel-1/-2 chips (13-band int16 optical with
nodata 0, 2-band float32 dB SAR with NaN, int16 labels with a nodata value): exact values
and georeferencing, band numbers from 1, per-band dB ranges, and datasets that are never
stale and live side by side."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import rasterio

from asanet_jax.data import build, io
from tests.support import fake_sources

REPO = pathlib.Path(__file__).resolve().parents[2]
TRAIN, VAL = ["a", "b"], ["c"]


def write(root, **description):
    return fake_sources.write_sentinel_folder(root, TRAIN, VAL, **description)


def records(data_dir, split, config=None):
    source, info = build.open_split(data_dir, "rgb_sar_folder", split, config)
    return [source[i] for i in range(len(source))], info


def raw(root, folder, name):
    """(data as stored, nodata) read with rasterio directly."""
    with rasterio.open(root / folder / f"{name}.tif") as src:
        return np.moveaxis(src.read(), 0, -1), src.nodata, src.transform


def expected_missing(optical, sar):
    """Computed from the files: a pixel is missing where B2, B3 or B4 is 0 (the optical
    nodata) or VV or VH is NaN; band 1 (B1) is not fed to the model."""
    return (optical[..., 1:4] == 0).any(-1) | np.isnan(sar).any(-1)


def test_sentinel_chips_are_stored_exactly_with_exact_georeference(tmp_path):
    root = write(tmp_path / "src")
    build.build("rgb_sar_folder", tmp_path / "data", manual_dir=root)
    (r,), info = records(tmp_path / "data", "val")
    optical, onod, transform = raw(root, "optical", "c")
    sar, _, _ = raw(root, "sar", "c")
    label, lnod, _ = raw(root, "label", "c")
    # Every band as stored, as float32, the file's nodata value (0) as NaN.
    stored = optical.astype(np.float32)
    stored[optical == onod] = np.nan
    np.testing.assert_array_equal(r["optical"], stored)
    assert np.isnan(r["optical"][0, :4, 0]).all() and r["optical"].shape[-1] == 13
    np.testing.assert_array_equal(r["sar"], sar)  # unscaled, NaN kept
    missing = expected_missing(optical, sar)
    assert not missing[0, :4].any()  # a 0 in an unused band drops nothing
    assert missing[1, :3].all() and missing[2, :2].all()
    expected = np.where(label[..., 0] == lnod, 255, label[..., 0])
    expected[missing] = 255
    np.testing.assert_array_equal(r["label"], expected)
    # The geotransform exactly as the file has it: float32 would move the northing 0.12 m.
    assert r["transform"].dtype == np.float64
    assert tuple(r["transform"]) == tuple(transform)[:6]
    assert r["transform"][5] == 8_400_000.123456789
    assert abs(float(np.float32(r["transform"][5])) - 8_400_000.123456789) > 0.1
    assert rasterio.crs.CRS.from_wkt(r["crs"].decode()) == rasterio.crs.CRS.from_epsg(32633)
    spec = info.metadata["spec"]
    assert spec["optical_bands"] == [2, 3, 4] and spec["sar_bands"] == [1, 2, 1]
    assert spec["sar_scaling"] == {"kind": "db_range", "min": [-25.0, -32.0], "max": [0.0, -5.0]}
    assert info.config_name == "s1s2_fields"


def test_statistics_are_those_of_the_model_bands_over_labelled_train_pixels(tmp_path):
    root = write(tmp_path / "src")
    build.build("rgb_sar_folder", tmp_path / "data", manual_dir=root)
    _, info = records(tmp_path / "data", "train")
    spec = info.metadata["spec"]
    opt_px, sar_px = [], []
    for name in TRAIN:
        optical, _, _ = raw(root, "optical", name)
        sar, _, _ = raw(root, "sar", name)
        label, lnod, _ = raw(root, "label", name)
        valid = (label[..., 0] != lnod) & ~expected_missing(optical, sar)
        # VV and VH each by their own range (VH through VV's -25..0 would be mostly 0).
        lo, hi = np.array([-25.0, -32.0]), np.array([0.0, -5.0])
        with np.errstate(invalid="ignore"):
            scaled = np.clip(np.rint((sar - lo) / (hi - lo) * 255), 0, 255)
        opt_px.append(optical[..., [1, 2, 3]][valid].astype(np.float64))
        sar_px.append(scaled[..., [0, 1, 0]][valid])
    opt_px, sar_px = np.concatenate(opt_px), np.concatenate(sar_px)
    np.testing.assert_allclose(spec["optical_mean"], opt_px.mean(0), rtol=1e-6)
    np.testing.assert_allclose(spec["optical_std"], opt_px.std(0), rtol=1e-6)
    np.testing.assert_allclose(spec["sar_mean"], sar_px.mean(0), rtol=1e-6)
    np.testing.assert_allclose(spec["sar_std"], sar_px.std(0), rtol=1e-6)


def test_the_same_data_with_ignore_100_or_255_builds_identical_records(tmp_path):
    for ignore in (100, 255):
        write(tmp_path / f"src{ignore}", ignore=ignore, name=f"ignore{ignore}")
        build.build("rgb_sar_folder", tmp_path / "data", manual_dir=tmp_path / f"src{ignore}")
    for split in ("train", "val"):
        a, info_a = records(tmp_path / "data", split, "ignore100")
        b, info_b = records(tmp_path / "data", split, "ignore255")
        for x, y in zip(a, b, strict=True):
            for key in ("optical", "sar", "label"):
                np.testing.assert_array_equal(x[key], y[key])
            assert x["label"][5, 5] == 255
    spec_a, spec_b = info_a.metadata["spec"], info_b.metadata["spec"]
    assert {**spec_a, "name": ""} == {**spec_b, "name": ""}


@pytest.mark.parametrize(
    ("description", "message"),
    [
        (
            {"sar_bands": [1, 3, 1]},
            r"sar_bands \[1, 3, 1\] asks for band 3, but the sar image has 2 band\(s\), "
            r"numbered 1 to 2",
        ),
        ({"optical_bands": [1, 2, 0]}, r"band numbers start at 1"),
        (
            {"sar_scaling": {"kind": "db_range", "min": [-25, -32, -30], "max": [0, -5, 0]}},
            r"sar_scaling gives 3 dB ranges, but the SAR image has 2 band\(s\)",
        ),
        ({"classes": ["crop", "forest"], "palette": [[0, 0, 0]] * 2}, r"label values \[2\]"),
        ({"nodata": "error"}, r"pixels have no value in a band the model sees"),
        ({"sar_scaling": {"kind": "log"}}, r"sar_scaling.kind='log'"),
        ({"colour": 1}, r"unknown keys \['colour'\]"),
        ({"name": "my fields"}, r"name='my fields'; expected letters"),
    ],
)
def test_bad_description_or_data_is_a_clear_error(tmp_path, description, message):
    root = write(tmp_path / "src", **description)
    with pytest.raises(io.DataError, match=message):
        build.build("rgb_sar_folder", tmp_path / "data", manual_dir=root)
    assert not list((tmp_path / "data").rglob("dataset_info.json"))


def test_missing_partner_names_the_expected_file(tmp_path):
    root = write(tmp_path / "src")
    (root / "sar" / "b.tif").unlink()
    with pytest.raises(io.DataError, match=r"missing SAR file for 'b': none of .*sar/b\.tif"):
        build.build("rgb_sar_folder", tmp_path / "data", manual_dir=root)


def test_an_edited_description_is_never_served_stale(tmp_path):
    root = write(tmp_path / "src")
    build.build("rgb_sar_folder", tmp_path / "data", manual_dir=root)
    spec_file = root / "rgb_sar_folder.json"
    edited = json.loads(spec_file.read_text())
    edited["sar_scaling"] = {"kind": "db_range", "min": -20.0, "max": 0.0}
    spec_file.write_text(json.dumps(edited))
    with pytest.raises(build.StaleError, match=r"rgb_sar_folder\.json changed"):
        build.build("rgb_sar_folder", tmp_path / "data", manual_dir=root)
    with pytest.raises(build.StaleError, match=r"rgb_sar_folder\.json changed"):
        build.open_source(tmp_path / "data", "rgb_sar_folder", "val")
    build.build("rgb_sar_folder", tmp_path / "data", manual_dir=root, overwrite=True)
    _, info = records(tmp_path / "data", "val")
    assert info.metadata["spec"]["sar_scaling"]["min"] == -20.0


def test_two_user_datasets_live_side_by_side_and_build_alike_from_the_tfds_cli(tmp_path):
    write(tmp_path / "fields", name="fields")
    write(tmp_path / "forests", name="forests", seed=1)
    build.build("rgb_sar_folder", tmp_path / "data", manual_dir=tmp_path / "fields")
    build.build("rgb_sar_folder", tmp_path / "data", manual_dir=tmp_path / "forests")
    a, _ = records(tmp_path / "data", "val", "fields")
    b, _ = records(tmp_path / "data", "val", "forests")
    assert not np.array_equal(a[0]["optical"], b[0]["optical"], equal_nan=True)
    with pytest.raises(io.DataError, match=r"several configs built \['fields', 'forests'\]"):
        build.open_source(tmp_path / "data", "rgb_sar_folder", "val")
    # A description whose name is not the config asked for is refused.
    with pytest.raises(io.DataError, match=r"names the dataset 'fields', but config 'forests'"):
        build.build(
            "rgb_sar_folder", tmp_path / "x", manual_dir=tmp_path / "fields", config="forests"
        )
    # The TFDS command line builds the same records under the dataset's name.
    subprocess.run(
        [
            str(pathlib.Path(sys.executable).parent / "tfds"),
            "build",
            str(REPO / "tfds_builders" / "rgb_sar_folder"),
            "--config",
            json.dumps({"name": "fields"}),
            "--manual_dir",
            str(tmp_path / "fields"),
            "--data_dir",
            str(tmp_path / "cli"),
            "--file_format",
            "array_record",
        ],
        check=True,
        env=dict(os.environ, CUDA_VISIBLE_DEVICES=""),
        capture_output=True,
    )
    c, _ = records(tmp_path / "cli", "val", "fields")
    for key in ("optical", "sar", "label", "transform"):
        np.testing.assert_array_equal(a[0][key], c[0][key])
