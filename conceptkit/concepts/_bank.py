"""ConceptBank: a fitted concept dictionary with the provenance of the rows it was fitted on."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .. import io
from .._deprecation import renamed_arguments
from .._reprs import dataclass_repr
from .._validation import all_finite, check_not_meta, describe, to_numpy
from ..extraction import Provenance
from ._base import Factorizer, factorizer_from_state, factorizer_key

BANK_KIND = "ConceptBank"
BANK_VERSION = 1


@dataclass
class ConceptBank:
    """Concepts found by CRAFT, ICE, ACE (or any factorizer) at one layer.

    Attributes
    ----------
    components
        ``(k, C)`` concept dictionary ``W`` (float32, CPU).
    codes
        ``(n, k)`` codes ``U`` of the rows the dictionary was fitted on.
    provenance
        Source image, box or mask of every fitted row (:class:`~conceptkit.extraction.Provenance`).
    layer
        Name of the layer the activations come from.
    method
        ``"craft"``, ``"ice"``, ``"ace"`` or ``"custom"``.
    params
        The method's parameters (JSON-able).
    factorizer
        The fitted factorizer; :meth:`encode` uses its ``transform``.
    activations
        ``(n, C)`` the fitted rows themselves, when kept (metrics, TCAV); not saved by default.
    concept_ids
        ``(k,)`` index of each concept in the factorizer before any concept was dropped (ACE
        drops clusters that come from too few images).
    row_scores
        ``(n,)`` how well each fitted row aligns with the concept it is assigned to (``a · w_j``,
        ``j`` its highest code), or None. Kept (and saved) when the codes tie, as hard k-means
        codes (ACE) all do: :meth:`top_rows` breaks ties with it, so the same fit gives the same
        exemplars whether or not it kept its activations.
    """

    components: torch.Tensor
    codes: torch.Tensor
    provenance: Provenance
    layer: str
    method: str
    params: dict[str, Any]
    factorizer: Factorizer
    activations: torch.Tensor | None = None
    concept_ids: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    row_scores: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.components = torch.as_tensor(to_numpy(self.components)).float()
        self.codes = torch.as_tensor(to_numpy(self.codes)).float()
        if self.row_scores is not None:
            self.row_scores = torch.as_tensor(to_numpy(self.row_scores)).float()
        if self.concept_ids is None:
            self.concept_ids = np.arange(self.components.shape[0])
        self.concept_ids = np.asarray(self.concept_ids, dtype=np.int64)

    @property
    def n_concepts(self) -> int:
        """Number of concepts ``k``."""
        return int(self.components.shape[0])

    @property
    def n_features(self) -> int:
        """Number of activation channels ``C``."""
        return int(self.components.shape[1])

    # ------------------------------------------------------------------ encode / decode
    def encode(self, activations: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Concept codes of activations with the dictionary fixed.

        ``(n, C)`` → ``(n, k)``; feature maps ``(N, C, h, w)`` → coefficient maps
        ``(N, k, h, w)`` (every spatial position encoded, as CRAFT's ``transform``).
        """
        if not isinstance(activations, (np.ndarray, torch.Tensor)):
            raise TypeError(f"`activations` must be a numpy array or torch.Tensor; got {describe(activations)}.")
        check_not_meta(activations, "activations")
        if activations.ndim == 2:
            self._check_channels(activations, 1)
            return self.factorizer.transform(activations)
        if activations.ndim == 4:
            self._check_channels(activations, 1)
            n, c, h, w = activations.shape
            if isinstance(activations, torch.Tensor):
                rows = activations.permute(0, 2, 3, 1).reshape(-1, c)
                codes = self.factorizer.transform(rows)
                return codes.reshape(n, h, w, -1).permute(0, 3, 1, 2).contiguous()
            rows = np.ascontiguousarray(activations.transpose(0, 2, 3, 1).reshape(-1, c))
            codes = self.factorizer.transform(rows)
            return np.ascontiguousarray(codes.reshape(n, h, w, -1).transpose(0, 3, 1, 2))
        raise ValueError(f"`activations` must be (n, C) or (N, C, h, w); got shape {tuple(activations.shape)}.")

    def encode_differentiable(self, pooled: torch.Tensor) -> torch.Tensor:
        """Codes ``(n, k)`` of activations ``(n, C)`` that gradients flow through.

        The values equal ``encode(pooled)``. A factorizer with an explicit encoder gives that
        encoder's gradient (a sparse autoencoder's; k-means: the softmax's, or for hard codes
        the assigned centroid's least-squares coefficient's). Otherwise the gradient is the
        implicit gradient of the encoding at its solution: for non-negative codes (NMF-like),
        the least-squares problem restricted to each row's active set ``S``
        (``u_S = (W_S W_Sᵀ)⁻¹ W_S a``); for unconstrained codes, the least-squares
        pseudo-inverse. Gradient maps and CRAFT's recursion differentiate
        image-level codes through it.
        """
        if not isinstance(pooled, torch.Tensor) or pooled.ndim != 2:
            raise TypeError(f"`pooled` must be a torch.Tensor of shape (n, C); got {describe(pooled)}.")
        with torch.no_grad():
            fixed = torch.as_tensor(self.encode(pooled.detach().cpu())).to(pooled)
        own = getattr(self.factorizer, "_differentiable_transform", None)
        if own is not None:  # an explicit encoder (autoencoder, k-means): its own gradient
            return own(pooled, fixed)
        W = self.components.to(pooled)
        if not getattr(self.factorizer, "nonnegative_codes", False):
            offset = pooled.detach() - fixed @ W
            return torch.linalg.lstsq(W.T, (pooled - offset).T).solution.T
        active = (fixed > 0).to(pooled)
        gram = W @ W.T
        eye = torch.eye(W.shape[0], dtype=pooled.dtype, device=pooled.device)
        system = active[:, :, None] * gram[None] * active[:, None, :] + (1 - active)[:, :, None] * eye
        rhs = active * (pooled @ W.T)
        return torch.linalg.solve(system, rhs.unsqueeze(-1)).squeeze(-1)

    def decode(self, codes: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Reconstructed activations from codes: ``(n, k)`` → ``(n, C)``; ``(N, k, h, w)`` → ``(N, C, h, w)``."""
        if not isinstance(codes, (np.ndarray, torch.Tensor)):
            raise TypeError(f"`codes` must be a numpy array or torch.Tensor; got {describe(codes)}.")
        if codes.ndim == 2:
            return self.factorizer.inverse_transform(codes)
        if codes.ndim == 4:
            n, k, h, w = codes.shape
            if isinstance(codes, torch.Tensor):
                flat = self.factorizer.inverse_transform(codes.permute(0, 2, 3, 1).reshape(-1, k))
                return flat.reshape(n, h, w, -1).permute(0, 3, 1, 2).contiguous()
            flat = self.factorizer.inverse_transform(np.ascontiguousarray(codes.transpose(0, 2, 3, 1).reshape(-1, k)))
            return np.ascontiguousarray(flat.reshape(n, h, w, -1).transpose(0, 3, 1, 2))
        raise ValueError(f"`codes` must be (n, k) or (N, k, h, w); got shape {tuple(codes.shape)}.")

    def _check_channels(self, activations, axis: int) -> None:
        if activations.shape[axis] != self.n_features:
            raise ValueError(f"`activations` have {activations.shape[axis]} channels (axis {axis}) but "
                             f"the concepts were fitted on {self.n_features} channels at layer "
                             f"{self.layer!r}.")
        if not all_finite(activations):
            raise ValueError("`activations` contains NaN or Inf values.")
        self._check_sign(activations)

    def _check_sign(self, activations) -> None:
        """Negative activations for a factorizer that needs non-negative input (NMF without
        ``relu``), refused naming `activations` (the factorizer's own check names its `A`)."""
        factorizer = self.factorizer
        empty = (activations.numel() if isinstance(activations, torch.Tensor)
                 else activations.size) == 0
        if empty or not getattr(factorizer, "requires_nonnegative", False):
            return
        low = float(activations.min())
        if low >= 0 or float(factorizer._prepare_input(activations).min()) >= 0:  # relu=True
            return
        hint = getattr(factorizer, "_negative_hint", "")
        raise ValueError(f"`activations` has negative values (min {low:.4g}) but this bank's "
                         f"{type(factorizer).__name__} needs non-negative input."
                         f"{(' ' + hint) if hint else ''}")

    @renamed_arguments(n="n_rows")
    def top_rows(self, concept: int, n_rows: int = 10, *, present_only: bool = False) -> np.ndarray:
        """Indices of the ``n_rows`` fitted rows where ``concept`` is most present (highest
        code), fewer when the bank has fewer rows.

        ``present_only``: only rows where the concept is present, for a factorizer whose codes
        are non-negative (code > 0; NMF, k-means ...), so possibly fewer than ``n_rows``; codes
        of a signed factorizer (PCA, ICA) have no "absent" value, and all rows are ranked.
        Ties (hard k-means codes are all 1) are broken by how well the row aligns with the
        concept: the :attr:`row_scores` computed when the bank was made where it has them (the
        same order whether or not the activations were kept), else ``a · w_concept`` of the kept
        activations, else the row order.
        """
        if not 0 <= int(concept) < self.n_concepts:
            raise ValueError(f"`concept` must be in [0, {self.n_concepts}); got {concept}.")
        codes = self.codes[:, int(concept)].numpy()
        if self.row_scores is not None:
            tie = self.row_scores.numpy()
        elif self.activations is not None:
            tie = self.activations.numpy() @ self.components[int(concept)].numpy()
        else:
            tie = np.zeros_like(codes)
        rows = np.lexsort((-tie, -codes))
        if present_only and self.nonnegative_codes:
            rows = rows[codes[rows] > 0]
        return rows[:n_rows]

    @property
    def nonnegative_codes(self) -> bool:
        """Whether the factorizer's codes are non-negative (0 means the concept is absent)."""
        return bool(getattr(self.factorizer, "nonnegative_codes", False))

    # ------------------------------------------------------------------ persistence
    def to_state(self, *, include_activations: bool = False) -> tuple[dict[str, Any], dict]:
        """Tensors and JSON metadata (used by :meth:`save` and by explanations that embed a bank)."""
        f_arrays, f_info = self.factorizer.get_state()
        p_arrays, p_info = self.provenance.to_state()
        tensors: dict[str, Any] = {"components": self.components, "codes": self.codes,
                                   "concept_ids": torch.from_numpy(self.concept_ids)}
        tensors.update({f"factorizer.{k}": np.ascontiguousarray(v) for k, v in f_arrays.items()})
        tensors.update(p_arrays)
        if include_activations and self.activations is not None:
            tensors["activations"] = self.activations
        if self.row_scores is not None:
            tensors["row_scores"] = self.row_scores
        meta = {"layer": self.layer, "method": self.method, "params": self.params, "extra": self.extra,
                "factorizer": {"name": factorizer_key(type(self.factorizer)),
                               "params": io.json_ready(self.factorizer.get_params(deep=False),
                                                       strict=True, finite=False),
                               "info": f_info},
                "provenance": p_info}
        return tensors, meta

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], meta: dict) -> ConceptBank:
        """Rebuild from :meth:`to_state` output (``ValueError`` naming any tensor that
        :meth:`to_state` does not write)."""
        unknown = sorted(key for key in tensors if key not in _TENSORS
                         and not key.startswith("factorizer.")
                         and not (key.startswith("provenance.")
                                  and key[len("provenance."):] in _PROVENANCE))
        if unknown:
            raise ValueError(f"{len(unknown)} unknown tensor(s) {unknown[:5]}"
                             f"{' ...' if len(unknown) > 5 else ''} (a concept bank saves none "
                             f"of these names)")
        f_meta = meta["factorizer"]
        f_arrays = {k.split(".", 1)[1]: v.numpy() for k, v in tensors.items() if k.startswith("factorizer.")}
        factorizer = factorizer_from_state(f_meta["name"], f_meta["params"], f_arrays, f_meta["info"])
        prov_arrays = {k: v.numpy() for k, v in tensors.items() if k.startswith("provenance.")}
        try:
            provenance = Provenance.from_state(prov_arrays, meta["provenance"])
        except (IndexError, KeyError, TypeError, AttributeError, OverflowError) as err:
            raise ValueError(f"corrupted provenance ({type(err).__name__}: {err})") from err
        bank = cls(components=tensors["components"], codes=tensors["codes"], provenance=provenance,
                   layer=meta["layer"], method=meta["method"], params=meta["params"],
                   factorizer=factorizer, activations=tensors.get("activations"),
                   concept_ids=tensors["concept_ids"].numpy(), extra=meta.get("extra", {}),
                   row_scores=tensors.get("row_scores"))
        bank._check_consistency()
        return bank

    def _dictionary_gap(self) -> float | None:
        """How far the bank's components are from its factorizer's dictionary (``inf`` for
        other shapes), or None when they agree up to the float32 the bank keeps."""
        own = np.asarray(self.factorizer.components_, dtype=np.float64)
        mine = self.components.double().numpy()
        if own.shape != mine.shape:
            return float("inf")
        if np.allclose(mine, own, rtol=1e-5, atol=1e-6 * max(1.0, np.abs(own).max())):
            return None
        return float(np.abs(mine - own).max())

    def _check_consistency(self) -> None:
        """Refuse a rebuilt bank whose parts disagree (a tampered or damaged state)."""
        k, c = self.components.shape
        n = self.codes.shape[0]
        problems = []
        if self.codes.ndim != 2 or self.codes.shape[1] != k:
            problems.append(f"codes {tuple(self.codes.shape)} for {k} concepts")
        if self.concept_ids.shape != (k,):
            problems.append(f"concept_ids {self.concept_ids.shape} for {k} concepts")
        if np.asarray(self.factorizer.components_).shape != (k, c):
            problems.append(f"factorizer dictionary {np.asarray(self.factorizer.components_).shape}")
        if len(self.provenance) != n or self.provenance.boxes.shape != (n, 4):
            problems.append(f"provenance of {len(self.provenance)} rows for {n} codes")
        if self.activations is not None and tuple(self.activations.shape) != (n, c):
            problems.append(f"activations {tuple(self.activations.shape)}")
        if self.row_scores is not None and (tuple(self.row_scores.shape) != (n,) or not bool(
                torch.isfinite(self.row_scores).all())):
            problems.append(f"row_scores {tuple(self.row_scores.shape)} for {n} rows (or not "
                            f"finite)")
        if not (bool(torch.isfinite(self.components).all()) and bool(torch.isfinite(self.codes).all())):
            problems.append("NaN or Inf in the components or codes")
        elif not problems:
            # the bank's dictionary is the factorizer's (encode reads one, maps and gradients
            # the other): they must agree, up to the float32 the bank keeps
            gap = self._dictionary_gap()
            if gap is not None:
                problems.append(f"components differ from the factorizer's dictionary (by up to "
                                f"{gap:.3g})")
            if getattr(self.factorizer, "nonnegative_codes", False) and bool((self.codes < 0).any()):
                problems.append(f"negative codes from a {type(self.factorizer).__name__}, whose "
                                f"codes are non-negative")
        ids = self.concept_ids
        if ids.shape == (k,) and (ids.dtype.kind not in "iu" or (ids < 0).any()
                                  or len(np.unique(ids)) != k):
            problems.append("concept_ids that are not distinct non-negative integers")
        if not (isinstance(self.layer, str) and isinstance(self.method, str)
                and isinstance(self.params, dict) and isinstance(self.extra, dict)):
            problems.append("layer, method, params or extra of the wrong type")
        if not problems:
            try:  # the dictionary must be able to encode: one row of it, back to finite codes
                codes = np.asarray(_bounded(self.factorizer).transform(self.components[:1].numpy()))
            except Exception as err:  # noqa: BLE001 - any failure means a broken factorizer state
                problems.append(f"the factorizer cannot encode ({type(err).__name__}: {err})")
            else:
                if codes.shape != (1, k) or not np.isfinite(codes).all():
                    problems.append("the factorizer's codes are not finite")
        if problems:
            raise ValueError("inconsistent ConceptBank state: " + "; ".join(problems) + ".")

    def save(self, path: str | os.PathLike, *, include_activations: bool = False) -> str:
        """Write the bank to one ``.safetensors`` file (tensors + JSON metadata, no pickle).

        A bank whose factorizer was refitted after it was made (``fit``, ``partial_fit``) is
        refused: its codes and components are the old dictionary's, and the file would not load.
        """
        if self._dictionary_gap() is not None:
            raise ValueError("this bank's factorizer was refitted after the bank was made (its "
                             "dictionary is no longer the bank's components, and the codes are "
                             "the old dictionary's); make a bank of the new dictionary and save "
                             "that one: ConceptBank(components=factorizer.components_, "
                             "codes=factorizer.transform(activations), provenance=..., layer=..., "
                             "method=..., params=..., factorizer=factorizer).")
        tensors, meta = self.to_state(include_activations=include_activations)
        return str(io.save_file(path, tensors, meta, kind=BANK_KIND, version=BANK_VERSION))

    @classmethod
    def load(cls, path: str | os.PathLike) -> ConceptBank:
        """Read a bank written by :meth:`save`; never unpickles or executes code."""
        tensors, meta = io.load_file(path, kind=BANK_KIND, version=BANK_VERSION)
        with io.loading(path, "ConceptBank"):
            return cls.from_state(tensors, meta)


