"""ASANet on WHU-OPT-SAR (56.11 mIoU published): 7 classes, 512x512 crops."""

from asanet_jax.train import recipe


def get_config(arg: str | None = None):
    arg = recipe.parse_arg(arg, "configs/whu.py", runlocal=False)
    return recipe.for_dataset("whu_opt_sar", runlocal=arg.runlocal)
