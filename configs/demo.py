"""`make demo`: a small ASANet trained on the built-in synthetic_rgb_sar on a CPU in minutes.

Variant `runlocal`: 4 steps on the tiny synthetic dataset.
"""

from asanet_jax.train import recipe


def get_config(arg: str | None = None):
    arg = recipe.parse_arg(arg, "configs/demo.py", runlocal=False)
    return recipe.demo_config(runlocal=arg.runlocal)