#: The tensors :meth:`ConceptBank.to_state` writes, besides its factorizer's arrays and
#: provenance's (``provenance.`` and one of :data:`_PROVENANCE`).
_TENSORS = frozenset({"components", "codes", "concept_ids", "activations", "row_scores"})
_PROVENANCE = frozenset({"image_ids", "boxes", "cells", "label_maps", "segment_refs"})

_PROBE_ITERATIONS = 20


def _bounded(factorizer: Factorizer) -> Factorizer:
    """A shallow copy of ``factorizer`` whose iterative solvers stop after a few iterations.

    The load-time check encodes one row to see that the state works; its cost must not depend
    on the solver settings stored in the file (``tol=0, max_iter=10**7`` would run for minutes).
    """
    import copy
    import warnings

    probe = copy.copy(factorizer)
    for name in ("max_iter", "transform_max_iter"):
        value = getattr(probe, name, None)
        if isinstance(value, int) and value > _PROBE_ITERATIONS:
            setattr(probe, name, _PROBE_ITERATIONS)

    class _Quiet:  # the capped solve may not converge: its warnings are not the user's concern
        def transform(self, rows):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return probe.transform(rows)

    return _Quiet()  # type: ignore[return-value]


# Short reprs: shapes of arrays, not their values (print(result) stays readable).
ConceptBank.__repr__ = dataclass_repr  # type: ignore[method-assign]
