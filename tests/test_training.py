"""Training: configs, the official optimiser groups and schedule, sharded steps on real
meshes, exact resume (also after SIGKILL), divergence handling, and metrics."""

import itertools
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from micro import MICRO_MODEL, TRAINER_MODEL

from asanet_jax import checkpointing, metrics
from asanet_jax.convert import layout, mapping
from asanet_jax.models import ASANet, count_params, segmentor
from asanet_jax.models.config import resolve
from asanet_jax.train import checkpoints, optimizer, recipe, sharding, trainer

THIRD_PARTY = pathlib.Path(__file__).parent / "fixtures" / "third_party"

REPO = pathlib.Path(__file__).resolve().parents[1]

CONFIGS = [
    ("pie", None),
    ("pie", "official_flips"),
    ("pie", "runlocal"),
    ("ddhr", None),
    ("whu", None),
    ("demo", None),
    ("demo", "runlocal"),
    *[
        ("ablations", v)
        for v in ("sfm_cfm", "cfm", "sum", "sum_no_sfm", "optical_only", "sar_only")
    ],
    ("cmx", "pie"),
    ("cmx", "ddhr"),
    ("cmx", "whu"),
    ("cmx", "pie,runlocal,official_ddp"),
]


def load_config(name, arg=None):
    return recipe.load(f"{REPO}/configs/{name}.py" + (f":{arg}" if arg else ""))


@pytest.mark.parametrize(("name", "arg"), CONFIGS)
def test_every_config_loads_and_builds_its_model_abstractly(name, arg):
    config = load_config(name, arg)
    spec = resolve(config.model)
    model = nnx.eval_shape(lambda: segmentor.build(spec, rngs=nnx.Rngs(0)))
    assert config.model.num_classes == config.data.num_classes
    if (name, arg) in (("pie", None), ("ablations", "sfm_cfm")):
        assert count_params(model) == 82_904_764
    if name == "cmx" and arg in ("pie", "whu"):
        # The official CMX-B2 (6 classes); WHU's 7th class adds a classifier row (512 + 1).
        assert count_params(model) == 66_563_982 + 513 * (arg == "whu")
    if name == "ablations" and arg.endswith("_only"):
        assert spec.streams == (arg.split("_")[0],)


def test_derived_values_follow_overrides():
    config = load_config("pie")
    config.train.steps = 1000
    config.data.num_classes = 4
    assert config.optim.total_steps == 1000 and config.model.num_classes == 4


# --- the official optimiser ---------------------------------------------------------------


def official_group(key: str, shape) -> tuple[float, bool]:
    """docs/design.md, section 6, written independently of asanet_jax.train.optimizer."""
    parts = key.split(".")
    if ".downsample_layers." in key and parts[1] in ("backbone", "backbone2"):
        layer = 0
    elif ".stages." in key and parts[1] in ("backbone", "backbone2"):
        layer = int(parts[3]) + 1
    else:
        layer = 7
    return 0.9 ** (7 - layer), not (len(shape) == 1 or key.endswith(".bias"))


