"""Train ASANet: `python scripts/train.py --config configs/pie.py [--workdir runs/pie]`.

Any config field can be overridden: `--config.optim.lr=2e-4 --config.mesh.fsdp=2`.
A variant follows the file name: `--config configs/ablations.py:optical_only`.
The work directory defaults to runs/<config name>[_<variant>]. Re-running with the same
work directory resumes from its last checkpoint.
"""

from __future__ import annotations

from asanet_jax import interrupts

interrupts.hold()  # first: a Ctrl-C during the imports below ends cleanly too

import pathlib
import sys

from absl import flags, logging
from ml_collections import config_flags

from asanet_jax import errors
from asanet_jax.commands import config_files
from asanet_jax.train import trainer

config_flags.DEFINE_config_file("config", None, "A config file (configs/*.py[:variant]).")
flags.DEFINE_string("workdir", None, "Checkpoints, logs and metrics; default runs/<config>.")
flags.mark_flags_as_required(["config"])


def default_workdir() -> pathlib.Path:
    """runs/<config file name>, with the variant appended: runs/ablations_optical_only."""
    path, _, variant = flags.FLAGS["config"].config_filename.partition(":")
    name = pathlib.Path(path).stem + (f"_{variant.replace(',', '_')}" if variant else "")
    return pathlib.Path("runs") / name


def main(argv) -> int:
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every file operation at INFO
    workdir = pathlib.Path(flags.FLAGS.workdir or default_workdir())
    print(f"work directory: {workdir}")
    result = trainer.train(flags.FLAGS.config, workdir)
    print(
        f"final mIoU {result['mIoU']:.2f}  OA {result['OA']:.2f}  Kappa {result['Kappa']:.2f}"
        f"  mF1 {result['mF1']:.2f}  ({workdir / 'metrics.json'})"
    )
    return 0


def run() -> None:
    """The entry point (``asanet-train``, ``scripts/train.py``); exits."""
    sys.argv = config_files.resolve_argv(sys.argv)
    errors.run_absl(main, __doc__)


if __name__ == "__main__":
    run()
