"""vFuseNet against the genuine official model (tests/fixtures/golden_vfusenet_micro, its
checkpoint rebuilt from keys.txt and bn_buffers.npz by the fixture's numpy rule), and its
interface: the pooling indices and their tie rule, conversion both ways, sizes, inputs of
any size, the parameters no official step trains, per-replica BatchNorm.

Tolerances as for ASANet (docs/design.md): rel-L2 <= 1e-4 per output, 1e-5 relative on
the loss, <= 1e-3 per gradient tensor, float32 at highest matmul precision.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import nhwc, rel_l2
from flax import nnx

from asanet_jax.convert import export_state_dict, read_state_dict
from asanet_jax.convert.official import load_state_dict
from asanet_jax.models import VFuseNet, count_params, resolve, segmentor, torch_ops
from asanet_jax.models.vfusenet import DORMANT
from tests.support import golden, ties
from tests.support.golden import GRAD_TOL, LOSS_TOL, OUTPUT_TOL

FIXTURE = golden.VFUSENET
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
    """The five official decoder outputs (the three unused ones through
    ``official_features``), both heads, the loss and its parts, and every parameter's
    gradient: none, exactly, for those the official model gives none. Where a pooling
    window's two largest values lie within float32 rounding of each other, the pixel the
    official run kept is found and kept (at most ``ties.MAX_TIES``; ``tests/support/ties.py``)."""
    model, _ = load_state_dict(state, {"kernels": kernels})
    io, grads = io_grads
    report = golden.resolved_report(model, io, grads, FIXTURE)
    errors, losses, gradients = report["outputs"]["s128"], report["losses"], report["gradients"]
    print(kernels, {k: f"{v:.2e}" for k, v in errors.items()}, "ties", report["gradient_ties"])
    assert set(errors) == {"feat0", "feat1", "feat2", "feat3", "feat4", "decode", "aux", "logits"}
    assert max(errors.values()) <= OUTPUT_TOL, errors
    # Pooling windows within float32 rounding of a tie, reversed (tests/support/ties.py).
    used = report["gradient_ties"]
    assert len(used) <= ties.MAX_TIES and all(t.margin <= ties.MARGIN for t in used)
    assert set(losses) == {"loss.total", "loss.decode.loss_ce", "loss.aux.loss_ce"}
    assert max(losses.values()) <= LOSS_TOL, losses
    unused = set(META["params_without_grad"])
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    assert len(gradients) == sum(1 for k in state if not k.endswith(buffers))
    assert unused and all(gradients[k] == 0.0 for k in unused)
    trained = {k: v for k, v in gradients.items() if k not in unused}
    worst = max(trained, key=trained.get)
    print(f"{kernels}: worst gradient {worst}: {trained[worst]:.2e}")
    assert trained[worst] <= GRAD_TOL
    # The unused parameters are exactly those DORMANT names (our paths).
    from asanet_jax.convert.mapping import map_key
    from asanet_jax.convert.official import rules_of

    ours = {map_key(k, rules_of(model.config)).flax_path for k in unused}
    params = [".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))]
    dormant = {p for p in params if any(re.fullmatch(d, p) for d in DORMANT)}
    assert dormant == ours


def test_pooling_keeps_the_official_indices_and_unpooling_rebuilds_the_official_map(state):
    """The optical stream's recorded stage outputs, max-pool values AND indices (after a
    ReLU, where ties are common), the fusion and the unpooled maps, from ``dbg.npz``."""
    model, _ = load_state_dict(state)
    dbg = dict(np.load(FIXTURE.path / "dbg.npz"))
    x = nhwc(dbg["dbg.input"])
    g = lambda k: nhwc(dbg[f"dbg.{k}"])  # noqa: E731
    errors = {}
    x_opt, x_sar = x[..., :3], x[..., 3:]
    idx = {}
    for i, j in ((0, 0), (1, 2)):
        for module, stream, inp in (
            ("backbone", model.optical, x_opt),
            ("backbone2", model.sar, x_sar),
        ):
            p = f"backbone.{module}"
            y = stream.stages[i][0](inp)
            errors[f"{p}.features.{j}"] = rel_l2(y, g(f"{p}.features.{j}"))
            pooled, local = torch_ops.max_pool_2x2_with_indices(g(f"{p}.features.{j}"))
            errors[f"{p}.pool#{i}:0"] = rel_l2(pooled, g(f"{p}.pool#{i}:0"))
            np.testing.assert_array_equal(torch_ops.flat_indices(local), g(f"{p}.pool#{i}:1"))
            if module == "backbone":
                idx[i] = local
        x_opt, x_sar = g(f"backbone.backbone.pool#{i}:0"), g(f"backbone.backbone2.pool#{i}:0")
        fuse = model.fuse_convs[i](jnp.concatenate([x_opt, x_sar], axis=-1))
        errors[f"fuse_convs.{i}"] = rel_l2(fuse, g(f"backbone.fuse_convs.{i}"))
        enc = x_opt + x_sar + g(f"backbone.fuse_convs.{i}")
        unpooled = torch_ops.max_unpool_2x2(enc, idx[i])
        errors[f"unpool#{4 - i}"] = rel_l2(unpooled, g(f"backbone.unpool#{4 - i}"))
    ties = np.asarray(g("backbone.backbone.features.0") == 0).mean()
    assert ties > 0.3  # most windows after the ReLU hold several zeros
    print({k: f"{v:.1e}" for k, v in errors.items()})
    assert max(errors.values()) <= OUTPUT_TOL, errors


def test_export_writes_the_official_state_dict_key_for_key_and_bit_for_bit(state):
    model, _ = load_state_dict(state)
    exported = export_state_dict(model)
    official_order = [
        line.split("\t")[0] for line in (FIXTURE.path / "keys.txt").read_text().splitlines()
    ]
    assert list(exported) == official_order == list(state)
    for key, value in state.items():
        assert exported[key].dtype == np.asarray(value).dtype, key
        np.testing.assert_array_equal(exported[key], value, err_msg=key)


def test_vgg16_has_the_official_parameter_count():
    def count(**fields):
        build = lambda: segmentor.build({"architecture": "vfusenet", **fields}, rngs=nnx.Rngs(0))  # noqa: E731
        model = nnx.eval_shape(build)
        assert isinstance(model, VFuseNet)
        return count_params(model)

    assert count() == 55_169_548
    assert count(depth=11) == META["param_counts"]["total"]


def test_any_input_size_is_padded_to_32_and_cropped_never_resized(state):
    """96x136 (which the official code fails on) gives outputs at the input's size that
    equal the outputs of the input zero-padded to 96x160, cropped."""
    model, _ = load_state_dict(state)
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (1, 97, 133, 6)).astype(np.float32)  # odd sides too
    forward = nnx.jit(lambda m, a, b: m(a, b))
    out = forward(model, x[..., :3], x[..., 3:])
    assert out["logits"].shape == (1, 97, 133, 6)
    assert out["aux_logits"].shape == (1, 49, 67, 6)
    padded = np.pad(x, ((0, 0), (0, 31), (0, 27), (0, 0)))
    ref = forward(model, padded[..., :3], padded[..., 3:])
    np.testing.assert_array_equal(out["logits"], ref["logits"][:, :97, :133])
    np.testing.assert_array_equal(out["aux_logits"], ref["aux_logits"][:, :49, :67])
    with pytest.raises(ValueError, match="multiples of 32"):
        model.official_features(x[..., :3], x[..., 3:])


def test_plain_batchnorm_per_replica(state):
    """plain_bn_replicas=2 splits the fusion and decoder BatchNorms' batch in two in
    training (those the official code builds as plain BatchNorm2d), and only those."""
    model, _ = load_state_dict(state, {"plain_bn_replicas": 2})
    assert model.fuse_convs[0].bn.replicas == 2 and model.decoder[1][0].bn.replicas == 2
    assert model.optical.stages[0][0].bn.replicas == 1
    assert model.decode_head.convs[0].bn.replicas == 1
    model.train()
    with pytest.raises(ValueError, match="replicas"):
        model(jnp.zeros((3, 32, 32, 3)), jnp.zeros((3, 32, 32, 3)))


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match=r"config.model.depth=18: expected one of"):
        resolve({"architecture": "vfusenet", "depth": 18})
    with pytest.raises(ValueError, match=r"config.model.stage_blocks"):
        resolve({"architecture": "vfusenet", "stage_blocks": (1, 1, 1)})
    with pytest.raises(ValueError, match="plain_bn_replicas"):
        resolve({"architecture": "vfusenet", "plain_bn_replicas": 0})


def test_max_pool_and_unpool_are_torchs_on_ties():
    """Against torch's own MaxPool2d(2, return_indices=True) / MaxUnpool2d(2), on maps full
    of ties, values, indices and the gradient's route."""
    rng = np.random.default_rng(1)
    x = np.maximum(rng.integers(-2, 2, (2, 8, 10, 3)), 0).astype(np.float32)
    tx = torch.from_numpy(np.transpose(x, (0, 3, 1, 2)).copy()).requires_grad_(True)
    pooled, indices = torch.nn.functional.max_pool2d(tx, 2, return_indices=True)
    ours, local = torch_ops.max_pool_2x2_with_indices(jnp.asarray(x))
    np.testing.assert_array_equal(ours, nhwc(pooled.detach().numpy()))
    np.testing.assert_array_equal(torch_ops.flat_indices(local), nhwc(indices.numpy()))
    w = rng.normal(0, 1, pooled.shape).astype(np.float32)
    (pooled * torch.from_numpy(w)).sum().backward()
    grad = jax.grad(lambda a: (torch_ops.max_pool_2x2_with_indices(a)[0] * nhwc(w)).sum())(
        jnp.asarray(x)
    )
    np.testing.assert_array_equal(grad, nhwc(tx.grad.numpy()))
    v = rng.normal(0, 1, pooled.shape).astype(np.float32)
    unpooled = torch.nn.functional.max_unpool2d(torch.from_numpy(v), indices, 2)
    np.testing.assert_array_equal(torch_ops.max_unpool_2x2(nhwc(v), local), nhwc(unpooled.numpy()))
    # ResNet's stem pool, MaxPool2d(3, 2, 1), odd sides included.
    y = rng.normal(0, 1, (1, 9, 12, 2)).astype(np.float32)
    ref = torch.nn.functional.max_pool2d(
        torch.from_numpy(np.transpose(y, (0, 3, 1, 2)).copy()), 3, 2, 1
    )
    np.testing.assert_array_equal(torch_ops.max_pool_3x3_s2(jnp.asarray(y)), nhwc(ref.numpy()))


