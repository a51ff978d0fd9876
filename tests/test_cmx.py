"""CMX against the genuine official model (tests/fixtures/golden_cmx_micro), and its
interface: conversion both ways, sizes, drop-path rates, per-replica BatchNorm.

Tolerances as for ASANet (docs/design.md): rel-L2 <= 1e-4 per output, 1e-5 relative on
the loss, <= 1e-3 per gradient tensor, float32 at highest matmul precision.
"""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import nhwc, rel_l2
from flax import nnx

from asanet_jax.convert import CheckpointError, export_state_dict, read_state_dict
from asanet_jax.convert.official import load_state_dict
from asanet_jax.models import CMX, count_params, resolve, segmentor, torch_ops
from asanet_jax.models.cmx import cmx_drop_path_rates
from tests.support import golden
from tests.support.golden import GRAD_TOL, LOSS_TOL, OUTPUT_TOL

FIXTURE = golden.CMX


@pytest.fixture(scope="module")
def cmx_state():
    return read_state_dict(FIXTURE.checkpoint)


@pytest.fixture(scope="module")
def abstract_b2():
    """The default CMX (MiT-B2), shapes only."""
    return nnx.eval_shape(lambda: segmentor.build({"architecture": "cmx"}, rngs=nnx.Rngs(0)))


@pytest.fixture(scope="module")
def cmx_io():
    return golden.load(FIXTURE)


@pytest.fixture(scope="module", params=["xla", "cpu"])
def cmx_kernels_model(request, cmx_state):
    """The official micro CMX under each ``config.model.kernels`` setting, forced ('cpu':
    the shifted-sum depthwise convs of the Mix-FFNs and FFMs, LayerNorm sums as products)."""
    model, _ = load_state_dict(cmx_state, {**FIXTURE.overrides, "kernels": request.param})
    return request.param, model


@pytest.mark.parametrize("name", golden.INPUTS)
def test_outputs_match_official(cmx_kernels_model, cmx_io, name):
    kernels, model = cmx_kernels_model
    errors = golden.output_errors(model, cmx_io[0], name)
    print(name, kernels, {k: f"{v:.2e}" for k, v in errors.items()})
    assert set(errors) == {"feat0", "feat1", "feat2", "feat3", "decode", "logits"}
    assert max(errors.values()) <= OUTPUT_TOL, errors


def test_loss_and_gradients_match_official(cmx_kernels_model, cmx_io):
    """Eval mode (as recorded): decode CE only, ignore 255; every parameter."""
    kernels, model = cmx_kernels_model
    losses, gradients = golden.loss_and_gradient_errors(model, *cmx_io, FIXTURE)
    print(kernels, {k: f"{v:.1e}" for k, v in losses.items()})
    assert set(losses) == {"loss.total", "loss.decode.loss_ce"}
    assert max(losses.values()) <= LOSS_TOL, losses
    assert len(gradients) == 386  # every parameter of the official micro model
    worst = max(gradients, key=gradients.get)
    print(f"{kernels}: {len(gradients)} gradients; worst {worst}: {gradients[worst]:.2e}")
    assert gradients[worst] <= GRAD_TOL


