"""Output folders that never mix in the files of an earlier run.

A writer that owns a folder (a class page's folder, the atlas report, the folder of
``conceptkit explain --out``) opens :func:`owned_folder` around its writes, under its own name
(``owner``), and calls :func:`record` for every file. On success, the folder's manifest
(``MANIFEST``) lists, per owner, what its last run wrote; files that this owner's previous run
listed and this run did not write again are deleted (with folders left empty by that). Other
owners' files are never touched (a report written into the folder of ``conceptkit explain``
leaves its ``explanation.safetensors`` be), nor files no writer wrote: a user's own notes stay,
and a folder written before manifests existed is left as it is.
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
def owned_folder(folder: str | os.PathLike, owner: str) -> Iterator[Path]:
    """Track the files written into ``folder`` in the block; on success remove the files of
    ``owner``'s previous run that were not written again, and update the manifest."""
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
    owners = _manifest(root)
    others = {p for name, paths in owners.items() if name != owner for p in paths}
    _remove_stale(root, set(owners.get(owner, [])) - others, written)
    manifest = root / MANIFEST
    owners[owner] = sorted(p for p in written if _inside(p, root))
    listed = {name: [p.relative_to(root).as_posix() for p in paths]
              for name, paths in sorted(owners.items())}
    manifest.write_text(json.dumps({"written": listed}, indent=1), encoding="utf-8")
    if _OPEN:  # a folder inside another owned folder: its files (and manifest) are the outer's
        _OPEN[-1][1].update(written | {manifest})


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return path != root


def _manifest(root: Path) -> dict[str, list[Path]]:
    """Per owner, the files its last run wrote (inside ``root`` only: a manifest edited to
    point elsewhere deletes nothing there)."""
    try:
        data = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    owners = data.get("written") if isinstance(data, dict) else None
    if not isinstance(owners, dict):
        return {}
    out: dict[str, list[Path]] = {}
    for name, names in owners.items():
        if not isinstance(name, str) or not isinstance(names, list):
            continue
        paths = [(root / n).resolve() for n in names if isinstance(n, str) and n]
        out[name] = [p for p in paths if _inside(p, root)]
    return out


def _remove_stale(root: Path, previous: set[Path], written: set[Path]) -> None:
    for path in sorted(previous):
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
