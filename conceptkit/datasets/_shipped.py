"""The weights files shipped with conceptkit, pinned by their SHA-256.

Four of the six shipped files (format version 1) carry no content digest, and a version-1 file
may lack one (conceptkit 0.1.0 wrote none), so the files are checked here instead: a file at a
shipped file's place in the package must be byte for byte the shipped file, unless it is a file
of a newer format version (a retrain with ``train_world`` or ``train_reference``, which always
carries a digest that :func:`conceptkit.io.load_file` checks). A version-1 file anywhere else
that carries a shipped file's record (a copy of it) must be that file too. Hashing a shipped
file takes about a millisecond (0.5-1.2 ms measured; they are 0.3-0.6 MB) and happens once per
file and cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..io import (
    _WRITTEN_WITHOUT_DIGEST,
    FormatError,
    carries_digest,
    file_sha256,
    load_file,
    peek_kind,
)

#: the folder of the shipped weights (where the package is installed, whatever tests patch)
SHIPPED_DIR = Path(__file__).resolve().parent / "weights"


@dataclass(frozen=True)
class ShippedFile:
    """One shipped weights file: its SHA-256, the SHA-256 of its record (:func:`record_sha256`),
    and the command that recreates it."""

    sha256: str
    record_sha256: str
    command: str


_WORLD = "python -m conceptkit.datasets.train_world --world {} --arch {}"

#: file name -> what the file shipped with this version of conceptkit is
SHIPPED: dict[str, ShippedFile] = {
    "reference_cnn.safetensors": ShippedFile(
        "a1b6e70a1e17feefeda3102c2f1ed68674e1c077ff62af4a16acb4623f796122",
        "70d13b5a9555289a02e4d1f6ece41ea0d131db8c9344850cf96e630daad9927c",
        "python -m conceptkit.datasets.train_reference"),
    "textures_resnet.safetensors": ShippedFile(
        "9da6e1c130fd40d8e8805b0c4b94605e747a21983d8137e130814a364513dfd4",
        "7b17b532ab2d6e31826bd12d2a869c923bbd3e298f72844457e2429744ce7a92",
        _WORLD.format("textures", "resnet")),
    "textures_vit.safetensors": ShippedFile(
        "99235a711da8d1a552f68e3877e86c90d3bdd3b23d96a09d4b782cc30ed821d3",
        "024ac5d7b19f9ed94cef722a7998ee62d57cb41ac838e6336eedaf4f0485bd72",
        _WORLD.format("textures", "vit")),
    "scales_resnet.safetensors": ShippedFile(
        "cd796bdb715fc56f99abeeb70d3f48514f1d79bf6941d55cbb8b1871cede5ae2",
        "6987593dc5a7647f957c2fa706b6b1f14cafea6242503dc4abe16f64d47f5325",
        _WORLD.format("scales", "resnet")),
    "context_vit.safetensors": ShippedFile(
        "9e0b46507e7a42c8246f8e55fcf9c0acddf3086ac8c435cfb0bae7d8881d374a",
        "adb9bb27b054d78beed917b3c48fad5829ed70f032707e888036160948873f9f",
        _WORLD.format("context", "vit")),
    "shapes_vit.safetensors": ShippedFile(
        "2b5bac8dbce74cf2df066a2c3d9693b4e39bf28efb3db17d3f87b0f281963943",
        "f09e1bda0290e6b46caf67557f1decbb09c74d438442ddad45ef29c88af9ce9c",
        _WORLD.format("shapes", "vit")),
}

_BY_RECORD = {entry.record_sha256: name for name, entry in SHIPPED.items()}


def record_sha256(meta: dict[str, Any]) -> str:
    """SHA-256 of a weights file's record (its canonical JSON): what identifies a copy of a
    shipped file whatever it is called."""
    text = json.dumps(meta, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _version(path: Path) -> int | None:
    """The format version a file says it has, or None where it is not readable as one."""
    try:
        return peek_kind(path)[1]
    except (OSError, ValueError):  # FormatError is a ValueError
        return None


def _signed(path: Path) -> bool:
    """Whether ``path`` carries a content digest (False where it cannot be read: load_file
    then says why)."""
    try:
        return carries_digest(path)
    except (OSError, ValueError):  # FormatError is a ValueError
        return False


def _shipped_place(path: Path) -> str | None:
    """The name of the shipped file whose place in the package ``path`` is, or None."""
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError):
        return None
    if resolved.name in SHIPPED and resolved.parent == SHIPPED_DIR:
        return resolved.name
    return None


def load_weights_file(path: str | os.PathLike, *, kind: str, versions: tuple[int, ...],
                      name: str = "path") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """:func:`conceptkit.io.load_file` for world-model and reference-CNN weights, with the
    shipped files checked against their pinned SHA-256.

    A file at a shipped file's place must be that file, or a file of a newer format version
    (whose digest ``load_file`` requires and checks); a file of an older version anywhere that
    carries a shipped file's record must be that file. Anything else is a :class:`FormatError`
    naming the file (``name`` is the argument that gave it). The record of a shipped file gets
    ``shipped: True`` where the file does not record it (the four files shipped before records
    said so).
    """
    path = Path(path)
    unsigned = _WRITTEN_WITHOUT_DIGEST.get(kind, ())  # the versions that may lack a digest
    place = _shipped_place(path)
    verified = None
    # a file with a content digest is checked by it (load_file): a retrain written over a
    # shipped file by an earlier conceptkit (version 1, with its digest) is not "damaged"
    signed = _signed(path)
    if place is not None:
        expected = SHIPPED[place]
        actual = file_sha256(path)
        if actual == expected.sha256:
            verified = place
        elif not signed and _version(path) in (None, *unsigned):
            raise FormatError(
                f"the shipped weights file {str(path)!r} is not the one conceptkit was shipped "
                f"with: its SHA-256 begins {actual[:16]}, the shipped file's {expected.sha256[:16]} "
                f"(it was damaged or edited after it was installed). Reinstall conceptkit, or "
                f"recreate the file with `{expected.command}`.")
    tensors, meta = load_file(path, kind=kind, version=versions)
    if verified is None and place is None:
        copy_of = _BY_RECORD.get(record_sha256(meta))
        if copy_of is not None:
            expected = SHIPPED[copy_of]
            actual = file_sha256(path)
            if actual != expected.sha256 and not signed:
                raise FormatError(
                    f"`{name}` {str(path)!r} carries the record of the shipped {copy_of} but not "
                    f"its content: its SHA-256 begins {actual[:16]}, the shipped file's "
                    f"{expected.sha256[:16]} (the copy was damaged or edited). Copy the shipped "
                    f"file again, or load the shipped model without a path.")
            if actual == expected.sha256:
                verified = copy_of
    if verified is not None:
        meta.setdefault("shipped", True)
    return tensors, meta