def test_submodules_match_official(cmx_state):
    """Layer by layer: each recorded module output, from the official output of the module
    before it (``dbg.npz``); every recorded output is checked."""
    model, _ = load_state_dict(cmx_state, FIXTURE.overrides)
    dbg = dict(np.load(FIXTURE.path / "dbg.npz"))
    x = nhwc(dbg["dbg.input"])
    sizes = {h * w: (h, w) for h, w in ((16, 24), (8, 12), (4, 6), (2, 3))}
    errors = {}

    def g(key):
        """An official output as NHWC: tokens (1, N, C) -> (1, H, W, C)."""
        ref = dbg[f"dbg.{key}"]
        return ref.reshape(1, *sizes[ref.shape[1]], -1) if ref.ndim == 3 else nhwc(ref)

    def check(key, ours):
        ref = dbg[f"dbg.{key}"]
        ours = np.asarray(ours)
        if ref.ndim == 3:
            ours = ours.reshape(ref.shape)
        elif ref.ndim == 4:
            ours = np.transpose(ours, (0, 3, 1, 2))
        errors[key] = rel_l2(ours, ref)

    def cat(*xs):
        return jnp.concatenate(xs, axis=-1)

    for tp, stream, bands in (("", model.optical, x[..., :3]), ("extra_", model.sar, x[..., 3:])):
        for i in range(4):
            src = bands if i == 0 else g(f"backbone.FRMs.{i - 1}:{int(tp != '')}")
            pe, p = stream.patch_embeds[i], f"backbone.{tp}patch_embed{i + 1}"
            check(f"{p}.proj", pe.proj(src))
            check(f"{p}.norm", pe.norm(g(f"{p}.proj")))
            check(f"{p}:0", pe(src))
            y = g(f"{p}:0")
            for j, blk in enumerate(stream.blocks[i]):
                b = f"backbone.{tp}block{i + 1}.{j}"
                check(f"{b}.norm1", blk.norm1(y))
                n1 = g(f"{b}.norm1")
                check(f"{b}.attn.q", blk.attn.q(n1))
                kv_in = n1
                if blk.attn.sr is not None:
                    check(f"{b}.attn.sr", blk.attn.sr(n1))
                    check(f"{b}.attn.norm", blk.attn.norm(g(f"{b}.attn.sr")))
                    kv_in = g(f"{b}.attn.norm")
                check(f"{b}.attn.kv", blk.attn.kv(kv_in))
                check(f"{b}.attn", blk.attn(n1))
                check(f"{b}.attn.proj", blk.attn(n1))  # proj is attention's last layer
                check(f"{b}.norm2", blk.norm2(y + g(f"{b}.attn")))
                n2 = g(f"{b}.norm2")
                check(f"{b}.mlp.fc1", blk.mlp.fc1(n2))
                check(f"{b}.mlp.dwconv.dwconv", blk.mlp.dwconv(g(f"{b}.mlp.fc1")))
                check(f"{b}.mlp.dwconv", blk.mlp.dwconv(g(f"{b}.mlp.fc1")))
                check(f"{b}.mlp.fc2", blk.mlp.fc2(torch_ops.gelu(g(f"{b}.mlp.dwconv"))))
                check(f"{b}.mlp", blk.mlp(n2))
                check(b, blk(y))
                y = g(b)
            check(f"backbone.{tp}norm{i + 1}", stream.norms[i](y))
    for i in range(4):
        frm, p = model.frms[i], f"backbone.FRMs.{i}"
        x1, x2 = g(f"backbone.norm{i + 1}"), g(f"backbone.extra_norm{i + 1}")
        both = cat(x1, x2)
        cw, sw = frm.channel_weights, frm.spatial_weights
        check(f"{p}.channel_weights.avg_pool", both.mean(axis=(1, 2), keepdims=True))
        check(f"{p}.channel_weights.max_pool", both.max(axis=(1, 2), keepdims=True))
        pooled = cat(both.mean(axis=(1, 2)), both.max(axis=(1, 2)))
        check(f"{p}.channel_weights.mlp.0", cw.fc1(pooled))
        check(
            f"{p}.channel_weights.mlp.2", cw.fc2(jax.nn.relu(dbg[f"dbg.{p}.channel_weights.mlp.0"]))
        )
        check(f"{p}.channel_weights.mlp", jax.nn.sigmoid(dbg[f"dbg.{p}.channel_weights.mlp.2"]))
        ours = np.stack([np.asarray(w).reshape(1, -1, 1, 1) for w in cw(both)])
        errors[f"{p}.channel_weights"] = rel_l2(ours, dbg[f"dbg.{p}.channel_weights"])
        check(f"{p}.spatial_weights.mlp.0", sw.conv1(both))
        check(f"{p}.spatial_weights.mlp.2", sw.conv2(jax.nn.relu(g(f"{p}.spatial_weights.mlp.0"))))
        check(f"{p}.spatial_weights.mlp", jax.nn.sigmoid(g(f"{p}.spatial_weights.mlp.2")))
        ours = np.stack([np.transpose(np.asarray(w), (0, 3, 1, 2)) for w in sw(both)])
        errors[f"{p}.spatial_weights"] = rel_l2(ours, dbg[f"dbg.{p}.spatial_weights"])
        out1, out2 = frm(x1, x2)
        check(f"{p}:0", out1)
        check(f"{p}:1", out2)
        ffm, p = model.ffms[i], f"backbone.FFMs.{i}"
        f1, f2 = g(f"backbone.FRMs.{i}:0"), g(f"backbone.FRMs.{i}:1")
        cross, c = ffm.cross, f1.shape[-1]
        check(f"{p}.cross.channel_proj1", cross.channel_proj1(f1))
        check(f"{p}.cross.channel_proj2", cross.channel_proj2(f2))
        y1, u1 = jnp.split(jax.nn.relu(g(f"{p}.cross.channel_proj1")), 2, axis=-1)
        y2, u2 = jnp.split(jax.nn.relu(g(f"{p}.cross.channel_proj2")), 2, axis=-1)
        check(f"{p}.cross.cross_attn.kv1", cross.cross_attn.kv1(u1))
        check(f"{p}.cross.cross_attn.kv2", cross.cross_attn.kv2(u2))
        v1, v2 = cross.cross_attn(u1.reshape(1, -1, c), u2.reshape(1, -1, c))
        check(f"{p}.cross.cross_attn:0", v1)
        check(f"{p}.cross.cross_attn:1", v2)
        check(f"{p}.cross.end_proj1", cross.end_proj1(cat(y1, g(f"{p}.cross.cross_attn:0"))))
        check(f"{p}.cross.end_proj2", cross.end_proj2(cat(y2, g(f"{p}.cross.cross_attn:1"))))
        check(f"{p}.cross.norm1", cross.norm1(f1 + g(f"{p}.cross.end_proj1")))
        check(f"{p}.cross.norm2", cross.norm2(f2 + g(f"{p}.cross.end_proj2")))
        t1, t2 = cross(f1.reshape(1, -1, c), f2.reshape(1, -1, c))
        check(f"{p}.cross:0", t1)
        check(f"{p}.cross:1", t2)
        merge = cat(g(f"{p}.cross:0"), g(f"{p}.cross:1"))
        ce, q = ffm.channel_emb, f"{p}.channel_emb"
        check(f"{q}.residual", ce.residual(merge))
        check(f"{q}.channel_embed.0", ce.embed_in(merge))
        check(f"{q}.channel_embed.1", ce.embed_dw(g(f"{q}.channel_embed.0")))
        check(f"{q}.channel_embed.3", ce.embed_out(jax.nn.relu(g(f"{q}.channel_embed.1"))))
        check(f"{q}.channel_embed.4", ce.embed_bn(g(f"{q}.channel_embed.3")))
        check(f"{q}.channel_embed", ce.embed_bn(g(f"{q}.channel_embed.3")))
        check(f"{q}.norm", ce.norm(g(f"{q}.residual") + g(f"{q}.channel_embed")))
        check(q, ce(merge))
        check(p, ffm(f1, f2))
    head = model.decode_head
    feats = [g(f"backbone.FFMs.{i}") for i in range(4)]
    for i in range(4):
        check(f"decode_head.layers.{i}.proj", head.layers[i](feats[i]))
        check(f"decode_head.layers.{i}", head.layers[i](feats[i]))
    layers = [g(f"decode_head.layers.{i}") for i in (3, 2, 1, 0)]
    resized = cat(*(torch_ops.resize_bilinear(y, feats[0].shape[1:3]) for y in layers))
    check("decode_head.fusion_conv.conv", head.fusion_conv.conv(resized))
    check("decode_head.fusion_conv.bn", head.fusion_conv.bn(g("decode_head.fusion_conv.conv")))
    check("decode_head.fusion_conv", head.fusion_conv(resized))
    check("decode_head.conv_seg", head.conv_seg(g("decode_head.fusion_conv")))
    for i, feature in enumerate(model.encode(x[..., :3], x[..., 3:])):
        check(f"backbone:{i}", feature)
    recorded = {k[4:] for k in dbg if k != "dbg.input"}
    assert recorded == set(errors), sorted(recorded ^ set(errors))[:10]
    worst = max(errors, key=errors.get)
    print(f"{len(errors)} sub-module outputs; worst {worst}: {errors[worst]:.2e}")
    assert errors[worst] <= OUTPUT_TOL, {k: v for k, v in errors.items() if v > OUTPUT_TOL}


