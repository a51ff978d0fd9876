"""vFuseNet (two VGG16-BN streams, a fusion conv per stage, an unpooling decoder, FCN
heads), the official recipe of the paper's table: PIE-RGB-SAR 60.62, DDHR-SK 48.87,
WHU-OPT-SAR 38.01 mIoU published.

python scripts/train.py --config configs/vfusenet.py:pie --config.data.manual_dir=/data/PIE-RGB-SAR
python scripts/train.py --config configs/vfusenet.py:ddhr ...
python scripts/train.py --config configs/vfusenet.py:whu ...
python scripts/train.py --config configs/vfusenet.py:pie,runlocal ...   # 4 steps, VGG11
python scripts/train.py --config configs/vfusenet.py:pie,official_ddp ...

The recipe (the official configs/FuseNet/vfusenet_vgg16_2xb4-80k_*, over mmseg's
schedule_80k): SGD lr 0.01, momentum 0.9, weight decay 5e-4 on every parameter, no
warm-up, PolyLR (power 0.9, eta_min 1e-4) over 80k iterations, batch 8, aux loss weight
0.4. The parameters of the decoder stages the official model never uses stay untouched
(optimizer.FROZEN), as PyTorch's SGD leaves a parameter without a gradient. bfloat16
compute (float32 with --config.model.dtype=float32).

`official_ddp` reproduces the official 2-GPU run's per-GPU arithmetic: the loss averaged
per half batch (train.loss_replicas=2) and the fusion and decoder convs' plain
BatchNorms normalising each half on its own (model.plain_bn_replicas=2).
"""

from asanet_jax.train import recipe

DATASETS = {"pie": "pie_rgb_sar", "ddhr": "ddhr_sk", "whu": "whu_opt_sar"}


def get_config(arg: str | None = None):
    arg = recipe.parse_arg(
        arg,
        "configs/vfusenet.py",
        dataset=("pie", tuple(DATASETS)),
        official_ddp=False,
        runlocal=False,
    )
    config = recipe.for_dataset(
        DATASETS[arg.dataset], runlocal=arg.runlocal, architecture="vfusenet"
    )
    if arg.official_ddp:
        config.train.loss_replicas = 2
        config.model.plain_bn_replicas = 2
    return config
