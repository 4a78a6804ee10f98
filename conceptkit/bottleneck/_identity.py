"""What a bottleneck model over a network was fitted with, and the check of a network given later.

:class:`~conceptkit.bottleneck.DiscoveredCBM`, :class:`~conceptkit.bottleneck.LabelFreeCBM` and
:class:`~conceptkit.bottleneck.PosthocCBM` save their heads, never the network that reads the
images. Their files record its identity instead — a digest of its weights, a digest of its
structure and, where the model preprocesses images, the identity of the preprocessing — the
same record an explanation keeps (``ClassConcepts.attach``; the digests of
:mod:`conceptkit.extraction._fingerprint`). Loading (or attaching) another network then warns,
or refuses with ``strict=True``. Files written before the record load without a check: unknown
is not a mismatch.
"""

from __future__ import annotations

import warnings
from typing import Any

from .._validation import describe


def fitted_identity(model: Any, preprocess: Any = None, *,
                    with_preprocess: bool = True) -> dict[str, Any]:
    """What a file records of ``model`` (and ``preprocess``): the record an explanation keeps
    (``extraction._fingerprint.recorded_identity``); empty without a model."""
    from ..extraction._fingerprint import model_identity, recorded_identity

    if model is None:
        return {}
    return dict(recorded_identity(model, preprocess) if with_preprocess
                else model_identity(model))


def read_identity(value: Any) -> dict[str, Any] | None:
    """A file's ``fitted_with`` record, checked (``None`` when the file has none)."""
    if value is None:
        return None
    # the keys a digest helper writes may grow; each value is a string (None: no preprocessing)
    if not isinstance(value, dict) or not all(
            isinstance(key, str) and (isinstance(item, str) or item is None)
            for key, item in value.items()):
        raise TypeError(f"fitted_with must map names (model_digest, model_structure, "
                        f"preprocess) to strings; got {describe(value)}")
    return dict(value)


def identity_differences(known: dict[str, Any] | None, model: Any, preprocess: Any,
                         fitted: str) -> list[str]:
    """How ``model`` / ``preprocess`` differ from the record ``known`` of what ``fitted`` (e.g.
    "the DiscoveredCBM") was fitted with, in words; nothing that ``known`` does not record is
    compared (``extraction._fingerprint.identity_differences``)."""
    from ..extraction._fingerprint import identity_differences as differences_of
    from ..extraction._fingerprint import preprocess_difference

    if not known or model is None:
        return []
    differences, preprocess_differs = differences_of(known, model, preprocess, fitted)
    if preprocess_differs:
        differences.append(preprocess_difference(known, preprocess))
    return differences


def check_identity(known: dict[str, Any] | None, model: Any, preprocess: Any, *, fitted: str,
                   where: str, strict: Any, stacklevel: int = 3) -> None:
    """Warn (``strict=True``: raise a ``ValueError``) when ``model`` / ``preprocess`` are not what
    ``known`` records; ``where`` names the call (``"DiscoveredCBM.load"``)."""
    if not isinstance(strict, bool):
        raise TypeError(f"`strict` must be a bool; got {describe(strict)}.")
    differences = identity_differences(known, model, preprocess, fitted)
    if not differences:
        return
    message = (f"{where}: {' and '.join(differences)}; its predictions would not be those of the "
               f"fitted model. Pass the network and the preprocessing {fitted} was fitted with")
    if strict:
        raise ValueError(message + ".")
    warnings.warn(message + " (strict=True refuses a mismatch).", UserWarning,
                  stacklevel=stacklevel)
