"""Write a model directory as an official-format mmseg checkpoint.

python scripts/export_torch_weights.py --checkpoint ckpt/pie --output asanet_pie.pth
"""

from asanet_jax import cli

cli.hold_interrupts()  # first: a Ctrl-C during the imports below ends cleanly too

import sys

from asanet_jax.convert.cli import export_main

if __name__ == "__main__":
    sys.exit(export_main())
