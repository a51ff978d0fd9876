"""SA-Gate (two ResNet-101 streams, an SA-Gate after every layer, ASPP head, FCN aux head),
the official recipe of the paper's table: PIE-RGB-SAR 73.84, DDHR-SK 90.89, WHU-OPT-SAR
53.17 mIoU published.

python scripts/train.py --config configs/sagate.py:pie --config.data.manual_dir=/data/PIE-RGB-SAR
python scripts/train.py --config configs/sagate.py:ddhr ...
python scripts/train.py --config configs/sagate.py:whu ...
python scripts/train.py --config configs/sagate.py:pie,runlocal ...   # 4 steps of a small SA-Gate
python scripts/train.py --config configs/sagate.py:pie,official_ddp ...

The recipe (the official configs/SA-Gate/sagate_r101_2xb4-amp-80k_*, over mmseg's
schedule_80k): SGD lr 0.01, momentum 0.9, weight decay 5e-4 on every parameter, no
warm-up, PolyLR (power 0.9, eta_min 1e-4) over 80k iterations, batch 8, aux loss weight
0.2. The official runs use fp16 AMP; bfloat16 stands in for it here (float32 with
--config.model.dtype=float32).

Every BatchNorm of the official model is SyncBN, so a batch's statistics are the global
batch's here too; `official_ddp` only averages the loss per half batch, as the official
2-GPU run does (train.loss_replicas=2).
"""

from asanet_jax.train import recipe

DATASETS = {"pie": "pie_rgb_sar", "ddhr": "ddhr_sk", "whu": "whu_opt_sar"}


def get_config(arg: str | None = None):
    arg = recipe.parse_arg(
        arg,
        "configs/sagate.py",
        dataset=("pie", tuple(DATASETS)),
        official_ddp=False,
        runlocal=False,
    )
    config = recipe.for_dataset(DATASETS[arg.dataset], runlocal=arg.runlocal, architecture="sagate")
    if arg.official_ddp:
        config.train.loss_replicas = 2
    return config