def test_optimizer_applies_the_official_lr_scale_and_weight_decay_to_every_parameter():
    config = load_config("pie")
    # Every kind of parameter of every stage, at micro widths (the rules read only paths
    # and shapes; the official layout below covers each parameter).
    config.model.update(depths=(1, 1, 1, 1), channels=(8, 16, 24, 32), decoder_channels=16)
    config.model.aux_channels = 8
    spec = resolve(config.model)
    model = ASANet(spec, rngs=nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    tx, schedule = optimizer.make_optimizer(params, config.optim, 80_000)
    # Compiled, as in training (eagerly, each parameter's every operation compiles alone).
    state = jax.jit(tx.init)(params)
    update = jax.jit(tx.update)
    # Zero gradients: Adam's term is 0, so the update is -lr * scale * wd * p where decayed.
    zeros = jax.tree.map(np.zeros_like, params)
    ones = jax.tree.map(np.ones_like, params)
    decay_update, _ = update(zeros, state, params)
    # Unit gradients at step 0: Adam's term is 1/(1+eps) per element: -lr * scale * (1 + wd p).
    grad_update, _ = update(ones, state, params)
    flat_p = {".".join(map(str, k)): v for k, v in nnx.to_flat_state(params)}
    flat_d = {".".join(map(str, k)): v for k, v in nnx.to_flat_state(decay_update)}
    flat_g = {".".join(map(str, k)): v for k, v in nnx.to_flat_state(grad_update)}
    lr0 = float(schedule(0))
    checked = 0
    for key, shape, _ in layout.official_layout(spec):
        mapped = mapping.map_key(key, mapping.segmentor_rules(spec.streams))
        if mapped.leaf.torch in ("running_mean", "running_var", "num_batches_tracked"):
            continue
        scale, decays = official_group(key, shape)
        p = np.asarray(flat_p[mapped.flax_path][...])
        d = np.asarray(flat_d[mapped.flax_path][...])
        g = np.asarray(flat_g[mapped.flax_path][...])
        np.testing.assert_allclose(d, -lr0 * scale * 0.05 * p * decays, rtol=1e-5, atol=1e-20)
        np.testing.assert_allclose(g - d, -lr0 * scale / (1 + 1e-8), rtol=1e-5, err_msg=key)
        checked += 1
    assert checked == len(flat_p)  # every parameter has its official group


def test_groups_are_rules_over_our_own_paths_so_a_new_parameter_gets_one():
    assert optimizer.layer_id("optical.stages.2.0.norm.scale") == 3
    assert optimizer.layer_id("sar.downsample_layers.0.conv.kernel") == 0
    assert optimizer.layer_id("sar.norms.1.scale") == 7
    assert optimizer.layer_id("a_module_only_jax_has.kernel") == 7  # no KeyError
    assert not optimizer.decays("decode_head.conv_seg.bias", (6,))
    assert optimizer.decays("decode_head.conv_seg.kernel", (1, 1, 256, 6))


def test_global_norm_does_not_overflow_where_squares_would():
    rng = np.random.default_rng(0)
    # Leaves joined into one vector ("a", "b", "z") and one reduced on its own ("big").
    tree = {"a": rng.normal(size=(3, 4)) * 1e19, "b": rng.normal(size=(5,)), "z": np.zeros(2)}
    tree["big"] = rng.normal(size=(sharding.MIN_SHARDED_SIZE,)) * 1e18
    expected = np.sqrt(sum(np.sum(np.square(v.astype(np.float64))) for v in tree.values()))
    tree = jax.tree.map(lambda v: v.astype(np.float32), tree)
    assert float(trainer.global_norm(tree)) == pytest.approx(expected, rel=1e-6)
    assert float(trainer.global_norm({"z": np.zeros(3, np.float32)})) == 0.0


def test_schedule_is_mmengines_to_the_iteration():
    """Against rates computed by mmengine's own LinearLR and PolyLR, stepped as its
    ParamSchedulerHook steps them (tests/fixtures/third_party/make_mmengine_lr.py)."""
    recorded = json.loads((THIRD_PARTY / "mmengine_lr.json").read_text())
    assert recorded["start_factor"] == 1e-6
    for case in recorded["cases"]:
        schedule = optimizer.warmup_poly_schedule(
            recorded["base_lr"], case["warmup"], case["total"], recorded["start_factor"]
        )
        for step, lr in case["lr"].items():
            got = float(schedule(int(step)))
            assert got == pytest.approx(lr, rel=1e-5, abs=1e-14), (case["warmup"], step)


def test_schedule_closed_form_warmup_3_end_12():
    """mmengine's formula (total_iters = end - begin - 1) written out independently:
    full rate at t = W - 1 = 2, zero at t = T - 1 = 11."""
    schedule = optimizer.warmup_poly_schedule(1.0, 3, 12, 0.0)
    expected = [0.0, 0.5, 1.0] + [(11 - t) / 8 for t in range(3, 12)]
    np.testing.assert_allclose([float(schedule(t)) for t in range(12)], expected, atol=1e-7)
    assert float(schedule(12)) == 0.0  # past the end stays at 0


def test_loss_replicas_reproduce_the_official_per_gpu_averaging():
    """Against torch: each of 2 'GPUs' takes decode CE + 0.4 aux CE (aux resized as mmseg
    resizes it, bilinear, align_corners=False) over its own labelled pixels; DDP then
    averages the two."""
    import torch
    import torch.nn.functional as F

    from asanet_jax.losses import segmentation_loss

    rng = np.random.default_rng(0)
    decode = rng.normal(size=(4, 8, 8, 5)).astype(np.float32)
    aux = rng.normal(size=(4, 4, 4, 5)).astype(np.float32)
    labels = rng.integers(0, 5, (4, 8, 8))
    labels[:2][rng.random((2, 8, 8)) < 0.7] = 255  # the first GPU's images mostly ignored

    def official_gpu(d, a, y):
        d, a = (torch.from_numpy(x).permute(0, 3, 1, 2) for x in (d, a))
        a = F.interpolate(a, size=y.shape[1:], mode="bilinear", align_corners=False)
        y = torch.from_numpy(y).long()
        return F.cross_entropy(d, y, ignore_index=255) + 0.4 * F.cross_entropy(
            a, y, ignore_index=255
        )

    official = np.mean(
        [float(official_gpu(decode[i : i + 2], aux[i : i + 2], labels[i : i + 2])) for i in (0, 2)]
    )
    outputs = {"decode_logits": jnp.asarray(decode), "aux_logits": jnp.asarray(aux)}
    total, _ = segmentation_loss(outputs, jnp.asarray(labels), 0.4, replicas=2)
    assert float(total) == pytest.approx(official, rel=1e-5)
    one_mean, _ = segmentation_loss(outputs, jnp.asarray(labels), 0.4)
    assert abs(float(one_mean) - official) > 1e-2  # the defaults differ on such a batch


# --- metrics ------------------------------------------------------------------------------


def test_metrics_follow_the_official_formulas_including_absent_classes():
    rng = np.random.default_rng(0)
    confusion = rng.integers(0, 500, (5, 5)).astype(np.int64)
    confusion[3, :] = 0  # class 3 absent from the labels and the predictions
    confusion[:, 3] = 0
    out = metrics.summarize(confusion)
    # Independent: per class loops over the matrix, mmseg's rounding.
    total = confusion.sum()
    ious, f1s = [], []
    for k in range(5):
        tp = confusion[k, k]
        fp = confusion[:, k].sum() - tp
        fn = confusion[k, :].sum() - tp
        if tp + fp + fn == 0:
            continue
        ious.append(tp / (tp + fp + fn))
        f1s.append(2 * tp / (2 * tp + fp + fn))
    po = np.trace(confusion) / total
    pe = sum(confusion[k, :].sum() * confusion[:, k].sum() for k in range(5)) / total**2
    assert out["mIoU"] == round(float(np.mean(ious)) * 100, 2)
    assert out["mF1"] == round(float(np.mean(f1s)) * 100, 2)
    assert out["OA"] == round(po * 100, 2)
    assert out["Kappa"] == round((po - pe) / (1 - pe) * 100, 2)
    assert np.isnan(out["per_class"]["3"]["IoU"])
    update = metrics.confusion_update(
        np.zeros((3, 3), np.int32), np.array([[0, 1, 2, 2]]), np.array([[0, 1, 255, 1]])
    )
    np.testing.assert_array_equal(update, [[1, 0, 0], [0, 1, 1], [0, 0, 0]])


# --- real training runs on a micro model (tests/micro.py) -----------------------------


def micro_config(data_dir, **train):
    config = load_config("demo", "runlocal")
    config.data.data_dir = str(data_dir)
    config.model.update(TRAINER_MODEL)
    config.model.drop_path_rate = 0.1  # exercises the RNG streams across resume
    config.train.steps = 4
    config.train.checkpoint_every = 2
    config.train.eval_every = 4
    config.data.num_threads = 2
    config.train.update(train)
    # One schedule for every length (the recipe ties it to train.steps): the 4-step and
    # 40-step runs then compile one program, shared through the compilation cache.
    with config.unlocked():
        del config.optim["total_steps"]
    config.optim.total_steps = 40
    return config


def final_state(workdir):
    from asanet_jax import checkpointing

    model, _, _ = checkpointing.load_model_dir(pathlib.Path(workdir) / "model")
    weights = nnx.state(model, (nnx.Param, nnx.BatchStat))
    return {".".join(map(str, k)): np.asarray(v[...]) for k, v in nnx.to_flat_state(weights)}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    config = micro_config(root / "data")
    result = trainer.train(config, root / "run")
    return root, result


def test_run_writes_metrics_config_checkpoints_and_refuses_to_overwrite(uninterrupted):
    root, result = uninterrupted
    run = root / "run"
    saved = json.loads((run / "metrics.json").read_text())  # strict JSON: NaN saved as null
    assert {"mIoU", "OA", "Kappa", "mF1"} <= set(saved)
    assert saved == json.loads(metrics.to_json(result))
    assert json.loads((run / "config.json").read_text())["train"]["steps"] == 4
    assert sorted(p.name for p in (run / "checkpoints" / "last").iterdir() if p.name.isdigit()) == [
        "2",
        "4",
    ]
    assert any((run / "tensorboard").iterdir())
    with pytest.raises(trainer.TrainingError, match="holds a finished run"):
        trainer.train(micro_config(root / "data"), run)


def test_stopped_and_resumed_run_equals_the_uninterrupted_one(uninterrupted, tmp_path, monkeypatch):
    root, _ = uninterrupted
    config = micro_config(root / "data")
    trainer.train(config, tmp_path / "run", stop_after=2)
    assert not (tmp_path / "run" / "model").exists()
    # The resumed run in the same process builds no step of its own: it reuses the first's.
    built = []
    for name in ("make_train_step", "make_eval_step"):
        make = getattr(trainer, name)
        monkeypatch.setattr(
            trainer, name, lambda *a, _m=make, _n=name, **k: built.append(_n) or _m(*a, **k)
        )
    trainer.train(micro_config(root / "data"), tmp_path / "run")
    assert built == []
    expected, got = final_state(root / "run"), final_state(tmp_path / "run")
    for k in expected:
        np.testing.assert_array_equal(got[k], expected[k], err_msg=k)


def test_a_step_is_reused_only_by_a_run_that_would_build_the_same_one(tmp_path):
    """Every setting the steps are built from is in their key: the optimiser's, the loss
    weights', the model's, the mesh; and the state's layout (checked by jax itself)."""
    from asanet_jax.models.config import resolve
    from asanet_jax.train import sharding

    def settings(**changes):
        config = micro_config(tmp_path / "data")
        config.model.num_classes = 6
        for field, value in changes.items():
            section, name = field.split("__")
            config[section][name] = value
        return config

    config = settings()
    mesh = sharding.make_mesh(config.mesh)

    def tx_factory(params):
        return optimizer.make_optimizer(params, config.optim, 40)

    state, _, _ = trainer.create_state(config, mesh, tx_factory)

    def key(kind, config, mesh=mesh):
        return trainer.program_key(kind, state, resolve(config.model), mesh, config)

    base = key("train", config)
    assert key("train", settings()) == base
    for change in (
        {"optim__lr": 2e-3},
        {"optim__weight_decay": 0.01},
        {"optim__total_steps": 41},
        {"train__aux_weight": 0.3},
        {"train__loss_replicas": 2},
        {"model__drop_path_rate": 0.2},
        {"model__kernels": "cpu"},
    ):
        assert key("train", settings(**change)) != base, change
    other_mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("fsdp", "data"))
    assert key("train", config, other_mesh) != base
    assert key("eval", settings(optim__lr=2e-3)) == key("eval", config)  # no optimiser
    assert key("eval", settings(model__kernels="cpu")) != key("eval", config)


