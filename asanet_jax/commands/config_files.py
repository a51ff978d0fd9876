"""``--config configs/<name>.py[:variant]`` from any folder: a path that does not exist
is looked up among the configs installed with the package (``asanet_jax.configs``, the
repository's ``configs/`` folder)."""

from __future__ import annotations

import importlib.resources
import pathlib


def bundled_dir() -> pathlib.Path:
    """The folder of the configs installed with the package."""
    return pathlib.Path(str(importlib.resources.files("asanet_jax.configs")))


def resolve(value: str) -> str:
    """`value` (``path[:variant]``) with a path that does not exist replaced by the
    installed config of that file name, when there is one; otherwise unchanged (the
    config flag then reports the missing file)."""
    path, sep, variant = value.partition(":")
    given = pathlib.Path(path)
    if given.is_file() or given.parent.name not in ("", "configs"):
        return value
    found = bundled_dir() / given.name
    return f"{found}{sep}{variant}" if found.is_file() else value


def resolve_argv(argv: list[str], flag: str = "--config") -> list[str]:
    """`argv` with the value of `flag` (``--config X`` or ``--config=X``) resolved."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == flag and i + 1 < len(out):
            out[i + 1] = resolve(out[i + 1])
        elif arg.startswith(flag + "="):
            out[i] = f"{flag}={resolve(arg[len(flag) + 1 :])}"
    return out
