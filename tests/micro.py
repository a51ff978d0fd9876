"""The micro ASANet the evaluation, scene and prediction tests run: small enough to compile
in seconds, with every part of the real architecture; and the smaller one the trainer's
own tests train."""

from flax import nnx

from asanet_jax.models.asanet import ASANet
from configs.ablations import VARIANTS

MICRO_MODEL = {
    "backbone": "atto",
    "depths": (1, 1, 1, 1),
    "channels": (8, 16, 24, 32),
    "decoder_channels": 16,
    "aux_channels": 8,
}
# What the trainer's own tests train (resume, interrupts, damaged checkpoints, meshes,
# processes: the trainer, whatever the model): both streams, BatchNorm, drop path, the
# decoder and the aux head, but the streams summed rather than fused by the CFMs and the
# SFM (the paper's ablation, configs/ablations.py:sum_no_sfm). Those modules are half of
# the micro model's train step to compile (9 of 19 s on 2 cores, at batch 2) and of its
# initialisation. The full architecture (CFMs, SFM) trains in the PIE script test
# (MICRO_MODEL), the notebook's demo run and the accelerator check's smoke run.
TRAINER_MODEL = {**MICRO_MODEL, **VARIANTS["sum_no_sfm"]}


def micro_model(num_classes: int = 6, seed: int = 0) -> ASANet:
    model = ASANet({**MICRO_MODEL, "num_classes": num_classes}, rngs=nnx.Rngs(seed))
    model.eval()
    return model
