"""The scenes of a region: a list file, two globs paired by what their wildcards match,
or one pair.

- ``read_list``: a CSV, or whitespace-separated lines, of optical, SAR and output paths.
- ``match_globs``: the parts the wildcards match pair the files and name the outputs.
- ``pairs_from_args``: whichever of those a command line gives.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import pathlib
import re

from asanet_jax.data import io

HEADER = ["optical", "sar", "output"]


@dataclasses.dataclass(frozen=True)
class Pair:
    """One scene to label; `where` names its origin in messages ("scenes.csv line 4")."""

    optical: pathlib.Path
    sar: pathlib.Path
    output: pathlib.Path
    where: str = ""


def read_list(path) -> list[Pair]:
    """Pairs from a list file: a .csv (comma-separated, quoted as CSV quotes), or lines of
    three whitespace-separated paths. An optional ``optical,sar,output`` header, blank
    lines and ``#`` comments are skipped; relative paths are taken from the list's folder.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise io.DataError(f"{path}: scene list not found")
    lines = io.read_text(path, "scene list").splitlines()  # a spreadsheet's BOM too
    rows = (
        csv.reader(lines, skipinitialspace=True)
        if path.suffix.lower() == ".csv"
        else (ln.split() for ln in lines)
    )
    pairs, problems = [], []
    for number, row in enumerate(rows, 1):
        row = [field.strip() for field in row]
        if not any(row) or row[0].startswith("#"):
            continue
        if [f.lower() for f in row] == HEADER and not pairs and not problems:
            continue
        where = f"{path} line {number}"
        if len(row) != 3:
            problems.append(
                f"{where}: expected optical, SAR and output paths; found {len(row)} field(s)"
            )
            continue
        optical, sar, output = (path.parent / field for field in row)
        pairs.append(Pair(optical, sar, output, where))
    if problems:
        raise io.DataError("\n".join(problems))
    if not pairs:
        raise io.DataError(f"{path}: no scenes listed")
    return pairs


def _pattern(glob: str) -> re.Pattern:
    """A regex for a (normalised) glob whose groups capture what each wildcard matched,
    with fnmatch's rules: ``*`` and ``?`` stay within a folder, ``**/`` spans folders,
    ``[...]`` is a class (``[!...]`` its complement), an unclosed ``[`` is literal."""
    out, i, n = [], 0, len(glob)
    while i < n:
        c = glob[i]
        if glob.startswith("**/", i):
            out.append("((?:[^/]*/)*)")
            i += 3
            continue
        i += 1
        if c == "*":
            out.append("([^/]*)")
        elif c == "?":
            out.append("([^/])")
        elif c == "[":
            j = i + (glob[i : i + 1] == "!")
            j += glob[j : j + 1] == "]"  # a ']' first in a class is literal
            while j < n and glob[j] != "]":
                j += 1
            if j >= n:
                out.append(re.escape(c))
                continue
            body = glob[i:j].replace("\\", "\\\\")
            i = j + 1
            if body.startswith("!"):
                body = "^" + body[1:]
            elif body.startswith("^"):
                body = "\\" + body
            out.append(f"([{body}])")
        else:
            out.append(re.escape(c))
    return re.compile("".join(out))


def _matches(glob: str, flag: str) -> dict[tuple[str, ...], pathlib.Path]:
    normalised = os.path.normpath(glob)  # './S2/*.tif' and 'S2//*.tif' are 'S2/*.tif'
    absolute = os.path.isabs(normalised)
    root = pathlib.Path(normalised).anchor if absolute else "."
    try:
        pattern = _pattern(normalised)
        found_paths = sorted(
            pathlib.Path(root).glob(normalised[len(root) :] if absolute else normalised)
        )
    except (re.error, ValueError) as e:
        raise io.DataError(f"{flag} {glob!r} is not a valid glob ({e})") from None
    found = {}
    for path in found_paths:
        m = pattern.fullmatch(str(path) if absolute else path.as_posix())
        if m and path.is_file():
            found[m.groups()] = path
    return found


def match_globs(optical_glob: str, sar_glob: str, output_dir) -> list[Pair]:
    """Pairs from two globs: an optical and a SAR file pair up when their wildcards
    matched the same text, and that text names the output (``output_dir/<text>.tif``,
    several wildcards joined by '_'). A file without a partner is an error."""
    optical, sar = _matches(optical_glob, "--optical"), _matches(sar_glob, "--sar")
    if not optical:
        raise io.DataError(f"--optical {optical_glob!r} matches no file")
    if not sar:
        raise io.DataError(f"--sar {sar_glob!r} matches no file")
    problems = [
        f"{optical[k]} has no SAR partner among {sar_glob!r}" for k in optical if k not in sar
    ] + [f"{sar[k]} has no optical partner among {optical_glob!r}" for k in sar if k not in optical]
    if problems:
        raise io.DataError("\n".join(problems))
    pairs = []
    for key in sorted(optical):
        name = "_".join(part.strip("/").replace("/", "_") for part in key) or optical[key].stem
        pairs.append(Pair(optical[key], sar[key], pathlib.Path(output_dir) / f"{name}.tif"))
    return pairs


GLOB_CHARS = "*?["


def pairs_from_args(
    optical: str | None = None,
    sar: str | None = None,
    output: str | None = None,
    output_dir: str | None = None,
    scenes: str | None = None,
) -> list[Pair]:
    """The scenes a command line names: a list file (`scenes`), two globs (`optical`,
    `sar`) written into `output_dir` (not created here), or one pair and its `output`.

    Raises:
      ValueError: a combination that names no scenes, or two ways at once.
    """
    named = {"optical": optical, "sar": sar, "output": output, "output_dir": output_dir}
    given = [f"--{name}" for name, value in named.items() if value]
    if scenes:
        if given:
            raise ValueError(f"--scenes lists the scenes; drop {', '.join(given)}")
        return read_list(scenes)
    if not (optical and sar):
        raise ValueError("give --optical and --sar (files or globs), or --scenes")
    if any(c in optical + sar for c in GLOB_CHARS):
        if not output_dir or output:
            raise ValueError("globs write into --output_dir (and take no --output)")
        return match_globs(optical, sar, output_dir)
    if not output or output_dir:
        raise ValueError("one scene writes --output (--output_dir is for globs)")
    return [Pair(pathlib.Path(optical), pathlib.Path(sar), pathlib.Path(output))]