def start_training(data_dir, workdir, steps=40) -> subprocess.Popen:
    """A training run in a subprocess, through the scripts' error handling (errors.run)."""
    script = (
        "import sys; sys.path.insert(0, {!r}); sys.path.insert(0, {!r})\n"
        "from test_training import micro_config\n"
        "from asanet_jax import errors\nfrom asanet_jax.train import trainer\n"
        "c = micro_config({!r}, steps={})\n"
        "sys.exit(errors.run(lambda: trainer.train(c, {!r}) and 0))\n"
    ).format(str(REPO), str(REPO / "tests"), str(data_dir), steps, str(workdir))
    return subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_checkpoint(proc, workdir, step: int) -> None:
    """Polls for the committed step; a run that ends first fails the test (no deadline:
    the run itself is the bound)."""
    committed = pathlib.Path(workdir) / "checkpoints" / "last" / str(step)
    while not (committed / "_CHECKPOINT_METADATA").exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.2)


def test_run_killed_with_sigkill_resumes_exactly(uninterrupted, tmp_path):
    root, _ = uninterrupted
    proc = start_training(root / "data", tmp_path / "run")
    wait_for_checkpoint(proc, tmp_path / "run", 2)
    # A second run on the same work directory is refused, naming the first.
    with pytest.raises(
        trainer.TrainingError, match=rf"in use by another training run .*pid {proc.pid}"
    ):
        trainer.train(micro_config(root / "data", steps=40), tmp_path / "run")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # The OS released the lock with its holder. Resume the killed run two steps past its
    # last checkpoint, and compare with a run straight to the same step: the uninterrupted
    # one (the same steps: micro_config's schedule ignores train.steps) when that is step 4.
    # The last step committed, read without a checkpoint manager: the resumed run is the
    # first to open the folder, as when a user reruns the command.
    last = tmp_path / "run" / "checkpoints" / "last"
    start = max(int(p.name) for p in last.iterdir() if p.name.isdigit())
    assert start >= 2
    trainer.train(micro_config(root / "data", steps=40), tmp_path / "run", stop_after=2)
    ref = root / "run"
    if start + 2 != 4:
        ref = tmp_path / "ref"
        trainer.train(micro_config(root / "data", steps=40), ref, stop_after=start + 2)
    a = _checkpoint_params(tmp_path / "run", start + 2)
    b = _checkpoint_params(ref, start + 2)
    for k in b:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_ctrl_c_stops_a_run_after_its_step_with_a_checkpoint_and_it_resumes(
    uninterrupted, tmp_path
):
    root, _ = uninterrupted
    proc = start_training(root / "data", tmp_path / "run")
    wait_for_checkpoint(proc, tmp_path / "run", 2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate()
    assert proc.returncode == 130, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == "interrupted" and "Traceback" not in stderr
    assert "stopping after this step with a checkpoint" in stderr
    assert (tmp_path / "run" / "run.lock").read_text() == ""  # released, holder cleared
    stopped = checkpoints.TrainCheckpoints(tmp_path / "run", 3).latest_step()
    assert stopped is not None and stopped >= 2
    assert f"stopped at step {stopped}" in stderr  # no step done was lost
    trainer.train(micro_config(root / "data", steps=40), tmp_path / "run", stop_after=2)
    assert checkpoints.TrainCheckpoints(tmp_path / "run", 3).latest_step() == stopped + 2


def _checkpoint_params(workdir, step):
    import orbax.checkpoint as ocp

    path = pathlib.Path(workdir) / "checkpoints" / "last" / str(step) / "state"
    restored = ocp.PyTreeCheckpointer().restore(path)
    return {
        "/".join(map(str, p)): np.asarray(v)
        for p, v in jax.tree_util.tree_flatten_with_path(restored)[0]
    }


def test_diverging_loss_stops_naming_the_step(uninterrupted, tmp_path):
    root, _ = uninterrupted
    config = micro_config(root / "data", log_every=1)
    config.optim.lr = 1e12
    config.optim.warmup_steps = 0
    with pytest.raises(trainer.TrainingError, match=r"loss is nan at step \d+; stopping"):
        trainer.train(config, tmp_path / "run")


def test_train_script_trains_on_a_pie_format_folder(tmp_path, pie):
    from tests.support import train_runs

    out = train_runs.train("pie.py:runlocal", tmp_path / "run", pie, *MICRO_FLAGS)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "final mIoU" in out.stdout
    assert (pie["data_dir"] / "pie_rgb_sar" / "2.0.0" / "dataset_info.json").is_file()
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(saved["per_class"]) == {"background", "city", "road", "water", "forest", "farmland"}
    # A second run into the finished directory is refused with a clear message.
    again = train_runs.train("pie.py:runlocal", tmp_path / "run", pie, *MICRO_FLAGS)
    assert again.returncode == 1 and "holds a finished run" in again.stderr


def model_flags(model: dict) -> list[str]:
    return [
        *(f"--config.model.{k}={v}".replace(" ", "") for k, v in model.items()),
        "--config.data.num_threads=2",
    ]


MICRO_FLAGS = model_flags(MICRO_MODEL)
TRAINER_FLAGS = model_flags(TRAINER_MODEL)


def run_script(name, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / name), *args],
        capture_output=True,
        text=True,
    )


