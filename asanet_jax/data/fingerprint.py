"""What a dataset was built from: a fingerprint of its source files, recorded with the build.

A build records, for each part of the source folder it reads (image folders, split files,
a dataset description), a digest: for a folder, of every file's relative name, size and
modification time; for a file, of its content. A later build or read recomputes it from
the recorded parts, so records built from files that have since changed (relabelled,
added, removed, a shortened split file) are never served as current.
"""

from __future__ import annotations

import hashlib
import json
import pathlib


def _folder_digest(folder: pathlib.Path) -> tuple[str, int]:
    entries = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        stat = path.stat()
        entries.append((rel.as_posix(), stat.st_size, stat.st_mtime_ns))
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest(), len(entries)


def fingerprint(root, parts: list[str]) -> dict:
    """{"manual_dir", "parts": {part: {"digest", "files"}}} for `parts` under `root`.

    A part is a folder (digest of its files' names, sizes and modification times) or a
    file (digest of its content); a missing part is recorded as such.
    """
    root = pathlib.Path(root).resolve()
    out = {}
    for part in parts:
        path = root / part
        if path.is_dir():
            digest, count = _folder_digest(path)
            out[part] = {"digest": digest, "files": count}
        elif path.is_file():
            out[part] = {"digest": hashlib.sha256(path.read_bytes()).hexdigest(), "files": 1}
        else:
            out[part] = {"digest": "missing", "files": 0}
    return {"manual_dir": str(root), "parts": out}


def changes(recorded: dict, current: dict) -> list[str]:
    """Human-readable differences between two fingerprints of the same parts."""
    found = []
    for part, then in recorded["parts"].items():
        now = current["parts"].get(part, {"digest": "missing", "files": 0})
        if now["digest"] == then["digest"]:
            continue
        if now["digest"] == "missing":
            found.append(f"{part} was removed")
        elif then["files"] != now["files"]:
            found.append(f"{part} holds {now['files']} files, {then['files']} at the build")
        else:
            found.append(f"{part} changed")
    return found


def recheck(recorded: dict) -> list[str] | None:
    """Changes since `recorded` was taken, or None if its source folder is gone."""
    root = pathlib.Path(recorded["manual_dir"])
    if not root.is_dir():
        return None
    return changes(recorded, fingerprint(root, list(recorded["parts"])))
