"""ASANet on DDHR-SK (94.48 mIoU published): 5 classes, no flips as officially."""

from asanet_jax.train import recipe


def get_config(arg: str | None = None):
    arg = recipe.parse_arg(arg, "configs/ddhr.py", runlocal=False)
    return recipe.for_dataset("ddhr_sk", runlocal=arg.runlocal)
