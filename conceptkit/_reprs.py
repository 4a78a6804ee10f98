"""Short ``repr`` of result objects: shapes of arrays and tensors, not their values.

``print(result)`` should say what an object holds in a few lines, as scikit-learn estimators and
torch modules do, rather than dump every number of every array.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

import numpy as np
import torch

#: Sequences up to this length are shown in full (numbers rounded); longer ones are summarised.
SHOWN_ITEMS = 6


def summarize(value: Any) -> str:
    """One short token for ``value``: ``array(16, 10) float64``, ``[0.69, 0.27, ...] (10)``."""
    if isinstance(value, torch.Tensor):
        return f"tensor({', '.join(map(str, value.shape))}) {str(value.dtype).replace('torch.', '')}"
    if isinstance(value, np.ndarray):
        if value.ndim == 1 and value.size <= SHOWN_ITEMS and value.dtype.kind in "iufb":
            return "[" + ", ".join(_number(v) for v in value.tolist()) + "]"
        return f"array({', '.join(map(str, value.shape))}) {value.dtype}"
    if isinstance(value, (list, tuple)):
        items = list(value)
        opening, closing = ("[", "]") if isinstance(value, list) else ("(", ")")
        if all(isinstance(v, (numbers.Number, str)) for v in items):
            shown = [_number(v) if isinstance(v, numbers.Number) else repr(v)
                     for v in items[:SHOWN_ITEMS]]
            more = f", ... ({len(items)} items)" if len(items) > SHOWN_ITEMS else ""
            return opening + ", ".join(shown) + more + closing
        return f"{type(value).__name__} of {len(items)}"
    if isinstance(value, dict):
        if len(value) <= 3 and all(isinstance(v, (numbers.Number, str, bool, type(None)))
                                   for v in value.values()):
            return repr({k: (_number(v) if isinstance(v, float) else v) for k, v in value.items()})
        return f"dict of {len(value)} ({', '.join(map(str, list(value)[:4]))}{', ...' if len(value) > 4 else ''})"
    if isinstance(value, float):
        return _number(value)
    if isinstance(value, (str, numbers.Number, bool, type(None))):
        return repr(value)
    return type(value).__name__


def _number(value: Any) -> str:
    if isinstance(value, bool) or isinstance(value, numbers.Integral):
        return str(value)
    value = float(value)
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def dataclass_repr(obj: Any, skip: tuple[str, ...] = ()) -> str:
    """``Name(field=summary, ...)`` over the dataclass fields shown by the default repr."""
    parts = [f"{f.name}={summarize(getattr(obj, f.name))}"
             for f in dataclasses.fields(obj) if f.repr and f.name not in skip]
    return f"{type(obj).__name__}({', '.join(parts)})"