def test_export_writes_the_official_state_dict_key_for_key_and_bit_for_bit(cmx_state):
    """Load then export gives the official checkpoint back: its keys in its order, its
    shapes and dtypes, every value equal; the PyTorch baseline (benchmarks/torch_cmx.py,
    checked against the fixture) loads it strictly."""
    import torch

    from benchmarks.torch_cmx import MICRO, TorchCMX

    model, _ = load_state_dict(cmx_state, FIXTURE.overrides)
    exported = export_state_dict(model)
    assert list(exported) == list(cmx_state)
    for key, value in cmx_state.items():
        assert exported[key].dtype == np.asarray(value).dtype, key
        np.testing.assert_array_equal(exported[key], value, err_msg=key)
    torch_model = TorchCMX(**MICRO)
    torch_model.load_state_dict(
        collections.OrderedDict((k, torch.from_numpy(np.array(v))) for k, v in exported.items()),
        strict=True,
    )


def test_b2_has_the_official_parameter_count_and_the_default_is_b2(abstract_b2):
    """66,563,982: the official CMX-B2 PIE model, built by the genuine code (no aux head)."""
    model = abstract_b2
    assert isinstance(model, CMX)
    assert model.config.backbone == "b2"
    assert count_params(model) == 66_563_982
    micro = nnx.eval_shape(
        lambda: segmentor.build(
            resolve({**_micro_fields(), "architecture": "cmx"}), rngs=nnx.Rngs(0)
        )
    )
    assert count_params(micro) == 1_941_822  # the fixture's meta.json


