"""The converter: architecture inference, strictness, round trips, ImageNet formats."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import GOLDEN
from flax import nnx

from asanet_jax.convert import (
    CheckpointError,
    export_state_dict,
    load_imagenet_backbone,
    load_state_dict,
    load_torch_checkpoint,
)
from asanet_jax.convert.cli import write_state_dict
from asanet_jax.convert.layout import official_layout
from asanet_jax.models import ASANet, resolve
from asanet_jax.weights import flat_weights

MICRO = dict(depths=(1, 1, 2, 1), channels=(16, 32, 64, 128), decoder_channels=32, aux_channels=16)


def test_architecture_is_inferred_from_the_fixture_alone(golden_model):
    _, config = golden_model
    meta = json.loads((GOLDEN / "meta.json").read_text())["config_model"]
    arch = meta["backbone"]["backbone"]["arch"]
    assert tuple(config.depths) == tuple(arch["depths"])
    assert tuple(config.channels) == tuple(arch["channels"])
    assert config.decoder_channels == meta["decode_head"]["channels"]
    assert config.num_classes == meta["decode_head"]["num_classes"]
    assert config.aux_channels == meta["auxiliary_head"]["channels"]
    assert config.aux_in_index == meta["auxiliary_head"]["in_index"]
    assert tuple(config.pool_scales) == tuple(meta["decode_head"]["pool_scales"])
    assert config.sfm and config.fusion == "cfm" and config.modalities == "optical+sar"


def test_layout_is_the_official_key_list():
    spec = resolve(MICRO)
    rows = [line.split("\t") for line in (GOLDEN / "keys.txt").read_text().splitlines()]
    ours = [(k, str(tuple(s)), d) for k, s, d in official_layout(spec)]
    assert ours == [(k, str(tuple(eval(s))), d) for k, s, d in rows]


def test_export_round_trip_is_bit_exact(golden_model):
    model, _ = golden_model
    original = torch.load(GOLDEN / "checkpoint.pth", map_location="cpu", weights_only=True)
    original = original["state_dict"]
    exported = export_state_dict(model)
    assert list(exported) == list(original)  # same keys, same order
    for key, tensor in original.items():
        ref = tensor.numpy()
        assert exported[key].dtype == ref.dtype, key
        assert exported[key].shape == ref.shape, key
        np.testing.assert_array_equal(exported[key], ref, err_msg=key)


def test_exported_file_loads_strictly_into_a_torch_module_with_official_names(
    golden_model, tmp_path
):
    """What load_state_dict(strict=True) of the official model checks: names, shapes, dtypes."""
    model, _ = golden_model
    path = tmp_path / "export.pth"
    write_state_dict(export_state_dict(model), path, meta={})
    loaded = torch.load(path, weights_only=True)["state_dict"]
    official = torch.load(GOLDEN / "checkpoint.pth", weights_only=True)["state_dict"]
    target = torch.nn.Module()
    for key, value in official.items():  # a module with exactly the official buffers
        target.register_buffer(key.replace(".", "__"), torch.empty_like(value))
    result = target.load_state_dict(
        {k.replace(".", "__"): v for k, v in loaded.items()}, strict=True
    )
    assert not result.missing_keys and not result.unexpected_keys
    for key, value in official.items():
        assert torch.equal(getattr(target, key.replace(".", "__")), value), key


def test_unconsumed_missing_and_mismatched_keys_are_listed(golden_state):
    extra = dict(golden_state, **{"backbone.backbone.stages.0.0.gamma": np.ones(16, np.float32)})
    with pytest.raises(CheckpointError, match=r"unconsumed.*\n.*stages\.0\.0\.gamma"):
        load_state_dict(extra)
    missing = dict(golden_state)
    del missing["decode_head.fpn_convs.1.bn.running_var"]
    with pytest.raises(CheckpointError, match=r"missing.*\n.*fpn_convs\.1\.bn\.running_var"):
        load_state_dict(missing)
    bad = dict(golden_state)
    bad["backbone.FFMs.0.fc1.weight"] = np.zeros((16, 16, 3, 3), np.float32)
    with pytest.raises(
        CheckpointError, match=r"shape mismatch.*\n.*FFMs\.0\.fc1\.weight.*\(16, 16, 3, 3\)"
    ):
        load_state_dict(bad)


def test_override_that_contradicts_the_weights_is_an_error(golden_state):
    with pytest.raises(CheckpointError, match="num_classes=7 contradicts the checkpoint"):
        load_state_dict(golden_state, {"num_classes": 7})
    with pytest.raises(CheckpointError, match="4 PPM branches but pool_scales"):
        load_state_dict(golden_state, {"pool_scales": (1, 2, 3)})


def test_not_a_checkpoint_gets_one_line(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    for path, message in (
        (tmp_path / "absent.pth", "no such file"),
        (text, "not a readable PyTorch checkpoint"),
    ):
        with pytest.raises(CheckpointError, match=message) as info:
            load_torch_checkpoint(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
    other = tmp_path / "resnet.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(4, 3, 7, 7)}}, other)
    with pytest.raises(CheckpointError, match="not an official ASANet/UPerNet checkpoint"):
        load_torch_checkpoint(other)


def _random_model(**overrides):
    model = ASANet(dict(MICRO) | overrides, rngs=nnx.Rngs(3))
    # Give BatchNorm statistics non-default values so the round trip is meaningful.
    for name, var in flat_weights(model).items():
        if name.endswith((".mean", ".var")):
            var.set_value(var.get_value() + 0.5)
    return model


@pytest.mark.parametrize(
    "overrides",
    [
        dict(sfm=False),
        dict(fusion="sum", aux_channels=0),
        dict(sar_channels=2, aux_in_index=1, aux_num_convs=2),
        dict(modalities="optical", sfm=False, fusion="none"),
        dict(modalities="sar", sfm=False, fusion="none", sar_channels=1),
    ],
)
def test_variants_round_trip_through_official_files(overrides, tmp_path):
    model = _random_model(**overrides)
    path = tmp_path / "variant.pth"
    state = export_state_dict(model)
    write_state_dict(state, path, meta={})
    hint = {"modalities": "sar"} if overrides.get("modalities") == "sar" else None
    loaded, config = load_torch_checkpoint(path, hint)
    assert resolve(config) == model.config
    again = export_state_dict(loaded)
    for key in state:
        np.testing.assert_array_equal(again[key], state[key], err_msg=key)


def test_safetensors_load_without_torch(golden_model, golden_state, tmp_path):
    model, _ = golden_model
    path = tmp_path / "micro.safetensors"
    write_state_dict(export_state_dict(model), path, meta={})
    script = f"""
