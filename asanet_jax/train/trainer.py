"""The training loop: sharded state, jitted step, evaluation, checkpoints, resume, logging.

Work directory layout::

    config.json          the resolved config
    checkpoints/last/    the last `keep_checkpoints` saves (orbax, async)
    checkpoints/best/    the best save by validation mIoU
    model/               the final model as a model directory (checkpointing.save_model)
    metrics.json         the final evaluation (mIoU, OA, Kappa, mF1 in percent, per class)
    tensorboard/         scalars: loss, learning rate, throughput, eval metrics
    run.json             {"finished": true, ...} once the run completed
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from asanet_jax import checkpointing, inference, metrics
from asanet_jax.data import build, io, pipeline, transforms
from asanet_jax.losses import segmentation_loss
from asanet_jax.models.asanet import WEIGHTS, ASANet
from asanet_jax.models.config import resolve
from asanet_jax.train import optimizer, sharding


class TrainingError(RuntimeError):
    """The run cannot start or went wrong (diverged, refused to overwrite, bad config)."""


@dataclasses.dataclass
class TrainState:
    graphdef: object
    eval_graphdef: object
    state: nnx.State  # parameters, BatchNorm statistics, RNG streams
    opt_state: optax.OptState


def open_data(config: ml_collections.ConfigDict, split: str) -> pipeline.Source:
    """The split, building the dataset first when it is missing and can be built."""
    d = config.data
    try:
        return pipeline.open_source(d.data_dir, d.name, split, d.tfds_config)
    except build.NotBuiltError as missing:
        if d.manual_dir is None and d.name != "synthetic_rgb_sar":
            raise io.DataError(
                f"{missing}; or set --config.data.manual_dir to the source dataset"
            ) from None
        if jax.process_index() == 0:
            build.build(d.name, d.data_dir, d.manual_dir, config=d.tfds_config)
        _sync("dataset built")
    return pipeline.open_source(d.data_dir, d.name, split, d.tfds_config)


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def create_state(config, mesh, tx_factory) -> tuple[TrainState, object, optax.Schedule]:
    """Model and optimiser state, created directly with their shardings on the mesh."""
    spec = resolve(config.model)
    seed = config.train.seed

    def make():
        return ASANet(spec, rngs=nnx.Rngs(seed))

    abstract = nnx.eval_shape(make)
    abstract.train()
    graphdef, abstract_state = nnx.split(abstract)
    abstract.eval()
    eval_graphdef, _ = nnx.split(abstract)
    state_shardings = sharding.tree_shardings(abstract_state, mesh)
    if config.train.init_from:
        model = make()
        init_streams(model, config.train.init_from)
        state = jax.device_put(nnx.state(model), state_shardings)
    else:
        state = jax.jit(lambda: nnx.state(make()), out_shardings=state_shardings)()
    params = nnx.state(nnx.merge(graphdef, state), nnx.Param)
    tx, schedule = tx_factory(params, spec)
    opt_shardings = sharding.tree_shardings(jax.eval_shape(tx.init, params), mesh)
    opt_state = jax.jit(tx.init, out_shardings=opt_shardings)(params)
    return TrainState(graphdef, eval_graphdef, state, opt_state), tx, schedule


def init_streams(model: ASANet, path) -> None:
    """Initialise every backbone stream of `model` in place from ImageNet weights: a raw
    ConvNeXt V2 checkpoint (mmpretrain, FAIR or timm .pth/.safetensors) or a model
    directory written by `convert_torch_weights.py --kind imagenet`."""
    from asanet_jax.convert import imagenet, official

    path = pathlib.Path(path)
    if not path.is_dir():
        report = imagenet.load_imagenet_backbone(model, path)
        print(
            f"initialised {', '.join(model.spec.streams)} stream(s) from {path}: {report['format']}"
        )
        return
    source, _, _ = checkpointing.load_model(path)
    given = official.flat_weights(source)
    streams = tuple(f"{s}." for s in ("optical", "sar") if getattr(model, s) is not None)
    values = {k: np.asarray(v[...]) for k, v in given.items() if k.startswith(streams)}
    if not values:
        raise TrainingError(f"{path}: holds no backbone weights for streams {streams}")
    try:
        official.set_weights(model, values)
    except ValueError as e:
        raise TrainingError(f"{path}: backbone does not fit config.model: {e}") from None
    print(f"initialised {len(values)} backbone tensors from {path}")


def make_train_step(train_state: TrainState, tx, spec, aux_weight: float, mesh):
    """The jitted step (state, opt_state, batch) -> (state, opt_state, losses); explicit
    shardings in and out, so every call reuses one compilation; state buffers donated."""
    graphdef = train_state.graphdef

    def step(state, opt_state, batch):
        model = nnx.merge(graphdef, state)

        def loss_fn(m):
            out = m(*inference.stream_inputs(spec, batch["optical"], batch["sar"]))
            return segmentation_loss(out, batch["label"].astype(jnp.int32), aux_weight)

        (loss, parts), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        params = nnx.state(model, nnx.Param)
        updates, opt_state = tx.update(grads, opt_state, params)
        nnx.update(model, optax.apply_updates(params, updates))
        return nnx.state(model), opt_state, {"loss": loss, **parts}

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


def make_eval_step(train_state: TrainState, spec, mesh):
    """(state, confusion, batch) -> confusion with this batch's pixels added."""
    graphdef = train_state.eval_graphdef

    def step(state, confusion, batch):
        logits = inference.logits(graphdef, state, batch["optical"], batch["sar"])
        pred = jnp.argmax(logits, axis=-1)
        return metrics.confusion_update(confusion, pred, batch["label"])

    state_shardings = jax.tree.map(lambda x: x.sharding, train_state.state)
    batch = {k: sharding.batch_sharding(mesh) for k in ("optical", "sar", "label")}
    return jax.jit(
        step,
        in_shardings=(state_shardings, sharding.replicated(mesh), batch),
        out_shardings=sharding.replicated(mesh),
        donate_argnums=(1,),
    )


