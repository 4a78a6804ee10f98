"""Old names that keep working for one version, with a ``DeprecationWarning``.

conceptkit 0.2 renamed parts of the API to one naming rule (``docs/conventions.md``). Every old
name still works in 0.2 and warns; 0.3 removes them. The three kinds of old name:

- a renamed keyword argument: :func:`renamed_arguments` decorates the function or ``__init__``;
- a renamed or moved object reached from a module: :func:`module_getattr` builds the module's
  ``__getattr__``, which warns and returns the object from where it lives now;
- anything else (a changed argument order, an option that moved to a new function) calls
  :func:`warn_deprecated` where it detects the old use.

Files saved by 0.1 store constructor arguments under their old names; loaders map them with
:func:`current_names`, silently (the user did nothing wrong).
"""

from __future__ import annotations

import functools
import importlib
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

REMOVED_IN = "0.3"

F = TypeVar("F", bound=Callable[..., Any])


def warn_deprecated(old: str, new: str, *, stacklevel: int = 3) -> None:
    """Warn that ``old`` is deprecated in favour of ``new``."""
    warnings.warn(f"{old} is deprecated and will be removed in conceptkit {REMOVED_IN}; use {new} "
                  f"instead.", DeprecationWarning, stacklevel=stacklevel)


def renamed_arguments(**renames: str) -> Callable[[F], F]:
    """Accept the old names of renamed keyword arguments (``old="new"``) for one version.

    An old name is passed on under its new name after a ``DeprecationWarning``; giving both is a
    ``TypeError``. The signature seen by ``inspect`` (and by scikit-learn's ``get_params``) is
    the new one.
    """
    def decorate(func: F) -> F:
        owner = func.__qualname__.replace(".__init__", "")

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for new in dict.fromkeys(renames.values()):  # each new name and its old ones
                given = [old for old, to in renames.items() if to == new and old in kwargs]
                if len(given) + (new in kwargs) > 1:
                    names = " and ".join(f"`{name}`" for name in [*given, new] if name in kwargs)
                    raise TypeError(f"{owner}() got {names}, names of one argument (the old "
                                    f"ones are deprecated); pass only `{new}`.")
                for old in given:
                    warn_deprecated(f"the argument `{old}` of {owner}()", f"`{new}`")
                    kwargs[new] = kwargs.pop(old)
            return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def module_getattr(module: str, moved: dict[str, tuple[str, ...]]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for names that left ``module``'s face.

    ``moved`` maps each old name to ``(module where it lives now, its name there)``, optionally
    with a third item saying what to use instead; reaching it through ``module`` warns and
    returns it. A name kept under the same name in a private module of ``module`` is plumbing
    that left the public face.
    """
    def __getattr__(name: str) -> Any:
        if name in moved:
            target, attribute, *instead = moved[name]
            if instead:
                warn_deprecated(f"{module}.{name}", instead[0], stacklevel=3)
            elif attribute == name and target.startswith(module + "._"):
                warnings.warn(f"{module}.{name} is internal plumbing and left the public names of "
                              f"{module}; reaching it there is deprecated and stops working in "
                              f"conceptkit {REMOVED_IN} (it stays in {target}, which is private).",
                              DeprecationWarning, stacklevel=2)
            else:
                warn_deprecated(f"{module}.{name}", f"{target}.{attribute}", stacklevel=3)
            return getattr(importlib.import_module(target), attribute)
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__


def current_names(params: dict[str, Any], renamed: dict[str, str]) -> dict[str, Any]:
    """Saved constructor arguments under their current names: files written before a rename
    load without a warning (``renamed`` maps old names to new ones)."""
    out = dict(params)
    for old, new in renamed.items():
        if old in out and new not in out:
            out[new] = out.pop(old)
    return out
