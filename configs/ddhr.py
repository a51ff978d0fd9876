"""ASANet on DDHR-SK (94.48 mIoU published): 5 classes, no flips as officially."""

from configs import common


def get_config(arg: str | None = None):
    config = common.base_config()
    config.data.name = "ddhr_sk"
    config.data.num_classes = 5
    if arg == "runlocal":
        common.shrink_for_local_run(config)
    elif arg:
        raise ValueError(f"configs/ddhr.py: unknown variant {arg!r}; expected runlocal")
    return config