def evaluate(train_state, eval_step, source, num_classes, batch_size, mesh) -> dict:
    """Whole-image evaluation of a split; one confusion matrix over all hosts' shards."""
    confusion = jax.device_put(
        np.zeros((num_classes, num_classes), np.int32), sharding.replicated(mesh)
    )
    local = pipeline.local_batch_size(batch_size, jax.process_count())
    batches = pipeline.eval_dataset(source, local)
    steps = -(-len(source) // batch_size)  # every host runs the same number of steps
    it = iter(batches)
    for _ in range(steps):
        batch = next(it, None)
        batch = _pad_eval_batch(batch, local, source, spec=source.spec)
        confusion = eval_step(
            train_state.state,
            confusion,
            pipeline.global_batch(batch, sharding.batch_sharding(mesh)),
        )
    return metrics.summarize(np.asarray(jax.device_get(confusion)), source.spec.classes)


def _pad_eval_batch(batch, size, source, spec):
    """Pad a short (or missing) last batch to `size` with ignore-labelled blanks, so every
    host contributes an equally shaped slice of the global batch."""
    if batch is None:
        record = transforms.eval_example(source.records[0], spec)
        batch = {k: np.zeros((0, *np.shape(v)), np.asarray(v).dtype) for k, v in record.items()}
    n = batch["label"].shape[0]
    if n == size:
        return batch
    out = {}
    for k in ("optical", "sar", "label"):
        fill = spec.ignore_index if k == "label" else 0
        pad = np.full((size - n, *batch[k].shape[1:]), fill, batch[k].dtype)
        out[k] = np.concatenate([batch[k], pad])
    return out


def prepare_workdir(workdir: pathlib.Path, config, overwrite: bool) -> None:
    run_file = workdir / "run.json"
    if run_file.is_file() and json.loads(run_file.read_text()).get("finished"):
        if not overwrite:
            raise TrainingError(
                f"{workdir} holds a finished run; choose another --workdir or pass "
                "--config.train.overwrite=True to replace it"
            )
        if jax.process_index() == 0:
            shutil.rmtree(workdir)
    _sync("workdir checked")
    if jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")


def train(config: ml_collections.ConfigDict, workdir, stop_after: int | None = None) -> dict:
    """Train per `config` in `workdir`, resuming from its last checkpoint if there is one.

    Returns the final evaluation metrics. `stop_after` ends the process's work after that
    many steps (as if interrupted), leaving a resumable run.
    """
    from tqdm import tqdm

    workdir = pathlib.Path(workdir)
    sharding.maybe_initialize_distributed(config.distributed)
    prepare_workdir(workdir, config, config.train.overwrite)
    mesh = sharding.make_mesh(config.mesh)
    spec = resolve(config.model)

    train_source = open_data(config, "train")
    data_spec = train_source.spec
    if data_spec.num_classes != spec.num_classes:
        raise TrainingError(
            f"dataset {data_spec.name} has {data_spec.num_classes} classes but "
            f"config.model.num_classes is {spec.num_classes}"
        )
    eval_source = open_data(config, data_spec.eval_split)
    steps = config.train.steps
    augment = transforms.Augment.for_spec(data_spec, flip_sar=config.data.flip_sar)
    dataset = pipeline.train_dataset(
        train_source,
        config.train.batch_size,
        config.train.seed,
        augment,
        num_threads=config.data.num_threads,
    )

    def tx_factory(params, spec):
        return optimizer.make_optimizer(params, spec, config.optim, config.optim.total_steps)

    train_state, tx, schedule = create_state(config, mesh, tx_factory)
    ckpt = checkpointing.TrainCheckpoints(workdir, config.train.keep_checkpoints)
    data_iter = iter(dataset)
    start = ckpt.latest_step() or 0
    if start:
        train_state.state, train_state.opt_state, data_state = ckpt.restore(
            start, train_state.state, train_state.opt_state
        )
        data_iter.set_state(data_state)
        print(f"resumed from step {start} in {workdir}")

    train_step = make_train_step(train_state, tx, spec, config.train.aux_weight, mesh)
    eval_step = make_eval_step(train_state, spec, mesh)
    batch_sharding = sharding.batch_sharding(mesh)

    def run_eval() -> dict:
        return evaluate(
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
    for step in range(start, end):
        batch = pipeline.global_batch(next(data_iter), batch_sharding)
        train_state.state, train_state.opt_state, out = train_step(
            train_state.state, train_state.opt_state, batch
        )
        pending.append((step, out))
        done = step + 1
        checkpoint_now = done % config.train.checkpoint_every == 0 or done == steps
        eval_now = done % config.train.eval_every == 0 or done == steps
        if done % config.train.log_every == 0 or checkpoint_now or eval_now or done == end:
            # The only host sync of the loop: fetch the losses, check them, log.
            fetched = jax.device_get(pending)
            pending = []
            for s, values in fetched:
                if not all(np.isfinite(v) for v in values.values()):
                    ckpt.wait()
                    raise TrainingError(
                        f"loss is {values['loss']} at step {s + 1}; stopping. The last good "
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
                writer.add_scalar("train/loss", float(loss["loss"]), done)
                writer.add_scalar("train/learning_rate", float(schedule(step)), done)
                writer.add_scalar("train/images_per_s", rate, done)
            bar.set_postfix(
                loss=f"{float(loss['loss']):.4f}",
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
    nnx.update(model, _gather(nnx.state(model, WEIGHTS)))
    if jax.process_index() == 0:
        checkpointing.save_model(
            workdir / "model", model, metadata={"trained_steps": steps}, overwrite=True
        )
        (workdir / "metrics.json").write_text(metrics.to_json(last_metrics))
        speed = round(timed_images / timed_seconds, 2) if timed_seconds else None
        (workdir / "run.json").write_text(
            json.dumps({"finished": True, "steps": steps, "images_per_s": speed}) + "\n"
        )
    _sync("run finished")
    return last_metrics


def _gather(tree):
    """The whole state on every host (FSDP shards of other hosts included), as numpy."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def _tensorboard(workdir: pathlib.Path):
    if jax.process_index() != 0:
        return None
    from tensorboardX import SummaryWriter

    return SummaryWriter(str(workdir / "tensorboard"))
