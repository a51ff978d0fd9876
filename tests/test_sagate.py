"""SA-Gate against the genuine official model (tests/fixtures/golden_sagate_micro, its
checkpoint rebuilt from keys.txt and bn_buffers.npz by the fixture's numpy rule), and its
interface: conversion both ways with the shared-downsample aliases, sizes, the shared
downsample's BatchNorm in training.

Tolerances as for ASANet (docs/design.md): rel-L2 <= 1e-4 per output, 1e-5 relative on
the loss, float32 at highest matmul precision. The gradients are looser
(``golden.SAGATE``): float32 ReLU ties make them ill-conditioned at 1e-3.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import nhwc, rel_l2
from flax import nnx

from asanet_jax.convert import CheckpointError, export_state_dict, read_state_dict
from asanet_jax.convert.official import load_state_dict
from asanet_jax.convert.sagate import aliases
from asanet_jax.models import SAGateNet, count_params, resolve, segmentor, torch_ops
from tests.support import golden
from tests.support.golden import LOSS_TOL, OUTPUT_TOL

FIXTURE = golden.SAGATE
META = golden.json.loads((FIXTURE.path / "meta.json").read_text())


@pytest.fixture(scope="module")
def state():
    """The official micro checkpoint, read from a real .pth file."""
    return read_state_dict(FIXTURE.checkpoint)


@pytest.fixture(scope="module")
def io_grads():
    return golden.load(FIXTURE)


@pytest.mark.parametrize("kernels", ["xla", "cpu"])
def test_outputs_loss_and_gradients_match_official(state, io_grads, kernels):
    """Both inputs (s96x136: sides no power of two), the loss and its parts, and the
    gradient of every parameter, eval mode as recorded."""
    model, _ = load_state_dict(state, {"kernels": kernels})
    io, grads = io_grads
    for name in golden.INPUTS:
        errors = golden.output_errors(model, io, name)
        print(name, kernels, {k: f"{v:.2e}" for k, v in errors.items()})
        assert set(errors) == {"feat0", "feat1", "feat2", "feat3", "decode", "aux", "logits"}
        assert max(errors.values()) <= OUTPUT_TOL, errors
    losses, gradients = golden.loss_and_gradient_errors(model, io, grads, FIXTURE)
    print(kernels, {k: f"{v:.1e}" for k, v in losses.items()})
    assert set(losses) == {"loss.total", "loss.decode.loss_ce", "loss.aux.loss_ce"}
    assert max(losses.values()) <= LOSS_TOL, losses
    # Every parameter once: the 24 hha_downsample aliases name no parameter of their own.
    n_params = sum(
        1 for k in state if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    )
    assert len(gradients) == n_params - sum(
        ".weight" in a or ".bias" in a for a in aliases(model.config)
    )
    worst = max(gradients, key=gradients.get)
    overall = golden.global_gradient_error(gradients, grads)
    print(f"{kernels}: worst gradient {worst}: {gradients[worst]:.2e}; all {overall:.2e}")
    assert gradients[worst] <= FIXTURE.grad_tol
    assert overall <= FIXTURE.global_grad_tol


def test_one_float32_relu_tie_moves_the_gradients_past_the_usual_tolerance(state, io_grads):
    """Why ``golden.SAGATE`` allows looser gradients: one ReLU input of the optical
    stream's layer 1 (image 1, row 24, column 30, channel 190) lies within 1e-5 of the
    kink, in a map whose mean magnitude is 1.8, and many others as close. Put on the other
    side of the kink (its value mirrored, its derivative kept), it alone moves the
    gradients of the 21 parameters upstream of it (the stem, layer 1, the shared
    downsample) by 2e-4 or more each and the largest past GRAD_TOL (5e-4 to 1.3e-3
    measured), and every other gradient by less than 1e-4."""
    from asanet_jax.models import sagate

    model, _ = load_state_dict(state)
    io, grads = io_grads
    at = (1, 24, 30, 190)
    x = jnp.asarray(nhwc(io["s128.input"]))
    stem = model.optical.stem(x[..., :3])
    block, ds = model.optical.layers[0][0], model.downsamples[0]
    y = jax.nn.relu(block.bn1(block.conv1(stem)))
    y = block.bn3(block.conv3(jax.nn.relu(block.bn2(block.conv2(y)))))
    assert abs(float((y + ds(stem))[at])) < 1e-5
    _, plain = golden.raw_gradients(model, io, grads, FIXTURE)

    class Mirrored(sagate.Bottleneck):
        def __call__(self, x, downsample=None):
            y = jax.nn.relu(self.bn1(self.conv1(x)))
            y = self.bn3(self.conv3(jax.nn.relu(self.bn2(self.conv2(y)))))
            pre = y + downsample(x)
            return jax.nn.relu(pre.at[at].add(-2 * jax.lax.stop_gradient(pre[at])))

    block.__class__ = Mirrored
    _, mirrored = golden.raw_gradients(model, io, grads, FIXTURE)
    moved = {k: rel_l2(mirrored[k], plain[k]) for k in plain}
    upstream = {k for k, v in moved.items() if v > 1e-4}
    assert len(upstream) == 21 and min(moved[k] for k in upstream) > 2e-4, moved
    print({k: f"{moved[k]:.1e}" for k in sorted(upstream)})
    assert max(moved.values()) > golden.GRAD_TOL
    assert all(
        k.startswith(("optical.stem", "optical.layers.0", "downsamples.0")) for k in upstream
    )


def test_submodules_match_official(state):
    """Layer by layer, each recorded sub-module output (``dbg.npz``), from the official
    output of the module before it where there is one."""
    model, _ = load_state_dict(state)
    dbg = dict(np.load(FIXTURE.path / "dbg.npz"))
    x = nhwc(dbg["dbg.input"])
    errors = {}

    def g(key):
        ref = dbg[f"dbg.{key}"]
        return nhwc(ref) if ref.ndim == 4 else ref

    def check(key, ours):
        ref = dbg[f"dbg.{key}"]
        ours = np.asarray(ours)
        errors[key] = rel_l2(np.transpose(ours, (0, 3, 1, 2)) if ours.ndim == 4 else ours, ref)

    for tp, stream, bands in (("", model.optical, x[..., :3]), ("hha_", model.sar, x[..., 3:])):
        stem = stream.stem
        y = jax.nn.relu(stem.bn1(stem.conv1(bands)))
        y = stem.conv3(jax.nn.relu(stem.bn2(stem.conv2(y))))
        check(f"backbone.{tp}conv1", y)
        check(f"backbone.{tp}bn1", stem.norm(g(f"backbone.{tp}conv1")))
        check(
            f"backbone.{tp}maxpool", torch_ops.max_pool_3x3_s2(jax.nn.relu(g(f"backbone.{tp}bn1")))
        )
    x_opt, x_sar = g("backbone.maxpool"), g("backbone.hha_maxpool")
    for i in range(4):
        b_opt, b_sar, ds = model.optical.layers[i][0], model.sar.layers[i][0], model.downsamples[i]
        p = f"backbone.layer{i + 1}.0"
        if i < 2:  # the one module, called once per stream
            check(f"{p}.downsample#0", ds(x_opt))
            check(f"{p}.downsample#1", ds(x_sar))
        check(f"{p}:0", b_opt(x_opt, ds))
        check(f"{p}:1", b_sar(x_sar, ds))
        rgb, sar = g(f"{p}:0"), g(f"{p}:1")
        gate, q = model.sagates[i], f"backbone.sagates.{i}"
        for side, fsp, guide, main in (
            ("rgb", gate.fsp_rgb, sar, rgb),
            ("hha", gate.fsp_hha, rgb, sar),
        ):
            pooled = jnp.concatenate([guide, main], axis=-1).mean(axis=(1, 2))
            w = jax.nn.sigmoid(fsp.fc2(jax.nn.relu(fsp.fc1(pooled))))
            check(f"{q}.fsp_{side}.filter", w[:, None, None, :])
            check(f"{q}.fsp_{side}", fsp(guide, main))
        both = jnp.concatenate([g(f"{q}.fsp_rgb"), g(f"{q}.fsp_hha")], axis=-1)
        check(f"{q}.gate_rgb", gate.gate_rgb(both))
        check(f"{q}.gate_hha", gate.gate_hha(both))
        (x_opt, x_sar), merge = gate(rgb, sar)
        check(f"{q}:1", merge)
        # The next layer's inputs, from the official merge.
        x_opt, x_sar = (jax.nn.relu((v + g(f"{q}:1")) / 2) for v in (rgb, sar))
    head, aspp = model.decode_head, model.decode_head.aspp
    last, first = g("backbone.sagates.3:1"), g("backbone.sagates.0:1")
    maps = jnp.concatenate([m(last) for m in aspp.map_convs], axis=-1)
    check("decode_head.aspp.map_bn", aspp.map_bn(maps))
    check(
        "decode_head.aspp.red_conv",
        aspp.red_conv(jax.nn.leaky_relu(g("decode_head.aspp.map_bn"), 0.01)),
    )
    pooled = aspp.global_pooling_conv(last.mean(axis=(1, 2), keepdims=True))
    check("decode_head.aspp.global_pooling_bn", aspp.global_pooling_bn(pooled))
    lrelu_pool = jax.nn.leaky_relu(g("decode_head.aspp.global_pooling_bn"), 0.01)
    check("decode_head.aspp.pool_red_conv", aspp.pool_red_conv(lrelu_pool))
    summed = g("decode_head.aspp.red_conv") + g("decode_head.aspp.pool_red_conv")
    check("decode_head.aspp.red_bn", aspp.red_bn(summed))
    check("decode_head.aspp", aspp(last))
    check("decode_head.c1_bottleneck", head.c1_bottleneck(first))
    up = torch_ops.resize_bilinear(g("decode_head.aspp"), first.shape[1:3])
    y = jnp.concatenate([up, g("decode_head.c1_bottleneck")], axis=-1)
    check("decode_head.last_conv.0", head.last_conv[0](y))
    check("decode_head.last_conv.1", head.last_conv[1](g("decode_head.last_conv.0")))
    check("decode_head.last_conv", head.last_conv[1](head.last_conv[0](y)))
    check("decode_head.conv_seg", head.conv_seg(g("decode_head.last_conv")))
    check("auxiliary_head.convs.0", model.aux_head.convs[0](last))
    check("auxiliary_head.conv_seg", model.aux_head.conv_seg(g("auxiliary_head.convs.0")))
    recorded = {k[4:] for k in dbg if k != "dbg.input"}
    assert recorded == set(errors), sorted(recorded ^ set(errors))[:10]
    worst = max(errors, key=errors.get)
    print(f"{len(errors)} sub-module outputs; worst {worst}: {errors[worst]:.2e}")
    assert errors[worst] <= OUTPUT_TOL, {k: v for k, v in errors.items() if v > OUTPUT_TOL}


def test_export_writes_both_downsample_names_key_for_key_and_bit_for_bit(state):
    """Load then export gives the official checkpoint back in its key order (keys.txt),
    the 24 ``hha_downsample`` aliases included with their twins' values."""
    model, _ = load_state_dict(state)
    exported = export_state_dict(model)
    official_order = [
        line.split("\t")[0] for line in (FIXTURE.path / "keys.txt").read_text().splitlines()
    ]
    assert list(exported) == official_order == list(state)
    assert aliases(model.config) == META["aliases"]
    for key, value in state.items():
        assert exported[key].dtype == np.asarray(value).dtype, key
        np.testing.assert_array_equal(exported[key], value, err_msg=key)


