"""Convert official ASANet / ImageNet ConvNeXt V2 weights into a model directory.

The program is ``asanet_jax/commands/convert.py`` (installed as ``asanet-convert``); see its
docstring, or ``--help``.
"""

from asanet_jax import interrupts

interrupts.hold()  # first: a Ctrl-C during the imports below ends cleanly too

from asanet_jax.commands import convert

if __name__ == "__main__":
    convert.run()
