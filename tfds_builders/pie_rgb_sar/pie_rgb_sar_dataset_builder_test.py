"""Builds pie_rgb_sar from files in the distributed layout and checks every record."""

import numpy as np
import pytest

from asanet_jax.data import build, io
from tests.support import fake_sources

TRAIN, VAL = ["1", "2", "3"], ["4", "5"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("pie_src")
    fake_sources.write_pie(root, TRAIN, VAL)
    data_dir = tmp_path_factory.mktemp("pie_data")
    build.build("pie_rgb_sar", data_dir, manual_dir=root)
    return root, data_dir


def test_splits_hold_every_listed_example_with_its_files(built):
    root, data_dir = built
    for split, names in (("train", TRAIN), ("val", VAL)):
        source, info = build.open_split(data_dir, "pie_rgb_sar", split)
        assert info.splits[split].num_examples == len(names)
        records = {r["file_name"].decode(): r for r in (source[i] for i in range(len(source)))}
        assert sorted(records) == sorted(names)
        for name, r in records.items():
            optical = io.read_raster(root / "rgb" / f"{name}.tif")
            np.testing.assert_array_equal(r["optical"], optical.data)
            np.testing.assert_array_equal(
                r["sar"], io.read_raster(root / "sar" / f"{name}.tif").data
            )
            label = io.read_raster(root / "label" / f"{name}.tif").data[..., 0]
            np.testing.assert_array_equal(r["label"], label)
            assert r["crs"].decode() == optical.crs and "UTM zone 50N" in optical.crs
            np.testing.assert_array_equal(r["transform"], optical.transform)


def test_missing_partner_file_names_it_and_leaves_no_dataset(tmp_path):
    root = fake_sources.write_pie(tmp_path / "src", ["1", "2"], ["3"])
    (root / "sar" / "2.tif").unlink()
    with pytest.raises(io.DataError, match=r"missing SAR file .*sar/2\.tif"):
        build.build("pie_rgb_sar", tmp_path / "data", manual_dir=root)
    with pytest.raises(io.DataError, match="no built dataset"):
        build.open_split(tmp_path / "data", "pie_rgb_sar", "train")


def test_label_outside_class_set_is_an_error(tmp_path):
    root = fake_sources.write_pie(tmp_path / "src", ["1"], ["2"])
    fake_sources.write_geotiff(root / "label" / "2.tif", np.full((32, 32), 6, np.uint8))
    with pytest.raises(io.DataError, match=r"label/2\.tif: label values \[6\] are outside"):
        build.build("pie_rgb_sar", tmp_path / "data", manual_dir=root)


def test_empty_split_file_is_an_error(tmp_path):
    root = fake_sources.write_pie(tmp_path / "src", ["1"], ["2"])
    (root / "val.txt").write_text("\n")
    with pytest.raises(io.DataError, match=r"val\.txt: split file lists no examples"):
        build.build("pie_rgb_sar", tmp_path / "data", manual_dir=root)
