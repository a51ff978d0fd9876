"""One process of a localhost jax.distributed run, or the single-process reference.

    python tests/distributed_check.py process <id> <port> <workdir> <data_dir>
    python tests/distributed_check.py single <workdir> <data_dir>

Each of the two processes owns one CPU device; the reference owns two in one process.
All train the trainer tests' micro model (tests/micro.py) for two steps with the same
config (see test_distributed.py).
"""

import os
import sys

mode = sys.argv[1]
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + (
    " --xla_force_host_platform_device_count=" + ("1" if mode == "process" else "2")
)
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.config.update("jax_default_matmul_precision", "highest")

from test_training import micro_config  # noqa: E402

from asanet_jax.train import trainer  # noqa: E402

if mode == "process":
    process_id, port, workdir, data_dir = int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    config = micro_config(data_dir, steps=2, checkpoint_every=2, eval_every=2)
    config.distributed.coordinator_address = f"localhost:{port}"
    config.distributed.num_processes = 2
    config.distributed.process_id = process_id
    # Two processes compiling on a loaded 2-core machine can starve the coordination
    # service past jax's 100 s heartbeat window without either having died.
    config.distributed.heartbeat_timeout_s = 3600
else:
    workdir, data_dir = sys.argv[2], sys.argv[3]
    config = micro_config(data_dir, steps=2, checkpoint_every=2, eval_every=2)
config.model.dropout = 0.0  # dropout masks depend on the device layout of the RNG stream
config.model.drop_path_rate = 0.0
result = trainer.train(config, workdir)
print("devices", jax.device_count(), "processes", jax.process_count(), "mIoU", result["mIoU"])
