"""Mapping a region: many scene pairs from a list or two globs, checked before any work,
batched over 8 simulated devices, shared between two jax.distributed processes, and
resumed after SIGKILL. Each output is compared with in-memory sliding-window inference."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import rasterio
from micro import micro_model
from test_scene import assert_labels_match, in_memory

from asanet_jax import checkpointing
from asanet_jax.data import io, specs
from asanet_jax.predict import region, scene_list
from asanet_jax.predict.predictor import Predictor
from tests.support import fake_sources

REPO = pathlib.Path(__file__).resolve().parents[1]
SPEC = specs.synthetic_spec()
SHAPES = {"a": (150, 170), "b": (300, 130), "c": (96, 200), "d": (130, 90)}
WINDOW, STRIDE = 64, 48


def write_pair(root, name, shape, seed):
    rng = np.random.default_rng(seed)
    optical = rng.integers(1, 256, (*shape, 3)).astype(np.uint8)
    optical[:5, :7] = 0  # no data
    sar = rng.integers(0, 256, shape).astype(np.uint8)
    fake_sources.write_geotiff(root / "S2" / f"{name}.tif", optical, nodata=0, photometric="RGB")
    fake_sources.write_geotiff(root / "S1" / f"{name}.tif", sar)
    return optical, sar


@pytest.fixture(scope="module")
def region_dir(tmp_path_factory):
    """A model directory, four scene pairs under S2/ and S1/, and a CSV listing them."""
    root = tmp_path_factory.mktemp("region")
    model = micro_model(6, seed=2)
    record = checkpointing.dataset_record(SPEC, "synthetic_rgb_sar", "default")
    checkpointing.save_model(root / "model", model, metadata=record)
    predictor = Predictor(model)
    reference = {}
    for seed, (name, shape) in enumerate(SHAPES.items()):
        optical, sar = write_pair(root, name, shape, seed)
        missing = (optical == 0).all(-1)
        reference[name] = (
            in_memory(predictor, optical, sar, (WINDOW,) * 2, (STRIDE,) * 2),
            missing,
        )
    return root, reference


def write_list(path, names, folder="out"):
    lines = ["optical,sar,output", "# relative paths are taken from the list's folder"]
    lines += [f"S2/{n}.tif,S1/{n}.tif,{folder}/{n}.tif" for n in names]
    path.write_text("\n".join(lines) + "\n")
    (path.parent / folder).mkdir(exist_ok=True)
    return path


def predict(root, *args, devices=1, wait=True):
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
    env = {**os.environ, "XLA_FLAGS": flags}
    cmd = [
        sys.executable,
        str(REPO / "scripts" / "predict.py"),
        "--checkpoint",
        str(root / "model"),
        "--window",
        str(WINDOW),
        "--stride",
        str(STRIDE),
        "--progress=false",
        *map(str, args),
    ]
    if not wait:
        return subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    return subprocess.run(cmd, env=env, capture_output=True, text=True)


def labels(path):
    with rasterio.open(path) as src:
        return src.read(1)


def scene_tag(path):
    with rasterio.open(path) as src:
        return json.loads(src.tags()[region.STATS_TAG])


def test_a_list_over_eight_devices_equals_one_window_at_a_time(region_dir):
    root, reference = region_dir
    scenes = write_list(root / "eight.csv", SHAPES, folder="eight")
    run = predict(root, "--scenes", scenes, "--batch_size", 8, devices=8)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "batches of 8 windows over 8 cpu device(s)" in run.stderr
    for name, (logits, missing) in reference.items():
        assert_labels_match(labels(root / "eight" / f"{name}.tif"), logits, missing)
    summary = json.loads((root / "eight" / "predict_summary.json").read_text())
    assert [s["status"] for s in summary["scenes"]] == ["labelled"] * 4
    first = summary["scenes"][0]
    assert first["pixels"] == 150 * 170 - 35 and first["km2"] == pytest.approx(0.025465 * 100)
    assert first["windows"] == 12 and first["windows_per_s"] > 0
    assert summary["total"]["windows"] == sum(s["windows"] for s in summary["scenes"])


def test_two_globs_pair_files_by_what_their_wildcards_match(region_dir, tmp_path):
    root, _ = region_dir
    pairs = scene_list.match_globs(str(root / "S2" / "*.tif"), str(root / "S1" / "*.tif"), tmp_path)
    assert [(p.optical.name, p.sar.parent.name, p.output) for p in pairs] == [
        (f"{n}.tif", "S1", tmp_path / f"{n}.tif") for n in sorted(SHAPES)
    ]
    # Different names around the shared part.
    for n in ("x1", "x2"):
        (tmp_path / f"{n}_B.tif").write_bytes(b"")
        (tmp_path / f"{n}_S.tif").write_bytes(b"")
    (tmp_path / "x3_B.tif").write_bytes(b"")
    with pytest.raises(io.DataError, match=r"x3_B.tif has no SAR partner among '.*\*_S.tif'"):
        scene_list.match_globs(str(tmp_path / "*_B.tif"), str(tmp_path / "*_S.tif"), tmp_path)
    (tmp_path / "x3_B.tif").unlink()
    pairs = scene_list.match_globs(str(tmp_path / "*_B.tif"), str(tmp_path / "*_S.tif"), "maps")
    assert [p.output for p in pairs] == [pathlib.Path("maps/x1.tif"), pathlib.Path("maps/x2.tif")]


def test_list_files_csv_and_whitespace_and_their_errors(tmp_path):
    (tmp_path / "l.txt").write_text("# a comment\n\na.tif  b.tif  out/c.tif\n")
    (pair,) = scene_list.read_list(tmp_path / "l.txt")
    assert pair.optical == tmp_path / "a.tif" and pair.output == tmp_path / "out" / "c.tif"
    assert pair.where == f"{tmp_path / 'l.txt'} line 3"
    (tmp_path / "l.csv").write_text('optical,sar,output\n"my a.tif",b.tif,c.tif\nx.tif,y.tif\n')
    with pytest.raises(
        io.DataError, match=r"l.csv line 3: expected optical, SAR and output paths; found 2"
    ):
        scene_list.read_list(tmp_path / "l.csv")
    (tmp_path / "e.csv").write_text("optical,sar,output\n")
    with pytest.raises(io.DataError, match="no scenes listed"):
        scene_list.read_list(tmp_path / "e.csv")


def test_every_bad_entry_is_reported_before_any_work(region_dir, tmp_path):
    root, _ = region_dir
    (tmp_path / "broken.tif").write_bytes(b"II*\x00 truncated")
    (tmp_path / "out").mkdir()
    lines = [
        f"{root}/S2/a.tif,{root}/S1/a.tif,out/a.tif",
        f"{root}/S2/zz.tif,{root}/S1/a.tif,out/z.tif",  # missing optical
        f"{root}/S2/b.tif,{tmp_path}/broken.tif,out/b.tif",  # unreadable SAR
        f"{root}/S2/c.tif,{root}/S1/c.tif,out/a.tif",  # a duplicate output
        f"{root}/S2/d.tif,{root}/S1/d.tif,{root}/S1/d.tif",  # an output that is an input
        f"{root}/S2/d.tif,{root}/S1/d.tif,nowhere/d.tif",  # no such folder
    ]
    (tmp_path / "bad.csv").write_text("\n".join(lines) + "\n")
    run = predict(root, "--scenes", tmp_path / "bad.csv")
    assert run.returncode == 1 and "Traceback" not in run.stderr
    message = run.stderr
    assert "5 problem(s) found before any work started" in message
    for expected in (
        "bad.csv line 2: ",
        "zz.tif: optical file not found",
        "bad.csv line 3: ",
        "broken.tif: unreadable SAR raster",
        "bad.csv line 4: ",
        "out/a.tif: also an output of ",
        "bad.csv line 1",
        "bad.csv line 5: ",
        "d.tif: this is the input",
        "bad.csv line 6: ",
        "the folder",
        "nowhere does not exist",
    ):
        assert expected in message, expected
    assert list((tmp_path / "out").iterdir()) == []  # nothing was labelled


def test_shares_are_disjoint_cover_the_list_and_balance_pixels():
    sizes = [900, 100, 400, 400, 300, 250, 50]
    shares = [region.share(sizes, i, 3) for i in range(3)]
    flat = sorted(i for s in shares for i in s)
    assert flat == list(range(len(sizes)))
    loads = [sum(sizes[i] for i in s) for s in shares]
    assert max(loads) - min(loads) <= max(sizes) and loads[0] == 900


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_share_the_list_and_label_it_like_one(region_dir):
    root, _reference = region_dir
    scenes = write_list(root / "multi.csv", SHAPES, folder="multi")
    port = free_port()
    procs = [
        predict(
            root,
            "--scenes",
            scenes,
            "--coordinator_address",
            f"localhost:{port}",
            "--num_processes",
            2,
            "--process_id",
            i,
            "--heartbeat_timeout_s",
            3600,
            wait=False,
        )
        for i in range(2)
    ]
    outs = [p.communicate() for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    single = predict(root, "--scenes", write_list(root / "one.csv", SHAPES, folder="one"))
    assert single.returncode == 0, single.stderr[-3000:]
    by = {name: scene_tag(root / "multi" / f"{name}.tif")["process"] for name in SHAPES}
    assert set(by.values()) == {0, 1}  # both took a share; each scene labelled once:
    for i, (_, err) in enumerate(outs):
        done = [line for line in err.splitlines() if line.startswith(f"[process {i}/2] [")]
        assert sorted(line.split()[3].split("/")[-1][:-5] for line in done) == sorted(
            n for n, p in by.items() if p == i
        )
    for name in SHAPES:
        np.testing.assert_array_equal(
            labels(root / "multi" / f"{name}.tif"), labels(root / "one" / f"{name}.tif")
        )
    summary = json.loads((root / "multi" / "predict_summary.json").read_text())
    assert summary["total"]["labelled"] == 4 and summary["total"]["missing"] == 0


def test_a_run_killed_midway_resumes_and_redoes_only_unfinished_scenes(region_dir, tmp_path):
    root, reference = region_dir
    # A large second scene keeps the run busy when it is killed.
    big_optical, big_sar = write_pair(tmp_path, "big", (900, 900), seed=9)
    for name in ("a", "c"):
        for band in ("S2", "S1"):
            (tmp_path / band / f"{name}.tif").write_bytes(
                (root / band / f"{name}.tif").read_bytes()
            )
    names = ["a", "big", "c"]
    scenes = write_list(tmp_path / "scenes.csv", names)
    out = tmp_path / "out"
    proc = predict(root, "--scenes", scenes, "--batch_size", 1, wait=False)
    while not (out / "a.tif").exists():  # the run ending first fails the test
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert not (out / "big.tif").exists() and not (out / "c.tif").exists()
    first = (out / "a.tif").stat().st_mtime_ns
    rerun = predict(root, "--scenes", scenes, "--batch_size", 1)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"skipping 1 complete scene(s): {out / 'a.tif'}" in rerun.stderr
    assert (out / "a.tif").stat().st_mtime_ns == first
    summary = json.loads((out / "predict_summary.json").read_text())
    assert [s["status"] for s in summary["scenes"]] == [
        "complete before this run",
        "labelled",
        "labelled",
    ]
    for name in ("a", "c"):
        assert_labels_match(labels(out / f"{name}.tif"), *reference[name])
    predictor = Predictor(micro_model(6, seed=2))
    logits = in_memory(predictor, big_optical, big_sar, (WINDOW,) * 2, (STRIDE,) * 2)
    assert_labels_match(labels(out / "big.tif"), logits, (big_optical == 0).all(-1))
    # The killed run's temporaries are gone, and nothing else was left.
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["predict_summary.json"] + [f"{n}{s}" for n in names for s in (".tif", ".png")]
    )
    # Outputs written with other settings are not taken for complete ones.
    other = predict(root, "--scenes", scenes, "--blend", "hann")
    assert other.returncode == 1 and "written by another run (different blend)" in other.stderr


def test_an_existing_preview_that_is_not_ours_is_not_overwritten(region_dir, tmp_path):
    root, _ = region_dir
    (tmp_path / "a.png").write_bytes(b"my own picture")
    pair = scene_list.Pair(root / "S2" / "a.tif", root / "S1" / "a.tif", tmp_path / "a.tif")
    settings = region.Settings(window=WINDOW, stride=STRIDE, preview=True)
    with pytest.raises(io.DataError, match=r"a.png already exists and was not written by"):
        region.check([pair], SPEC, settings, model="m", min_side=32)
    overwrite = region.Settings(window=WINDOW, stride=STRIDE, preview=True, overwrite=True)
    plan = region.check([pair], SPEC, overwrite, model="m", min_side=32)
    assert plan.complete == [False]


def test_globs_are_normalised_and_bad_ones_are_named(region_dir, tmp_path, monkeypatch):
    root, _ = region_dir
    monkeypatch.chdir(root)
    for optical in ("./S2/*.tif", "S2//*.tif", f"{root}/./S2/[a-b].tif"):
        pairs = scene_list.match_globs(
            optical, "S1/*.tif" if "[" not in optical else "S1/[a-b].tif", "o"
        )
        assert [p.output.name for p in pairs][:2] == ["a.tif", "b.tif"], optical
    with pytest.raises(io.DataError, match=r"--optical 'S2/\*\*.tif' is not a valid glob"):
        scene_list.match_globs("S2/**.tif", "S1/*.tif", "o")


def test_a_spreadsheets_csv_and_one_output_spelled_two_ways(region_dir, tmp_path):
    root, _ = region_dir
    (tmp_path / "out").mkdir()
    rows = [
        f'{root}/S2/{n}.tif, "{root}/S1/{n}.tif", {o}'
        for n, o in (("a", "out/a.tif"), ("b", "out/../out/a.tif"))
    ]
    (tmp_path / "s.csv").write_text("\ufeffoptical,sar,output\r\n" + "\r\n".join(rows) + "\r\n")
    pairs = scene_list.read_list(tmp_path / "s.csv")  # BOM, CRLF, spaces after commas
    assert [p.sar.name for p in pairs] == ["a.tif", "b.tif"]
    with pytest.raises(io.DataError, match=r"out/../out/a.tif: also an output of .*s.csv line 2"):
        region.check(
            pairs, SPEC, region.Settings(window=WINDOW, stride=STRIDE), model="m", min_side=32
        )
