"""The benchmarks' PyTorch baseline reproduces the official fixture as our model does."""

import numpy as np
import pytest
import torch
from conftest import GOLDEN, rel_l2

from benchmarks import torch_cmx
from benchmarks.torch_asanet import TorchASANet, loss
from tests.support import golden


def _model():
    model = TorchASANet(
        depths=(1, 1, 2, 1), channels=(16, 32, 64, 128), decoder_channels=32, aux_channels=16
    )
    state = torch.load(GOLDEN / "checkpoint.pth", weights_only=True)["state_dict"]
    model.load_state_dict(state, strict=True)
    return model.eval()


def test_baseline_outputs_match_official(golden_io):
    model = _model()
    for name in ("s128", "s96x136"):
        with torch.no_grad():
            out = model(torch.from_numpy(golden_io[f"{name}.input"]))
        for ours, ref in (("decode", "decode"), ("aux", "aux"), ("logits", "logits")):
            assert rel_l2(out[ours].numpy(), golden_io[f"{name}.{ref}"]) <= 1e-4, (name, ours)
        for i in range(4):
            assert rel_l2(out["features"][i].numpy(), golden_io[f"{name}.feat{i}"]) <= 1e-4


def test_baseline_loss_and_gradients_match_official(golden_io, golden_grads):
    model = _model()
    total = loss(
        model(torch.from_numpy(golden_io["s128.input"])),
        torch.from_numpy(golden_grads["labels"]).long(),
    )
    total.backward()
    assert (
        abs(total.item() - float(golden_grads["loss.total"])) / float(golden_grads["loss.total"])
        <= 1e-5
    )
    grads = dict(model.named_parameters())
    worst = max(rel_l2(grads[k].grad.numpy(), golden_grads[k]) for k in grads)
    assert worst <= 1e-3
    assert len(grads) == len(
        [k for k in golden_grads if not k.startswith("loss") and k != "labels"]
    )


@pytest.fixture(scope="module")
def cmx_golden():
    """(io, grads) of the official CMX fixture."""
    return golden.load(golden.CMX)


def _cmx_model():
    model = torch_cmx.TorchCMX(**torch_cmx.MICRO)
    state = torch.load(golden.CMX.checkpoint, weights_only=True)["state_dict"]
    model.load_state_dict(state, strict=True)
    return model.eval()


def test_cmx_baseline_outputs_match_official(cmx_golden):
    cmx_io, _ = cmx_golden
    model = _cmx_model()
    for name in ("s128", "s96x136"):
        with torch.no_grad():
            out = model(torch.from_numpy(cmx_io[f"{name}.input"]))
        refs = {f"feat{i}": out["features"][i] for i in range(4)}
        refs.update(decode=out["decode"], logits=out["logits"])
        for key, ours in refs.items():
            ref = cmx_io[f"{name}.{key}"]
            assert ours.shape == ref.shape, (name, key)
            assert rel_l2(ours.numpy(), ref) <= 1e-4, (name, key)


def test_cmx_baseline_loss_and_gradients_match_official(cmx_golden):
    cmx_io, cmx_grads = cmx_golden
    model = _cmx_model()
    labels = torch.from_numpy(cmx_grads["labels"]).long()
    total = torch_cmx.loss(model(torch.from_numpy(cmx_io["s128.input"])), labels)
    total.backward()
    for key in ("loss.total", "loss.decode.loss_ce"):  # decode CE is the whole loss
        ref = float(cmx_grads[key])
        assert abs(total.item() - ref) / ref <= 1e-5, key
    params = dict(model.named_parameters())
    recorded = golden.reference_gradients(cmx_grads)
    assert set(params) == set(recorded)
    for name, p in params.items():
        grad = p.grad.numpy()
        # The whole gradient, or a sample at the recorded indices and the recorded norm.
        assert golden.gradient_error(grad, recorded[name]) <= 1e-3, name
        l2 = float(cmx_grads[f"l2.{name}"])
        assert abs(np.linalg.norm(grad.astype(np.float64)) - l2) / l2 <= 1e-3, name