def _micro_fields():
    return {
        "embed_dims": (16, 32, 64, 128),
        "num_heads": (1, 2, 2, 4),
        "depths": (1, 1, 2, 1),
        "decoder_channels": 32,
    }


def test_drop_path_rates_reproduce_the_official_stage_2_shift(abstract_b2):
    """The official RGBXTransformer, read independently: dpr = linspace(0, 0.1, 16) over
    MiT-B2's (3, 4, 6, 3) blocks; stage 2 gives all 4 optical blocks dpr[3] and all 4 SAR
    blocks dpr[4]; the other stages give block j dpr[cur + j] in both streams."""
    dpr = [0.1 * k / 15 for k in range(16)]
    optical, sar = cmx_drop_path_rates((3, 4, 6, 3), 0.1)
    np.testing.assert_allclose(optical[1], [dpr[3]] * 4)
    np.testing.assert_allclose(sar[1], [dpr[4]] * 4)
    for stage, (start, depth) in {0: (0, 3), 2: (7, 6), 3: (13, 3)}.items():
        np.testing.assert_allclose(optical[stage], dpr[start : start + depth])
        np.testing.assert_allclose(sar[stage], dpr[start : start + depth])
    model = abstract_b2
    assert [b.drop_path.rate for b in model.sar.blocks[1]] == pytest.approx([dpr[4]] * 4)
    assert [b.drop_path.rate for b in model.optical.blocks[2]] == pytest.approx(dpr[7:13])


