"""Run with 8 simulated CPU devices (see test_sharding.py): one training step of the
trainer tests' micro ASANet (tests/micro.py) on an FSDP mesh (4 data x 2 fsdp: the batch
split four ways, the big tensors two) and on a single device, and the shardings a
data-parallel mesh of 8 gives the same state; prints a JSON report."""

import json
import os
import sys

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tests/: micro.py
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import ml_collections
import numpy as np

jax.config.update("jax_default_matmul_precision", "highest")

from flax import nnx  # noqa: E402
from micro import TRAINER_MODEL  # noqa: E402

from asanet_jax.data import pipeline  # noqa: E402
from asanet_jax.models import segmentor  # noqa: E402
from asanet_jax.models.config import resolve  # noqa: E402
from asanet_jax.train import optimizer, recipe, sharding, trainer  # noqa: E402


def micro_config():
    config = recipe.demo_config("runlocal")
    config.model.update(TRAINER_MODEL)
    config.model.dropout = 0.0
    config.model.drop_path_rate = 0.0
    return config


def one_step(mesh_shape, devices):
    config = micro_config()
    mesh = sharding.make_mesh(ml_collections.ConfigDict(mesh_shape), devices)

    model_config = resolve(config.model)

    def tx_factory(params):
        return optimizer.make_optimizer(params, config.optim, 100)

    state, tx, _ = trainer.create_state(config, mesh, tx_factory)
    rng = np.random.default_rng(0)
    batch = {
        "optical": rng.standard_normal((8, 64, 64, 3)).astype(np.float32),
        "sar": rng.standard_normal((8, 64, 64, 3)).astype(np.float32),
        "label": rng.integers(0, 6, (8, 64, 64)).astype(np.uint8),
    }
    step = trainer.make_train_step(state, tx, model_config, 0.4, mesh)
    batch = pipeline.global_batch(batch, sharding.batch_sharding(mesh))
    new_state, _, out = step(state.state, state.opt_state, batch)
    flat = {
        "/".join(map(str, p)): v
        for p, v in jax.tree_util.tree_flatten_with_path(new_state)[0]
        if not jax.dtypes.issubdtype(v.dtype, jax.dtypes.prng_key)
    }
    sharded = sorted(k for k, v in flat.items() if v.addressable_shards[0].data.shape != v.shape)
    return {k: np.asarray(v) for k, v in flat.items()}, float(out["loss"]), sharded


def data_parallel_sharded(devices):
    """Leaves that a data=8 mesh would split: the shardings create_state places the
    model's state with, from its abstract shapes (nothing compiled)."""
    mesh = sharding.make_mesh(ml_collections.ConfigDict({"data": 8, "fsdp": 1}), devices)
    abstract = nnx.eval_shape(
        lambda: segmentor.build(resolve(micro_config().model), rngs=nnx.Rngs(0))
    )
    shardings = sharding.tree_shardings(nnx.state(abstract), mesh)
    return [s for s in jax.tree.leaves(shardings) if not s.is_fully_replicated]


sharding.MIN_SHARDED_SIZE = 1024  # the micro model's tensors are small
devices = jax.devices()
single, loss1, _ = one_step({"data": 1, "fsdp": 1}, devices[:1])
fsdp, loss_f, fsdp_sharded = one_step({"data": 4, "fsdp": 2}, devices)
dp_sharded = data_parallel_sharded(devices)
try:
    sharding.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 3}))
    fsdp3_error = None
except ValueError as e:
    fsdp3_error = str(e)


def top(a, b):
    d = {k: float(np.abs(a[k].astype(np.float64) - b[k]).max()) for k in b}
    return sorted(d.items(), key=lambda kv: -kv[1])[:4]


def worst(a, b):
    """Largest element difference, relative to the tensor's scale (at least 1e-3: tensors
    that start at zero, like GRN, hold ~lr x warm-up factor after one step)."""
    return max(
        float(np.abs(a[k].astype(np.float64) - b[k]).max() / max(np.abs(b[k]).max(), 1e-3))
        for k in b
    )


print(
    json.dumps(
        {
            "devices": len(devices),
            "top_fsdp": top(fsdp, single),
            "losses": [loss1, loss_f],
            "fsdp_vs_single": worst(fsdp, single),
            "dp_sharded": len(dp_sharded),
            "fsdp_sharded": fsdp_sharded[:5],
            "fsdp_sharded_count": len(fsdp_sharded),
            "fsdp3_error": fsdp3_error,
        }
    )
)
