"""The converter: architecture inference, strictness, round trips, ImageNet formats."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import GOLDEN, nhwc, rel_l2
from flax import nnx

from asanet_jax.convert import (
    CheckpointError,
    export_state_dict,
    imagenet,
    load_imagenet_backbone,
    load_state_dict,
    load_torch_checkpoint,
    read_state_dict,
)
from asanet_jax.convert.cli import convert_main
from asanet_jax.convert.layout import official_layout
from asanet_jax.convert.state_dicts import write_state_dict
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
    """The fixture's optical stream dressed as an mmpretrain or FAIR ImageNet classifier
    checkpoint (timm's format is tested with files timm wrote, below)."""
    prefix = "backbone.backbone."
    stream = {k[len(prefix) :]: v for k, v in golden_state.items() if k.startswith(prefix)}
    stream = {k: v for k, v in stream.items() if not k.startswith(("norm0", "norm1", "norm2"))}
    if fmt == "mmpretrain":
        state = {f"backbone.{k}": v for k, v in stream.items()}
        state |= {
            "head.fc.weight": np.zeros((10, 128), np.float32),
            "head.fc.bias": np.zeros(10, np.float32),
        }
    else:
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
    state.update(extra or {})
    tensors = {k: torch.from_numpy(np.array(v)) for k, v in state.items()}
    wrapper = {"mmpretrain": "state_dict", "fair": "model"}[fmt]
    path = tmp_path / f"{fmt}.pth"
    torch.save({wrapper: tensors}, path)
    return path


@pytest.mark.parametrize("fmt", ["mmpretrain", "fair"])
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


# timm's format, from files timm itself wrote (tests/fixtures/third_party/README.md).
THIRD_PARTY = GOLDEN.parent / "third_party"
TIMM_V2_FILES = [
    "timm_convnextv2_convmlp.pth",  # atto..nano layout: MLP weights (out, in, 1, 1)
    "timm_convnextv2_convmlp.safetensors",
    "timm_convnextv2_linear.pth",  # tiny..huge layout, same values: MLP weights (out, in)
]


def _last_stage(stream, x_nhwc: np.ndarray) -> np.ndarray:
    """The raw output of the stream's last stage (no output norm): timm's forward_features
    for ConvNeXt V2 (its head.norm comes after pooling). (B, H, W, C) -> (B, H/32, W/32, C)."""
    y = x_nhwc
    for i in range(stream.num_stages):
        y = stream.run_stage(i, y)
    return np.asarray(y)


def _assert_matches_timm(model, streams):
    io = np.load(THIRD_PARTY / "timm_convnextv2_convmlp_io.npz")
    x, expected = nhwc(io["input"]), nhwc(io["features"])
    errors = {}
    for stream in streams:
        ours = _last_stage(getattr(model, stream), x)
        assert ours.shape == expected.shape, (stream, ours.shape, expected.shape)
        errors[stream] = rel_l2(ours, expected)
    assert all(e < 1e-5 for e in errors.values()), errors
    return errors


@pytest.mark.parametrize("name", TIMM_V2_FILES)
def test_timm_convnextv2_files_reproduce_timm_forward_features(name):
    path = THIRD_PARTY / name
    model = ASANet(MICRO, rngs=nnx.Rngs(7))
    model.eval()
    untouched = {k: np.asarray(v.get_value()) for k, v in flat_weights(model).items()}
    report = load_imagenet_backbone(model, path)
    assert report["format"] == "timm"
    assert sorted(report["skipped"]) == ["head.fc.bias", "head.fc.weight"]
    assert sorted(report["left_at_init"]) == sorted(
        f"{s}.norm{i}.{p}" for s in ("optical", "sar") for i in range(3) for p in ("weight", "bias")
    )
    _assert_matches_timm(model, ("optical", "sar"))
    state = read_state_dict(path)
    for stream in (model.optical, model.sar):  # timm's head.norm is mmpretrain's norm3
        np.testing.assert_array_equal(stream.norms[3].scale[...], state["head.norm.weight"])
        np.testing.assert_array_equal(stream.norms[3].bias[...], state["head.norm.bias"])
    for name, var in flat_weights(model).items():
        if not name.startswith(("optical.", "sar.")):
            np.testing.assert_array_equal(var.get_value(), untouched[name], err_msg=name)


def test_timm_conv_mlp_file_through_the_cli_and_init_from(tmp_path):
    """``convert_torch_weights.py --kind imagenet`` on timm's atto-layout file, then
    ``init_from`` with the directory it wrote (and with the raw file)."""
    out = tmp_path / "init"
    source = THIRD_PARTY / "timm_convnextv2_convmlp.pth"
    argv = ["--kind", "imagenet", "--torch_checkpoint", str(source), "--output", str(out)]
    assert convert_main([*argv, "--set", "decoder_channels=32", "--set", "aux_channels=16"]) == 0
    for src in (out, source):
        model = ASANet(MICRO, rngs=nnx.Rngs(1))
        model.eval()
        imagenet.init_from(model, src, log=lambda _: None)
        _assert_matches_timm(model, ("optical", "sar"))


def test_conv_mlp_weight_that_is_not_1x1_is_refused():
    state = read_state_dict(THIRD_PARTY / "timm_convnextv2_convmlp.pth")
    state["stages.2.blocks.1.mlp.fc1.weight"] = np.zeros((256, 64, 3, 3), np.float32)
    with pytest.raises(CheckpointError) as info:
        imagenet.init_from_imagenet(ASANet(MICRO, rngs=nnx.Rngs(0)), state)
    first = str(info.value).splitlines()[0]
    assert "stages.2.blocks.1.mlp.fc1.weight" in first and "(256, 64, 3, 3)" in first
    assert "(out, in, 1, 1)" in first


def _first_line_and_count(error) -> tuple[str, int]:
    lines = str(error).splitlines()
    return lines[0], len(lines)


def test_convnext_v1_file_is_named_in_the_first_line(tmp_path, capsys):
    path = THIRD_PARTY / "timm_convnext_v1.pth"
    for load in (
        lambda: load_imagenet_backbone(ASANet(MICRO, rngs=nnx.Rngs(0)), path),
        lambda: imagenet.init_from(ASANet(MICRO, rngs=nnx.Rngs(0)), path),
    ):
        with pytest.raises(CheckpointError) as info:
            load()
        first, count = _first_line_and_count(info.value)
        assert first.startswith(f"{path}: looks like a ConvNeXt V1 checkpoint"), first
        assert "'gamma'" in first and "no GRN" in first and "ConvNeXt V2" in first
        assert count <= 2  # the reason, then one key as evidence
    argv = ["--kind", "imagenet", "--torch_checkpoint", str(path), "--output", str(tmp_path / "o")]
    assert convert_main(argv) == 1
    first = capsys.readouterr().err.splitlines()[0]
    assert first.startswith(f"error: {path}: looks like a ConvNeXt V1 checkpoint"), first
    assert not (tmp_path / "o").exists()
    # Given as an official segmentor (the default kind), the same reason.
    assert convert_main(argv[2:]) == 1
    first = capsys.readouterr().err.splitlines()[0]
    assert "not an ASANet checkpoint: it looks like a ConvNeXt V1 checkpoint" in first, first


@pytest.mark.parametrize(
    "keys, reason",
    [
        (["conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "fc.weight"], "ResNet"),
        (["cls_token", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight"], "transformer"),
        (["features.0.weight", "classifier.weight"], "no ConvNeXt V2 stem or stage keys"),
    ],
)
def test_other_model_families_get_a_one_line_reason(keys, reason):
    """Key names of other families (their values do not matter for the verdict)."""
    state = {k: np.zeros((2, 2), np.float32) for k in keys}
    with pytest.raises(CheckpointError) as info:
        imagenet.init_from_imagenet(ASANet(MICRO, rngs=nnx.Rngs(0)), state)
    first, count = _first_line_and_count(info.value)
    assert reason in first and count <= 2, str(info.value)
