"""Builds whu_opt_sar from scenes in the distributed layout, tiled as the official tool."""

import numpy as np
import pytest
from asanet_jax.tfds_builders.whu_opt_sar import whu_opt_sar_dataset_builder as whu

from asanet_jax.data import build, fake_sources, io

TRAIN, TEST = ["NH49E001013", "NH49E001014"], ["NH49E009022"]
SHAPE = (600, 1100)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = fake_sources.write_whu(tmp_path_factory.mktemp("whu_src"), TRAIN, TEST, SHAPE)
    data_dir = tmp_path_factory.mktemp("whu_data")
    build.build("whu_opt_sar", data_dir, manual_dir=root)
    return root, data_dir


def test_tile_grid_matches_the_official_preparation():
    # Official: ceil((L - 512) / 512 + 1) tiles, last moved back to the edge; 11 x 8 per scene.
    assert whu.tile_offsets(5556) == [*range(0, 5120, 512), 5556 - 512]
    assert len(whu.tiles(3704, 5556)) == 88
    assert whu.tiles(600, 1100) == [(0, 0), (88, 0), (0, 512), (88, 512), (0, 588), (88, 588)]


def test_tiles_hold_the_scene_windows_with_nir_and_georeference(built):
    root, data_dir = built
    source, info = build.open_split(data_dir, "whu_opt_sar", "train")
    assert info.splits["train"].num_examples == 6 * len(TRAIN)
    assert info.splits["test"].num_examples == 6 * len(TEST)
    optical = io.read_raster(root / "optical" / f"{TRAIN[1]}.tif")
    raw = io.read_raster(root / "lbl" / f"{TRAIN[1]}.tif").data[..., 0]
    sar = io.read_raster(root / "sar" / f"{TRAIN[1]}.tif").data
    records = {r["file_name"].decode(): r for r in (source[i] for i in range(len(source)))}
    r = records[f"{TRAIN[1]}_003"]  # tile 3 = x 512, y 88
    assert r["scene"].decode() == TRAIN[1]
    np.testing.assert_array_equal(r["tile_offset"], [88, 512])
    np.testing.assert_array_equal(r["optical"], optical.data[88:600, 512:1024])
    assert r["optical"].shape == (512, 512, 4)  # NIR kept
    np.testing.assert_array_equal(r["sar"], sar[88:600, 512:1024])
    expected = raw[88:600, 512:1024].astype(int) // 10 - 1
    np.testing.assert_array_equal(r["label"], np.where(expected < 0, 255, expected))
    a, _, c, _, e, f = optical.transform
    np.testing.assert_allclose(r["transform"], [a, 0, c + 512 * a, 0, e, f + 88 * e])


def test_label_value_outside_the_raw_set_is_an_error(tmp_path):
    root = fake_sources.write_whu(tmp_path / "src", ["A1"], ["B1"], (520, 520))
    fake_sources.write_geotiff(
        root / "lbl" / "B1.tif",
        np.full((520, 520), 15, np.uint8),
        transform=fake_sources.fake_transform(x0=520000.0),  # the scene's own
    )
    with pytest.raises(io.DataError, match=r"lbl/B1\.tif: label values \[15\]"):
        build.build("whu_opt_sar", tmp_path / "data", manual_dir=root)


def test_wrong_band_count_is_an_error(tmp_path):
    root = fake_sources.write_whu(tmp_path / "src", ["A1"], ["B1"], (520, 520))
    fake_sources.write_geotiff(root / "optical" / "A1.tif", np.zeros((520, 520, 3), np.uint8))
    with pytest.raises(
        io.DataError, match=r"optical/A1\.tif: optical image has 3 band\(s\); expected 4"
    ):
        build.build("whu_opt_sar", tmp_path / "data", manual_dir=root)


def test_scene_missing_from_the_division_file_is_an_error(tmp_path):
    root = fake_sources.write_whu(tmp_path / "src", ["A1"], ["B1"], (520, 520))
    fake_sources.write_whu(tmp_path / "extra", ["C1"], ["D1"], (520, 520))
    (tmp_path / "extra" / "optical" / "C1.tif").rename(root / "optical" / "C1.tif")
    with pytest.raises(io.DataError, match=r"not listed: \['C1'\]"):
        build.build("whu_opt_sar", tmp_path / "data", manual_dir=root)
