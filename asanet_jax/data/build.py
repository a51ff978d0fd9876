"""Build a TFDS dataset from Python (no TensorFlow needed) and open a built one for reading."""

from __future__ import annotations

import importlib
import pathlib
import shutil

import tensorflow_datasets as tfds

from asanet_jax import files
from asanet_jax.data import fingerprint, io


class NotBuiltError(io.DataError):
    """The dataset has not been built under the data directory."""


BUILDERS = ("pie_rgb_sar", "ddhr_sk", "whu_opt_sar", "rgb_sar_folder", "synthetic_rgb_sar")


def builder_class(name: str) -> type[tfds.core.GeneratorBasedBuilder]:
    """The builder class of one of our datasets, by TFDS name."""
    if name not in BUILDERS:
        raise KeyError(f"unknown dataset {name!r}; expected one of {list(BUILDERS)}")
    module = importlib.import_module(f"tfds_builders.{name}.{name}_dataset_builder")
    return module.Builder


class StaleError(io.DataError):
    """A built dataset whose source files changed since it was built."""


def build(
    name: str,
    data_dir: str | pathlib.Path,
    manual_dir: str | pathlib.Path | None = None,
    config=None,
    overwrite: bool = False,
    **builder_kwargs,
) -> tfds.core.DatasetBuilder:
    """Build `name` into `data_dir` as ArrayRecord (the format grain reads).

    A dataset already built there is reused if its source files are unchanged (see
    `fingerprint.py`). If they changed, this raises StaleError naming what changed,
    unless `overwrite`, which removes that build (and nothing else) and builds anew.
    """

    def make():
        return builder_class(name)(
            data_dir=str(data_dir), file_format="array_record", config=config, **builder_kwargs
        )

    builder = make()
    built = pathlib.Path(builder.data_dir)
    if (built / "dataset_info.json").is_file():
        if overwrite:
            shutil.rmtree(built)
            builder = make()
        elif manual_dir is not None:
            recorded = (builder.info.metadata or {}).get("source")
            current = fingerprint.fingerprint(
                manual_dir, list(recorded["parts"]) if recorded else []
            )
            changed = fingerprint.changes(recorded, current) if recorded else []
            if changed:
                raise StaleError(
                    f"{built}: built from {recorded['manual_dir']}, and since then "
                    f"{'; '.join(changed)}; rebuild with --overwrite"
                )
    download_config = tfds.download.DownloadConfig(
        manual_dir=str(manual_dir) if manual_dir is not None else None
    )
    # TFDS writes into a temporary folder and renames it when complete; the empty folders
    # it creates around it are removed too when the build fails.
    created = [p for p in _scaffolding(pathlib.Path(data_dir), name) if not p.exists()]
    try:
        with files.disk_errors_as_oserror(data_dir):
            builder.download_and_prepare(download_config=download_config)
    except BaseException:
        for path in created:
            _remove_if_empty(path)
        raise
    return builder


def _scaffolding(data_dir: pathlib.Path, name: str) -> list[pathlib.Path]:
    return [data_dir / name, data_dir / "downloads", data_dir]


def _remove_if_empty(path: pathlib.Path) -> None:
    """Remove `path` if it holds nothing but empty folders."""
    if path.is_dir() and not any(p.is_file() or p.is_symlink() for p in path.rglob("*")):
        shutil.rmtree(path)


def _versions(root: pathlib.Path) -> list[tuple[tfds.core.Version, pathlib.Path]]:
    found = []
    if root.is_dir():
        for d in root.iterdir():
            if (d / "dataset_info.json").is_file():
                try:
                    found.append((tfds.core.Version(d.name), d))
                except ValueError:
                    continue
    return found


def builder_dir(data_dir: str | pathlib.Path, name: str, config: str | None = None) -> pathlib.Path:
    """The newest built version of `name` under `data_dir`: of `config` when given, else of
    the builder's only config or its 'default' one."""
    root = pathlib.Path(data_dir) / name
    if config is None and not _versions(root) and root.is_dir():
        configs = sorted(d.name for d in root.iterdir() if d.is_dir() and _versions(d))
        if len(configs) > 1 and "default" not in configs:
            raise io.DataError(f"{root}: several configs built {configs}; choose one with config=")
        if configs:
            config = "default" if "default" in configs else configs[0]
    if config:
        root = root / config
    versions = _versions(root)
    if not versions:
        raise NotBuiltError(
            f"{root}: no built dataset {name!r} found; build it first "
            f"(tfds build tfds_builders/{name} --data_dir {data_dir} ...)"
        )
    return max(versions)[1]


def open_split(data_dir, name: str, split: str, config: str | None = None):
    """(random-access source of `split`, DatasetInfo) of a built dataset, read without TF."""
    builder = tfds.builder_from_directory(str(builder_dir(data_dir, name, config)))
    recorded = (builder.info.metadata or {}).get("source")
    changed = fingerprint.recheck(recorded) if recorded else None
    if changed:
        raise StaleError(
            f"{builder.data_dir}: built from {recorded['manual_dir']}, and since then "
            f"{'; '.join(changed)}; rebuild it (scripts/build_dataset.py {name} --manual_dir "
            f"{recorded['manual_dir']} --data_dir {data_dir} --overwrite)"
        )
    if split not in builder.info.splits:
        raise io.DataError(
            f"dataset {builder.info.full_name}: no split {split!r}; "
            f"available: {sorted(builder.info.splits)}"
        )
    return builder.as_data_source(split), builder.info
