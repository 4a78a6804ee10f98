"""The result of naming: one small frozen record per concept, and a table of them."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._validation import describe
from ..io import json_ready
from ._trust import CHANCE

#: What each method's score measures (the table's column header).
SCORES = {"dissect": "IoU", "clip": "soft-WPMI", "clip_cos3": "cos^3", "classes": "logit gain"}


@dataclass(frozen=True)
class ConceptName:
    """The name given to one concept, how well it fits and how much to trust it.

    Attributes
    ----------
    concept : int
        Index of the concept in its bank.
    name : str or None
        The best-scoring name; None when no candidate reached the method's ``min_score``
        (the concept keeps its index, see :attr:`label`).
    score : float
        The best candidate's score (IoU for ``"dissect"``, soft-WPMI or cos³ for ``"clip"``, mean
        logit gain for ``"classes"``), whether or not it was kept as the name.
    runner_ups : tuple of (str, float)
        The next best candidates with their scores, best first.
    trust : float or None
        CoSy-style AUC: how well the concept's activation separates probe images that contain the
        named thing from those that do not (0.5 = chance, 1 = perfect). None when the probe set
        has no labels or masks for the name. Below 0.5 the name is kept (a name is given by its
        score) and flagged: see :attr:`below_chance`.
    description : str or None
        A longer gloss where one is known (the WordNet definition of an ImageNet class).
    part_share : float or None
        ``"dissect"`` only: the share of the concept's top pixels (its binary map over the probe)
        that lie on the best candidate part. A name with a small share describes little of where
        the concept fires; the table's ``notes`` say so. None for the other methods.
    """

    concept: int
    name: str | None
    score: float
    runner_ups: tuple[tuple[str, float], ...] = ()
    trust: float | None = None
    description: str | None = None
    part_share: float | None = None

    @property
    def below_chance(self) -> bool:
        """Whether the name's trust is below chance (AUC < 0.5): over the probe, inputs that
        show the named thing activate the concept less than those that do not, so the name says
        the opposite of what the concept responds to there. Flagged in the table (``!``) and in
        the notes; False when the probe cannot check the name."""
        return self.name is not None and self.trust is not None and self.trust < CHANCE

    @property
    def label(self) -> str:
        """The name, or ``"concept <index>"`` for an unnamed concept."""
        return self.name if self.name is not None else f"concept {self.concept}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (NaN and infinite numbers become None)."""
        return {"concept": int(self.concept), "name": self.name, "score": _finite(self.score),
                "runner_ups": [[str(n), _finite(s)] for n, s in self.runner_ups],
                "trust": _finite(self.trust), "description": self.description,
                "part_share": _finite(self.part_share)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConceptName:
        """Inverse of :meth:`to_dict`; raises ValueError on a malformed record."""
        if not isinstance(data, dict):
            raise ValueError(f"a concept name record must be a dict; got {describe(data)}.")
        try:
            name = data["name"]
            description = data.get("description")
            if name is not None and not isinstance(name, str):
                raise ValueError(f"name must be a string or null; got {describe(name)}")
            if description is not None and not isinstance(description, str):
                raise ValueError(f"description must be a string or null; got {describe(description)}")
            if name is not None and not name.strip():
                raise ValueError("name must not be empty")
            if not all(isinstance(n, str) and n.strip() for n, _ in data.get("runner_ups", [])):
                raise ValueError("runner-up names must be non-empty strings")
            runner_ups = tuple((n, _number(s)) for n, s in data.get("runner_ups", []))
            trust = data.get("trust")
            if trust is not None and not 0.0 <= _number(trust) <= 1.0:  # an AUC
                raise ValueError(f"trust must be in [0, 1] or null; got {trust!r}")
            share = data.get("part_share")
            if share is not None and not 0.0 <= _number(share) <= 1.0:  # a share of pixels
                raise ValueError(f"part_share must be in [0, 1] or null; got {share!r}")
            concept = data["concept"]
            if isinstance(concept, bool) or not isinstance(concept, int) or concept < 0:
                raise ValueError(f"concept must be a concept index; got {concept!r}")
            return cls(concept=concept, name=name, score=_number(data["score"]),
                       runner_ups=runner_ups, trust=None if trust is None else _number(trust),
                       description=description,
                       part_share=None if share is None else _number(share))
        except (KeyError, TypeError) as err:
            raise ValueError(f"malformed concept name record {data!r}: {err}") from err


#: How concepts are named (``ConceptNames.method``).
NAMING_METHODS = ("dissect", "clip", "classes")


@dataclass(frozen=True)
class ConceptNames(Sequence):
    """Names of the concepts of one bank, indexed by concept.

    ``names[j]`` is the :class:`ConceptName` of concept ``j``; :meth:`labels` gives a display
    label per concept; ``repr`` is a readable table (name, score, trust, runner-ups).

    Attributes
    ----------
    method : str
        ``"dissect"``, ``"clip"`` or ``"classes"``.
    entries : tuple of ConceptName
        One per concept, in concept order.
    score_name : str
        What the score measures (``"IoU"``, ``"soft-WPMI"``, ``"cos^3"``, ``"logit gain"``).
    params : dict
        The settings the names were computed with (JSON-able).
    notes : tuple of str
        What the names cannot say, in words: parts that could not name a concept, concepts left
        unnamed for a reason other than a low score, names resting on a small share of the
        concept's top pixels. Shown by ``repr`` and in the report.
    """

    method: str
    entries: tuple[ConceptName, ...]
    score_name: str
    params: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.notes, str) or not all(isinstance(n, str) for n in self.notes):
            raise ValueError(f"notes must be a sequence of str; got {describe(self.notes)}.")
        object.__setattr__(self, "notes", tuple(self.notes))
        for j, entry in enumerate(self.entries):
            if entry.concept != j:
                raise ValueError(f"entries must be in concept order; entry {j} is concept "
                                 f"{entry.concept}.")

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: Any) -> Any:
        return self.entries[index]

    def __iter__(self) -> Iterator[ConceptName]:
        return iter(self.entries)

    def labels(self) -> list[str]:
        """One label per concept: its name, or ``"concept <index>"`` if unnamed (a name several
        concepts share is repeated here; ``ClassConcepts.labels`` adds each one's index)."""
        return [entry.label for entry in self.entries]

    def __repr__(self) -> str:
        width = max([len(e.label) for e in self.entries] + [7])
        shares = any(e.part_share is not None for e in self.entries)
        flagged = any(e.below_chance for e in self.entries)
        lines = [f"ConceptNames(method={self.method!r}, {len(self)} concepts, score = "
                 f"{self.score_name}, trust = AUC on the probe set"
                 f"{' (! = below chance, 0.5)' if flagged else ''}"
                 f"{', on part = share of the top pixels on the part' if shares else ''})",
                 f"  {'#':>3}  {'name':<{width}}  {'score':>8}  {'trust':>5}{' ' if flagged else ''}  "
                 f"{'on part  ' if shares else ''}runner-ups"]
        for e in self.entries:
            trust = "  -  " if e.trust is None else f"{e.trust:5.2f}"
            if flagged:  # one column more: "!" beside a trust below chance
                trust += "!" if e.below_chance else " "
            share = "" if not shares else (
                "   -     " if e.part_share is None else f"{e.part_share:7.0%}  ")
            others = ", ".join(f"{n} ({_short(s)})" for n, s in e.runner_ups[:3])
            lines.append(f"  {e.concept:>3}  {e.label:<{width}}  {_short(e.score):>8}  {trust}  "
                         f"{share}{others}")
        lines += [f"  note: {line}" for line in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, stored in saved explanations and reports."""
        return {"method": self.method, "score_name": self.score_name,
                "params": json_ready(self.params),
                "entries": [e.to_dict() for e in self.entries], "notes": list(self.notes)}

    @classmethod
    def from_dict(cls, data: Any) -> ConceptNames:
        """Inverse of :meth:`to_dict`; raises ValueError on malformed input."""
        if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
            raise ValueError(f"concept names must be a dict with a list of entries; got "
                             f"{describe(data)}.")
        params = data.get("params", {})
        if not isinstance(params, dict):
            raise ValueError(f"concept names params must be a dict; got {describe(params)}.")
        if data.get("method") not in NAMING_METHODS:
            raise ValueError(f"concept names method must be one of {list(NAMING_METHODS)}; got "
                             f"{data.get('method')!r}.")
        notes = data.get("notes", [])
        if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
            raise ValueError(f"concept names notes must be a list of str; got {describe(notes)}.")
        entries = tuple(ConceptName.from_dict(e) for e in data["entries"])
        return cls(method=str(data["method"]), score_name=str(data.get("score_name", "")),
                   entries=entries, params=params, notes=tuple(notes))


def _finite(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _number(value: Any) -> float:
    if value is None:
        return float("nan")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {describe(value)}")
    return float(value)


def _short(value: float) -> str:
    if value is None or not math.isfinite(value):
        return "nan"
    return f"{value:.3f}" if abs(value) < 100 else f"{value:.3g}"
