"""Write a model directory as an official-format mmseg checkpoint.

python scripts/export_torch_weights.py --checkpoint ckpt/pie --output asanet_pie.pth
"""

import sys

from asanet_jax.convert.cli import export_main

if __name__ == "__main__":
    sys.exit(export_main())