def test_aliases_that_differ_or_a_wrong_architecture_are_one_line(state):
    bad = dict(state)
    key = "backbone.layer2.0.hha_downsample.0.weight"
    bad[key] = np.asarray(bad[key]) + 1.0
    with pytest.raises(CheckpointError, match=r"hha_downsample\.0\.weight' differs from"):
        load_state_dict(bad)
    with pytest.raises(CheckpointError, match="architecture='cmx' contradicts"):
        load_state_dict(state, {"architecture": "cmx"})
    with pytest.raises(CheckpointError, match=r"stem_width=32 contradicts"):
        load_state_dict(state, {"stem_width": 32})


def test_r101_has_the_official_parameter_counts():
    """Built by the genuine code: 130,691,540 with the aux head, 121.25M without; the
    fixture's micro model (one bottleneck per layer) 20,099,092 (meta.json)."""

    def count(**fields):
        build = lambda: segmentor.build({"architecture": "sagate", **fields}, rngs=nnx.Rngs(0))  # noqa: E731
        model = nnx.eval_shape(build)
        assert isinstance(model, SAGateNet)
        return count_params(model)

    assert count() == 130_691_540
    assert count(aux_channels=0) == 121_250_254
    micro = dict(layers=(1, 1, 1, 1), decoder_channels=64, c1_channels=16, aux_channels=32)
    assert count(**micro) == META["param_counts"]["total"]
    assert resolve({"architecture": "sagate", **micro}).depth == 0


