"""One device mesh for every scale: `data` x `fsdp` axes over all devices of all hosts.

The batch is split over both axes (every device holds a slice of it). Parameters and
optimiser state are replicated over `data` and, when fsdp > 1, split over `fsdp` along
their largest divisible dimension (small tensors stay replicated). BatchNorm statistics
are computed over the global batch, since jit sees the whole sharded array: SyncBN.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

BATCH_AXES = ("data", "fsdp")
MIN_SHARDED_SIZE = 2**14  # elements; smaller tensors are not worth splitting


def maybe_initialize_distributed(distributed) -> None:
    """Start jax.distributed for multi-process runs: explicit coordinator settings, or the
    environment of a TPU pod / SLURM job (which jax.distributed detects itself)."""
    if jax.distributed.is_initialized():
        return
    if distributed.coordinator_address:
        jax.distributed.initialize(
            coordinator_address=distributed.coordinator_address,
            num_processes=distributed.num_processes,
            process_id=distributed.process_id,
        )
    elif int(os.environ.get("SLURM_NTASKS", "1")) > 1 or os.environ.get("TPU_WORKER_HOSTNAMES"):
        jax.distributed.initialize()


def make_mesh(mesh_config, devices=None) -> jax.sharding.Mesh:
    devices = list(devices if devices is not None else jax.devices())
    fsdp = int(mesh_config.fsdp)
    data = int(mesh_config.data) if mesh_config.data != -1 else len(devices) // max(fsdp, 1)
    if fsdp < 1 or data < 1 or data * fsdp != len(devices):
        raise ValueError(
            f"mesh data={mesh_config.data} x fsdp={mesh_config.fsdp} does not fit the "
            f"{len(devices)} devices; their product must equal the device count (data=-1 fills)"
        )
    # Auto axes: the model code is written for GSPMD propagation, not sharding-in-types.
    return jax.make_mesh(
        (data, fsdp), BATCH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 2, devices=devices
    )


def batch_sharding(mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def leaf_sharding(shape: tuple[int, ...], mesh) -> NamedSharding:
    """FSDP: split the largest dimension divisible by the fsdp size, if the leaf is big."""
    fsdp = mesh.shape["fsdp"]
    if fsdp == 1 or int(np.prod(shape)) < MIN_SHARDED_SIZE:
        return replicated(mesh)
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % fsdp == 0:
            spec = [None] * len(shape)
            spec[dim] = "fsdp"
            return NamedSharding(mesh, PartitionSpec(*spec))
    return replicated(mesh)


def tree_shardings(abstract_tree, mesh):
    """Shardings for every array leaf of an abstract pytree (e.g. from jax.eval_shape)."""
    return jax.tree.map(lambda x: leaf_sharding(tuple(x.shape), mesh), abstract_tree)
