"""The training loop: sharded state, jitted step, evaluation, checkpoints, resume, logging.

The work directory's layout and lock are described in `workdir.py`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from asanet_jax import checkpointing, files, interrupts, metrics, multihost
from asanet_jax.convert import imagenet
from asanet_jax.data import build, pipeline, transforms
from asanet_jax.labels import IGNORE
from asanet_jax.losses import segmentation_loss
from asanet_jax.models import segmentor
from asanet_jax.models.config import resolve
from asanet_jax.models.segmentor import WEIGHTS
from asanet_jax.predict.predictor import logits, stream_inputs
from asanet_jax.train import checkpoints, optimizer, sharding
from asanet_jax.train import workdir as workdirs

log = logging.getLogger(__name__)


class TrainingError(ValueError):
    """The run cannot start or went wrong (diverged, refused to overwrite, work directory
    in use): a user-facing error, reported in one line by the scripts."""


@dataclasses.dataclass
class TrainState:
    graphdef: object
    eval_graphdef: object
    state: nnx.State  # parameters, BatchNorm statistics, RNG streams
    opt_state: optax.OptState


def create_state(config, mesh, tx_factory) -> tuple[TrainState, object, optax.Schedule]:
    """Model and optimiser state, created directly with their shardings on the mesh."""
    model_config = resolve(config.model)
    seed = config.train.seed

    def make():
        return segmentor.build(model_config, rngs=nnx.Rngs(seed))

    abstract = nnx.eval_shape(make)
    abstract.train()
    graphdef, abstract_state = nnx.split(abstract)
    abstract.eval()
    eval_graphdef, _ = nnx.split(abstract)
    state_shardings = sharding.tree_shardings(abstract_state, mesh)
    if config.train.init_from:
        model = make()
        imagenet.init_from(model, config.train.init_from, log=log.info)
        state = jax.device_put(nnx.state(model), state_shardings)
    else:
        state = jax.jit(lambda: nnx.state(make()), out_shardings=state_shardings)()
    params = nnx.state(nnx.merge(graphdef, state), nnx.Param)
    tx, schedule = tx_factory(params)
    opt_shardings = sharding.tree_shardings(jax.eval_shape(tx.init, params), mesh)
    opt_state = jax.jit(tx.init, out_shardings=opt_shardings)(params)
    return TrainState(graphdef, eval_graphdef, state, opt_state), tx, schedule


def make_train_step(
    train_state: TrainState, tx, model_config, aux_weight: float, mesh, loss_replicas: int = 1
):
    """The jitted step (state, opt_state, batch) -> (state, opt_state, metrics); explicit
    shardings in and out, so every call reuses one compilation; state buffers donated.
    ``loss_replicas`` > 1 averages the loss as the official multi-GPU runs do (see
    ``losses.segmentation_loss``).

    Metrics: the loss and its parts, and the global L2 norms of the gradients and of the
    parameters after the update (fetched at log steps only).
    """
    graphdef = train_state.graphdef

    def step(state, opt_state, batch):
        model = nnx.merge(graphdef, state)

        def loss_fn(m):
            out = m(*stream_inputs(model_config, batch["optical"], batch["sar"]))
            return segmentation_loss(
                out, batch["label"].astype(jnp.int32), aux_weight, loss_replicas
            )

        (loss, parts), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        params = nnx.state(model, nnx.Param)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        nnx.update(model, params)
        norms = {"grad_norm": global_norm(grads), "param_norm": global_norm(params)}
        return nnx.state(model), opt_state, {"loss": loss, **parts, **norms}

    shardings = (
        jax.tree.map(lambda x: x.sharding, train_state.state),
        jax.tree.map(lambda x: x.sharding, train_state.opt_state),
    )
    batch = {k: sharding.batch_sharding(mesh) for k in ("optical", "sar", "label")}
    return jax.jit(
        step,
        in_shardings=(*shardings, batch),
        out_shardings=(*shardings, sharding.replicated(mesh)),
        donate_argnums=(0, 1),
    )


# The jitted steps of this process's earlier runs, by everything they are built from
# (``program_key``): a second run of the same model, optimiser and mesh in one process (a
# resumed run in a notebook, runs over other data or seeds) reuses them instead of
# tracing them and loading or compiling their programs again.
_PROGRAMS: dict = {}
_MAX_PROGRAMS = 8


def program_key(kind: str, train_state: TrainState, model_config, mesh, config) -> tuple:
    """What a ``kind`` ('train' or 'eval') step is built from: the model's graph, the
    shapes, dtypes and shardings of its state and optimiser state, the model config,
    the mesh, and for 'train' the optimiser's settings and the loss weights."""

    def layout(tree):
        leaves, treedef = jax.tree.flatten(tree)
        return treedef, tuple((x.shape, x.dtype, x.sharding) for x in leaves)

    if kind == "eval":
        return ("eval", train_state.eval_graphdef, layout(train_state.state), model_config, mesh)
    return (
        "train",
        train_state.graphdef,
        layout(train_state.state),
        layout(train_state.opt_state),
        model_config,
        mesh,
        config.optim.to_json_best_effort(sort_keys=True),
        float(config.train.aux_weight),
        int(config.train.loss_replicas),
    )


