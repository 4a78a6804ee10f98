"""Concept-set filtering for the label-free CBM (Oikarinen et al., 2023).

Reference thresholds: concepts longer than 30 characters are dropped; so are concepts whose
similarity to a class name is ≥ 0.85, and, of two concepts with similarity ≥ 0.9, the one whose
summed similarity to the other concepts is lower. The reference measures text similarity as
``(mpnet dot + 3 · CLIP cosine) / 4``; conceptkit has no sentence-transformer, so it uses the
cosine of the L2-normalised CLIP text embeddings alone (the term that carries 3/4 of the
reference's weight). Finally concepts that CLIP barely sees in the data — mean of their top-5
image–text cosine similarities ≤ ``clip_cutoff`` (0.25) — are dropped.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

_ARTICLES = ("a ", "an ", "the ")


def _normalised_text(text: str) -> str:
    text = " ".join(text.lower().strip().split())
    for article in _ARTICLES:
        if text.startswith(article):
            return text[len(article):]
    return text


def filter_by_text(concepts: Sequence[str], class_names: Sequence[str], concept_emb: torch.Tensor,
                   class_emb: torch.Tensor, *, max_length: int = 30,
                   class_cutoff: float = 0.85, concept_cutoff: float = 0.9) -> dict[str, str]:
    """Reasons for dropping concepts on text alone: ``{concept: reason}`` (kept ones absent).

    ``concept_emb (K, D)`` and ``class_emb (C, D)`` are L2-normalised text embeddings. A text
    listed twice is one concept: its later copies are skipped (the first one is judged, and is
    the one a reason is given for), never reported as a "duplicate of" itself.
    """
    removed: dict[str, str] = {}
    seen: dict[str, str] = {}
    class_keys = {_normalised_text(c): c for c in class_names}
    class_sim = concept_emb @ class_emb.T
    first: dict[str, int] = {}
    for i, concept in enumerate(concepts):
        first.setdefault(concept, i)
    copies = {i for i, c in enumerate(concepts) if first[c] != i}  # exact later copies
    for i, concept in enumerate(concepts):
        if i in copies:
            continue
        key = _normalised_text(concept)
        if key in seen:
            removed[concept] = f"duplicate of {seen[key]!r}"
        elif len(concept) > max_length:
            removed[concept] = f"longer than {max_length} characters"
        elif key in class_keys:
            removed[concept] = f"is the class name {class_keys[key]!r}"
        else:
            j = int(class_sim[i].argmax())
            if float(class_sim[i, j]) >= class_cutoff:
                removed[concept] = (f"too similar to class {class_names[j]!r} "
                                    f"({float(class_sim[i, j]):.3f} >= {class_cutoff})")
        seen.setdefault(key, concept)

    alive = [i for i, c in enumerate(concepts) if c not in removed and i not in copies]
    if len(alive) > 1:
        sub = concept_emb[alive] @ concept_emb[alive].T
        sub.fill_diagonal_(float("-inf"))
        summed = torch.where(torch.isfinite(sub), sub, torch.zeros_like(sub)).sum(1)
        rows, cols = torch.triu_indices(len(alive), len(alive), offset=1)
        pair_sim = sub[rows, cols]
        dropped: set[int] = set()
        for p in torch.argsort(pair_sim, descending=True, stable=True).tolist():
            if float(pair_sim[p]) < concept_cutoff:
                break
            a, b = int(rows[p]), int(cols[p])
            if a in dropped or b in dropped:
                continue
            # the reference keeps the concept with the higher summed similarity
            loser, winner = (a, b) if float(summed[a]) < float(summed[b]) else (b, a)
            dropped.add(loser)
            removed[concepts[alive[loser]]] = (f"too similar to {concepts[alive[winner]]!r} "
                                               f"({float(pair_sim[p]):.3f} >= {concept_cutoff})")
    return removed


def top5_activation(similarities: torch.Tensor) -> torch.Tensor:
    """Mean of each concept's five highest image–text similarities: ``(N, K)`` → ``(K,)``."""
    k = min(5, similarities.shape[0])
    return similarities.topk(k, dim=0).values.mean(0)
