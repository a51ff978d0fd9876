"""ASANet on WHU-OPT-SAR (56.11 mIoU published): 7 classes, 512x512 crops."""

from configs import common


def get_config(arg: str | None = None):
    config = common.base_config()
    config.data.name = "whu_opt_sar"
    config.data.num_classes = 7
    if arg == "runlocal":
        common.shrink_for_local_run(config)
    elif arg:
        raise ValueError(f"configs/whu.py: unknown variant {arg!r}; expected runlocal")
    return config
