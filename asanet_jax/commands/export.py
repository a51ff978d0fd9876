"""Write a model directory as an official-format checkpoint: ``asanet-export`` and
``scripts/export_torch_weights.py`` (see ``asanet_jax.convert.cli``)."""

from asanet_jax import interrupts

interrupts.hold()  # first: a Ctrl-C during the imports below ends cleanly too

import sys

from asanet_jax.convert.cli import export_main


def run() -> None:
    """The entry point; exits."""
    sys.exit(export_main())


if __name__ == "__main__":
    run()
