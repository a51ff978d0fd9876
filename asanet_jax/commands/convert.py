"""Convert official weights into a model directory: ``asanet-convert`` and
``scripts/convert_torch_weights.py`` (see ``asanet_jax.convert.cli``)."""

from asanet_jax import interrupts

interrupts.hold()  # first: a Ctrl-C during the imports below ends cleanly too

import sys

from asanet_jax.convert.cli import convert_main


def run() -> None:
    """The entry point; exits."""
    sys.exit(convert_main())


if __name__ == "__main__":
    run()