def test_ffm_batchnorm_per_replica_normalises_each_part_on_its_own(cmx_state):
    """ffm_bn_replicas=2 in training: each FFM BatchNorm normalises each half of the batch
    with that half's statistics (computed here independently, in numpy), and the running
    statistics follow the first half, as plain BatchNorm2d under 2-GPU DDP."""
    model, _ = load_state_dict(cmx_state, {**FIXTURE.overrides, "ffm_bn_replicas": 2})
    model.train()
    bn = model.ffms[0].channel_emb.norm
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, (4, 5, 6, bn.scale.shape[0])).astype(np.float32)
    x[2:] *= 4.0  # the second half's statistics differ
    before_mean = np.asarray(bn.mean[...])
    before_var = np.asarray(bn.var[...])
    y = np.asarray(bn(jnp.asarray(x)))
    scale, bias = np.asarray(bn.scale[...]), np.asarray(bn.bias[...])
    for half in (slice(0, 2), slice(2, 4)):
        part = x[half]
        mean, var = part.mean(axis=(0, 1, 2)), part.var(axis=(0, 1, 2))
        expected = (part - mean) / np.sqrt(var + 1e-5) * scale + bias
        np.testing.assert_allclose(y[half], expected, rtol=1e-4, atol=1e-4)
    first = x[:2].reshape(-1, x.shape[-1])
    n = first.shape[0]
    np.testing.assert_allclose(
        np.asarray(bn.mean[...]), 0.9 * before_mean + 0.1 * first.mean(0), rtol=1e-5
    )
    np.testing.assert_allclose(
        np.asarray(bn.var[...]), 0.9 * before_var + 0.1 * first.var(0) * n / (n - 1), rtol=1e-4
    )
    with pytest.raises(ValueError, match="ffm_bn_replicas"):
        bn(jnp.asarray(x[:3]))
    model.eval()  # evaluation is the same either way
    ref, _ = load_state_dict(cmx_state, FIXTURE.overrides)
    a = model.ffms[0].channel_emb.norm(jnp.asarray(x))
    b = ref.ffms[0].channel_emb.norm(jnp.asarray(x))
    assert not np.allclose(a, b)  # the running statistics moved in training
    assert np.isfinite(np.asarray(a)).all()


def test_checkpoint_of_cmx_with_a_contradicting_config_is_one_line(cmx_state):
    with pytest.raises(CheckpointError, match="architecture='asanet' contradicts"):
        load_state_dict(cmx_state, {"architecture": "asanet"})
    with pytest.raises(CheckpointError, match="are no MiT variant's"):
        load_state_dict(cmx_state)  # the micro head counts are in no weight's shape
    with pytest.raises(CheckpointError, match=r"embed_dims=\(64, 128, 320, 512\) contradicts"):
        load_state_dict(cmx_state, {**FIXTURE.overrides, "embed_dims": (64, 128, 320, 512)})


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="architecture='unet'"):
        resolve({"architecture": "unet"})
    with pytest.raises(ValueError, match=r"config\.model\.backbone='b9'"):
        resolve({"architecture": "cmx", "backbone": "b9"})
    with pytest.raises(ValueError, match="num_heads"):
        resolve({"architecture": "cmx", "embed_dims": (16, 32, 64, 128)})
    with pytest.raises(ValueError, match="unknown fields \\['sfm'\\]"):
        resolve({"architecture": "cmx", "sfm": True})
    assert resolve({"architecture": "cmx"}).min_input_side == 29


# --- the recipe -------------------------------------------------------------------------

THIRD_PARTY = FIXTURE.path.parent / "third_party"
REPO = FIXTURE.path.parents[2]


def _schedule_of(case: dict):
    """Our schedule for one recorded mmengine case (LinearLR and/or PolyLR)."""
    from asanet_jax.train import optimizer

    by_type = {s["type"]: s for s in case["param_scheduler"]}
    linear, poly = by_type.get("LinearLR"), by_type["PolyLR"]
    return optimizer.warmup_poly_schedule(
        case["base_lr"],
        linear["end"] if linear else 0,
        poly["end"],
        linear["start_factor"] if linear else 1.0,
        poly["power"],
        poly_start=poly["begin"],
        eta_min=poly["eta_min"],
    )


