"""SA-Gate's and vFuseNet's streams from ImageNet CNNs, against what the genuine official
init loads (tests/fixtures/third_party/official_imagenet_init.json, made by running the
official DualResNet / VFuseNetBackbone init on files written by mmseg's own ResNetV1c,
TorchSeg's own ResNet and mmpretrain's own VGG: make_cnn_imagenet_fixtures.py)."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import nhwc, rel_l2
from flax import nnx

from asanet_jax.convert import CheckpointError, read_state_dict, sagate, vfusenet
from asanet_jax.convert.imagenet import init_from_imagenet
from asanet_jax.models import segmentor, torch_ops

THIRD_PARTY = pathlib.Path(__file__).resolve().parent / "fixtures" / "third_party"
OFFICIAL = json.loads((THIRD_PARTY / "official_imagenet_init.json").read_text())["cases"]
# Real widths; layer 1 as deep as the micro files' (3 bottlenecks), the rest one each.
SAGATE = dict(
    architecture="sagate", layers=(3, 1, 1, 1), decoder_channels=16, c1_channels=8, aux_channels=0
)


def _flat(model):
    return {
        ".".join(map(str, p)): np.asarray(v.get_value())
        for p, v in nnx.to_flat_state(nnx.state(model, (nnx.Param, nnx.BatchStat)))
    }


def _official(case: str, ours: set[str], prefix: str = "") -> tuple[set, set]:
    """The official init's loaded and kept keys (of the full-size model), restricted to our
    smaller model's keys."""
    c = OFFICIAL[case]
    loaded = {prefix + k for k in c["loaded"]} & ours
    kept = {prefix + k for k in [*c["kept_no_such_key"], *c["kept_other"]]} & ours
    return loaded, kept


@pytest.mark.parametrize(
    ("file", "case"),
    [
        ("torchseg_resnet_micro", "sagate_torchseg_resnet_micro"),
        ("mmseg_resnetv1c_micro", "sagate_mmseg_resnetv1c_micro"),
    ],
)
def test_sagate_streams_load_what_the_official_init_loads(file, case):
    """Loaded, left at initialisation (absent, or skipped for its shape) and unused file
    keys, each the official init's; both streams get the same tensors, and TorchSeg's file,
    which fits the deep stem, reproduces its own stem and layer-1 outputs in both."""
    model = segmentor.build(SAGATE, rngs=nnx.Rngs(0))
    before = _flat(model)
    report = init_from_imagenet(model, read_state_dict(THIRD_PARTY / f"{file}.pth"))
    ours = {k.removeprefix("backbone.") for k, _, _ in sagate.layout(model.config)}
    loaded, kept = _official(case, ours)
    assert set(report["loaded_keys"]) == loaded and len(loaded) > 40
    mismatched = {m.split(":")[0] for m in report["shape_mismatch_skipped"]}
    assert set(report["left_at_init"]) | mismatched == kept
    assert mismatched == set(OFFICIAL[case]["kept_other"])
    assert set(report["skipped"]) == set(OFFICIAL[case]["file_keys_not_used"])
    after = _flat(model)
    for path in ("layers.0.1.conv2.kernel", "layers.0.2.bn3.mean"):
        np.testing.assert_array_equal(after[f"optical.{path}"], after[f"sar.{path}"])
    if "mmseg" in file:  # the stem and the 64-channel 1x1 convs fit nothing
        assert report["format"].startswith("open-mmlab") and mismatched
        for path in ("optical.layers.0.0.conv1.kernel", "optical.stem.conv1.kernel"):
            np.testing.assert_array_equal(after[path], before[path])
        return
    io = dict(np.load(THIRD_PARTY / f"{file}_io.npz"))
    x = jnp.asarray(nhwc(io["input"]))
    model.eval()
    for stream in (model.optical, model.sar):
        s = stream.stem
        y = jax.nn.relu(s.bn2(s.conv2(jax.nn.relu(s.bn1(s.conv1(x))))))
        y = jax.nn.relu(s.norm(s.conv3(y)))
        assert rel_l2(y, nhwc(io["stem"])) < 1e-5
        y = torch_ops.max_pool_3x3_s2(y)
        for j, block in enumerate(stream.layers[0]):
            y = block(y, model.downsamples[0] if j == 0 else None)
        assert rel_l2(y, nhwc(io["layer1"])) < 1e-5


def test_vfusenet_streams_load_what_the_official_init_loads():
    """Both VGG streams by name from mmpretrain's file, the fusion convs and decoders left
    at initialisation, as the official init; the stages reproduce the file's outputs."""
    model = segmentor.build({"architecture": "vfusenet"}, rngs=nnx.Rngs(0))
    report = init_from_imagenet(model, read_state_dict(THIRD_PARTY / "mmpretrain_vgg_micro.pth"))
    case = OFFICIAL["vfusenet_mmpretrain_vgg_micro"]
    streams = {k.removeprefix("backbone.") for k, _, _ in vfusenet.layout(model.config)}
    streams = {k for k in streams if k.startswith(("backbone.", "backbone2."))}
    assert set(report["loaded_keys"]) == set(case["loaded"]) and report["loaded"] == 56
    assert set(report["left_at_init"]) == set(case["kept_no_such_key"]) & streams
    assert report["skipped"] == [] and report["shape_mismatch_skipped"] == []
    model.eval()
    io = dict(np.load(THIRD_PARTY / "mmpretrain_vgg_micro_io.npz"))
    x = jnp.asarray(nhwc(io["input"]))
    for stream in (model.optical, model.sar):
        p0, _ = stream.run_stage(0, x)
        p1, _ = stream.run_stage(1, p0)
        assert rel_l2(p0, nhwc(io["stage0"])) < 1e-5
        assert rel_l2(p1, nhwc(io["stage1"])) < 1e-5


def test_a_file_of_another_family_is_one_line():
    model = segmentor.build({"architecture": "vfusenet", "depth": 11}, rngs=nnx.Rngs(0))
    with pytest.raises(CheckpointError, match="not an mmcls / mmpretrain VGG"):
        init_from_imagenet(model, read_state_dict(THIRD_PARTY / "torchseg_resnet_micro.pth"))
    with pytest.raises(CheckpointError, match="not an ImageNet ResNet"):
        sagate = segmentor.build(SAGATE, rngs=nnx.Rngs(0))
        init_from_imagenet(sagate, read_state_dict(THIRD_PARTY / "mmpretrain_vgg_micro.pth"))


def test_a_resnet_or_vgg_given_to_asanet_names_the_model_it_starts():
    # Abstract: the file is refused before any weight is read or set.
    asanet = nnx.eval_shape(lambda: segmentor.build({"backbone": "atto"}, rngs=nnx.Rngs(0)))
    for file, model in (("torchseg_resnet_micro", "sagate"), ("mmpretrain_vgg_micro", "vfusenet")):
        with pytest.raises(CheckpointError, match=f"architecture='{model}'"):
            init_from_imagenet(asanet, read_state_dict(THIRD_PARTY / f"{file}.pth"))
