"""The micro ASANet the evaluation, scene and notebook tests run: small enough to compile
in seconds, with every part of the real architecture."""

from flax import nnx

from asanet_jax.models.asanet import ASANet

MICRO_MODEL = {
    "backbone": "atto",
    "depths": (1, 1, 1, 1),
    "channels": (8, 16, 24, 32),
    "decoder_channels": 16,
    "aux_channels": 8,
}


def micro_model(num_classes: int = 6, seed: int = 0) -> ASANet:
    model = ASANet({**MICRO_MODEL, "num_classes": num_classes}, rngs=nnx.Rngs(seed))
    model.eval()
    return model
