"""Work shared by several processes (hosts): starting ``jax.distributed``, this host's
own mesh, and the gatherings after which the processes go on, or stop, together.

Training (``train/``) and prediction (``predict/``) both use it. The rule for every
gathering: each process reaches it whether it failed or not, so that none waits forever
in a collective for a process that has stopped; then each raises its own failure, or
an error naming the processes that failed. With one process every call is free.
"""

from __future__ import annotations

import os

import jax
import numpy as np

# The device mesh's axes: the batch is split over both (training's `train/sharding.py`).
BATCH_AXES = ("data", "fsdp")


def initialize(distributed) -> None:
    """Start jax.distributed for multi-process runs: explicit coordinator settings
    (`distributed.coordinator_address`, `.num_processes`, `.process_id`), or the
    environment of a TPU pod / SLURM job (which jax.distributed detects itself).
    `distributed.heartbeat_timeout_s`, where set, replaces jax.distributed's default."""
    if jax.distributed.is_initialized():
        return
    timeouts = {}
    heartbeat = getattr(distributed, "heartbeat_timeout_s", None)
    if heartbeat is not None:
        if heartbeat <= 0:
            raise ValueError(
                f"distributed.heartbeat_timeout_s is {heartbeat}; expected a positive "
                "number of seconds"
            )
        timeouts["heartbeat_timeout_seconds"] = int(heartbeat)
    if distributed.coordinator_address:
        jax.distributed.initialize(
            coordinator_address=distributed.coordinator_address,
            num_processes=distributed.num_processes,
            process_id=distributed.process_id,
            **timeouts,
        )
    elif int(os.environ.get("SLURM_NTASKS", "1")) > 1 or os.environ.get("TPU_WORKER_HOSTNAMES"):
        jax.distributed.initialize(**timeouts)


def local_mesh() -> jax.sharding.Mesh:
    """This process's own devices on the `data` axis: for work each host does alone, such
    as labelling its share of the scenes."""
    devices = jax.local_devices()
    return jax.make_mesh(
        (len(devices), 1), BATCH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 2, devices=devices
    )


def sync(name: str) -> None:
    """Wait until every process is here (`name` must be the same on all)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def process_zero_failed(failed: bool) -> bool:
    """Whether process 0 failed at a step only it does (every process learns it)."""
    if jax.process_count() == 1:
        return failed
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.int32(failed)))


def gather(tree):
    """The whole of `tree` on every process (shards of other hosts included), as numpy."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def agree(failure: BaseException | None, digest: bytes = b"", done=(), count: int = 0) -> list[int]:
    """Gather every process's (failed?, `digest`, indices `done` out of `count`).

    Raises this process's `failure`; else a ValueError naming the processes that failed;
    else one saying the processes disagree, when a non-empty `digest` (at most 8 bytes:
    a digest of what each was asked to do) differs between them. Returns the indices any
    process marked done.
    """
    if jax.process_count() == 1:
        if failure is not None:
            raise failure
        return sorted(done)
    from jax.experimental import multihost_utils

    if len(digest) > 8:
        raise ValueError(f"a digest of {len(digest)} bytes: at most 8 are gathered")
    row = np.zeros(1 + 8 + count, np.uint8)
    row[0] = failure is not None
    row[1 : 1 + len(digest)] = np.frombuffer(digest, np.uint8)
    row[9 + np.asarray(list(done), int)] = 1
    rows = multihost_utils.process_allgather(row, tiled=False)
    if failure is not None:
        raise failure
    failed = [i for i in range(len(rows)) if rows[i, 0]]
    if failed:
        raise ValueError(f"process(es) {failed} failed; their messages say why")
    if digest and not (rows[:, 1:9] == rows[0, 1:9]).all():
        raise ValueError(
            "the processes were given different scene lists, outputs, settings or models; "
            "every process must run the same command on the same files"
        )
    return [i for i in range(count) if rows[:, 9 + i].any()]
