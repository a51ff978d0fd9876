"""Label whole optical + SAR GeoTIFF scenes with a trained model: one, or a region's worth.

The program is ``asanet_jax/commands/predict.py`` (installed as ``asanet-predict``); see its
docstring, or ``--help``.
"""

from asanet_jax import interrupts

interrupts.hold()  # first: a Ctrl-C during the imports below ends cleanly too

from asanet_jax.commands import predict

if __name__ == "__main__":
    predict.run()
