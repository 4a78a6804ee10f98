"""Output folders that never mix in the files of an earlier run.

A writer that owns a folder (a class page's folder, the atlas report, the folder of
``conceptkit explain --out``) opens :func:`owned_folder` around its writes and calls
:func:`record` for every file. On success, the folder's manifest (``MANIFEST``) lists what this
run wrote; files that the previous run's manifest lists and this run did not write again are
deleted (with folders left empty by that). Files the writer never wrote are never touched: a
user's own notes in the folder stay, and a folder written before manifests existed is left as
it is.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

#: The manifest of what conceptkit wrote into a folder it owns.
MANIFEST = ".conceptkit-outputs.json"

_OPEN: list[tuple[Path, set[Path]]] = []


def record(path: str | os.PathLike) -> None:
    """Note that ``path`` was written by the innermost :func:`owned_folder` (no-op outside one)."""
    if _OPEN:
        _OPEN[-1][1].add(Path(path).resolve())


@contextlib.contextmanager
def owned_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Track the files written into ``folder`` in the block; on success remove the previous
    run's files that were not written again, and write the new manifest."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    root = folder.resolve()
    written: set[Path] = set()
    _OPEN.append((root, written))
    try:
        yield folder
    finally:
        _OPEN.pop()
    # (only reached on success: an exception above skips the clean-up)
    _remove_stale(root, written)
    manifest = root / MANIFEST
    listed = sorted(p.relative_to(root).as_posix() for p in written if _inside(p, root))
    manifest.write_text(json.dumps({"written": listed}, indent=0), encoding="utf-8")
    if _OPEN:  # a folder inside another owned folder: its files (and manifest) are the outer's
        _OPEN[-1][1].update(written | {manifest})


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return path != root


def _previous(root: Path) -> list[Path]:
    try:
        data = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    names = data.get("written") if isinstance(data, dict) else None
    if not isinstance(names, list):
        return []
    out = []
    for name in names:
        if isinstance(name, str) and name:
            path = (root / name).resolve()
            if _inside(path, root):  # a manifest edited to point elsewhere deletes nothing there
                out.append(path)
    return out


def _remove_stale(root: Path, written: set[Path]) -> None:
    for path in _previous(root):
        if path in written or not path.is_file() or path.is_symlink():
            continue
        path.unlink()
        parent = path.parent
        while parent != root and _inside(parent, root):
            try:
                parent.rmdir()  # only when empty
            except OSError:
                break
            parent = parent.parent
