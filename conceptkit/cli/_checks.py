"""Checks every command runs on its arguments before any work, with one-line errors."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


class CommandError(ValueError):
    """A user error on the command line: printed as one ``error: ...`` line, exit status 2."""


def check_counts(args: argparse.Namespace, minimums: dict[str, int]) -> None:
    """Each ``args.<name>`` that was given must be an integer >= its minimum (``--size 0`` is an
    error, never "the default")."""
    for name, minimum in minimums.items():
        value = getattr(args, name, None)
        if value is not None and value < minimum:
            flag = "--" + name.replace("_", "-")
            raise CommandError(f"`{flag}` must be at least {minimum}; got {value}.")


def check_seed_flag(seed: int | None, flag: str = "--seed") -> None:
    """A seed numpy and scikit-learn can take, checked before any work."""
    from .._validation import MAX_SEED

    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise CommandError(f"`{flag}` must be an integer in [0, {MAX_SEED}]; got {seed}.")


def check_out_dir(out: str | None, flag: str = "--out") -> None:
    """``--out`` names a directory (created when missing): an existing file is refused."""
    if out is None:
        return
    if not str(out).strip():
        raise CommandError(f"`{flag}` is empty; give a directory (it is created when missing).")
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise CommandError(f"`{flag}` {out!r} is a file; give a directory (it is created when "
                           f"missing).")
    parent = next((p for p in path.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise CommandError(f"`{flag}` {out!r} lies under {str(parent)!r}, which is a file.")
    if parent is not None and not path.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise CommandError(f"`{flag}` {out!r} cannot be created: {str(parent)!r} is not "
                           f"writable. Give a directory you can write to.")
