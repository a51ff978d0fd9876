"""Evaluation: whole, sliding-window and TTA inference; metrics over a split against an
independent computation; the eval script's outputs and its error messages."""

import itertools
import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from micro import micro_model

from asanet_jax import checkpointing, evaluation
from asanet_jax.data import build, preprocess, specs, transforms
from asanet_jax.predict.predictor import InferenceError, Predictor
from asanet_jax.predict.windows import slide, window_starts

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    build.build("synthetic_rgb_sar", root / "data", config="tiny")
    model = micro_model(6, seed=1)
    checkpointing.save_model(root / "model", model)
    source = build.open_source(root / "data", "synthetic_rgb_sar", "val")
    return root, model, source


def image_as_logits(optical, sar):
    """A 'model' whose logits are its input (K = 3): translation and flip equivariant."""
    return optical + 0.5 * sar


def test_window_grid_follows_mmseg_slide_inference():
    # h_grids = max(h - crop + stride - 1, 0) // stride + 1; last window moved to the edge.
    assert window_starts(100, 64, 40) == [0, 36]
    assert window_starts(64, 64, 40) == [0]
    assert window_starts(200, 64, 64) == [0, 64, 128, 136]


def test_sliding_windows_average_overlaps_and_reject_small_images():
    rng = np.random.default_rng(0)
    optical = rng.standard_normal((2, 70, 90, 3)).astype(np.float32)
    sar = rng.standard_normal((2, 70, 90, 3)).astype(np.float32)
    out = slide(image_as_logits, optical, sar, (32, 48), (20, 30), 3)
    np.testing.assert_allclose(out, image_as_logits(optical, sar), rtol=1e-6, atol=1e-6)
    with pytest.raises(InferenceError, match="70x90 is smaller than the 96x96 window"):
        slide(image_as_logits, optical, sar, (96, 96), (48, 48), 3)


def test_tta_undoes_flips_and_scales():
    rng = np.random.default_rng(0)
    optical = rng.integers(0, 255, (40, 48, 3)).astype(np.uint8)
    spec = specs.synthetic_spec()
    probs = evaluation.tta_probabilities(
        lambda o, s: image_as_logits(o, s), optical, optical, spec, (1.0,), flip=True
    )
    normalised = image_as_logits(
        preprocess.normalise(optical, spec.optical_mean, spec.optical_std),
        preprocess.normalise(optical, spec.sar_mean, spec.sar_std),
    )
    np.testing.assert_allclose(probs, jax.nn.softmax(normalised, -1), rtol=1e-5, atol=1e-6)
    # Several ratios: every variant is resized back to the input size before averaging.
    multi = evaluation.tta_probabilities(
        lambda o, s: image_as_logits(o, s), optical, optical, spec, (0.5, 1.0, 1.5)
    )
    assert multi.shape == (40, 48, 3)
    np.testing.assert_allclose(multi.sum(-1), 1.0, rtol=1e-5)


def test_split_metrics_equal_an_independent_computation(setup):
    _, model, source = setup
    predictor = Predictor(model)
    result, confusion, samples = evaluation.evaluate(
        predictor, source, evaluation.Settings(), progress=False
    )
    expected = np.zeros((6, 6), np.int64)
    for i in range(len(source)):
        ex = transforms.eval_example(source.records[i], source.spec)
        pred = np.asarray(model(ex["optical"][None], ex["sar"][None])["logits"])[0].argmax(-1)
        valid = ex["label"] != 255
        np.add.at(expected, (ex["label"][valid].astype(int), pred[valid]), 1)
    np.testing.assert_array_equal(confusion, expected)
    assert len(samples) == 4
    slide, confusion_slide, _ = evaluation.evaluate(
        predictor, source, evaluation.Settings("slide", (64, 64), (64, 64)), progress=False
    )
    np.testing.assert_array_equal(confusion_slide, expected)  # one window = whole image
    assert slide["mIoU"] == result["mIoU"]


def run_eval(*args):
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "eval.py"), *args],
        capture_output=True,
        text=True,
    )


def test_eval_script_writes_metrics_and_pictures_and_explains_bad_input(setup, tmp_path):
    root, _, _ = setup
    common = [
        "--config",
        str(REPO / "configs" / "demo.py") + ":runlocal",
        f"--config.data.data_dir={root / 'data'}",
    ]
    out = run_eval(
        *common,
        "--checkpoint",
        str(root / "model"),
        "--tta",
        "--robustness",
        "--out",
        str(tmp_path / "eval"),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["settings"]["tta"] is True and {"mIoU", "OA", "Kappa", "mF1"} <= set(saved)
    for picture in ("confusion.png", "predictions.png", "robustness.png", "corruptions.png"):
        assert (tmp_path / "eval" / picture).stat().st_size > 1000
    table = json.loads((tmp_path / "eval" / "robustness.json").read_text())
    assert len(table) == 13 and table["clean"] == saved["mIoU"]  # same settings (TTA)
    assert "| clouds |" in (tmp_path / "eval" / "robustness.md").read_text()
    assert "mIoU" in out.stdout and "field" in out.stdout
    # Bad input: a clear message and exit status 1, not a traceback.
    wrong = micro_model(4)
    checkpointing.save_model(tmp_path / "four", wrong)
    for args, message in (
        (
            ["--checkpoint", str(tmp_path / "four")],
            "predicts 4 classes but synthetic_rgb_sar has 6",
        ),
        (["--checkpoint", str(root / "model"), "--split", "test"], "no split 'test'"),
        (
            [
                "--checkpoint",
                str(root / "model"),
                "--mode",
                "slide",
                "--window",
                "128",
                "--stride",
                "64",
            ],
            "smaller than the 128x128 window",
        ),
        (["--checkpoint", str(tmp_path / "nothing")], "no such checkpoint"),
    ):
        bad = run_eval(*common, *args, "--out", str(tmp_path / "bad"))
        assert bad.returncode == 1 and message in bad.stderr, bad.stderr[-2000:]
        assert "Traceback" not in bad.stderr


def test_corruptions_are_deterministic_and_grow_with_severity():
    from asanet_jax import corruptions

    rng = np.random.default_rng(0)
    optical = rng.uniform(20, 120, (96, 80, 3)).astype(np.float32)
    a = corruptions.clouds(optical, 3, seed=1, index=5)
    np.testing.assert_array_equal(a, corruptions.clouds(optical, 3, seed=1, index=5))
    assert not np.array_equal(a, corruptions.clouds(optical, 3, seed=2, index=5))
    covered = [(corruptions.clouds(optical, s, 0, 0).mean(-1) > 200).mean() for s in range(1, 6)]
    assert all(x < y for x, y in itertools.pairwise(covered)), covered
    assert covered[0] < 0.2 and covered[-1] > 0.6
    # Fog: I = J t + A (1 - t); contrast (std) shrinks as t falls with severity.
    contrast = [corruptions.fog(optical, s, 0, 0).std() for s in range(1, 6)]
    assert all(x > y for x, y in itertools.pairwise(contrast)), contrast
    foggy = corruptions.fog(optical, 5, 0, 0)
    t_max = np.exp(-corruptions.FOG_BETA[4] * 0.7)  # depth >= 0.7
    assert (foggy >= optical * t_max + corruptions.AIRLIGHT * (1 - t_max) - 1e-3).all()
    suite = corruptions.suite(0)
    assert len(suite) == 13
    o, s = suite["sar_missing"](optical, optical, 0)
    assert (s == 0).all() and np.array_equal(o, optical)
