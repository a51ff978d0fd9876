"""ASANet on WHU-OPT-SAR (56.11 mIoU published): 7 classes, 512x512 crops."""

from asanet_jax.train import recipe


def get_config(arg: str | None = None):
    return recipe.for_dataset("whu_opt_sar", arg, "configs/whu.py")
