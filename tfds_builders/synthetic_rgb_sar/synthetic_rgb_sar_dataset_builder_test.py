"""synthetic_rgb_sar: deterministic, plausible scenes; also built with the `tfds build` CLI."""

import os
import pathlib
import subprocess
import sys

import numpy as np

from asanet_jax.data import build, synthetic

REPO = pathlib.Path(__file__).resolve().parents[2]


def records(data_dir, split):
    source, info = build.open_split(data_dir, "synthetic_rgb_sar", split, config="tiny")
    return {r["file_name"].decode(): r for r in (source[i] for i in range(len(source)))}, info


def test_tfds_build_cli_builds_it_and_a_second_build_is_identical(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    tfds_cli = pathlib.Path(sys.executable).parent / "tfds"
    subprocess.run(
        [
            str(tfds_cli),
            "build",
            str(REPO / "tfds_builders" / "synthetic_rgb_sar"),
            "--config",
            "tiny",
            "--data_dir",
            str(tmp_path / "cli"),
            "--file_format",
            "array_record",
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    build.build("synthetic_rgb_sar", tmp_path / "api", config="tiny")
    a, info = records(tmp_path / "cli", "train")
    b, _ = records(tmp_path / "api", "train")
    assert info.splits["train"].num_examples == 16 and len(a) == 16
    for name in a:
        for key in ("optical", "sar", "label"):
            np.testing.assert_array_equal(a[name][key], b[name][key])


def test_scenes_are_plausible_land_cover(tmp_path):
    scenes = [synthetic.generate_scene((0, 0, i), 128) for i in range(40)]
    labels = np.stack([s.label for s in scenes])
    share = np.bincount(labels.ravel(), minlength=6) / labels.size
    assert (share > 0.01).all(), share  # every class occurs
    # SAR separates classes by backscatter: water darkest, urban brightest.
    sar = np.stack([s.sar[..., 0] for s in scenes]).astype(float)
    means = [sar[labels == k].mean() for k in range(6)]
    assert np.argmin(means) == synthetic.WATER and np.argmax(means) == synthetic.URBAN
    clouded = [s for s in scenes if s.cloud_fraction > 0.1]
    assert 0 < len(clouded) < len(scenes)
    # Under thick cloud the optical image is bright and flat, whatever the class.
    s = clouded[0]
    cloud = s.optical.mean(-1) > 225
    assert cloud.mean() > 0.05 and s.optical[cloud].std() < 15


def test_class_count_is_configurable():
    scene = synthetic.generate_scene(3, 64, num_classes=3)
    assert scene.label.max() < 3 and scene.optical.shape == (64, 64, 3)
