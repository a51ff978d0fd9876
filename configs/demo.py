"""`make demo`: a small ASANet trained on the built-in synthetic_rgb_sar on a CPU in minutes."""

from configs import common


def get_config(arg: str | None = None):
    config = common.base_config()
    config.data.name = "synthetic_rgb_sar"
    config.data.tfds_config = "default"
    config.data.num_classes = 6
    config.data.eval_batch_size = 16
    config.model.backbone = "atto"
    config.model.decoder_channels = 64
    config.model.aux_channels = 32
    config.model.drop_path_rate = 0.0
    config.model.dtype = "float32"  # bfloat16 is slower than float32 on XLA:CPU
    config.optim.lr = 1e-3
    config.optim.warmup_steps = 50
    config.train.steps = 600
    config.train.batch_size = 8
    config.train.log_every = 25
    config.train.eval_every = 300
    config.train.checkpoint_every = 300
    config.train.keep_checkpoints = 2
    if arg == "runlocal":
        common.shrink_for_local_run(config)
        config.data.tfds_config = "tiny"
    elif arg:
        raise ValueError(f"configs/demo.py: unknown variant {arg!r}; expected runlocal")
    return config
