"""ASANet on PIE-RGB-SAR: the paper's recipe (78.31 mIoU published).

python scripts/train.py --config configs/pie.py --config.data.manual_dir=/data/PIE-RGB-SAR
python scripts/train.py --config configs/pie.py:runlocal ...   # 4 steps of a small model
python scripts/train.py --config configs/pie.py:official_flips # SAR left unflipped, as officially
"""

from asanet_jax.train import recipe


def get_config(arg: str | None = None):
    official_flips = arg == "official_flips"
    config = recipe.for_dataset("pie_rgb_sar", None if official_flips else arg, "configs/pie.py")
    if official_flips:
        config.data.flip_sar = False  # the official PIE pipeline leaves SAR unflipped
    return config