def test_shared_downsample_batchnorm_updates_twice_per_step(state):
    """In training the one downsample BatchNorm normalises each stream with that stream's
    statistics and updates its running statistics twice, optical first (computed here
    independently, in numpy)."""
    model, _ = load_state_dict(state)
    model.train()
    rng = np.random.default_rng(0)
    opt = jnp.asarray(rng.normal(0, 1, (2, 64, 64, 3)), jnp.float32)
    sar = jnp.asarray(rng.normal(0, 2, (2, 64, 64, 3)), jnp.float32)
    bn = model.downsamples[0].bn
    r_mean, r_var = np.asarray(bn.mean[...]), np.asarray(bn.var[...])
    # The downsample's conv outputs, with the stems' running statistics as before the step.
    ref, _ = load_state_dict(state)
    ref.train()
    conv = ref.downsamples[0].conv
    a = np.asarray(conv(ref.optical.stem(opt))).reshape(-1, r_mean.size)
    b = np.asarray(conv(ref.sar.stem(sar))).reshape(-1, r_mean.size)
    model.encode(opt, sar)
    for s in (a, b):
        n = s.shape[0]
        r_mean = 0.9 * r_mean + 0.1 * s.mean(0)
        r_var = 0.9 * r_var + 0.1 * s.var(0) * n / (n - 1)
    np.testing.assert_allclose(np.asarray(bn.mean[...]), r_mean, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(bn.var[...]), r_var, rtol=1e-4, atol=1e-6)
    assert int(bn.num_batches_tracked[...]) == 2


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match=r"config.model.depth=34: expected one of"):
        resolve({"architecture": "sagate", "depth": 34})
    with pytest.raises(ValueError, match=r"config.model.layers=\(1, 1\): expected 4 positive"):
        resolve({"architecture": "sagate", "layers": (1, 1)})
    with pytest.raises(ValueError, match=r"config.model.dilations"):
        resolve({"architecture": "sagate", "dilations": (6, 12)})
    with pytest.raises(ValueError, match="unknown fields \\['embed_dims'\\]"):
        resolve({"architecture": "sagate", "embed_dims": (1, 2, 3, 4)})


def test_train_script_trains_sagate_and_the_model_loads(tmp_path, pie):
    """`scripts/train.py --config configs/sagate.py:pie,runlocal,official_ddp` on a
    PIE-format folder: SGD steps, evaluation, and a model directory that loads as a
    SA-Gate whose export is an official state_dict."""
    import asanet_jax
    from tests.support import train_runs

    out = train_runs.train("sagate.py:pie,runlocal,official_ddp", tmp_path / "run", pie)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "final mIoU" in out.stdout
    model, config, _ = asanet_jax.load(tmp_path / "run" / "model")
    assert isinstance(model, SAGateNet) and config.layers == (1, 1, 1, 1)
    assert list(export_state_dict(model))[:2] == [
        "backbone.conv1.0.weight",
        "backbone.conv1.1.weight",
    ]
    x = np.zeros((1, 40, 56, 3), np.float32)
    assert train_runs.logits(model, x, x).shape == (1, 40, 56, 6)
