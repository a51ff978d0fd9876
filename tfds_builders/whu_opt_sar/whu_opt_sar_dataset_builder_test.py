"""Builds whu_opt_sar from scenes in the distributed layout, tiled as the official tool."""

import pathlib
import subprocess
import sys

import cv2
import numpy as np
import pytest
from asanet_jax.tfds_builders.whu_opt_sar import whu_opt_sar_dataset_builder as whu

from asanet_jax.data import build, io, preprocess, specs
from tests.support import fake_sources

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


FIXTURE = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "whu"


def test_the_datasets_own_division_file_gives_80_train_and_20_test_scenes():
    # tests/fixtures/whu holds the file as the dataset distributes it (CRLF, headings,
    # .tif names, a blank line between the parts).
    path = FIXTURE / whu.DIVISION_FILE
    assert b"\r\n\r\ntest:" in path.read_bytes()
    splits = whu.parse_division(path)
    assert (len(splits["train"]), len(splits["test"])) == (80, 20)
    assert not set(splits["train"]) & set(splits["test"])
    assert splits["train"][0] == "NH49E004021" and all("." not in n for n in splits["test"])


def test_a_division_file_saved_with_a_byte_order_mark_reads_the_same(tmp_path):
    saved = tmp_path / whu.DIVISION_FILE
    saved.write_bytes(b"\xef\xbb\xbf" + (FIXTURE / whu.DIVISION_FILE).read_bytes())
    assert whu.parse_division(saved) == whu.parse_division(FIXTURE / whu.DIVISION_FILE)


def test_listed_scenes_missing_on_disk_are_an_error_unless_a_subset_is_asked(tmp_path):
    root = fake_sources.write_whu(tmp_path / "src", ["A1", "A2"], ["B1"], (520, 520))
    for folder in ("optical", "sar", "lbl"):
        (root / folder / "A2.tif").unlink()
    with pytest.raises(io.DataError, match=r"1 of the 3 scenes listed .* missing: \['A2'\]"):
        build.build("whu_opt_sar", tmp_path / "data", manual_dir=root)
    assert not list((tmp_path / "data").rglob("dataset_info.json"))
    script = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "build_dataset.py"
    args = ["whu_opt_sar", "--allow_missing_scenes", f"--data_dir={tmp_path / 'data'}"]
    done = subprocess.run(
        [sys.executable, str(script), *args, f"--manual_dir={root}"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    _, info = build.open_split(tmp_path / "data", "whu_opt_sar", "train")
    per_scene = len(whu.tiles(520, 520))  # scene A1 only in train
    assert info.splits["train"].num_examples == info.splits["test"].num_examples == per_scene


@pytest.mark.parametrize("photometric", [None, "RGB"])
def test_optical_decodes_as_opencv_whether_band_4_is_tagged_alpha_or_not(tmp_path, photometric):
    """rasterio's default 4-band RGB file tags band 4 as unassociated alpha (ExtraSamples
    2), which OpenCV, and so the official loader, premultiplies into the colour; with
    photometric='RGB' band 4 is an untagged extra band that OpenCV drops."""
    root = fake_sources.write_whu(tmp_path / "src", ["A1"], ["B1"], (512, 512))
    optical = np.random.default_rng(1).integers(0, 256, (512, 512, 4), np.uint8)
    path = root / "optical" / "A1.tif"
    fake_sources.write_geotiff(path, optical, photometric=photometric)
    assert io.tiff_tags(path)[338] == ((2,) if photometric is None else (0,))
    build.build("whu_opt_sar", tmp_path / "data", manual_dir=root)
    (record,), _ = build.open_split(tmp_path / "data", "whu_opt_sar", "train")
    fed, _, _ = preprocess.model_bands(record["optical"], record["sar"], specs.WHU_OPT_SAR)
    np.testing.assert_array_equal(fed, cv2.imread(str(path), cv2.IMREAD_COLOR))
    assert (fed != optical[..., 2::-1]).any() == (photometric is None)


def test_a_four_band_minisblack_optical_is_refused_with_the_reason(tmp_path):
    root = fake_sources.write_whu(tmp_path / "src", ["A1"], ["B1"], (512, 512))
    fake_sources.write_geotiff(
        root / "optical" / "A1.tif", np.ones((512, 512, 4), np.uint8), photometric="MINISBLACK"
    )
    with pytest.raises(io.DataError, match=r"A1\.tif: a 4-band MINISBLACK TIFF, which OpenCV"):
        build.build("whu_opt_sar", tmp_path / "data", manual_dir=root)
