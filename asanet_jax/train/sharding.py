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

from asanet_jax.multihost import BATCH_AXES

MIN_SHARDED_SIZE = 2**14  # elements; smaller tensors are not worth splitting


PLATFORMS = ("cpu", "gpu", "tpu")


def available_devices(platform: str | None = None) -> list:
    """All devices of all processes, checked against a requested platform.

    Raises:
      ValueError: JAX cannot start its backend, or it runs on another platform than
        `platform`; the message names what was found. Nothing falls back silently.
    """
    try:
        devices = jax.devices()
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"JAX could not start its backend (JAX_PLATFORMS="
            f"{os.environ.get('JAX_PLATFORMS', '')!r}): {first}"
        ) from None
    if platform is not None:
        if platform not in PLATFORMS:
            raise ValueError(f"config.mesh.platform={platform!r}: expected one of {PLATFORMS}")
        found = devices[0].platform
        if found != platform:
            raise ValueError(
                f"config.mesh.platform={platform!r} but JAX {jax.__version__} found "
                f"{len(devices)} {found} device(s) ({devices[0].device_kind}); install the "
                "matching JAX build (pip install 'asanet-jax[cuda12]', '[cuda13]' or '[tpu]')"
            )
    return devices


def make_mesh(mesh_config, devices=None) -> jax.sharding.Mesh:
    if devices is None:
        devices = available_devices(mesh_config.get("platform"))
    devices = list(devices)
    fsdp = int(mesh_config.fsdp)
    data = int(mesh_config.data) if mesh_config.data != -1 else len(devices) // max(fsdp, 1)
    if fsdp < 1 or data < 1 or data * fsdp != len(devices):
        kind = f"{devices[0].platform} " if devices else ""
        raise ValueError(
            f"config.mesh data={mesh_config.data} x fsdp={mesh_config.fsdp} does not fit the "
            f"{len(devices)} {kind}device(s) found; their product must equal the device "
            "count (data=-1 takes what fsdp leaves, and fsdp must divide the count)"
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