import sys
import numpy as np
sys.modules["torch"] = None  # any import of torch now fails
from asanet_jax.convert import export_state_dict, load_torch_checkpoint
model, config = load_torch_checkpoint({str(path)!r})
np.savez({str(tmp_path / "back.npz")!r}, **export_state_dict(model))
"""
    subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    back = np.load(tmp_path / "back.npz")
    assert sorted(back.files) == sorted(golden_state)
    for key, value in golden_state.items():
        np.testing.assert_array_equal(back[key], value, err_msg=key)


def _imagenet_file(golden_state, fmt, tmp_path, extra=None):
    """The fixture's optical stream dressed as an ImageNet classifier checkpoint."""
    prefix = "backbone.backbone."
    stream = {k[len(prefix) :]: v for k, v in golden_state.items() if k.startswith(prefix)}
    stream = {k: v for k, v in stream.items() if not k.startswith(("norm0", "norm1", "norm2"))}
    if fmt == "mmpretrain":
        state = {f"backbone.{k}": v for k, v in stream.items()}
        state |= {
            "head.fc.weight": np.zeros((10, 128), np.float32),
            "head.fc.bias": np.zeros(10, np.float32),
        }
    elif fmt == "fair":
        state = {}
        for k, v in stream.items():
            k = k.replace("depthwise_conv", "dwconv").replace("pointwise_conv", "pwconv")
            if ".grn." in k:
                v = v.reshape(1, 1, 1, -1)
            state["norm." + k[len("norm3.") :] if k.startswith("norm3.") else k] = v
        state |= {
            "head.weight": np.zeros((10, 128), np.float32),
            "head.bias": np.zeros(10, np.float32),
        }
    else:
        state = {}
        for k, v in stream.items():
            parts = k.split(".")
            if k.startswith("downsample_layers.0."):
                new = f"stem.{parts[2]}.{parts[3]}"
            elif k.startswith("downsample_layers."):
                new = f"stages.{parts[1]}.downsample.{parts[2]}.{parts[3]}"
            elif k.startswith("norm3."):
                new = f"head.norm.{parts[1]}"
            else:
                i, j, mod, leaf = parts[1], parts[2], parts[3], parts[4]
                mod = {
                    "depthwise_conv": "conv_dw",
                    "norm": "norm",
                    "pointwise_conv1": "mlp.fc1",
                }.get(mod, mod)
                mod = {"pointwise_conv2": "mlp.fc2", "grn": "mlp.grn"}.get(mod, mod)
                leaf = (
                    {"gamma": "weight", "beta": "bias"}.get(leaf, leaf)
                    if mod == "mlp.grn"
                    else leaf
                )
                new = f"stages.{i}.blocks.{j}.{mod}.{leaf}"
            state[new] = v
        state |= {
            "head.fc.weight": np.zeros((10, 128), np.float32),
            "head.fc.bias": np.zeros(10, np.float32),
        }
    state.update(extra or {})
    tensors = {k: torch.from_numpy(np.array(v)) for k, v in state.items()}
    wrapper = {"mmpretrain": "state_dict", "fair": "model", "timm": None}[fmt]
    path = tmp_path / f"{fmt}.pth"
    torch.save({wrapper: tensors} if wrapper else tensors, path)
    return path


