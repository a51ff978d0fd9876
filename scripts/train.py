"""Train ASANet: `python scripts/train.py --config configs/pie.py --workdir runs/pie`.

Any config field can be overridden: `--config.optim.lr=2e-4 --config.mesh.fsdp=2`.
A variant follows the file name: `--config configs/ablations.py:rgb_only`.
Re-running with the same --workdir resumes from its last checkpoint.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from asanet_jax.data import io
from asanet_jax.train import trainer

config_flags.DEFINE_config_file("config", None, "A config file (configs/*.py[:variant]).")
flags.DEFINE_string("workdir", None, "Where checkpoints, logs and metrics go.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv) -> int:
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every file operation at INFO
    config = flags.FLAGS.config
    try:
        result = trainer.train(config, flags.FLAGS.workdir)
    except (trainer.TrainingError, io.DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"final mIoU {result['mIoU']:.2f}  OA {result['OA']:.2f}  Kappa {result['Kappa']:.2f}"
        f"  mF1 {result['mF1']:.2f}  ({flags.FLAGS.workdir}/metrics.json)"
    )
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
