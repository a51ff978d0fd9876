"""Builds ddhr_sk from files in the distributed layout (JPEG, PNG) with the official split."""

import numpy as np
import pytest
from PIL import Image

from asanet_jax.data import build, io
from tests.support import fake_sources

NUM_IDS = 230  # ids 200..229 fall in the first official val block


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = fake_sources.write_ddhr(tmp_path_factory.mktemp("ddhr_src"), NUM_IDS, size=16)
    data_dir = tmp_path_factory.mktemp("ddhr_data")
    build.build("ddhr_sk", data_dir, manual_dir=root)
    return root, data_dir


def names(data_dir, split):
    source, _ = build.open_split(data_dir, "ddhr_sk", split)
    return sorted(int(source[i]["file_name"]) for i in range(len(source)))


def test_official_split_keeps_every_id_including_the_last(built):
    _, data_dir = built
    train, val = names(data_dir, "train"), names(data_dir, "val")
    assert val == list(range(200, NUM_IDS + 1))
    assert train == list(range(1, 200))
    assert NUM_IDS in val  # the official script drops the last id from both splits


def test_records_equal_the_files_decoded_by_pillow(built):
    root, data_dir = built
    source, _ = build.open_split(data_dir, "ddhr_sk", "val")
    for i in range(3):
        r = source[i]
        name = r["file_name"].decode()
        np.testing.assert_array_equal(
            r["optical"], np.asarray(Image.open(root / "GF2" / f"{name}.jpg"))
        )
        np.testing.assert_array_equal(
            r["sar"][..., 0], np.asarray(Image.open(root / "GF3" / f"{name}.jpg"))
        )
        np.testing.assert_array_equal(
            r["label"], np.asarray(Image.open(root / "label" / f"{name}.png"))
        )
        assert r["crs"] == b"" and np.isnan(r["transform"]).all()


def test_truncated_jpeg_is_an_error_naming_it(tmp_path):
    root = fake_sources.write_ddhr(tmp_path / "src", 3, size=64)
    path = root / "GF2" / "2.jpg"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(io.DataError, match=r"GF2/2\.jpg: unreadable or truncated"):
        build.build("ddhr_sk", tmp_path / "data", manual_dir=root)


def test_size_mismatch_between_modalities_is_an_error(tmp_path):
    root = fake_sources.write_ddhr(tmp_path / "src", 3, size=16)
    fake_sources.write_pillow(root / "GF3" / "3.jpg", np.zeros((20, 16), np.uint8))
    with pytest.raises(io.DataError, match=r"differ in size.*SAR .*GF3/3\.jpg is \(20, 16\)"):
        build.build("ddhr_sk", tmp_path / "data", manual_dir=root)


def test_gap_in_ids_is_an_error(tmp_path):
    root = fake_sources.write_ddhr(tmp_path / "src", 4, size=16)
    (root / "label" / "3.png").unlink()
    with pytest.raises(io.DataError, match=r"labels \[3\] are missing"):
        build.build("ddhr_sk", tmp_path / "data", manual_dir=root)


def test_the_authors_korea_256_cloud_layout_builds_the_same_records(tmp_path):
    # The dataset authors' own lists name files as .../korea/256_cloud/{GF2,GF3,label}/<id>.
    korea = tmp_path / "korea"
    fake_sources.write_ddhr(korea / "256_cloud", 201, size=16)  # id 200 onwards is val
    fake_sources.write_ddhr(tmp_path / "flat", 201, size=16)
    build.build("ddhr_sk", tmp_path / "a", manual_dir=korea)
    build.build("ddhr_sk", tmp_path / "b", manual_dir=tmp_path / "flat")
    a, info = build.open_split(tmp_path / "a", "ddhr_sk", "val")
    b, _ = build.open_split(tmp_path / "b", "ddhr_sk", "val")
    assert len(a) == len(b) == 2
    assert info.metadata["source"]["manual_dir"] == str((korea / "256_cloud").resolve())
    for i in range(2):
        for key in ("file_name", "optical", "sar", "label"):
            np.testing.assert_array_equal(a[i][key], b[i][key])