def reused_program(key: tuple, build):
    """``build()``, or what it returned for ``key`` before in this process."""
    if key not in _PROGRAMS:
        while len(_PROGRAMS) >= _MAX_PROGRAMS:
            _PROGRAMS.pop(next(iter(_PROGRAMS)))  # the oldest
        _PROGRAMS[key] = build()
    return _PROGRAMS[key]


def global_norm(tree) -> jax.Array:
    """The L2 norm of all leaves, scaled by the largest magnitude first: a zero-padded
    crop can give stem gradients of 1e19, whose squares overflow float32 (optax's
    global_norm reports inf there).

    The leaves too small to be sharded (``sharding.MIN_SHARDED_SIZE``) are joined into one
    vector first. Each reduction is a kernel of its own on XLA:CPU, and compiling about
    300 of them twice per tree (the peak, then the sum) took a third of a micro model's
    train-step compilation; the larger leaves keep their own reductions, so that an FSDP
    mesh never gathers a sharded tensor for a metric.
    """
    leaves = [jnp.asarray(x, jnp.float32) for x in jax.tree.leaves(tree)]
    small = [x.ravel() for x in leaves if x.size < sharding.MIN_SHARDED_SIZE]
    parts = [x for x in leaves if x.size >= sharding.MIN_SHARDED_SIZE]
    if small:
        parts.append(jnp.concatenate(small))
    peak = jnp.max(jnp.stack([jnp.max(jnp.abs(x)) for x in parts]))
    scale = jnp.where(peak > 0, peak, 1.0)
    return scale * jnp.sqrt(sum(jnp.sum(jnp.square(x / scale)) for x in parts))


def make_eval_step(train_state: TrainState, mesh):
    """(state, confusion, batch) -> confusion with this batch's pixels added."""
    graphdef = train_state.eval_graphdef

    def step(state, confusion, batch):
        pred = jnp.argmax(logits(graphdef, state, batch["optical"], batch["sar"]), axis=-1)
        return metrics.confusion_update(confusion, pred, batch["label"])

    state_shardings = jax.tree.map(lambda x: x.sharding, train_state.state)
    batch = {k: sharding.batch_sharding(mesh) for k in ("optical", "sar", "label")}
    return jax.jit(
        step,
        in_shardings=(state_shardings, sharding.replicated(mesh), batch),
        out_shardings=sharding.replicated(mesh),
        donate_argnums=(1,),
    )


