"""The conversion scripts as a user runs them, and the model directories they write."""

import collections
import hashlib
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import GOLDEN, nhwc, rel_l2

from asanet_jax.checkpointing import ModelCheckpointError, load_model_dir
from asanet_jax.convert.mapping import MAPPING_VERSION

ROOT = pathlib.Path(__file__).parents[1]
# The fixture's own key list (name, shape, dtype per line), written by the official code.
KEY_DTYPES = collections.Counter(
    line.split("\t")[2] for line in (GOLDEN / "keys.txt").read_text().splitlines()
)


def run_script(name, *args, ok=True):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / name), *map(str, args)],
        capture_output=True,
        text=True,
    )
    assert (proc.returncode == 0) == ok, proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "micro"
    proc = run_script(
        "convert_torch_weights.py", "--torch_checkpoint", GOLDEN / "checkpoint.pth", "--output", out
    )
    assert "optical+sar, depths (1, 1, 2, 1)" in proc.stdout
    return out


def test_convert_writes_orbax_weights_and_provenance(converted):
    meta = json.loads((converted / "model.json").read_text())
    digest = hashlib.sha256((GOLDEN / "checkpoint.pth").read_bytes()).hexdigest()
    assert meta["source"] == {
        "path": "checkpoint.pth",
        "sha256": digest,
        "kind": "official",
        "dtypes": dict(KEY_DTYPES),
    }
    assert meta["mapping_version"] == MAPPING_VERSION
    assert meta["model"]["depths"] == [1, 1, 2, 1]
    assert (converted / "weights").is_dir()


def test_converted_directory_reproduces_the_official_outputs(converted, golden_io):
    model, _, _ = load_model_dir(converted)
    x = nhwc(golden_io["s96x136.input"])
    out = model(x[..., :3], x[..., 3:])
    assert rel_l2(out["logits"], nhwc(golden_io["s96x136.logits"])) <= 1e-4


def test_export_script_round_trip_is_bit_exact(converted, tmp_path):
    out = tmp_path / "back.pth"
    run_script("export_torch_weights.py", "--checkpoint", converted, "--output", out)
    ours = torch.load(out, weights_only=True)
    ref = torch.load(GOLDEN / "checkpoint.pth", weights_only=True)["state_dict"]
    assert list(ours["state_dict"]) == list(ref)
    for key, value in ref.items():
        assert ours["state_dict"][key].dtype == value.dtype, key
        assert torch.equal(ours["state_dict"][key], value), key
    assert ours["meta"]["source"]["sha256"]
    # And it converts again: export -> convert is the identity too.
    again = tmp_path / "again"
    run_script("convert_torch_weights.py", "--torch_checkpoint", out, "--output", again)
    run_script(
        "export_torch_weights.py", "--checkpoint", again, "--output", tmp_path / "b.safetensors"
    )
    from safetensors.numpy import load_file

    st = load_file(str(tmp_path / "b.safetensors"))
    for key, value in ref.items():
        np.testing.assert_array_equal(st[key], value.numpy(), err_msg=key)


def test_existing_output_is_not_overwritten(converted):
    proc = run_script(
        "convert_torch_weights.py",
        "--torch_checkpoint",
        GOLDEN / "checkpoint.pth",
        "--output",
        converted,
        ok=False,
    )
    assert "already exists" in proc.stderr and "Traceback" not in proc.stderr


def test_bad_input_is_one_clear_line_and_leaves_nothing(tmp_path):
    bad = tmp_path / "keys.pth"
    bad.write_text((GOLDEN / "keys.txt").read_text())
    out = tmp_path / "out"
    proc = run_script(
        "convert_torch_weights.py", "--torch_checkpoint", bad, "--output", out, ok=False
    )
    assert proc.stderr.startswith(f"error: {bad}: not a readable PyTorch checkpoint")
    assert "Traceback" not in proc.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == [bad]


def test_imagenet_kind_builds_an_initialisation(tmp_path, golden_state):
    stream = {
        k[len("backbone.backbone.") :]: v
        for k, v in golden_state.items()
        if k.startswith("backbone.backbone.")
    }
    state = {
        f"backbone.{k}": torch.from_numpy(np.array(v))
        for k, v in stream.items()
        if not k.startswith(("norm0", "norm1", "norm2"))
    }
    state["head.fc.weight"] = torch.zeros(10, 128)
    src = tmp_path / "in1k.pth"
    torch.save({"state_dict": state}, src)
    out = tmp_path / "init"
    proc = run_script(
        "convert_torch_weights.py",
        "--kind",
        "imagenet",
        "--torch_checkpoint",
        src,
        "--output",
        out,
        "--set",
        "num_classes=7",
        "--set",
        "decoder_channels=32",
        "--set",
        "aux_channels=16",
    )
    assert "mmpretrain ImageNet weights" in proc.stdout and "skipped 1 unused keys" in proc.stdout
    model, config, meta = load_model_dir(out)
    assert config.num_classes == 7 and tuple(config.channels) == (16, 32, 64, 128)
    assert meta["imagenet_init"]["streams"] == ["optical", "sar"]
    np.testing.assert_array_equal(
        model.sar.stages[2][1].grn.gamma.get_value(),
        golden_state["backbone.backbone.stages.2.1.grn.gamma"],
    )


def test_load_model_checks_config_against_weights(converted):
    with pytest.raises(ModelCheckpointError, match=r"shape mismatch: 4\n") as info:
        load_model_dir(converted, {"num_classes": 9})
    assert "decode_head/conv_seg/kernel: checkpoint (1, 1, 32, 6) vs model (1, 1, 32, 9)" in str(
        info.value
    )
    model, config, _ = load_model_dir(converted, {"dtype": "bfloat16"})
    assert config.dtype == "bfloat16" and model.config.dtype == "bfloat16"
    with pytest.raises(ModelCheckpointError, match="not a model checkpoint"):
        load_model_dir(converted / "weights")


def test_dataset_flag_records_the_official_preprocessing(tmp_path):
    from asanet_jax import checkpointing

    out = tmp_path / "pie"
    run_script(
        "convert_torch_weights.py",
        *("--torch_checkpoint", GOLDEN / "checkpoint.pth", "--output", out),
        *("--dataset", "pie_rgb_sar"),
    )
    meta = json.loads((out / "model.json").read_text())
    assert meta["tfds"] == {"name": "pie_rgb_sar", "config": None}
    spec = checkpointing.model_dataset(meta, out)  # what predict.py and eval.py use
    # The official PIE config's normalisation (B, G, R order) and OpenCV decoding.
    assert spec.optical_mean == (73.422, 89.751, 83.405)
    assert spec.optical_std == (29.48, 26.953, 24.829)
    assert spec.sar_mean == (84.869,) * 3 and spec.sar_std == (57.769,) * 3
    assert spec.optical_bands is None and spec.sar_scaling == {"kind": "none"}
    assert spec.classes[1] == "city" and len(spec.palette) == 6
    # Weights of 6 classes are not WHU-OPT-SAR's 7: refused, nothing written.
    proc = run_script(
        "convert_torch_weights.py",
        *("--torch_checkpoint", GOLDEN / "checkpoint.pth", "--output", tmp_path / "whu"),
        *("--dataset", "whu_opt_sar"),
        ok=False,
    )
    assert "the weights predict 6 classes but --dataset whu_opt_sar has 7" in proc.stderr
    assert not (tmp_path / "whu").exists()