@pytest.mark.parametrize("fmt", ["mmpretrain", "fair", "timm"])
def test_imagenet_weights_initialise_both_streams(golden_state, golden_model, fmt, tmp_path):
    path = _imagenet_file(golden_state, fmt, tmp_path)
    model = ASANet(MICRO, rngs=nnx.Rngs(7))
    untouched = {k: np.asarray(v.get_value()) for k, v in flat_weights(model).items()}
    report = load_imagenet_backbone(model, path)
    assert report["format"] == fmt
    assert sorted(report["skipped"]) == sorted(
        {
            "mmpretrain": ["head.fc.bias", "head.fc.weight"],
            "fair": ["head.bias", "head.weight"],
            "timm": ["head.fc.bias", "head.fc.weight"],
        }[fmt]
    )
    assert {k.split(".", 1)[1] for k in report["left_at_init"]} == {
        f"norm{i}.{p}" for i in range(3) for p in ("weight", "bias")
    }
    golden, _ = golden_model
    ref = flat_weights(golden)
    ours = flat_weights(model)
    for name, var in ours.items():
        stream, _, rest = name.partition(".")
        if stream in ("optical", "sar") and not rest.startswith(("norms.0", "norms.1", "norms.2")):
            np.testing.assert_array_equal(
                var.get_value(), ref[f"optical.{rest}"].get_value(), err_msg=name
            )
        else:
            np.testing.assert_array_equal(var.get_value(), untouched[name], err_msg=name)


def test_imagenet_unknown_key_is_an_error(golden_state, tmp_path):
    path = _imagenet_file(
        golden_state,
        "mmpretrain",
        tmp_path,
        extra={"backbone.stages.0.0.gamma": np.ones(16, np.float32)},
    )
    with pytest.raises(CheckpointError, match=r"unconsumed.*\n.*stages\.0\.0\.gamma"):
        load_imagenet_backbone(ASANet(MICRO, rngs=nnx.Rngs(0)), path)


def test_imagenet_wrong_size_is_an_error(golden_state, tmp_path):
    path = _imagenet_file(golden_state, "fair", tmp_path)
    wider = dict(MICRO, channels=(16, 32, 64, 256))
    with pytest.raises(CheckpointError, match="does not fit the optical stream"):
        load_imagenet_backbone(ASANet(wider, rngs=nnx.Rngs(0)), path)


def test_segmentor_given_as_imagenet_is_refused(golden_checkpoint):
    with pytest.raises(CheckpointError, match="use --kind official"):
        load_imagenet_backbone(ASANet(MICRO, rngs=nnx.Rngs(0)), golden_checkpoint)
