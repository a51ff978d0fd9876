"""Map a region: many optical + SAR scene pairs in one run, shared between hosts, resumable.

- **Pairs** come from a list file (``scene_list``).
- **Checks first** (``check``): every bad entry is reported at once, each naming its
  file, before any work starts. That covers a missing or unreadable raster, bands the
  model cannot use, rasters not on one grid (without ``align``), an output that is an
  input, one output given twice, a missing output folder, and an existing output that
  this run did not write.
- **Resumable**: each raster carries the run's key (``ASANET_PREDICTION``: the model's
  weights and preprocessing, the settings, the inputs' sizes and modification times).
  A scene whose outputs all exist with the same key is complete and is skipped. A
  killed run leaves only temporaries, which the next run removes, so its scenes are
  redone.
- **Hosts**: with several processes (``jax.distributed``), each takes a disjoint share
  of the list, balanced by pixel count (``share``); together they cover it. Each host
  predicts on its own devices.
- **Progress and summary**: a bar with windows/s, scenes done of total and an ETA, a
  line per finished scene, and a summary JSON with each scene's pixels, km², seconds
  and windows/s (from its ``ASANET_SCENE`` tag), written by process 0 at the end.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import sys
import time

import numpy as np

from asanet_jax import files, weights
from asanet_jax.data import io, specs
from asanet_jax.predict import scene
from asanet_jax.predict.outputs import OutputPaths
from asanet_jax.predict.predictor import Predictor
from asanet_jax.predict.rasters import SceneInputs, open_scene
from asanet_jax.predict.scene_list import Pair
from asanet_jax.predict.windows import BLENDS, default_stride, plan_windows

KEY_TAG = "ASANET_PREDICTION"
STATS_TAG = "ASANET_SCENE"


@dataclasses.dataclass(frozen=True)
class Settings:
    """How a region is labelled, checked on creation: one object for the checks, the run
    and each scene. ``stride`` None is 2/3 of the window; ``batch_size`` None is the
    predictor's default (``Predictor.default_batch_size``); ``confidence``,
    ``probabilities`` and ``preview`` are the extra outputs; ``overwrite`` replaces
    outputs this run did not write."""

    window: int = 512
    stride: int | None = None
    blend: str = "mean"
    batch_size: int | None = None
    prefetch: int = 2
    align: bool = False
    confidence: bool = False
    probabilities: bool = False
    preview: bool = True
    overwrite: bool = False

    def __post_init__(self):
        for name in ("window", "stride", "batch_size", "prefetch"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or value < 1):
                raise ValueError(f"--{name}={value}: expected a positive number")
        if self.blend not in BLENDS:
            raise ValueError(f"--blend={self.blend}: expected one of {', '.join(BLENDS)}")

    @property
    def extras(self) -> dict:
        """The optional outputs, as ``OutputPaths.beside`` takes them."""
        return dict(
            confidence=self.confidence, probabilities=self.probabilities, preview=self.preview
        )

    def key(self, model_digest: str) -> dict:
        """What a scene's outputs depend on, besides its inputs: the run key's settings."""
        stride = self.stride if self.stride is not None else default_stride(self.window)
        return {"model": model_digest, "window": self.window, "stride": stride, "blend": self.blend}

    def scene_options(self) -> dict:
        """``predict_scene``'s keyword settings."""
        return dict(
            window=self.window,
            stride=self.stride,
            batch_size=self.batch_size,
            blend=self.blend,
            prefetch=self.prefetch,
        )


def model_fingerprint(model, spec: specs.DatasetSpec) -> str:
    """A digest of the weights, the model config and the dataset's preprocessing."""
    digest = hashlib.blake2b(digest_size=12)
    digest.update(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    digest.update(spec.to_json().encode())
    for name, variable in sorted(weights.flat_weights(model).items()):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(np.asarray(variable[...])).tobytes())
    return digest.hexdigest()


