"""Build a TFDS dataset from Python (no TensorFlow needed), and open a built one.

``open_or_build`` is what training, evaluation and the notebook call: the split of a
built dataset, built first when it is missing and can be built.
"""

from __future__ import annotations

import dataclasses
import importlib
import pathlib
import shutil

import tensorflow_datasets as tfds

from asanet_jax import files
from asanet_jax.data import fingerprint, io, specs


class NotBuiltError(io.DataError):
    """The dataset has not been built under the data directory."""


# The datasets with a TFDS builder (tfds_builders/<name>/), from the registry in specs.py.
BUILDERS = specs.BUILDERS


def builder_class(name: str) -> type[tfds.core.GeneratorBasedBuilder]:
    """The builder class of one of our datasets, by TFDS name."""
    if name not in BUILDERS:
        raise KeyError(f"unknown dataset {name!r}; expected one of {list(BUILDERS)}")
    module = importlib.import_module(f"asanet_jax.tfds_builders.{name}.{name}_dataset_builder")
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

    cls = builder_class(name)
    derived = cls.config_for(manual_dir) if manual_dir is not None else None
    if derived is not None:  # rgb_sar_folder: the config is the dataset's own name
        given = getattr(config, "name", config)
        if given not in (None, derived.name):
            raise io.DataError(
                f"{manual_dir}: its dataset description names the dataset {derived.name!r}, "
                f"but config {given!r} was asked for"
            )
        config = derived

    def make():
        return cls(
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
            root = pathlib.Path(manual_dir)
            reason = fingerprint.stale(recorded, builder.data_root(root)) if recorded else None
            if reason:
                raise StaleError(f"{built}: {reason}; rebuild with --overwrite")
    download_config = tfds.download.DownloadConfig(
        manual_dir=str(manual_dir) if manual_dir is not None else None
    )
    # TFDS writes into a temporary folder and renames it when complete; the folders it
    # creates around it are removed too when the build fails.
    scaffolding = _scaffolding(pathlib.Path(data_dir), name, pathlib.Path(builder.data_dir))
    created = [p for p in scaffolding if not p.exists()]
    try:
        with files.disk_errors_as_oserror(data_dir):
            builder.download_and_prepare(download_config=download_config)
    except BaseException:
        for path in created:
            _remove_if_empty(path)
        raise
    return builder


def _scaffolding(data_dir: pathlib.Path, name: str, built: pathlib.Path) -> list[pathlib.Path]:
    """What TFDS creates around the build `built` of `name`, innermost first: the folder of
    its config (builders with configs), `<name>/.config` (TFDS's record of the builder's
    default config, written as a build starts), `<name>`, `downloads` and `data_dir`."""
    return [
        built.parent,
        data_dir / name / ".config",
        data_dir / name,
        data_dir / "downloads",
        data_dir,
    ]


def _remove_if_empty(path: pathlib.Path) -> None:
    """Remove `path` if it holds nothing but empty folders (and, for `.config`, TFDS's
    record of the default config, which only a build writes)."""
    kept = {path / "metadata.json"} if path.name == ".config" else set()
    if path.is_dir() and not any(
        (p.is_file() or p.is_symlink()) and p not in kept for p in path.rglob("*")
    ):
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
    reason = fingerprint.stale(recorded) if recorded else None
    if reason:
        raise StaleError(
            f"{builder.data_dir}: {reason}; rebuild it (scripts/build_dataset.py {name} "
            f"--manual_dir {recorded['manual_dir']} --data_dir {data_dir} --overwrite)"
        )
    if split not in builder.info.splits:
        raise io.DataError(
            f"dataset {builder.info.full_name}: no split {split!r}; "
            f"available: {sorted(builder.info.splits)}"
        )
    return builder.as_data_source(split), builder.info


@dataclasses.dataclass(frozen=True)
class Source:
    """A split of a built dataset: random-access records plus the dataset's spec."""

    records: object
    spec: specs.DatasetSpec
    name: str
    split: str
    config: str | None = None  # the TFDS builder config, when the builder has configs

    def __len__(self) -> int:
        return len(self.records)


def _recorded_spec(info) -> specs.DatasetSpec:
    spec_dict = info.metadata.get("spec") if info.metadata else None
    if spec_dict is None:
        raise io.DataError(f"{info.data_dir}: dataset has no recorded spec; rebuild it")
    return specs.DatasetSpec.from_dict(dict(spec_dict))


def open_source(data_dir, name: str, split: str | None = None, config: str | None = None) -> Source:
    """Open `split` (default: the dataset's evaluation split) of a built dataset."""
    if split is None:
        builder = tfds.builder_from_directory(str(builder_dir(data_dir, name, config)))
        split = _recorded_spec(builder.info).eval_split
    records, info = open_split(data_dir, name, split, config)
    if len(records) == 0:
        raise io.DataError(f"{info.data_dir}: split {split!r} is empty")
    return Source(records, _recorded_spec(info), name, split, info.config_name or None)


def open_or_build(data, split: str | None = None, *, sync=lambda name: None) -> Source:
    """The split of ``config.data``'s dataset (default: its evaluation split), building the
    dataset first when it is missing and can be built (synthetic data, or a source folder
    in ``data.manual_dir``). In a multi-host run only process 0 builds; ``sync`` is the
    barrier the others wait at.
    """
    import jax

    tfds_config = data.tfds_config
    if tfds_config is None and data.manual_dir is not None:
        tfds_config = getattr(builder_class(data.name).config_for(data.manual_dir), "name", None)
    try:
        return open_source(data.data_dir, data.name, split, tfds_config)
    except NotBuiltError as missing:
        if data.manual_dir is None and data.name != "synthetic_rgb_sar":
            raise io.DataError(
                f"{missing}; or set --config.data.manual_dir to the source dataset"
            ) from None
        if jax.process_index() == 0:
            build(data.name, data.data_dir, data.manual_dir, config=data.tfds_config)
        sync("dataset built")
    return open_source(data.data_dir, data.name, split, tfds_config)


class _Subset:
    def __init__(self, records, indices):
        self.records, self.indices = records, list(indices)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return self.records[self.indices[i]]


def subset(source: Source, count: int) -> Source:
    """The first `count` examples of a split (e.g. for a quick look in a notebook)."""
    if not 0 < count <= len(source):
        raise ValueError(f"count={count}; {source.name}/{source.split} has {len(source)}")
    return dataclasses.replace(source, records=_Subset(source.records, range(count)))