def test_schedules_are_mmengines_to_the_iteration():
    """Against rates computed by mmengine's own chained LinearLR and PolyLR (CMX's
    overlapping pair, mmseg's schedule_80k with eta_min), stepped as its Runner steps them
    (tests/fixtures/third_party/make_cmx_schedule.py)."""
    import json

    recorded = json.loads((THIRD_PARTY / "mmengine_lr_chained.json").read_text())
    for name, case in recorded["cases"].items():
        schedule = _schedule_of(case)
        for step, lr in case["lr"].items():
            got = float(schedule(int(step)))
            assert got == pytest.approx(lr, rel=1e-5, abs=1e-14), (name, step)


def test_cmx_config_gives_the_official_optimiser_and_schedule():
    """configs/cmx.py: AdamW 6e-5, wd 0.01, no layer decay, fp32, batch 8, 80k, decode CE
    only; its schedule is mmengine's for the official config, peaking at iteration 1499
    just under 6e-5."""
    import json

    from asanet_jax.train import optimizer, recipe

    config = recipe.load(f"{REPO}/configs/cmx.py:pie")
    o = config.optim
    assert (o.lr, o.b1, o.b2, o.weight_decay, o.layer_decay) == (6e-5, 0.9, 0.999, 0.01, 1.0)
    assert (config.train.batch_size, config.train.steps, config.model.dtype) == (
        8,
        80_000,
        "float32",
    )
    assert config.model.architecture == "cmx" and config.train.aux_weight == 0.0
    official = json.loads((THIRD_PARTY / "mmengine_lr_chained.json").read_text())
    official = official["cases"]["cmx_official"]
    ours = optimizer.warmup_poly_schedule(
        o.lr, o.warmup_steps, o.total_steps, o.warmup_factor, o.power,
        poly_start=o.poly_start, eta_min=o.eta_min,
    )  # fmt: skip
    for step, lr in official["lr"].items():
        assert float(ours(int(step))) == pytest.approx(lr, rel=1e-5, abs=1e-14), step
    peak = official["peak"]
    assert float(ours(peak["step"])) == pytest.approx(peak["lr"], rel=1e-6) and peak["lr"] < 6e-5
    whu = recipe.load(f"{REPO}/configs/cmx.py:whu")
    assert whu.model.num_classes == 7  # the dataset's, not the official config's 40


def test_parameter_groups_are_the_official_constructors(cmx_state):
    """Every parameter's lr and weight decay against mmengine's own
    DefaultOptimWrapperConstructor on the official model
    (cmx_official_param_groups.json: norm_decay_mult=0, bias_decay_mult=0)."""
    import json

    from asanet_jax.convert.mapping import map_key
    from asanet_jax.convert.official import rules_of
    from asanet_jax.train import optimizer, recipe

    official = json.loads((THIRD_PARTY / "cmx_official_param_groups.json").read_text())
    config = recipe.load(f"{REPO}/configs/cmx.py:pie")
    model, _ = load_state_dict(cmx_state, FIXTURE.overrides)
    params = nnx.state(model, nnx.Param)
    scales, decays = optimizer.parameter_groups(params, config.optim.layer_decay, "cmx")
    flat_s = {".".join(map(str, p)): v for p, v in nnx.to_flat_state(scales)}
    flat_d = {".".join(map(str, p)): v for p, v in nnx.to_flat_state(decays)}
    rules = rules_of(model.config)
    assert (
        official["base_lr"] == config.optim.lr and official["base_wd"] == config.optim.weight_decay
    )
    for name, group in official["params"].items():
        path = map_key(name, rules).flax_path
        lr = config.optim.lr * float(flat_s.pop(path).get_value())
        wd = config.optim.weight_decay * float(bool(flat_d.pop(path).get_value()))
        assert lr == pytest.approx(group["lr"], rel=1e-9), name
        assert wd == pytest.approx(group["weight_decay"], abs=1e-12), name
    assert not flat_s  # every parameter of ours is an official one


