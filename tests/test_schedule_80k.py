"""SA-Gate's and vFuseNet's recipe, mmseg's ``schedule_80k``: SGD with momentum and weight
decay on every parameter, PolyLR with eta_min, no warm-up; against mmengine's recorded
rates and torch's own SGD."""

import json
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx

from asanet_jax.models import segmentor
from asanet_jax.train import optimizer, recipe

REPO = pathlib.Path(__file__).resolve().parents[1]
RECORDED = json.loads(
    (REPO / "tests" / "fixtures" / "third_party" / "mmengine_lr_chained.json").read_text()
)["cases"]


def _schedule(o, total_steps=None):
    return optimizer.warmup_poly_schedule(
        o.lr, o.warmup_steps, total_steps or o.total_steps, o.warmup_factor, o.power,
        poly_start=o.poly_start, eta_min=o.eta_min,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("name", "aux"), [("sagate", 0.2), ("vfusenet", 0.4)], ids=["sagate", "vfusenet"]
)
def test_configs_give_schedule_80k_to_the_iteration(name, aux):
    config = recipe.load(f"{REPO}/configs/{name}.py:pie")
    o = config.optim
    assert (o.name, o.lr, o.momentum, o.weight_decay) == ("sgd", 0.01, 0.9, 5e-4)
    assert o.decay_norms_and_biases and o.layer_decay == 1.0 and o.warmup_steps == 0
    assert (config.train.batch_size, config.train.steps) == (8, 80_000)
    assert config.model.architecture == name and config.train.aux_weight == aux
    assert config.model.dtype == "bfloat16"  # for the official fp16 AMP
    schedule = _schedule(o)
    for step, lr in RECORDED["mmseg_schedule_80k"]["lr"].items():
        assert float(schedule(int(step))) == pytest.approx(lr, rel=1e-5, abs=1e-14), step
    ddp = recipe.load(f"{REPO}/configs/{name}.py:whu,official_ddp")
    assert ddp.train.loss_replicas == 2 and ddp.model.num_classes == 7
    assert ddp.model.get("plain_bn_replicas", 2) == 2  # vFuseNet's plain BatchNorms


def test_sgd_steps_are_torchs_sgd():
    """Five steps of our SGD (momentum 0.9, weight decay on a matrix and a bias alike)
    against torch.optim.SGD driven by mmengine's recorded rates for a 12-step PolyLR."""
    config = recipe.load(f"{REPO}/configs/sagate.py:pie")
    o = config.optim
    case = RECORDED["mmseg_schedule_short_t12"]
    rng = np.random.default_rng(0)
    w0 = {
        "w": rng.normal(size=(3, 4)).astype(np.float32),
        "b": rng.normal(size=4).astype(np.float32),
    }
    grads = [
        {k: rng.normal(size=v.shape).astype(np.float32) for k, v in w0.items()} for _ in range(5)
    ]

    params = nnx.State({k: nnx.Param(jnp.asarray(v)) for k, v in w0.items()})
    o.total_steps = case["total_iters"]
    tx, _ = optimizer.make_optimizer(params, o, case["total_iters"], "sagate")
    state = tx.init(params)
    for g in grads:
        g = nnx.State({k: nnx.Param(jnp.asarray(v)) for k, v in g.items()})
        updates, state = tx.update(g, state, params)
        params = optax.apply_updates(params, updates)

    tw = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in w0.items()}
    sgd = torch.optim.SGD(list(tw.values()), lr=0.01, momentum=0.9, weight_decay=5e-4)
    for step, g in enumerate(grads):
        for group in sgd.param_groups:
            group["lr"] = case["lr"][str(step)]
        for k, p in tw.items():
            p.grad = torch.from_numpy(g[k])
        sgd.step()
    for k, p in tw.items():
        np.testing.assert_allclose(
            np.asarray(params[k].get_value()), p.detach().numpy(), rtol=1e-6, atol=1e-7
        )


def test_vfusenets_unused_parameters_never_change():
    """Even given gradients, the parameters of the decoder stages the official model
    never uses keep their values (PyTorch's SGD skips a parameter without a gradient,
    weight decay included); every other parameter moves."""
    config = recipe.load(f"{REPO}/configs/vfusenet.py:pie,runlocal")
    model = segmentor.build(config.model, rngs=nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    tx, _ = optimizer.make_optimizer(params, config.optim, config.optim.total_steps, "vfusenet")
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    moved = {
        ".".join(map(str, p)): bool(np.any(np.asarray(a.get_value()) != np.asarray(b.get_value())))
        for (p, a), (_, b) in zip(nnx.to_flat_state(params), nnx.to_flat_state(new), strict=True)
    }
    dormant = {p for p in moved if optimizer.frozen(p, "vfusenet")}
    assert dormant and all(
        re.match(r"(optical|sar)\.stages\.[234]|fuse_convs\.[234]|decoder\.[234]", p)
        for p in dormant
    )
    assert not any(moved[p] for p in dormant)
    assert all(moved[p] for p in moved if p not in dormant)
    with pytest.raises(ValueError, match=r"config.optim.name='adam'"):
        config.optim.name = "adam"
        optimizer.make_optimizer(params, config.optim, 10, "vfusenet")
