"""Evaluate a checkpoint on a dataset split with the official metrics.

The program is ``asanet_jax/commands/eval.py`` (installed as ``asanet-eval``); see its
docstring, or ``--help``.
"""

from asanet_jax import interrupts

interrupts.hold()  # first: a Ctrl-C during the imports below ends cleanly too

from asanet_jax.commands import eval

if __name__ == "__main__":
    eval.run()
