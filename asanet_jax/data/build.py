"""Build a TFDS dataset from Python (no TensorFlow needed) and open a built one for reading."""

from __future__ import annotations

import importlib
import pathlib

import tensorflow_datasets as tfds

from asanet_jax.data import io


class NotBuiltError(io.DataError):
    """The dataset has not been built under the data directory."""


BUILDERS = ("pie_rgb_sar", "ddhr_sk", "whu_opt_sar", "rgb_sar_folder", "synthetic_rgb_sar")


def builder_class(name: str) -> type[tfds.core.GeneratorBasedBuilder]:
    """The builder class of one of our datasets, by TFDS name."""
    if name not in BUILDERS:
        raise KeyError(f"unknown dataset {name!r}; expected one of {list(BUILDERS)}")
    module = importlib.import_module(f"tfds_builders.{name}.{name}_dataset_builder")
    return module.Builder


def build(
    name: str,
    data_dir: str | pathlib.Path,
    manual_dir: str | pathlib.Path | None = None,
    config=None,
    **builder_kwargs,
) -> tfds.core.DatasetBuilder:
    """Build `name` into `data_dir` as ArrayRecord (the format grain reads)."""
    builder = builder_class(name)(
        data_dir=str(data_dir), file_format="array_record", config=config, **builder_kwargs
    )
    download_config = tfds.download.DownloadConfig(
        manual_dir=str(manual_dir) if manual_dir is not None else None
    )
    builder.download_and_prepare(download_config=download_config)
    return builder


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
    if split not in builder.info.splits:
        raise io.DataError(
            f"dataset {builder.info.full_name}: no split {split!r}; "
            f"available: {sorted(builder.info.splits)}"
        )
    return builder.as_data_source(split), builder.info
