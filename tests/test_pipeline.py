"""The input pipeline: OpenCV channel semantics, official augmentation, determinism, resume,
host sharding, and global batches on a device mesh."""

import dataclasses
import itertools
import json

import cv2
import jax
import numpy as np
import pytest

from asanet_jax.data import build, pipeline, preprocess, specs, transforms
from tests.support import fake_sources


@pytest.fixture(scope="module")
def pie(tmp_path_factory):
    root = fake_sources.write_pie(
        tmp_path_factory.mktemp("pie"), [f"t{i}" for i in range(12)], ["v0", "v1", "v2"], size=64
    )
    data_dir = tmp_path_factory.mktemp("pie_data")
    build.build("pie_rgb_sar", data_dir, manual_dir=root)
    return root, data_dir


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("synthetic")
    build.build("synthetic_rgb_sar", data_dir, config="tiny")
    return data_dir


def take(ds, n):
    return list(itertools.islice(iter(ds), n))


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


# --- what the model is fed ------------------------------------------------------------


def test_channels_and_normalisation_match_opencv_decoding_of_the_files(pie, tmp_path):
    root, data_dir = pie
    source = build.open_source(data_dir, "pie_rgb_sar", "val")
    spec = source.spec
    for i in range(len(source)):
        record = source.records[i]
        name = record["file_name"].decode()
        example = transforms.eval_example(record, spec)
        optical = cv2.imread(str(root / "rgb" / f"{name}.tif"), cv2.IMREAD_COLOR)
        sar = cv2.imread(str(root / "sar" / f"{name}.tif"), cv2.IMREAD_COLOR)
        label = cv2.imread(str(root / "label" / f"{name}.tif"), cv2.IMREAD_UNCHANGED)
        mean, std = np.array(spec.optical_mean), np.array(spec.optical_std)
        np.testing.assert_allclose(example["optical"], (optical - mean) / std, rtol=1e-6, atol=1e-6)
        mean, std = np.array(spec.sar_mean), np.array(spec.sar_std)
        np.testing.assert_allclose(example["sar"], (sar - mean) / std, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(example["label"], label)
    # PIE's published optical mean is in B,G,R order: channel 0 is the file's third band.
    assert spec.optical_mean == (73.422, 89.751, 83.405)


def test_jpeg_and_four_band_tif_channels_match_opencv(tmp_path):
    ddhr = fake_sources.write_ddhr(tmp_path / "ddhr", 200, size=16)  # id 200 is val
    whu = fake_sources.write_whu(tmp_path / "whu", ["A"], ["B"], (520, 520))
    build.build("ddhr_sk", tmp_path / "d1", manual_dir=ddhr)
    build.build("whu_opt_sar", tmp_path / "d2", manual_dir=whu)
    record = build.open_source(tmp_path / "d1", "ddhr_sk", "train").records[0]
    optical, sar, _ = preprocess.model_bands(record["optical"], record["sar"], specs.DDHR_SK)
    name = record["file_name"].decode()
    np.testing.assert_array_equal(optical, cv2.imread(str(ddhr / "GF2" / f"{name}.jpg")))
    np.testing.assert_array_equal(sar, cv2.imread(str(ddhr / "GF3" / f"{name}.jpg")))
    records = build.open_source(tmp_path / "d2", "whu_opt_sar", "train").records
    record = next(
        r for r in (records[i] for i in range(len(records))) if r["file_name"] == b"A_000"
    )
    optical, sar, _ = preprocess.model_bands(record["optical"], record["sar"], specs.WHU_OPT_SAR)
    np.testing.assert_array_equal(optical, cv2.imread(str(whu / "optical" / "A.tif"))[:512, :512])
    np.testing.assert_array_equal(sar, cv2.imread(str(whu / "sar" / "A.tif"))[:512, :512])


def test_rescale_size_follows_mmcv_imrescale():
    assert transforms.rescale_size(256, 256, (1024, 256)) == (256, 256)
    assert transforms.rescale_size(256, 256, (512, 128)) == (128, 128)
    # factor = min(1024 / 600, 256 / 300) = 0.8533: (300 x 0.8533 + 0.5, 600 x 0.8533 + 0.5)
    assert transforms.rescale_size(300, 600, (1024, 256)) == (256, 512)
    assert transforms.rescale_size(512, 512, (2048, 512)) == (512, 512)
    assert transforms.rescale_size(256, 256, (1536, 384)) == (384, 384)


def gradient_record(size=64):
    """A record whose optical, SAR and label are all the same function of position."""
    yy, xx = np.mgrid[0:size, 0:size]
    value = ((yy * 3 + xx) % 250).astype(np.uint8)
    label = (np.minimum(yy // 16, 3) * 4 + np.minimum(xx // 16, 3)) % 6
    return {
        "optical": np.repeat(value[..., None], 3, -1),
        "sar": value[..., None],
        "label": label.astype(np.uint8),
        "file_name": b"g",
    }


IDENTITY = dataclasses.replace(
    specs.PIE_RGB_SAR,
    optical_mean=(0.0,) * 3,
    optical_std=(1.0,) * 3,
    sar_mean=(0.0,) * 3,
    sar_std=(1.0,) * 3,
)


def test_flips_move_every_modality_together_unless_official_pie_behaviour_is_asked():
    record = gradient_record()
    aug = transforms.Augment(crop_size=(32, 32), scale=(64, 64), ratio_range=(1.0, 1.0))
    flipped_sar_differs = 0
    for seed in range(20):
        ex = transforms.train_example(record, np.random.default_rng(seed), IDENTITY, aug)
        np.testing.assert_array_equal(ex["sar"], ex["optical"])
        official = transforms.train_example(
            record, np.random.default_rng(seed), IDENTITY, aug.replace(flip_sar=False)
        )
        np.testing.assert_array_equal(official["optical"], ex["optical"])
        np.testing.assert_array_equal(official["label"], ex["label"])
        flipped_sar_differs += not np.array_equal(official["sar"], official["optical"])
    assert 5 < flipped_sar_differs < 20  # flips happen with p=0.5 each


def test_crop_respects_the_category_limit_when_a_crop_allows_it():
    label = np.zeros((128, 128), np.uint8)
    label[:, 96:] = np.arange(32)[None, :] % 3 + 1  # only the right quarter is mixed
    record = {
        "optical": np.zeros((128, 128, 3), np.uint8),
        "sar": np.zeros((128, 128, 1), np.uint8),
    }
    record |= {"label": label, "file_name": b"c"}
    aug = transforms.Augment(
        crop_size=(64, 64), scale=(128, 128), ratio_range=(1.0, 1.0), hflip_prob=0, vflip_prob=0
    )

    def worst_ratio(ex):
        counts = np.bincount(ex["label"].ravel())
        return counts.max() / counts.sum()

    limited = [
        worst_ratio(transforms.train_example(record, np.random.default_rng(s), IDENTITY, aug))
        for s in range(40)
    ]
    free = [
        worst_ratio(
            transforms.train_example(
                record, np.random.default_rng(s), IDENTITY, aug.replace(cat_max_ratio=1.0)
            )
        )
        for s in range(40)
    ]
    # A qualifying crop (x >= 40) exists at 25/65 of the offsets; 11 tries almost always hit.
    assert np.mean(np.array(limited) < 0.75) > 0.95
    assert np.mean(np.array(free) < 0.75) < 0.6


def test_small_images_are_padded_after_normalisation():
    record = gradient_record(64)
    aug = transforms.Augment(crop_size=(48, 48), scale=(64, 64), ratio_range=(0.5, 0.5))
    spec = dataclasses.replace(IDENTITY, optical_mean=(10.0,) * 3, optical_std=(2.0,) * 3)
    ex = transforms.train_example(record, np.random.default_rng(0), spec, aug)
    assert ex["optical"].shape == (48, 48, 3) and ex["label"].shape == (48, 48)
    assert (ex["optical"][32:] == 0).all() and (ex["optical"][:, 32:] == 0).all()
    assert (ex["label"][32:] == 255).all() and (ex["label"][:, 32:] == 255).all()
    # The content is the whole half-size image (flips only reorder it), normalised.
    resized = cv2.resize(record["optical"], (32, 32), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(
        np.sort(ex["optical"][:32, :32].ravel()), np.sort((resized.ravel() - 10.0) / 2.0)
    )


# --- determinism, resume, sharding -------------------------------------------------------


def test_same_seed_gives_identical_batches_and_another_seed_differs(synthetic):
    source = build.open_source(synthetic, "synthetic_rgb_sar", "train")
    a = take(pipeline.train_dataset(source, 4, seed=7, process_index=0, process_count=1), 6)
    b = take(pipeline.train_dataset(source, 4, seed=7, process_index=0, process_count=1), 6)
    c = take(pipeline.train_dataset(source, 4, seed=8, process_index=0, process_count=1), 6)
    assert_batches_equal(a, b)
    assert not np.array_equal(a[0]["optical"], c[0]["optical"])


def test_restoring_the_saved_position_mid_epoch_continues_identically(synthetic, tmp_path):
    source = build.open_source(synthetic, "synthetic_rgb_sar", "train")
    ds = pipeline.train_dataset(source, 3, seed=1, process_index=0, process_count=1)
    uninterrupted = take(ds, 12)  # 16 examples: the epoch boundary falls inside batch 6
    it = iter(ds)
    for _ in range(4):
        next(it)
    (tmp_path / "data_state.json").write_text(json.dumps(it.get_state()))
    fresh = iter(pipeline.train_dataset(source, 3, seed=1, process_index=0, process_count=1))
    fresh.set_state(json.loads((tmp_path / "data_state.json").read_text()))
    assert_batches_equal([next(fresh) for _ in range(8)], uninterrupted[4:])


def test_two_hosts_read_disjoint_shards_that_cover_the_split(synthetic):
    source = build.open_source(synthetic, "synthetic_rgb_sar", "train")
    seen = []
    for host in range(2):
        names = [
            n
            for batch in pipeline.eval_dataset(source, 3, process_index=host, process_count=2)
            for n in batch["file_name"]
        ]
        seen.append(set(names))
        assert len(names) == len(set(names)) == len(source) // 2
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == {source.records[i]["file_name"] for i in range(len(source))}


def test_hosts_training_slices_assemble_the_single_host_global_batches(synthetic):
    source = build.open_source(synthetic, "synthetic_rgb_sar", "train")
    single = take(pipeline.train_dataset(source, 8, seed=3, process_index=0, process_count=1), 3)
    hosts = [
        take(pipeline.train_dataset(source, 8, seed=3, process_index=h, process_count=2), 3)
        for h in range(2)
    ]
    for step, batch in enumerate(single):
        assert hosts[0][step]["optical"].shape[0] == 4
        for k in batch:
            np.testing.assert_array_equal(
                np.concatenate([hosts[0][step][k], hosts[1][step][k]]), batch[k]
            )


def test_global_batch_is_laid_out_over_the_data_axis():
    mesh = jax.make_mesh((len(jax.devices()),), ("data",), (jax.sharding.AxisType.Explicit,))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    n = 2 * len(jax.devices())
    local = {"optical": np.arange(n * 4, dtype=np.float32).reshape(n, 2, 2, 1), "file_name": []}
    batch = pipeline.global_batch(local, sharding)
    assert set(batch) == {"optical"}
    assert batch["optical"].sharding == sharding
    np.testing.assert_array_equal(np.asarray(batch["optical"]), local["optical"])


def test_unknown_split_and_missing_dataset_are_clear_errors(synthetic, tmp_path):
    with pytest.raises(ValueError, match=r"no split 'test'; available: \['train', 'val'\]"):
        build.open_source(synthetic, "synthetic_rgb_sar", "test")
    with pytest.raises(ValueError, match="no built dataset 'pie_rgb_sar' found"):
        build.open_source(tmp_path, "pie_rgb_sar", "train")
