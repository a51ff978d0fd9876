"""What a dataset was built from: a fingerprint of its source files, recorded with the build.

A build records, for each part of the source folder it reads (image folders, split files,
a dataset description), a digest of its content:

- a folder: every file's relative name and size and a BLAKE2b hash of its whole content
  (files and folders whose names start with '.' are left out);
- a file: a BLAKE2b hash of its whole content;
- a part that does not exist is recorded as missing.

Modification times are not part of it: an edit that keeps a file's size and time (as
``tar`` and ``rsync -t`` restore times) changes its hash, and a copy that changes only
times does not make a build stale. A later build, and every read of the build
(``build.open_split``), rehashes the recorded parts, so records built from files that
have since changed (relabelled, added, removed, a shortened split file) are never served
as current. Hashing reads every source file once per check, at about the disk's read
speed (a few seconds per GB).

A fingerprint recorded by an older asanet-jax (file names, sizes and times, no content
hashes; it has no ``"scheme"``) cannot rule out such edits, so the build it belongs to is
refused as stale too, with a request to rebuild it.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from concurrent.futures import ThreadPoolExecutor

# Recorded with every fingerprint; a recorded fingerprint of another scheme is stale.
SCHEME = "blake2b-content-1"
_CHUNK = 1 << 20


def file_hash(path: pathlib.Path) -> str:
    """BLAKE2b hex digest of the whole content of `path`, read in 1 MiB chunks."""
    digest = hashlib.blake2b()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _folder_digest(folder: pathlib.Path) -> tuple[str, int]:
    paths = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        paths.append(path)
    # hashlib releases the GIL on large buffers: files are hashed side by side.
    with ThreadPoolExecutor(max_workers=8) as pool:
        hashes = list(pool.map(file_hash, paths))
    entries = [
        (p.relative_to(folder).as_posix(), p.stat().st_size, h)
        for p, h in zip(paths, hashes, strict=True)
    ]
    return hashlib.blake2b(json.dumps(entries).encode()).hexdigest(), len(entries)


def fingerprint(root, parts: list[str]) -> dict:
    """{"scheme", "manual_dir", "parts": {part: {"digest", "files"}}} for `parts` under
    `root`: a folder's digest covers its files' names, sizes and contents, a file's its
    content; a missing part is recorded as such."""
    root = pathlib.Path(root).resolve()
    out = {}
    for part in parts:
        path = root / part
        if path.is_dir():
            digest, count = _folder_digest(path)
            out[part] = {"digest": digest, "files": count}
        elif path.is_file():
            out[part] = {"digest": file_hash(path), "files": 1}
        else:
            out[part] = {"digest": "missing", "files": 0}
    return {"scheme": SCHEME, "manual_dir": str(root), "parts": out}


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


def stale(recorded: dict, root=None) -> str | None:
    """Why a build with fingerprint `recorded` is not current (None: it is): its parts
    under `root` (by default the recorded source folder) fingerprinted anew differ. A
    recorded source folder that is gone is not checked (None): the build is all there is."""
    if recorded.get("scheme") != SCHEME:
        return (
            f"built from {recorded.get('manual_dir')} by an older asanet-jax, whose source "
            "fingerprint has no content hashes (names, sizes and times only), so edits "
            "that keep a file's size and time cannot be ruled out"
        )
    if root is None:
        root = pathlib.Path(recorded["manual_dir"])
        if not root.is_dir():
            return None
    changed = changes(recorded, fingerprint(root, list(recorded["parts"])))
    if not changed:
        return None
    return f"built from {recorded['manual_dir']}, and since then {'; '.join(changed)}"
