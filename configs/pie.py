"""ASANet on PIE-RGB-SAR: the paper's recipe (78.31 mIoU published).

python scripts/train.py --config configs/pie.py --config.data.manual_dir=/data/PIE-RGB-SAR
python scripts/train.py --config configs/pie.py:runlocal ...   # 4 steps of a small model
python scripts/train.py --config configs/pie.py:official_flips # SAR left unflipped, as officially
python scripts/train.py --config configs/pie.py:official_flips,runlocal ...  # both

official_flips sets config.data.augment.flip_sar=False (the official PIE pipeline flips
optical and label but not SAR).
"""

from asanet_jax.train import recipe


def get_config(arg: str | None = None):
    arg = recipe.parse_arg(arg, "configs/pie.py", official_flips=False, runlocal=False)
    config = recipe.for_dataset("pie_rgb_sar", runlocal=arg.runlocal)
    if arg.official_flips:
        config.data.augment.flip_sar = False  # the official PIE pipeline leaves SAR unflipped
    return config
