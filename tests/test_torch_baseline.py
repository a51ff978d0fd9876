"""The benchmarks' PyTorch baseline reproduces the official fixture as our model does."""

import torch
from conftest import GOLDEN, rel_l2

from benchmarks.torch_asanet import TorchASANet, loss


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
