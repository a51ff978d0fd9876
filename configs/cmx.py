"""CMX (MiT-B2 streams, FRM + FFM, all-MLP decoder), the official recipe of the paper's
table: PIE-RGB-SAR 77.10, DDHR-SK 94.32, WHU-OPT-SAR 55.68 mIoU published.

python scripts/train.py --config configs/cmx.py:pie --config.data.manual_dir=/data/PIE-RGB-SAR
python scripts/train.py --config configs/cmx.py:ddhr ...
python scripts/train.py --config configs/cmx.py:whu ...
python scripts/train.py --config configs/cmx.py:pie,runlocal ...   # 4 steps of a small CMX
python scripts/train.py --config configs/cmx.py:pie,official_ddp ...

The recipe (the official configs/cmx/cmx_mit-b2_2xb4-80k_*): AdamW lr 6e-5, betas (0.9,
0.999), weight decay 0.01 (none on norms and biases), float32, batch 8, 80k iterations,
decode cross-entropy only; LinearLR warm-up over iterations 0-1500 chained with PolyLR
(power 1) from iteration 1000, so the rate peaks just under 6e-5. Both streams start from
ImageNet MiT-B2 weights with --config.train.init_from=mit_b2.pth (SegFormer's release).

The class count is the dataset's: the official WHU config says num_classes=40 for its 7
classes. `official_ddp` reproduces the official 2-GPU run's per-GPU arithmetic: the loss
averaged per half batch (train.loss_replicas=2) and the FFMs' BatchNorms normalising each
half on its own (model.ffm_bn_replicas=2).
"""

from asanet_jax.train import recipe

DATASETS = {"pie": "pie_rgb_sar", "ddhr": "ddhr_sk", "whu": "whu_opt_sar"}


def get_config(arg: str | None = None):
    arg = recipe.parse_arg(
        arg,
        "configs/cmx.py",
        dataset=("pie", tuple(DATASETS)),
        official_ddp=False,
        runlocal=False,
    )
    config = recipe.for_dataset(DATASETS[arg.dataset], runlocal=arg.runlocal, architecture="cmx")
    if arg.official_ddp:
        config.train.loss_replicas = 2
        config.model.ffm_bn_replicas = 2
    return config