# --- ImageNet MiT ----------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "heads"), [("nvlabs", (1, 2, 2, 4)), ("mmseg", (1, 2, 4, 8))])
def test_imagenet_mit_files_reproduce_their_own_forward_in_both_streams(fmt, heads):
    """NVlabs SegFormer's MixVisionTransformer and mmseg's MixVisionTransformer wrote these
    files and their stage outputs (tests/fixtures/third_party/README.md); both streams of a
    CMX initialised from them give those outputs. (mmseg's MiT ties the width to the
    head count, so its file is run with heads (1, 2, 4, 8).)"""
    from asanet_jax.convert import imagenet

    state = read_state_dict(THIRD_PARTY / f"{fmt}_mit_micro.pth")
    io = np.load(THIRD_PARTY / f"{fmt}_mit_micro_io.npz")
    model = segmentor.build(
        {**_micro_fields(), "architecture": "cmx", "num_heads": heads}, rngs=nnx.Rngs(0)
    )
    model.eval()
    report = imagenet.init_from_imagenet(model, state)
    assert report["format"] == fmt and report["streams"] == ["optical", "sar"]
    assert report["skipped"] == [] and report["left_at_init"] == []
    x = nhwc(io["input"])
    for stream in (model.optical, model.sar):
        outs = nnx.jit(lambda m, a: m(a))(stream, x)
        for i, y in enumerate(outs):
            assert rel_l2(y, nhwc(io[f"stage{i}"])) <= OUTPUT_TOL, (fmt, i)


def test_imagenet_mit_of_other_sizes_or_families_is_one_line(abstract_b2):
    from asanet_jax.convert import imagenet

    state = read_state_dict(THIRD_PARTY / "nvlabs_mit_micro.pth")
    b2 = abstract_b2
    with pytest.raises(CheckpointError, match=r"^this MiT \(embed_dims \(16, 32, 64, 128\)"):
        imagenet.init_from_imagenet(b2, state)
    timm = read_state_dict(THIRD_PARTY / "timm_convnextv2_convmlp.pth")
    with pytest.raises(CheckpointError, match=r"^no MiT patch embedding found"):
        imagenet.init_from_imagenet(b2, timm)
    asanet = nnx.eval_shape(lambda: segmentor.build({}, rngs=nnx.Rngs(0)))
    with pytest.raises(CheckpointError, match="looks like a MiT"):
        imagenet.init_from_imagenet(asanet, state)


def test_train_script_trains_cmx_from_imagenet_mit_and_the_model_loads(tmp_path, pie):
    """`scripts/train.py --config configs/cmx.py:pie,runlocal,official_ddp` on a PIE-format
    folder, both streams from the NVlabs MiT file: it trains, evaluates, and its model
    directory loads as a CMX that predicts."""
    import json

    import asanet_jax
    from tests.support import train_runs

    init = f"--config.train.init_from={THIRD_PARTY / 'nvlabs_mit_micro.pth'}"
    out = train_runs.train("cmx.py:pie,runlocal,official_ddp", tmp_path / "run", pie, init)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "final mIoU" in out.stdout
    assert "initialised optical, sar stream(s)" in out.stdout + out.stderr
    meta = json.loads((tmp_path / "run" / "model" / "model.json").read_text())
    assert meta["model"]["architecture"] == "cmx" and meta["model"]["ffm_bn_replicas"] == 2
    model, config, _ = asanet_jax.load(tmp_path / "run" / "model")
    assert isinstance(model, CMX) and config.embed_dims == (16, 32, 64, 128)
    x = np.zeros((1, 64, 64, 3), np.float32)
    assert train_runs.logits(model, x, x).shape == (1, 64, 64, 6)