def _file_id(path: pathlib.Path) -> dict:
    stat = path.stat()
    return {"path": str(path.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


@dataclasses.dataclass
class Plan:
    """A checked list: each pair's scene, output paths, key and window count; `complete`
    marks the pairs whose outputs exist with this run's key."""

    pairs: list[Pair]
    scenes: list[SceneInputs]
    outputs: list[OutputPaths]
    keys: list[str]
    complete: list[bool]
    windows: list[int]


def existing_key(path: pathlib.Path) -> dict | None:
    """The run key an output of scene prediction carries (a raster's tag, a preview's PNG
    text); None for anything else."""
    import rasterio
    from PIL import Image, UnidentifiedImageError
    from rasterio.errors import RasterioError

    try:
        if path.suffix.lower() == ".png":
            with Image.open(path) as image:
                text = getattr(image, "text", {}).get(KEY_TAG)
        else:
            with rasterio.open(path) as src:
                text = src.tags().get(KEY_TAG)
    except (RasterioError, OSError, UnidentifiedImageError):
        return None
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


class _Inputs:
    """The inputs of a list, found by resolved path or by inode (a link to one), in
    constant time per lookup whatever the list's length."""

    def __init__(self, paths):
        self.by_path, self.by_inode = {}, {}
        for path in paths:
            self.by_path.setdefault(path.resolve(), path)
            try:
                stat = path.stat()
            except OSError:
                continue
            self.by_inode.setdefault((stat.st_dev, stat.st_ino), path)

    def find(self, out: pathlib.Path) -> pathlib.Path | None:
        if out.resolve() in self.by_path:
            return self.by_path[out.resolve()]
        try:
            stat = out.stat()
        except OSError:
            return None
        return self.by_inode.get((stat.st_dev, stat.st_ino))


SUMMARY_KIND = "asanet_jax scene prediction summary"


def is_our_summary(path: pathlib.Path) -> bool:
    """Whether `path` is a summary JSON that scene prediction wrote (``summary``)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(data, dict):
        return False
    # Summaries of 0.2.0 carried no "kind"; theirs were exactly these three keys.
    return data.get("kind") == SUMMARY_KIND or set(data) == {"settings", "scenes", "total"}


def _unwritable(folder: pathlib.Path) -> str | None:
    """Why files cannot be created in `folder`, or None."""
    if os.access(folder, os.W_OK | os.X_OK):
        return None
    read_only = os.statvfs(folder).f_flag & os.ST_RDONLY
    return "it is on a read-only file system" if read_only else "permission denied"


def _folder_problem(out: pathlib.Path, new_folders: set[pathlib.Path]) -> str | None:
    """Why `out`'s folder cannot take it: missing (unless the run creates it), or not
    writable (for a folder the run creates: its nearest existing parent)."""
    folder = out.absolute().parent
    if not folder.is_dir():
        if folder not in new_folders:
            return f"{out}: the folder {folder} does not exist"
        folder = next(p for p in folder.parents if p.exists())
        if not folder.is_dir():
            return f"{out}: {folder} is a file, so {out.parent} cannot be created"
    return _unwritable_folder(out, folder)


def _unwritable_folder(out: pathlib.Path, folder: pathlib.Path) -> str | None:
    reason = _unwritable(folder)
    return f"{out}: cannot write into {folder}: {reason}" if reason else None


def unwritable_outputs(pairs: list[Pair], summary: pathlib.Path | None = None) -> list[str]:
    """The outputs (label rasters and `summary`) whose existing folder cannot be written,
    one per folder: what can be told before the model is read. ``check_outputs`` finds
    these again among the rest."""
    problems, folders = [], set()
    for out in [pair.output for pair in pairs] + ([summary] if summary is not None else []):
        folder = pathlib.Path(out).absolute().parent
        if folder in folders or not folder.is_dir():
            continue
        folders.add(folder)
        problem = _unwritable_folder(pathlib.Path(out), folder)
        if problem:
            problems.append(problem)
    return problems


def check_outputs(
    pairs: list[Pair],
    settings: Settings,
    *,
    summary: pathlib.Path | None = None,
    new_folders=(),
) -> tuple[list[str], set[int]]:
    """What is wrong with the output paths, found without reading any raster: an output
    that is an input (through links too), one output given twice, a folder, a folder that
    does not exist or cannot be written. `summary` is held to the same rules, and an
    existing file there is replaced only if scene prediction wrote it, or with
    ``settings.overwrite``; the outputs are ``settings.extras``'s. `new_folders` are
    folders the run creates (a glob's output folder).

    Returns the problems (each naming the file) and the indices of the pairs that have
    one; the first problem of a pair is enough.
    """
    new_folders = {pathlib.Path(f).absolute() for f in new_folders}
    problems, bad = [], set()
    inputs = _Inputs([p for pair in pairs for p in (pair.optical, pair.sar)])
    claimed: dict[pathlib.Path, str] = {}

    def problem_of(out: pathlib.Path, owner: str) -> str | None:
        given = inputs.find(out)
        found = None
        if given is not None:
            found = f"{out}: this is the input {given}; choose another output"
        elif out.resolve() in claimed:
            found = f"{out}: also an output of {claimed[out.resolve()]}"
        elif out.is_dir():
            found = f"{out} is a folder; expected the path of a file to write"
        else:
            found = _folder_problem(out, new_folders)
        claimed.setdefault(out.resolve(), owner)
        return found

    for i, pair in enumerate(pairs):
        where = f"{pair.where}: " if pair.where else ""
        paths = OutputPaths.beside(pair.output, **settings.extras)
        # The label raster first.
        for out in sorted(paths.all(), key=lambda p: p != paths.labels):
            found = problem_of(out, pair.where or str(pair.optical))
            if found:
                problems.append(where + found)
                bad.add(i)
                break
    if summary is not None:
        summary = pathlib.Path(summary)
        found = problem_of(summary, "--summary")
        exists = summary.exists() or summary.is_symlink()
        if found is None and exists and not settings.overwrite and not is_our_summary(summary):
            found = (
                f"--summary {summary} already exists and was not written by scene "
                "prediction; --overwrite replaces it"
            )
        if found:
            problems.append(found if found.startswith("--summary") else f"--summary {found}")
    return problems, bad


def check(
    pairs: list[Pair],
    spec,
    settings: Settings,
    *,
    model: str,
    min_side: int,
    summary: pathlib.Path | None = None,
    new_folders=(),
) -> Plan:
    """Open and check every pair and its outputs; one DataError listing every problem.

    `model` (the digest of ``model_fingerprint``) and `settings` make each pair's key;
    `min_side` is the smallest scene side the model takes; `summary`, `new_folders`:
    see ``check_outputs``."""
    problems, bad_outputs = check_outputs(pairs, settings, summary=summary, new_folders=new_folders)
    scenes, outputs, keys, complete, windows = [], [], [], [], []
    for i, pair in enumerate(pairs):
        where = f"{pair.where}: " if pair.where else ""
        try:
            found = open_scene(pair.optical, pair.sar, spec, settings.align)
            count = plan_windows(
                found.height, found.width, settings.window, settings.stride, min_side, pair.optical
            ).count
        except io.DataError as e:
            problems.append(f"{where}{e}")
            found, count = None, 0
        paths = OutputPaths.beside(pair.output, **settings.extras)
        key = {
            **settings.key(model),
            "warped": found is not None and found.warp_sar,  # not the flag: what it did
            **(
                {"optical": _file_id(pair.optical), "sar": _file_id(pair.sar)}
                if found is not None
                else {}
            ),
        }
        found_keys = {p: existing_key(p) for p in paths.all()} if found is not None else {}
        done = found is not None and all(k == key for k in found_keys.values())
        if found is not None and not done and not settings.overwrite and i not in bad_outputs:
            for out, old in found_keys.items():
                if out.is_file() and old != key:
                    problems.append(f"{where}{_conflict(out, old, key)}; --overwrite replaces it")
        scenes.append(found)
        outputs.append(paths)
        keys.append(json.dumps(key, sort_keys=True))
        complete.append(done)
        windows.append(count)
    if problems:
        raise io.DataError(listing(problems))
    return Plan(pairs, scenes, outputs, keys, complete, windows)


def listing(problems: list[str]) -> str:
    """One problem as it is; several as a count and an indented list."""
    if len(problems) == 1:
        return problems[0]
    return f"{len(problems)} problem(s) found before any work started:\n  " + "\n  ".join(problems)


def _conflict(out: pathlib.Path, old: dict | None, key: dict) -> str:
    if old is None:
        return f"{out} already exists and was not written by scene prediction"
    differ = sorted(k for k in set(old) | set(key) if old.get(k) != key.get(k))
    return f"{out} was written by another run (different {', '.join(differ)})"


def share(sizes: list[int], index: int, count: int) -> list[int]:
    """The pair indices process `index` of `count` labels: largest scenes first, each to
    the least loaded process (ties to the lowest index). Disjoint, covering, and the same
    on every host."""
    load = [0] * count
    mine = []
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        host = min(range(count), key=lambda h: (load[h], h))
        load[host] += sizes[i]
        if host == index:
            mine.append(i)
    return sorted(mine)


def _eta(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(seconds)) if np.isfinite(seconds) else "?"


def run(
    predictor: Predictor,
    plan: Plan,
    spec,
    settings: Settings,
    *,
    process_index: int = 0,
    process_count: int = 1,
    progress: bool = True,
    log=None,
) -> list[int]:
    """Label this process's share of the plan, skipping complete scenes; returns the
    indices it labelled. Messages go to `log` (stderr by default)."""
    from tqdm import tqdm

    log = log or sys.stderr
    prefix = f"[process {process_index}/{process_count}] " if process_count > 1 else ""
    mine = share([s.pixels for s in plan.scenes], process_index, process_count)
    skipped = [i for i in mine if plan.complete[i]]
    todo = [i for i in mine if not plan.complete[i]]
    if skipped:
        names = ", ".join(str(plan.outputs[i].labels) for i in skipped[:5])
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        print(f"{prefix}skipping {len(skipped)} complete scene(s): {names}{more}", file=log)
    total = sum(plan.windows[i] for i in todo)
    bar = tqdm(
        total=total,
        unit="window",
        disable=not progress or not todo,
        file=log,
        dynamic_ncols=True,
        smoothing=0.1,
    )
    start, done_windows = time.perf_counter(), 0
    try:
        for n, i in enumerate(todo, 1):
            bar.set_description(f"{prefix}scene {n}/{len(todo)}")
            try:
                stats = scene.predict_scene(
                    predictor,
                    plan.scenes[i],
                    plan.outputs[i],
                    spec,
                    **settings.scene_options(),
                    tags={KEY_TAG: plan.keys[i]},
                    stats_tag=lambda stats: {
                        STATS_TAG: json.dumps({**stats.as_dict(), "process": process_index})
                    },
                    on_windows=bar.update,
                )
            except (ValueError, OSError) as e:  # which scene first, then the reason
                if isinstance(e, OSError) and e.filename is not None:
                    raise  # it names its file (a full disk: the output)
                pair = plan.pairs[i]
                where = pair.where or f"{pair.optical} / {pair.sar}"
                raise io.DataError(f"{where}: {type(e).__name__}: {e}") from e
            done_windows += plan.windows[i]
            rate = done_windows / (time.perf_counter() - start)
            eta = (total - done_windows) / rate if rate > 0 else float("nan")
            area = "" if stats.km2 is None else f", {stats.km2:,.2f} km²"
            bar.write(
                f"{prefix}[{n}/{len(todo)}] {plan.outputs[i].labels}: {stats.pixels:,} pixels"
                f"{area}, {stats.windows} windows in {stats.seconds:.1f} s "
                f"({stats.windows_per_s:.2f} windows/s); ETA {_eta(eta)}",
                file=log,
            )
    finally:
        bar.close()
    return todo


def summary_of(plan: Plan, settings: dict, labelled: set[int], seconds: float) -> dict:
    """Each scene's record (from its label raster's ``ASANET_SCENE`` tag) and totals;
    `labelled`: the scenes labelled in this run (by any process)."""
    import rasterio

    records = []
    for i, (pair, paths) in enumerate(zip(plan.pairs, plan.outputs, strict=True)):
        record = {"optical": str(pair.optical), "sar": str(pair.sar), "output": str(paths.labels)}
        try:
            with rasterio.open(paths.labels) as src:
                record.update(json.loads(src.tags()[STATS_TAG]))
            record["status"] = "labelled" if i in labelled else "complete before this run"
        except (OSError, KeyError, ValueError, rasterio.errors.RasterioError):
            record["status"] = "missing: not written, or not visible to process 0"
        records.append(record)
    found = [r for r in records if "pixels" in r]
    ran = [r for i, r in enumerate(records) if i in labelled and "windows" in r]
    total_windows = sum(r["windows"] for r in ran)
    return {
        "kind": SUMMARY_KIND,
        "settings": settings,
        "scenes": records,
        "total": {
            "scenes": len(records),
            "labelled": len(ran),
            "complete_before": sum(r["status"].startswith("complete") for r in records),
            "missing": len(records) - len(found),
            "pixels": sum(r["pixels"] for r in found),
            "km2": round(sum(r.get("km2") or 0 for r in found), 3),
            "windows": total_windows,
            "seconds": round(seconds, 3),
            "windows_per_s": round(total_windows / seconds, 3) if total_windows else None,
        },
    }


def default_summary(pairs: list[Pair]) -> pathlib.Path | None:
    """Where a run's summary goes when none is named: predict_summary.json beside the
    first output for several scenes; none for one."""
    return pairs[0].output.parent / "predict_summary.json" if len(pairs) > 1 else None


def write_summary(path, data: dict) -> None:
    files.write_text(path, json.dumps(data, indent=2) + "\n")


def plan_digest(plan: Plan, settings: Settings) -> bytes:
    """What every process must agree on: the scenes, their keys and outputs, the options."""
    text = "\n".join(
        f"{key}|{[str(p) for p in paths.all()]}"
        for key, paths in zip(plan.keys, plan.outputs, strict=True)
    )
    options = f"{sorted(settings.extras.items())}|{settings.overwrite}"
    return hashlib.sha256(f"{text}|{options}".encode()).digest()[:8]


def predict_region(
    checkpoint,
    pairs: list[Pair],
    settings: Settings,
    *,
    dataset: str | None = None,
    data_dir=None,
    summary: pathlib.Path | None = None,
    new_folders=(),
    progress: bool = True,
    log=None,
) -> dict | None:
    """Label `pairs` with the model at `checkpoint` (a model directory, or an official
    file with `dataset` naming its dataset): what ``scripts/predict.py`` runs.

    In a multi-process run (``multihost.initialize`` first) every process gives the same
    arguments and labels its share; each gathering lets the processes stop together
    when one fails. Checks come first: folders that cannot be written before the model
    is read, then every pair (``check``); `new_folders` (a glob's output folder) are
    created once they pass. Process 0 writes `summary` at the end, if given, and
    returns it; the other processes, and a run without `summary`, return None. Messages
    go to `log` (stderr by default).
    """
    import jax

    import asanet_jax
    from asanet_jax import checkpointing, evaluation, multihost

    log = log or sys.stderr
    start = time.perf_counter()
    summary = pathlib.Path(summary) if summary is not None else None
    problems = unwritable_outputs(pairs, summary)
    # The first gathering also sets up the processes' links while the others start.
    multihost.agree(io.DataError(listing(problems)) if problems else None)
    plan, failure = None, None
    try:
        model, _, meta = asanet_jax.load(checkpoint)
        spec = checkpointing.model_dataset(meta, checkpoint, dataset, data_dir)
        evaluation.check_fits(model.config, spec)
        predictor = Predictor(model, multihost.local_mesh())
        batch_size = settings.batch_size or predictor.default_batch_size
        settings = dataclasses.replace(settings, batch_size=batch_size)
        predictor.check_batch(batch_size)
        digest = model_fingerprint(model, spec)
        plan = check(
            pairs,
            spec,
            settings,
            model=digest,
            min_side=model.config.min_input_side,
            summary=summary,
            new_folders=new_folders,
        )
    except (ValueError, OSError) as e:
        failure = e
    # Every process reaches each gathering, failed or not, so that none waits for one
    # that stopped; a failure here (a model one host cannot read, say) stops them all.
    multihost.agree(failure, plan_digest(plan, settings) if plan else b"")
    index, count = jax.process_index(), jax.process_count()
    if index == 0:
        devices = f"{predictor.devices} {jax.local_devices()[0].platform} device(s)"
        hosts = f" on each of {count} processes" if count > 1 else ""
        print(
            f"{len(pairs)} scene(s), batches of {batch_size} windows over {devices}{hosts}",
            file=log,
        )
    labelled, failure = [], None
    try:
        for folder in new_folders:  # once every check has passed on every process
            pathlib.Path(folder).mkdir(parents=True, exist_ok=True)
        labelled = run(
            predictor,
            plan,
            spec,
            settings,
            process_index=index,
            process_count=count,
            progress=progress,
            log=log,
        )
    except (ValueError, OSError) as e:
        failure = e
    # A barrier too: every process's scenes are written before process 0 sums them up.
    labelled = multihost.agree(failure, b"", labelled, len(pairs))
    if index != 0:
        return None
    if summary is None:
        written = ", ".join(str(p) for p in plan.outputs[0].all())
        print(f"wrote {written}" if labelled else f"complete already: {written}")
        return None
    data = summary_of(plan, settings.key(digest), set(labelled), time.perf_counter() - start)
    data["settings"]["package"] = asanet_jax.__version__
    write_summary(summary, data)
    t = data["total"]
    print(
        f"labelled {t['labelled']} scene(s), {t['complete_before']} complete before; "
        f"{t['pixels']:,} pixels, {t['km2']:,.2f} km² in {t['seconds']:.1f} s; "
        f"summary in {summary}",
        file=log,
    )
    return data
