"""Convert official ASANet / ImageNet ConvNeXt V2 weights into a model directory.

    python scripts/convert_torch_weights.py --torch_checkpoint asanet_pie.pth --output ckpt/pie
    python scripts/convert_torch_weights.py --kind imagenet \
        --torch_checkpoint convnext-v2-tiny_in1k.pth --output ckpt/init --set num_classes=6
"""

from asanet_jax import cli

cli.hold_interrupts()  # first: a Ctrl-C during the imports below ends cleanly too

import sys

from asanet_jax.convert.cli import convert_main

if __name__ == "__main__":
    sys.exit(convert_main())
