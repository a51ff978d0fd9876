"""The package list, found rather than written out: every package under asanet_jax/, and
every package of each folder that pyproject.toml's package-dir installs under another
name (tfds_builders/ as asanet_jax.tfds_builders), so a new subpackage, dataset builder
or mapped folder needs no line anywhere. pyproject.toml holds everything else;
setuptools' `packages.find` cannot put a folder's packages under another name, hence
this file."""

import setuptools
from setuptools import find_namespace_packages, find_packages


def found(package_dir: dict[str, str]) -> list[str]:
    # Namespace packages too: asanet_jax/data/ has no __init__.py.
    packages = find_namespace_packages(
        include=["asanet_jax", "asanet_jax.*"], exclude=["*__pycache__*"]
    )
    for name, folder in package_dir.items():
        if name:
            packages += [name, *(f"{name}.{sub}" for sub in find_packages(folder))]
    return sorted(set(packages))


class Distribution(setuptools.Distribution):
    """Finds the packages once pyproject.toml (with its package-dir) has been read."""

    def parse_config_files(self, *args, **kwargs):
        super().parse_config_files(*args, **kwargs)
        self.packages = found(self.package_dir or {})


setuptools.setup(distclass=Distribution)
