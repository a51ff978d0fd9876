"""ASANet on PIE-RGB-SAR: the paper's recipe (78.31 mIoU published).

python scripts/train.py --config configs/pie.py --config.data.manual_dir=/data/PIE-RGB-SAR
python scripts/train.py --config configs/pie.py:runlocal ...   # 4 steps of a small model
"""

from configs import common


def get_config(arg: str | None = None):
    config = common.base_config()
    config.data.name = "pie_rgb_sar"
    config.data.num_classes = 6
    if arg == "official_flips":
        config.data.flip_sar = False  # the official PIE pipeline leaves SAR unflipped
    elif arg == "runlocal":
        common.shrink_for_local_run(config)
    elif arg:
        raise ValueError(
            f"configs/pie.py: unknown variant {arg!r}; expected official_flips or runlocal"
        )
    return config
