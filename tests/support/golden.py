"""Our model against the genuine official model's recorded outputs and gradients.

`tests/fixtures/golden_micro` was made by the official PyTorch code (its README says how).
These functions measure; `tests/test_parity.py` asserts the tolerances on CPU and
`benchmarks/device_check.py` reports them on an accelerator. All in NHWC; run them under
``jax.default_matmul_precision('highest')`` (TF32 or bf16 passes otherwise).
"""

from __future__ import annotations

import pathlib

import jax
import numpy as np
from flax import nnx

GOLDEN = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "golden_micro"
INPUTS = ("s128", "s96x136")
OUTPUT_TOL = 1e-4  # rel-L2 per recorded output
LOSS_TOL = 1e-5  # relative, the loss and each part
GRAD_TOL = 1e-3  # rel-L2 per parameter gradient


def nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1)))


def rel_l2(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))


def load() -> tuple[dict, dict]:
    """(io, grads): the recorded inputs and outputs, and the loss and gradients."""
    return dict(np.load(GOLDEN / "io.npz")), dict(np.load(GOLDEN / "grads.npz"))


def output_errors(model, io: dict, name: str) -> dict[str, float]:
    """rel-L2 of the 4 fused maps, decode, aux and final logits for recorded input `name`."""
    x = nhwc(io[f"{name}.input"])
    out = nnx.jit(lambda m, a, b: m(a, b))(model, x[..., :3], x[..., 3:])
    errors = {f"feat{i}": rel_l2(out["features"][i], nhwc(io[f"{name}.feat{i}"])) for i in range(4)}
    for ours, ref in (("decode_logits", "decode"), ("aux_logits", "aux"), ("logits", "logits")):
        expected = nhwc(io[f"{name}.{ref}"])
        if out[ours].shape != expected.shape:
            raise AssertionError(f"{ours}: shape {out[ours].shape}, official {expected.shape}")
        errors[ref] = rel_l2(out[ours], expected)
    return errors


def loss_and_gradient_errors(model, io: dict, grads: dict) -> tuple[dict, dict]:
    """(relative error of the loss and its parts, rel-L2 of every parameter's gradient),
    the latter keyed by official name; eval mode, as recorded."""
    from asanet_jax.convert.mapping import map_key, segmentor_rules
    from asanet_jax.losses import segmentation_loss

    x = nhwc(io["s128.input"])

    def loss_fn(m):
        return segmentation_loss(m(x[..., :3], x[..., 3:]), grads["labels"])

    (loss, parts), ours = nnx.jit(nnx.value_and_grad(loss_fn, has_aux=True))(model)
    # mmseg records each loss already multiplied by its loss_weight (0.4 for aux).
    loss_errors = {
        key: abs(float(value) - float(grads[key])) / abs(float(grads[key]))
        for value, key in (
            (loss, "loss.total"),
            (parts["decode"], "loss.decode.loss_ce"),
            (0.4 * parts["aux"], "loss.aux.loss_ce"),
        )
    }
    flat = {".".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(ours)}
    rules = segmentor_rules(model.config.streams)
    grad_errors = {}
    for key, ref in grads.items():
        if key == "labels" or key.startswith("loss."):
            continue
        mapped = map_key(key, rules)
        grad_errors[key] = rel_l2(mapped.leaf.to_torch(flat.pop(mapped.flax_path)), ref)
    if flat:  # every parameter has a reference gradient; nothing is left unchecked
        raise AssertionError(f"parameters without an official gradient: {sorted(flat)[:5]}")
    return loss_errors, grad_errors


def bfloat16_agreement(model32, model16, io: dict, name: str) -> dict[str, float]:
    """Argmax agreement of bfloat16 compute with float32, overall and on the pixels whose
    float32 top-two logits differ by more than a tenth of the logits' std (the fixture's
    random weights leave ~14% of pixels near-tied, which bfloat16 rounding must flip)."""
    forward = nnx.jit(lambda m, a, b: m(a, b)["logits"])
    x = nhwc(io[f"{name}.input"])
    ref = np.asarray(forward(model32, x[..., :3], x[..., 3:]))
    ours = np.asarray(forward(model16, x[..., :3], x[..., 3:]))
    agree = ours.argmax(-1) == ref.argmax(-1)
    top2 = np.sort(ref, axis=-1)[..., -2:]
    confident = (top2[..., 1] - top2[..., 0]) > 0.1 * ref.std()
    return {
        "overall": float(agree.mean()),
        "confident": float(agree[confident].mean()),
        "confident_share": float(confident.mean()),
        "logits_rel_l2": rel_l2(ours, ref),
    }


def full_report(kernels: str = "auto") -> dict:
    """Every measurement above for the official fixture checkpoint, with pass flags."""
    from asanet_jax.convert import load_torch_checkpoint

    io, grads = load()
    checkpoint = GOLDEN / "checkpoint.pth"
    with jax.default_matmul_precision("highest"):
        model, _ = load_torch_checkpoint(checkpoint, {"kernels": kernels})
        outputs = {name: output_errors(model, io, name) for name in INPUTS}
        losses, gradients = loss_and_gradient_errors(model, io, grads)
        model16, _ = load_torch_checkpoint(checkpoint, {"kernels": kernels, "dtype": "bfloat16"})
        bf16 = {name: bfloat16_agreement(model, model16, io, name) for name in INPUTS}
    worst_grad = max(gradients, key=gradients.get)
    return {
        "kernels": kernels,
        "outputs": outputs,
        "worst_output": max(v for errs in outputs.values() for v in errs.values()),
        "losses": losses,
        "worst_gradient": {"name": worst_grad, "rel_l2": gradients[worst_grad]},
        "gradients": gradients,
        "bfloat16": bf16,
        "passed": {
            "outputs": all(v <= OUTPUT_TOL for errs in outputs.values() for v in errs.values()),
            "losses": all(v <= LOSS_TOL for v in losses.values()),
            "gradients": gradients[worst_grad] <= GRAD_TOL,
            "bfloat16": all(
                b["confident"] >= 0.999 and b["overall"] >= 0.97 and b["logits_rel_l2"] <= 0.05
                for b in bf16.values()
            ),
        },
    }