def test_folder_config_trains_on_sentinel_chips_and_the_model_directory_alone_predicts(
    tmp_path,
):
    """A user's own dataset in one command (built first, class count from the dataset);
    then eval and predict from the model directory with no config and no dataset name."""
    import rasterio

    from asanet_jax.data import build, specs, transforms
    from asanet_jax.predict.predictor import Predictor, whole
    from tests.support import fake_sources

    src = fake_sources.write_sentinel_folder(tmp_path / "chips", ["a", "b", "d"], ["c"], 32)
    out = run_script(
        "train.py",
        f"--workdir={tmp_path / 'run'}",
        f"--config={REPO / 'configs' / 'folder.py'}:runlocal",
        f"--config.data.manual_dir={src}",
        f"--config.data.data_dir={tmp_path / 'data'}",
        *TRAINER_FLAGS,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    meta = json.loads((tmp_path / "run" / "model" / "model.json").read_text())
    assert meta["model"]["num_classes"] == 3  # from the dataset
    assert meta["tfds"] == {"name": "rgb_sar_folder", "config": "s1s2_fields"}
    source = build.open_source(tmp_path / "data", "rgb_sar_folder", "val")
    # Bands, scaling, statistics, classes: the dataset's spec, as recorded in model.json.
    assert specs.DatasetSpec.from_dict(meta["dataset"]) == source.spec
    model_dir = tmp_path / "run" / "model"
    evaluated = run_script(
        "eval.py",
        f"--checkpoint={model_dir}",
        f"--data_dir={tmp_path / 'data'}",
        f"--out={tmp_path}",
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert json.loads((tmp_path / "metrics.json").read_text())["settings"]["dataset"] == (
        "rgb_sar_folder"
    )
    # What the model predicts for chip c, through the builder and the pipeline.
    model, _, _ = checkpointing.load_model_dir(tmp_path / "run" / "model")
    example = transforms.eval_example(source.records[0], source.spec)
    logits = whole(Predictor(model), example["optical"][None], example["sar"][None])
    expected = np.where(example["label"] == 255, 255, logits[0].argmax(-1))
    del source
    shutil.rmtree(tmp_path / "data")  # nothing but the model directory and the rasters
    predicted = run_script(
        "predict.py",
        f"--checkpoint={model_dir}",
        f"--optical={src / 'optical' / 'c.tif'}",
        f"--sar={src / 'sar' / 'c.tif'}",
        f"--output={tmp_path / 'c.tif'}",
    )
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    with rasterio.open(tmp_path / "c.tif") as dst:
        got = dst.read(1)
    # The label's own ignore pixel (5, 5) is a valid input pixel: predicted there.
    expected[5, 5] = got[5, 5]
    np.testing.assert_array_equal(got, expected)


def folder_micro_config(data_dir, manual_dir):
    config = load_config("folder", "runlocal")
    config.data.data_dir, config.data.manual_dir = str(data_dir), str(manual_dir)
    config.model.update(TRAINER_MODEL)
    config.data.num_threads = 2
    config.train.steps = config.train.eval_every = 2
    return config


def test_the_same_data_with_ignore_100_or_255_feeds_training_identically(tmp_path):
    """A folder's `ignore_index` becomes 255 when the dataset is built, and nothing after
    the build reads the folder's own value. So equal specs, equal records and equal
    training batches are equal training (the step is deterministic: the resume tests
    compare whole runs bit for bit)."""
    from asanet_jax.data import build, pipeline, transforms
    from tests.support import fake_sources

    sources = {}
    for ignore in (100, 255):
        src = fake_sources.write_sentinel_folder(
            tmp_path / f"src{ignore}", ["a", "b"], ["c"], 32, ignore=ignore
        )
        config = folder_micro_config(tmp_path / f"data{ignore}", src)
        sources[ignore] = {s: build.open_or_build(config.data, s) for s in ("train", "val")}
    for split in ("train", "val"):
        a, b = sources[100][split], sources[255][split]
        assert a.spec == b.spec and len(a) == len(b) == (2 if split == "train" else 1)
        for ra, rb in zip(a.records, b.records, strict=True):
            assert ra.keys() == rb.keys()
            for k in ra:
                np.testing.assert_array_equal(ra[k], rb[k], err_msg=f"{split} {k}")
            assert ra["label"][5, 5] == 255 and 100 not in ra["label"]
    augment = transforms.Augment.from_config(config.data)
    batches = [
        pipeline.train_dataset(sources[i]["train"], 2, 0, augment, 0, 1, num_threads=1)
        for i in (100, 255)
    ]
    for x, y in itertools.islice(zip(*batches, strict=True), 3):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


@pytest.mark.parametrize("form", ["pth", "model_directory"])
def test_imagenet_initialisation_fills_both_streams(golden_state, tmp_path, form):
    import torch

    from asanet_jax.train import sharding

    prefix = "backbone.backbone."
    state = {
        f"backbone.{k[len(prefix) :]}": torch.from_numpy(np.array(v))
        for k, v in golden_state.items()
        if k.startswith(prefix) and not k[len(prefix) :].startswith(("norm0", "norm1", "norm2"))
    }
    torch.save({"state_dict": state}, tmp_path / "in1k.pth")
    init = tmp_path / "in1k.pth"
    if form == "model_directory":
        from asanet_jax.convert.cli import convert_main

        convert_main(
            [
                "--kind",
                "imagenet",
                "--torch_checkpoint",
                str(init),
                "--output",
                str(tmp_path / "init"),
                "--set",
                "num_classes=6",
            ]
        )
        init = tmp_path / "init"
    config = load_config("demo", "runlocal")
    config.model.depths, config.model.channels = (1, 1, 2, 1), (16, 32, 64, 128)
    config.train.init_from = str(init)
    mesh = sharding.make_mesh(config.mesh)

    def tx_factory(params):
        return optimizer.make_optimizer(params, config.optim, 10)

    state, _, _ = trainer.create_state(config, mesh, tx_factory)
    model = nnx.merge(state.graphdef, state.state)
    for stream in (model.optical, model.sar):
        np.testing.assert_array_equal(
            stream.stages[2][1].grn.gamma[...], golden_state[prefix + "stages.2.1.grn.gamma"]
        )
        np.testing.assert_array_equal(
            np.asarray(stream.downsample_layers[0].conv.kernel[...]).transpose(3, 2, 0, 1),
            golden_state[prefix + "downsample_layers.0.0.weight"],
        )


def test_run_stopped_after_its_last_checkpoint_finishes_without_training(uninterrupted, tmp_path):
    import shutil

    root, result = uninterrupted
    shutil.copytree(root / "run", tmp_path / "run")
    for name in ("run.json", "metrics.json"):
        (tmp_path / "run" / name).unlink()
    shutil.rmtree(tmp_path / "run" / "model")
    again = trainer.train(micro_config(root / "data"), tmp_path / "run")
    assert json.loads(metrics.to_json(again)) == json.loads(metrics.to_json(result))
    assert (tmp_path / "run" / "model").is_dir() and (tmp_path / "run" / "run.json").is_file()


def _damage(step_dir: pathlib.Path, how: str) -> pathlib.Path:
    """Delete or truncate the largest data file of a saved step."""
    data = max((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    if how == "delete":
        data.unlink()
    else:
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    return data


@pytest.mark.parametrize("how", ["delete", "truncate"])
def test_resume_sets_a_damaged_latest_checkpoint_aside_and_takes_the_one_before(tmp_path, how):
    from asanet_jax import checkpointing

    state = {"w": jnp.arange(50_000, dtype=jnp.float32)}
    opt_state = {"m": jnp.ones(50_000, jnp.float32)}
    saves = checkpoints.TrainCheckpoints(tmp_path, 3)
    for step in (2, 4):
        saves.save(step, {"w": state["w"] + step}, opt_state, {"position": step})
    saves.wait()
    saves.close()
    _damage(tmp_path / "checkpoints" / "last" / "4", how)
    saves = checkpoints.TrainCheckpoints(tmp_path, 3)
    logged = []
    step, restored, _, data = saves.restore_latest(state, opt_state, log=logged.append)
    assert step == 2 and data == {"position": 2}
    np.testing.assert_array_equal(restored["w"], state["w"] + 2)
    assert len(logged) == 1 and logged[0].startswith("checkpoint step 4 does not restore (")
    assert not (tmp_path / "checkpoints" / "last" / "4").exists()
    assert [p.name[:2] for p in (tmp_path / "checkpoints" / "damaged").iterdir()] == ["4-"]
    # With every save damaged nothing is resumed silently, nor moved: the error names each.
    _damage(tmp_path / "checkpoints" / "last" / "2", how)
    saves = checkpoints.TrainCheckpoints(tmp_path, 3)
    with pytest.raises(checkpointing.ModelCheckpointError, match="no checkpoint restores: step 2"):
        saves.restore_latest(state, opt_state, log=logged.append)
    assert (tmp_path / "checkpoints" / "last" / "2").is_dir()


# Saves steps 2 and 4 of small trees, and is killed (SIGKILL) as orbax is about to rename
# the temporary `last/{cut}` of step 4's save to its final name: a kill may land at any
# point of a save.
_CUT_SHORT_SAVE = """
import os, signal
import jax.numpy as jnp
from orbax.checkpoint._src.path import atomicity
from asanet_jax.train import checkpoints

finalize = atomicity.AtomicRenameTemporaryPath.finalize

async def killed_at_cut(self, *args, **kwargs):
    if self.get().as_posix().endswith("/checkpoints/last/" + {cut!r}):
        os.kill(os.getpid(), signal.SIGKILL)
    return await finalize(self, *args, **kwargs)

atomicity.AtomicRenameTemporaryPath.finalize = killed_at_cut
saves = checkpoints.TrainCheckpoints({workdir!r}, 3)
for step in (2, 4):
    saves.save(step, {{"w": jnp.arange(5000.0) + step}}, {{"m": jnp.ones(5000)}}, {{"at": step}})
    saves.wait()
"""


@pytest.mark.parametrize(
    "cut",
    [
        "4.orbax-checkpoint-tmp/opt_state.orbax-checkpoint-tmp",  # an item still unfinished
        "4.orbax-checkpoint-tmp",  # every item written, the step not yet renamed
    ],
)
def test_a_save_cut_short_by_a_kill_is_removed_and_the_run_resumes_from_the_one_before(
    tmp_path, cut
):
    from asanet_jax.train import workdir as workdirs

    script = _CUT_SHORT_SAVE.format(cut=cut, workdir=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    last = tmp_path / "checkpoints" / "last"
    assert (last / cut).is_dir() and (last / "2").is_dir()
    # The killed run's folder is a training run's: resuming there is not refused.
    assert workdirs.not_written_by_a_run(tmp_path) == []
    saves = checkpoints.TrainCheckpoints(tmp_path, 3)
    # Removed by the time the checkpoints exist, and said so.
    assert saves.unfinished == [last / "4.orbax-checkpoint-tmp"]
    assert sorted(p.name for p in last.iterdir()) == ["2"]
    like = ({"w": jnp.zeros(5000)}, {"m": jnp.zeros(5000)})
    step, state, _, data = saves.restore_latest(*like, log=pytest.fail)
    assert step == 2 and data == {"at": 2}
    np.testing.assert_array_equal(state["w"], np.arange(5000.0) + 2)
    saves.close()


def test_a_run_whose_latest_checkpoint_is_damaged_finishes_like_an_uninterrupted_one(
    uninterrupted, tmp_path
):
    import shutil

    root, result = uninterrupted
    shutil.copytree(root / "run", tmp_path / "run")
    for name in ("run.json", "metrics.json"):
        (tmp_path / "run" / name).unlink()
    shutil.rmtree(tmp_path / "run" / "model")
    _damage(tmp_path / "run" / "checkpoints" / "last" / "4", "truncate")
    again = trainer.train(micro_config(root / "data"), tmp_path / "run")  # from step 2
    assert json.loads(metrics.to_json(again)) == json.loads(metrics.to_json(result))
    expected, got = final_state(root / "run"), final_state(tmp_path / "run")
    for k in expected:
        np.testing.assert_array_equal(got[k], expected[k], err_msg=k)


def test_train_script_resuming_past_a_damaged_checkpoint_says_so_in_one_line(
    uninterrupted, tmp_path
):
    """What a user sees: one line naming the step, the item and why, then the usual run;
    no tracebacks of orbax's abandoned reads, no TensorStore spec."""
    root, _ = uninterrupted
    shutil.copytree(root / "run", tmp_path / "run")
    for name in ("run.json", "metrics.json"):
        (tmp_path / "run" / name).unlink()
    shutil.rmtree(tmp_path / "run" / "model")
    _damage(tmp_path / "run" / "checkpoints" / "last" / "4" / "opt_state", "truncate")
    out = run_script(
        "train.py",
        f"--config={REPO / 'configs' / 'demo.py'}:runlocal",
        f"--workdir={tmp_path / 'run'}",
        f"--config.data.data_dir={root / 'data'}",
        *TRAINER_FLAGS,
        "--config.model.drop_path_rate=0.1",  # micro_config's: the compiled steps are reused
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "final mIoU" in out.stdout
    notices = [line for line in out.stderr.split("\n") if "does not restore" in line]
    assert len(notices) == 1, out.stderr[-3000:]
    assert "checkpoint step 4 does not restore (opt_state: " in notices[0], notices[0]
    assert f"moved it to {tmp_path / 'run' / 'checkpoints' / 'damaged' / '4-'}" in notices[0]
    assert "tensorstore(" not in notices[0].lower() and "{'" not in notices[0], notices[0]
    assert len(notices[0]) < 500, notices[0]
    for noise in ("Traceback", "Event loop is closed", "Exception ignored", "never retrieved"):
        assert noise not in out.stderr, out.stderr[:3000]
    # Otherwise as an undamaged resume: the progress bar, "resumed from step 2" and at
    # most a few orbax warnings ("Waiting for previous save ...").
    said = [
        re.sub(r"\s*\d+%\|[^\]]*\]", "", part).strip() for part in re.split(r"[\r\n]", out.stderr)
    ]
    said = [line for line in said if line]
    assert said[:2] == [notices[0], f"resumed from step 2 in {tmp_path / 'run'}"], said
    assert len(said) <= 6, said


def test_a_restore_that_raises_settles_the_reads_still_running(monkeypatch, caplog):
    """Orbax closes its event loop as soon as one array fails to read. Whether the other
    reads are still running then is a race (the flood of the test above); here they are
    by construction, and closing settles them: nothing of theirs prints afterwards."""
    import asyncio
    import gc

    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    finished, cancelled = [], []

    async def read(i):  # like orbax's read of one array: any exit becomes an Exception
        try:
            await asyncio.sleep(0 if i == 0 else 3600)
            raise ValueError(f"array {i}: OUT_OF_RANGE")
        except BaseException as e:
            if isinstance(e, asyncio.CancelledError):
                cancelled.append(i)
            raise Exception(f"array {i} failed") from e
        finally:
            finished.append(i)

    async def restore():
        await asyncio.gather(*(read(i) for i in range(5)))

    with checkpoints._settling_event_loops():
        loop = asyncio.new_event_loop()  # what orbax's run_sync does, then close()
        try:
            with pytest.raises(Exception, match="array 0 failed"):
                loop.run_until_complete(restore())
        finally:
            loop.close()
    # Settled by cancelling the sleeping reads, not by waiting them out.
    assert sorted(finished) == [0, 1, 2, 3, 4] and sorted(cancelled) == [1, 2, 3, 4]
    gc.collect()
    assert unraisable == [] and not [r for r in caplog.records if r.name == "asyncio"]
    assert type(asyncio.new_event_loop()).__name__ != "_SettlingLoop"  # only meanwhile
