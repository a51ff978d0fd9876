"""Build one of the RGB-SAR TFDS datasets without TensorFlow (same result as `tfds build`).

The program is ``asanet_jax/commands/build_dataset.py`` (installed as
``asanet-build-dataset``); see its docstring, or ``--help``.
"""

from asanet_jax import interrupts

interrupts.hold()  # first: a Ctrl-C during the imports below ends cleanly too

from asanet_jax.commands import build_dataset

if __name__ == "__main__":
    build_dataset.run()
