"""Forge saved files as a deliberate attacker would: edit the metadata or tensors of a valid
file and re-sign its content digest, so that the loader's consistency checks (not the digest)
must catch what is wrong. (pytest puts this folder on ``sys.path``.)"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from conceptkit import io


def forge(source: Path, target: Path, edit: Callable[[dict, dict[str, torch.Tensor]], None],
          *, sign: bool = True) -> Path:
    """Copy ``source`` to ``target`` with ``edit(info, tensors)`` applied (in place)."""
    data = source.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    info = json.loads(header["__metadata__"][io.FORMAT_NAME])
    tensors = load_file(str(source))
    edit(info, tensors)
    if sign:
        info["digest"] = io._content_digest(info, tensors)
    target.write_bytes(save(tensors, metadata={io.FORMAT_NAME: json.dumps(info)}))
    return target


def raw_metadata(source: Path, target: Path, text: str) -> Path:
    """Copy ``source`` with its conceptkit metadata replaced by the raw JSON ``text``."""
    tensors = load_file(str(source))
    target.write_bytes(save(tensors, metadata={io.FORMAT_NAME: text}))
    return target


def set_meta(*keys: str, value):
    """An ``edit`` for :func:`forge` setting ``info["meta"][keys[0]][keys[1]]... = value``."""
    def edit(info: dict, tensors: dict[str, torch.Tensor]) -> None:
        node = info["meta"]
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    return edit