def evaluate_split(train_state, eval_step, source, num_classes, batch_size, mesh) -> dict:
    """Whole-image evaluation of a split, sharded over the mesh during training; one
    confusion matrix over all hosts' shards (``evaluation.evaluate`` is the standalone
    evaluation with sliding windows and TTA)."""
    confusion = jax.device_put(
        np.zeros((num_classes, num_classes), np.int32), sharding.replicated(mesh)
    )
    local = pipeline.local_batch_size(batch_size, jax.process_count())
    batches = pipeline.eval_dataset(source, local)
    steps = -(-len(source) // batch_size)  # every host runs the same number of steps
    it = iter(batches)
    for _ in range(steps):
        batch = next(it, None)
        batch = _pad_eval_batch(batch, local, source)
        confusion = eval_step(
            train_state.state,
            confusion,
            pipeline.global_batch(batch, sharding.batch_sharding(mesh)),
        )
    return metrics.summarize(np.asarray(jax.device_get(confusion)), source.spec.classes)


def _pad_eval_batch(batch, size, source):
    """Pad a short (or missing) last batch to `size` with ignore-labelled blanks, so every
    host contributes an equally shaped slice of the global batch."""
    spec = source.spec
    if batch is None:
        record = transforms.eval_example(source.records[0], spec)
        batch = {k: np.zeros((0, *np.shape(v)), np.asarray(v).dtype) for k, v in record.items()}
    n = batch["label"].shape[0]
    if n == size:
        return batch
    out = {}
    for k in ("optical", "sar", "label"):
        fill = IGNORE if k == "label" else 0
        pad = np.full((size - n, *batch[k].shape[1:]), fill, batch[k].dtype)
        out[k] = np.concatenate([batch[k], pad])
    return out


def check_settings(config: ml_collections.ConfigDict, mesh) -> None:
    """Refuse settings that cannot run, before anything is written.

    Raises:
      ValueError: naming the config field, its value and what was expected.
    """
    t = config.train
    for field in ("steps", "batch_size", "log_every", "eval_every", "checkpoint_every"):
        if int(t[field]) < 1:
            raise ValueError(f"config.train.{field}={t[field]!r}: expected a positive integer")
    if int(t.keep_checkpoints) < 1:
        raise ValueError(f"config.train.keep_checkpoints={t.keep_checkpoints!r}: expected >= 1")
    if int(t.loss_replicas) < 1 or int(t.batch_size) % int(t.loss_replicas):
        raise ValueError(
            f"config.train.loss_replicas={t.loss_replicas!r}: expected a positive divisor of "
            f"config.train.batch_size={t.batch_size}"
        )
    for field in ("ffm_bn_replicas", "plain_bn_replicas"):  # CMX's, vFuseNet's
        bn_replicas = config.model.get(field, 1)
        if int(bn_replicas) < 1 or int(t.batch_size) % int(bn_replicas):
            raise ValueError(
                f"config.model.{field}={bn_replicas!r}: expected a positive divisor of "
                f"config.train.batch_size={t.batch_size}"
            )
    for field, value in config.optim.items():
        if isinstance(value, float) and not np.isfinite(value):
            raise ValueError(f"config.optim.{field}={value!r}: expected a finite number")
    poly_start = config.optim.get("poly_start")
    if poly_start is not None and not 0 <= int(poly_start) < int(config.optim.total_steps):
        raise ValueError(
            f"config.optim.poly_start={poly_start!r}: expected a step in [0, "
            f"config.optim.total_steps={config.optim.total_steps}); the poly decay would "
            "never begin"
        )
    if not float(config.optim.lr) > 0:
        raise ValueError(f"config.optim.lr={config.optim.lr!r}: expected a positive rate")
    devices = mesh.devices.size
    for field, value in (
        ("train.batch_size", t.batch_size),
        ("data.eval_batch_size", config.data.eval_batch_size),
    ):
        if int(value) < 1 or int(value) % devices:
            raise ValueError(
                f"config.{field}={value!r}: expected a positive multiple of the {devices} "
                "devices of the mesh (the batch is split over all of them)"
            )


def prepare_workdir(workdir: pathlib.Path, config, overwrite: bool) -> None:
    """Refuse a finished run unless `overwrite` (which removes only what a run wrote),
    then write config.json. Called with the work directory locked."""
    if workdirs.is_finished(workdir):
        if not overwrite:
            raise TrainingError(
                f"{workdir} holds a finished run; choose another --workdir or pass "
                "--config.train.overwrite=True to replace it"
            )
        if jax.process_index() == 0:
            removed = workdirs.clear_finished_run(workdir)
            log.info("--config.train.overwrite: removed %s from %s", ", ".join(removed), workdir)
    multihost.sync("workdir checked")
    if jax.process_index() == 0:
        files.write_text(workdir / workdirs.CONFIG, config.to_json_best_effort(indent=2) + "\n")


def train(config: ml_collections.ConfigDict, workdir, stop_after: int | None = None) -> dict:
    """Train per `config` in `workdir`, resuming from its last checkpoint if there is one.

    Returns the final evaluation metrics. `stop_after` ends the process's work after that
    many steps (as if interrupted), leaving a resumable run. The work directory is locked
    for the run (on process 0 in a multi-host run); see `workdir.py`.
    """
    workdir = pathlib.Path(workdir)
    multihost.initialize(config.distributed)
    # Every check before anything is written; an unset class count is the dataset's,
    # known once it is opened.
    model_config = resolve({**config.model.to_dict(), "num_classes": config.model.num_classes or 2})
    mesh = sharding.make_mesh(config.mesh)
    check_settings(config, mesh)
    lock = workdirs.Lock(workdir)
    failure = None
    if jax.process_index() == 0:
        try:
            lock.check_free()  # a folder in use is reported as such
            check_workdir(workdir)
            lock.acquire()
        except (TrainingError, workdirs.WorkdirBusy, OSError) as e:
            failure = e
    if multihost.process_zero_failed(failure is not None):
        if isinstance(failure, OSError):
            raise failure
        if failure is not None:
            raise TrainingError(str(failure)) from None
        raise TrainingError(f"process 0 refused the work directory {workdir}; its message says why")
    try:
        return _train(config, workdir, model_config, mesh, stop_after)
    finally:
        lock.release()


def check_workdir(workdir: pathlib.Path) -> None:
    """Refuse a work directory where the run would write over, or --overwrite would
    remove, files that no run wrote (``workdir.not_written_by_a_run``), before anything
    is written."""
    foreign = workdirs.not_written_by_a_run(workdir)
    if foreign:
        raise TrainingError(
            f"{workdir} holds files that no training run wrote, where a run writes: "
            f"{files.listed(foreign, 6)}; "
            "move them out or choose another --workdir"
        )


def _train(config, workdir: pathlib.Path, model_config, mesh, stop_after: int | None) -> dict:
    from tqdm import tqdm

    train_source = build.open_or_build(config.data, "train", sync=multihost.sync)
    data_spec = train_source.spec
    if config.model.num_classes is None:
        config.data.num_classes = data_spec.num_classes  # the model's follows (a reference)
        model_config = resolve(config.model)
    if data_spec.num_classes != model_config.num_classes:
        raise TrainingError(
            f"dataset {data_spec.name} has {data_spec.num_classes} classes but "
            f"config.model.num_classes is {model_config.num_classes}; leave it unset to "
            "follow the dataset"
        )
    prepare_workdir(workdir, config, config.train.overwrite)
    eval_source = build.open_or_build(config.data, data_spec.eval_split, sync=multihost.sync)
    steps = config.train.steps
    augment = transforms.Augment.from_config(config.data)
    dataset = pipeline.train_dataset(
        train_source,
        config.train.batch_size,
        config.train.seed,
        augment,
        num_threads=config.data.num_threads,
    )

    def tx_factory(params):
        return optimizer.make_optimizer(
            params, config.optim, config.optim.total_steps, model_config.architecture
        )

    train_state, tx, schedule = create_state(config, mesh, tx_factory)
    ckpt = checkpoints.TrainCheckpoints(workdir, config.train.keep_checkpoints)
    for path in ckpt.unfinished:
        log.warning("removed %s: a save the previous run did not finish", path)
    data_iter = iter(dataset)
    start = 0
    restored = ckpt.restore_latest(train_state.state, train_state.opt_state, log=log.warning)
    if restored is not None:
        start, train_state.state, train_state.opt_state, data_state = restored
        data_iter.set_state(data_state)
        log.info("resumed from step %d in %s", start, workdir)

    train_step = reused_program(
        program_key("train", train_state, model_config, mesh, config),
        lambda: make_train_step(
            train_state, tx, model_config, config.train.aux_weight, mesh, config.train.loss_replicas
        ),
    )
    eval_step = reused_program(
        program_key("eval", train_state, model_config, mesh, config),
        lambda: make_eval_step(train_state, mesh),
    )
    batch_sharding = sharding.batch_sharding(mesh)

    def run_eval() -> dict:
        return evaluate_split(
            train_state,
            eval_step,
            eval_source,
            data_spec.num_classes,
            config.data.eval_batch_size,
            mesh,
        )

    writer = _tensorboard(workdir)
    end = steps if stop_after is None else min(steps, start + stop_after)
    pending: list[tuple[int, dict]] = []
    last_metrics = None
    bar = tqdm(
        total=steps,
        initial=start,
        unit="step",
        dynamic_ncols=True,
        disable=jax.process_index() != 0,
    )
    tick, tick_step = time.perf_counter(), start
    # Throughput over the log intervals after the first (which holds the compilation),
    # evaluation and checkpointing excluded.
    timed_images, timed_seconds = 0, 0.0
    with interrupts.StopAfterStep(jax.process_count() == 1) as stop:
        for step in range(start, end):
            batch = pipeline.global_batch(next(data_iter), batch_sharding)
            train_state.state, train_state.opt_state, out = train_step(
                train_state.state, train_state.opt_state, batch
            )
            pending.append((step, out))
            done = step + 1
            stopping = stop.requested
            checkpoint_now = done % config.train.checkpoint_every == 0 or done == steps or stopping
            eval_now = done % config.train.eval_every == 0 or done == steps
            if done % config.train.log_every == 0 or checkpoint_now or eval_now or done == end:
                # The only host sync of the loop: fetch the losses, check them, log.
                fetched = jax.device_get(pending)
                pending = []
                for s, values in fetched:
                    bad = [k for k, v in values.items() if not np.isfinite(v)]
                    if bad:
                        ckpt.wait()
                        what = "loss" if "loss" in bad else bad[0]
                        raise TrainingError(
                            f"{what} is {values[what]} at step {s + 1}; stopping. The last good "
                            f"checkpoint is step {ckpt.latest_step()} in {workdir / 'checkpoints'}"
                        )
                now = time.perf_counter()
                rate = (done - tick_step) * config.train.batch_size / max(now - tick, 1e-9)
                if tick_step > start:
                    timed_images += (done - tick_step) * config.train.batch_size
                    timed_seconds += now - tick
                tick, tick_step = now, done
                loss = fetched[-1][1]
                if writer:
                    for key, value in loss.items():  # loss, its parts, grad and param norms
                        writer.add_scalar(f"train/{key}", float(value), done)
                    writer.add_scalar("train/learning_rate", float(schedule(step)), done)
                    writer.add_scalar("train/images_per_s", rate, done)
                bar.set_postfix(
                    loss=f"{float(loss['loss']):.4f}",
                    grad_norm=f"{float(loss['grad_norm']):.3g}",
                    lr=f"{float(schedule(step)):.2e}",
                    img_s=f"{rate:.1f}",
                )
                bar.update(len(fetched))
            if eval_now:
                last_metrics = run_eval()
                if writer:
                    for key in ("mIoU", "OA", "Kappa", "mF1"):
                        writer.add_scalar(f"eval/{key}", last_metrics[key], done)
                bar.write(
                    f"step {done}, {eval_source.name}/{eval_source.split}:\n"
                    + metrics.format_table(last_metrics)
                )
            if checkpoint_now or done == end:
                data_state = data_iter.get_state()
                ckpt.save(done, train_state.state, train_state.opt_state, data_state)
                if eval_now:
                    ckpt.save_best(
                        done, train_state.state, train_state.opt_state, data_state, last_metrics
                    )
            if eval_now or checkpoint_now:
                tick = time.perf_counter()
            if stopping:
                bar.close()
                ckpt.wait()
                ckpt.close()
                log.warning("stopped at step %d; the same command resumes from there", done)
                raise KeyboardInterrupt
    bar.close()
    ckpt.wait()
    ckpt.close()
    if writer:
        writer.close()
    if end < steps:
        return last_metrics or {}
    if last_metrics is None:
        # Resumed from the final checkpoint of a run stopped before it wrote its results.
        last_metrics = run_eval()
    model = nnx.merge(train_state.eval_graphdef, train_state.state)
    nnx.update(model, multihost.gather(nnx.state(model, WEIGHTS)))
    if jax.process_index() == 0:
        # The model directory records its dataset, so prediction needs nothing else.
        record = checkpointing.dataset_record(data_spec, train_source.name, train_source.config)
        checkpointing.save_model(
            workdir / "model", model, metadata={"trained_steps": steps, **record}, overwrite=True
        )
        files.write_text(workdir / workdirs.METRICS, metrics.to_json(last_metrics))
        speed = round(timed_images / timed_seconds, 2) if timed_seconds else None
        files.write_text(
            workdir / workdirs.RUN,
            json.dumps({"finished": True, "steps": steps, "images_per_s": speed}) + "\n",
        )
    multihost.sync("run finished")
    return last_metrics


def _tensorboard(workdir: pathlib.Path):
    if jax.process_index() != 0:
        return None
    from tensorboardX import SummaryWriter

    return SummaryWriter(str(workdir / "tensorboard"))
