"""Train ASANet: `python scripts/train.py --config configs/pie.py [--workdir runs/pie]`.

The program is ``asanet_jax/commands/train.py`` (installed as ``asanet-train``); see its
docstring, or ``--help``.
"""

from asanet_jax import interrupts

interrupts.hold()  # first: a Ctrl-C during the imports below ends cleanly too

from asanet_jax.commands import train

if __name__ == "__main__":
    train.run()
