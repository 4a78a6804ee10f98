"""conceptkit — explain vision models with human-readable concepts.

The faces: :class:`ConceptExplainer` (one class), :class:`ConceptManager` (many classes),
:class:`ConceptAtlas` (one dictionary shared by all classes),
:class:`ClassConcepts` (the result) and :func:`load` (read any saved conceptkit file without
pickle). The subpackages hold the parts: ``extraction``, ``concepts``, ``importance``, ``maps``,
``report``, ``pipeline``, ``bottleneck``, ``models``, ``datasets`` and ``cli``.
"""

from __future__ import annotations

import os
from typing import Any

from ._version import __version__
from .pipeline import (
    ClassConcepts,
    ConceptAtlas,
    ConceptExplainer,
    ConceptManager,
    ConceptTree,
    decompose_concept,
    plot_subconcepts,
    subconcept_examples,
)


def load(path: str | os.PathLike) -> Any:
    """Load any file saved by conceptkit (explanation, concept bank, CBM).

    The file's kind is read from its JSON header; loading parses JSON and raw tensor buffers
    only — it never unpickles and never executes code.
    """
    from . import io
    from .concepts import ConceptBank

    kind, _ = io.peek_kind(path)
    from .bottleneck import LOADERS as CBM_LOADERS  # CBM kinds register their loaders

    loaders = {"ClassConcepts": ClassConcepts.load, "ConceptBank": ConceptBank.load,
               "ConceptAtlas": ConceptAtlas.load, **CBM_LOADERS}
    if kind not in loaders:
        raise io.FormatError(f"`path` {str(path)!r} holds a {kind!r}, which this version of "
                             f"conceptkit cannot load (known: {sorted(loaders)}).")
    return loaders[kind](path)


__all__ = ["ClassConcepts", "ConceptAtlas", "ConceptExplainer", "ConceptManager", "ConceptTree", "__version__",
           "decompose_concept", "load", "plot_subconcepts", "subconcept_examples"]
