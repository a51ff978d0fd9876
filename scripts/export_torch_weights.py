"""Write a model directory as an official-format mmseg checkpoint.

The program is ``asanet_jax/commands/export.py`` (installed as ``asanet-export``); see its
docstring, or ``--help``.
"""

from asanet_jax import interrupts

interrupts.hold()  # first: a Ctrl-C during the imports below ends cleanly too

from asanet_jax.commands import export

if __name__ == "__main__":
    export.run()