def test_train_script_trains_vfusenet_and_the_model_loads(tmp_path, pie):
    """`scripts/train.py --config configs/vfusenet.py:pie,runlocal,official_ddp` on a
    PIE-format folder: SGD steps with the unused parameters frozen, the plain BatchNorms
    per replica, evaluation, and a model directory that loads as a vFuseNet."""
    import json

    import asanet_jax
    from tests.support import train_runs

    out = train_runs.train("vfusenet.py:pie,runlocal,official_ddp", tmp_path / "run", pie)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "final mIoU" in out.stdout
    meta = json.loads((tmp_path / "run" / "model" / "model.json").read_text())
    assert meta["model"]["architecture"] == "vfusenet" and meta["model"]["plain_bn_replicas"] == 2
    model, config, _ = asanet_jax.load(tmp_path / "run" / "model")
    assert isinstance(model, VFuseNet) and config.depth == 11
    # As the trainer initialises (train.seed 42, jitted): the unused stages never moved.
    initial = jax.jit(lambda: nnx.state(segmentor.build(config, rngs=nnx.Rngs(42)), nnx.Param))()

    def flat(state):
        return {
            ".".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(state)
        }

    trained, initial = flat(nnx.state(model, nnx.Param)), flat(initial)
    for path in (
        "optical.stages.3.0.conv.kernel",
        "decoder.4.1.bn.scale",
        "fuse_convs.2.conv.kernel",
    ):
        np.testing.assert_array_equal(trained[path], initial[path], err_msg=path)
    assert not np.array_equal(
        trained["decoder.1.0.conv.kernel"], initial["decoder.1.0.conv.kernel"]
    )
    x = np.zeros((1, 40, 56, 3), np.float32)
    assert train_runs.logits(model, x, x).shape == (1, 40, 56, 6)
