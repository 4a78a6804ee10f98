"""Checks every command runs on its arguments before any work, with one-line errors."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any


class CommandError(ValueError):
    """A user error on the command line: printed as one ``error: ...`` line, exit status 2."""


#: Argument names of :func:`conceptkit.models.load` (and of the loaders it calls) in its errors,
#: and the words a command line user reads instead: the flag they typed.
_LOAD_TERMS = {"`weights`": "`--weights`", "`spec`": "`--model`",
               "`name`": "the world name in `--model`",
               "`arch`": "the architecture in `--model`"}


#: ``--weights`` of the commands that load a model by name.
WEIGHTS_HELP = ("a local weights file (.safetensors or a .pt/.pth state dict); online: DEFAULT "
                "(torchvision), pretrained (timm) or an open_clip tag (e.g. openai); 'random' "
                "explains a randomly initialised torchvision/timm/open_clip network on purpose "
                "(default: the shipped weights of reference, efficientnet_lite0 and the worlds' models; "
                "torchvision/timm/open_clip models need one of these: without --weights they are "
                "refused)")


#: The model families whose networks are built without weights unless asked for, and the
#: ``--weights`` that downloads theirs.
HUB_WEIGHTS = {"torchvision": "`--weights DEFAULT` (torchvision's, downloaded)",
               "timm": "`--weights pretrained` (timm's, downloaded)",
               "open_clip": "an open_clip tag such as `--weights openai` (downloaded)"}


def _known_hub_model(spec: str) -> bool:
    """Whether the library of ``spec`` (``torchvision:NAME`` ...) knows its name: a typo is
    said as a typo (by the loader), not as missing weights."""
    family, _, name = spec.partition(":")
    try:
        if family == "torchvision":
            import torchvision

            return name in torchvision.models.list_models()
        if family == "timm":
            import timm

            return ":" in name or timm.is_model(name)
        import open_clip

        return (name.startswith(("hf-hub:", "local-dir:"))
                or open_clip.get_model_config(name) is not None)
    except ImportError:
        return True  # the loader says which package is missing


def load_model_flags(spec: str, weights: str | None) -> Any:
    """:func:`conceptkit.models.load` for a command: an error names ``--model`` / ``--weights``
    (the flags the user typed), not the Python arguments."""
    from ..models import load

    family = spec.partition(":")[0] if isinstance(spec, str) else ""
    if weights is None and family in HUB_WEIGHTS and _known_hub_model(spec):
        raise CommandError(f"`--weights` is required with `--model {spec}`: without it the "
                           f"network is randomly initialised and its explanation means nothing. "
                           f"Give a local weights file (.safetensors or a .pt/.pth state dict), "
                           f"{HUB_WEIGHTS[family]}, or `--weights random` to explain the "
                           f"random network on purpose.")
    try:
        return load(spec, weights)
    except (ValueError, TypeError, OSError) as err:
        message = str(err)
        for name, flag in _LOAD_TERMS.items():
            message = message.replace(name, flag)
        if message == str(err):
            raise
        raise CommandError(message) from err


def command_line_terms(message: str, flags: Mapping[str, str]) -> str:
    """A message of the Python API in a command's terms: each argument name of ``flags`` becomes
    the option that sets it (`` `n_concepts` `` → `` `--n-concepts` ``, ``method='ice'`` →
    ``--method ice``, ``epochs=40`` → ``--epochs 40``, ``n_concepts <= 64`` →
    ``--n-concepts <= 64``)."""
    for name, flag in flags.items():
        message = message.replace(f"`{name}`", f"`{flag}`")
        message = re.sub(rf"(?<![\w`-]){name}='([^']*)'", rf"{flag} \1", message)
        message = re.sub(rf"(?<![\w`-]){name}=(-?\d[\w.+-]*)", rf"{flag} \1", message)
        message = re.sub(rf"(?<![\w`-]){name}(?= ?(?:<=|>=|<|>) ?-?\d)", flag, message)
        # a switch: "Pass overwrite=True (on the command line --overwrite)" -> "Pass --overwrite"
        message = re.sub(rf"(?<![\w`-]){name}=True(?: \(on the command line {re.escape(flag)}\))?",
                         flag, message)
    return message


class _TermsWarningFormat:
    """``warnings.formatwarning`` of a command: ``warning: <message in its terms>``, without the
    file name and the source line of the library code that warned (they mean nothing to a user
    of the command line)."""

    def __init__(self, flags: Mapping[str, str]):
        self.flags = flags

    def __call__(self, message: Any, category: type, filename: str, lineno: int,
                 line: str | None = None) -> str:
        text = " ".join(command_line_terms(str(message), self.flags).split())
        return f"warning: {text}\n"


@contextlib.contextmanager
def command_terms(flags: Mapping[str, str], more_images: str | None = None) -> Iterator[None]:
    """Run a command's work: a ``ValueError``, ``TypeError`` or ``OSError`` of the library whose
    message names its Python arguments becomes a :class:`CommandError` naming the command's
    options instead (any other is raised as it is), and
    a warning is printed as one ``warning: ...`` line in the same terms (no source line).
    ``more_images`` is the option that gives more images, for ACE's advice (see
    :func:`without_missing_options`)."""
    original = warnings.formatwarning
    warnings.formatwarning = _TermsWarningFormat(flags)
    try:
        yield
    except (ValueError, TypeError, OSError) as err:
        message = command_line_terms(str(err), flags)
        if more_images is not None:
            message = without_missing_options(message, more_images)
        if message == str(err):
            raise
        raise CommandError(message) from err
    finally:
        warnings.formatwarning = original


def show_progress(quiet: bool) -> bool:
    """Progress bars on the command line: not with ``--quiet``, and only when stderr is a
    terminal (redrawn with carriage returns, a bar is noise in a log file)."""
    if quiet:
        return False
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # a replaced or closed stderr
        return False


def without_missing_options(message: str, more_images: str) -> str:
    """Advice of a library error in a command's terms: ACE's ``min_cluster_size`` has no flag,
    so "lower `min_cluster_size`" becomes what the command can do (``more_images``, the flag
    that gives more images, or ``--method ice``)."""
    return message.replace("Pass more images or lower `min_cluster_size`.",
                           f"Pass more images ({more_images}) or use `--method ice` (ACE's "
                           f"`min_cluster_size` has no option in this command).")


class _DeprecatedAlias(argparse.Action):
    """The old name of a renamed option: hidden from ``--help``, it does what the new option does
    after a one-line deprecation warning on stderr. Both names given with different values is
    refused (see :class:`_Spellings`)."""

    def __init__(self, option_strings: list[str], dest: str, *, target: argparse.Action,
                 spellings: _Spellings, **kwargs: Any):
        self.target = target
        self.spellings = spellings
        super().__init__(option_strings, dest, nargs=target.nargs, const=target.const,
                         type=target.type, choices=target.choices, metavar=target.metavar,
                         default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        from .._deprecation import REMOVED_IN

        print(f"warning: `{option_string}` is deprecated and will be removed in conceptkit "
              f"{REMOVED_IN}; use `{self.target.option_strings[0]}` instead.", file=sys.stderr)
        self.target(parser, namespace, values, option_string)


class _Spellings:
    """The values given under each name of a renamed option, in one parse: the old and the new
    name given with different values (``--image-size 32 --size 48``) is refused, one
    ``error: ...`` line, rather than letting the last one win unsaid.

    The record is kept here, not in the namespace (a command may write its options out, e.g.
    ``train-cbm``'s metrics.json)."""

    def __init__(self, old: str, new: str):
        self.old, self.new = old, new
        self.given: list[tuple[argparse.Namespace, str, Any]] = []

    def note(self, namespace: argparse.Namespace, option_string: str | None, value: Any) -> None:
        self.given = [entry for entry in self.given if entry[0] is namespace]  # this parse's
        self.given.append((namespace, option_string or self.new, value))
        old = [value for _, name, value in self.given if name == self.old]
        new = [value for _, name, value in self.given if name != self.old]
        if old and new and old[-1] != new[-1]:
            raise CommandError(f"`{self.old}` {_shown(old[-1])} and `{self.new}` "
                               f"{_shown(new[-1])} set the same option (`{self.old}` is its "
                               f"deprecated name) to different values; give `{self.new}` once.")


def _shown(value: Any) -> str:
    return " ".join(str(v) for v in value) if isinstance(value, list) else str(value)


def add_deprecated_alias(parser: argparse.ArgumentParser, old: str, new: str) -> None:
    """Keep ``old``, the name of an option before it was renamed ``new`` (already added to
    ``parser``), working for one version: same value, not listed by ``--help``, and a one-line
    ``warning: ...`` saying what to use instead when it is given. Both names given with
    different values is refused."""
    target = next(action for action in parser._actions if new in action.option_strings)
    spellings = _Spellings(old, new)
    _watch(target, spellings)
    parser.add_argument(old, dest=target.dest, action=_DeprecatedAlias, target=target,
                        spellings=spellings)


def _watch(action: argparse.Action, spellings: _Spellings) -> None:
    """Make ``action`` (the new name of a renamed option, called for the old name too) note the
    value each of its names gives, in ``spellings``: its class becomes a subclass of its own
    that notes, then stores as before (the action object stays the one argparse knows, for its
    ``required`` and exclusive-group checks)."""
    base = type(action)

    def __call__(self: argparse.Action, parser: argparse.ArgumentParser,
                 namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        base.__call__(self, parser, namespace, values, option_string)
        spellings.note(namespace, option_string, getattr(namespace, self.dest, None))

    action.__class__ = type(f"_Watched{base.__name__}", (base,), {"__call__": __call__})


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
    """``--out`` names a directory (created when missing) that can be written: an existing file
    is refused, and so is a directory (existing, or the one its parent would hold) that cannot
    be written, before any work."""
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
    if path.exists():
        if not os.access(path, os.W_OK | os.X_OK):
            raise CommandError(f"`{flag}` {out!r} is not writable; give a directory you can "
                               f"write to.")
    elif parent is not None and not os.access(parent, os.W_OK | os.X_OK):
        raise CommandError(f"`{flag}` {out!r} cannot be created: {str(parent)!r} is not "
                           f"writable. Give a directory you can write to.")
    _probe_writable(path if path.exists() else parent, out, flag)


def _probe_writable(folder: Path | None, out: str, flag: str) -> None:
    """Create and remove a temporary entry in ``folder`` (``--out``, or the folder that would
    hold it): ``os.access`` approves what a root user may not do either (``/proc``, a read-only
    mount), and a run would fail only when it writes, after all its work."""
    import shutil
    import tempfile

    if folder is None:
        return
    try:
        probe = tempfile.mkdtemp(prefix=".conceptkit-probe-", dir=folder)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise CommandError(f"`{flag}` {out!r} cannot be written: creating an entry in "
                           f"{str(folder)!r} fails ({reason}). Give a directory you can write "
                           f"to.") from err
    shutil.rmtree(probe, ignore_errors=True)


def check_out_targets(out: str | os.PathLike, targets: list[str], flag: str = "--out") -> None:
    """Refuse, before anything is written, a ``--out`` where writing ``targets`` (names in
    ``out``: files, or folders conceptkit fills) would overwrite a file conceptkit did not write
    (one not listed in a ``.conceptkit-outputs.json`` of the folder) or write through a symbolic
    link (``conceptkit.io`` follows links, which would put the file outside ``--out``)."""
    from ..report._outputs import MANIFEST, _manifest

    root = Path(out)
    if not root.is_dir():
        return
    resolved = root.resolve()
    recorded = {p for paths in _manifest(resolved).values() for p in paths}
    found: list[tuple[str, Path]] = []  # (kind, path)
    for name in [MANIFEST, *targets]:
        path = root / name
        if path.is_symlink():
            found.append(("link", path))
        elif path.is_dir():
            for folder, dirs, files in os.walk(path):  # links are not followed
                here = Path(folder)
                recorded |= {p for paths in _manifest(here.resolve()).values() for p in paths}
                for entry in sorted(dirs + files):
                    item = here / entry
                    if item.is_symlink():
                        found.append(("link", item))
                    elif entry in files and entry != MANIFEST and \
                            item.resolve() not in recorded:
                        found.append(("file", item))
        elif path.exists() and name != MANIFEST and path.resolve() not in recorded:
            found.append(("file", path))
    if not found:
        return
    kind, path = found[0]
    rel = path.relative_to(root).as_posix()
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    if kind == "link":
        raise CommandError(f"`{flag}` {str(out)!r} holds {rel!r}{more}, a symbolic link where "
                           f"this command writes: the file would be written outside `{flag}`. "
                           f"Remove the link, or give another directory.")
    raise CommandError(f"`{flag}` {str(out)!r} already holds {rel!r}{more}, which this "
                       f"command would overwrite and which is not listed in {MANIFEST} (the "
                       f"list of what conceptkit wrote there: another program's file, or one "
                       f"from a conceptkit before 0.2, whose train-cbm and demo kept no "
                       f"list). Move it away, or give another directory.")


def load_reference_flags(weights: str | None) -> Any:
    """The reference CNN with ``--weights``, read as ``conceptkit explain --model reference``
    reads it: a file of ``train_reference`` (its architecture recorded), or a plain state dict
    (.safetensors or .pt/.pth) of the shipped architecture."""
    return load_model_flags("reference", weights).model


#: What ``conceptkit train-cbm`` writes into ``--out``.
TRAIN_CBM_OUTPUTS = ["cbm.safetensors", "metrics.json", "index.html"]


@contextlib.contextmanager
def owned_cbm_folder(out: str | os.PathLike) -> Iterator[Path]:
    """``--out`` of ``train-cbm``, checked again just before it is written (a file put in the
    way during training is not overwritten) and owned as ``explain`` and ``atlas`` own theirs:
    its files are listed in ``.conceptkit-outputs.json``."""
    from ..report._outputs import owned_folder

    check_out_targets(out, TRAIN_CBM_OUTPUTS)
    with owned_folder(out, "conceptkit train-cbm") as folder:
        yield folder


def record_outputs(*paths: str | os.PathLike) -> None:
    """Note files written in the innermost owned folder."""
    from ..report._outputs import record

    for path in paths:
        record(path)
