"""ASANet on your own dataset (an `rgb_sar_folder`), with the official recipe.

The class count, band selection, SAR scaling and statistics all come from the dataset,
so one command trains on it (the dataset is built first when it is missing):

python scripts/train.py --config configs/folder.py --config.data.manual_dir=/data/my_fields
python scripts/train.py --config configs/folder.py:runlocal ...   # 4 steps of a small model

An already built dataset is named by its config instead of its folder:
python scripts/train.py --config configs/folder.py --config.data.tfds_config=my_fields
"""

from asanet_jax.train import recipe


def get_config(arg: str | None = None):
    arg = recipe.parse_arg(arg, "configs/folder.py", runlocal=False)
    return recipe.for_dataset("rgb_sar_folder", runlocal=arg.runlocal)
