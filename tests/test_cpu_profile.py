"""benchmarks/cpu_profile.py puts each op of a real JAX program and a real PyTorch step in
the forward pass, the backward pass or the rest."""

import collections

import jax
import jax.numpy as jnp
import torch

from benchmarks import cpu_profile


def test_jax_ops_are_split_into_forward_and_backward_by_their_source():
    def loss(w, x):
        return jnp.sum(jnp.tanh(x @ w))

    w, x = jnp.ones((8, 4)), jnp.ones((16, 8))
    text = jax.jit(jax.value_and_grad(loss)).lower(w, x).compile().as_text()
    sources = cpu_profile.hlo_sources(text)
    phases = collections.defaultdict(set)
    for name, source in sources.items():
        phases[cpu_profile.jax_phase(source)].add(cpu_profile.hlo_kind(name))
    # x @ w and tanh are forward; the gradient's product of x with the cotangent is a
    # backward dot (XLA folds the transpose into it, and keeps the transpose's source).
    assert {"dot_general", "tanh"} <= {s.rsplit("/", 1)[-1] for s in sources.values()}
    assert "dot" in phases["backward"], dict(phases)
    assert "ynn_fusion" in phases["forward"] or "dot_general" in phases["forward"]
    assert all(
        "transpose(" in s for s in sources.values() if cpu_profile.jax_phase(s) == "backward"
    )


def test_torch_ops_are_split_by_the_autograd_node_or_optimiser_they_run_under():
    model = torch.nn.Linear(8, 4)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(16, 8)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        model(x).tanh().sum().backward()
        opt.step()
    phases = collections.defaultdict(set)
    for e in prof.events():
        phases[cpu_profile.torch_phase(e)].add(e.name)
    assert "aten::addmm" in phases["forward"], dict(phases)
    assert "aten::mm" in phases["backward"] and "aten::addmm" not in phases["backward"]
    assert any(name.startswith("Optimizer.step") for name in phases["rest"]), dict(phases)
