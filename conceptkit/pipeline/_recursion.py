"""CRAFT's recursive sub-concepts: decompose one concept again at an earlier layer.

CRAFT (Fel et al., CVPR 2023) explains a concept by the sub-concepts it is made of: the inputs
where the concept is most present are decomposed at an earlier layer, and each sub-concept is
scored by how much it drives the parent concept's coefficient. The reference code never shipped
this step; :func:`decompose_concept` does it, recursively, and returns a :class:`ConceptTree`.

The parent coefficient of an input, as a function of its activations ``A`` at the earlier layer,
is ``f(A) = encode(pool(mid(A)))[concept]``: ``mid`` runs the model from the earlier layer to the
parent's layer, ``pool`` averages over space (patch tokens for transformers) and ``encode`` is the
parent bank's encoding, differentiable through its active set so that gradient methods work too
(:mod:`conceptkit.pipeline._recursion_path`).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .._deprecation import renamed_arguments
from .._reprs import dataclass_repr
from .._torchutils import model_device, model_dtype, preserved_model_state
from .._validation import check_choice, check_images, check_int, describe
from ..concepts import CRAFT, ICE, ConceptBank
from ..extraction import ActivationExtractor, CropSet, SegmentSet
from ..extraction._layers import get_layer, unwrap_model
from ..importance import METHODS as IMPORTANCE_METHODS
from ..importance import ConceptImportance, concept_importance
from ..importance._concept import designs_setting, sobol_designs
from ._examples import cut_examples
from ._recursion_path import ParentCode, check_cuts, check_levels, previous_block

__all__ = ["ConceptTree", "decompose_concept", "plot_subconcepts", "subconcept_examples"]

#: Sub-concept discovery methods by name.
SUB_METHODS: dict[str, type] = {"craft": CRAFT, "ice": ICE}


@dataclass(eq=False)
class ConceptTree:
    """One concept and, once decomposed, its sub-concepts at an earlier layer.

    Attributes
    ----------
    concept : int
        Index of the concept in :attr:`bank`.
    layer : str
        The layer of :attr:`bank`.
    bank : ConceptBank
        The bank the concept belongs to (the explanation's bank at the root, the parent's
        :attr:`sub_bank` below it).
    input_rows : ndarray of shape (m,)
        Rows of :attr:`bank` where the concept is most present (highest code first): the inputs
        decomposed for its sub-concepts. Each row's crop / cell / segment is resized to the
        image size before it is decomposed; rows whose resized input has a zero code for the
        concept (the parent coefficient the sub-concepts are scored against) are left out,
        and :attr:`note` counts them.
    image_ids : ndarray of shape (m,)
        Index, in the images given to :func:`decompose_concept`, of each input's source image.
    importance_for_parent : float or None
        This concept's importance for its parent's coefficient (None at the root).
    sub_layer, sub_bank : str, ConceptBank or None
        Where the sub-concepts were found, and their bank (None for a leaf).
    importance : ConceptImportance or None
        Importance of each sub-concept for this concept's coefficient (None for a leaf).
    children : list of ConceptTree
        One node per sub-concept (``children[j]`` is sub-concept ``j`` of :attr:`sub_bank`).
    note : str or None
        Why a node that should have been decomposed was not, or what limits its sub-concepts'
        importances (inputs left out because the concept's code is 0 on them once resized to
        the image; importances that are all 0, which measure nothing).
    """

    concept: int
    layer: str
    bank: ConceptBank = field(repr=False)
    input_rows: np.ndarray = field(repr=False)
    image_ids: np.ndarray = field(repr=False)
    importance_for_parent: float | None = None
    sub_layer: str | None = None
    sub_bank: ConceptBank | None = field(default=None, repr=False)
    importance: ConceptImportance | None = field(default=None, repr=False)
    children: list[ConceptTree] = field(default_factory=list)
    note: str | None = None
    parent: ConceptTree | None = field(default=None, repr=False)

    @property
    def depth(self) -> int:
        """Levels of sub-concepts below this node (0 for a leaf)."""
        return 1 + max(child.depth for child in self.children) if self.children else 0

    def nodes(self) -> Iterator[ConceptTree]:
        """This node and every node below it, depth first."""
        yield self
        for child in self.children:
            yield from child.nodes()

    @renamed_arguments(n_top="n_images")
    def to_dict(self, n_images: int = 10) -> dict[str, Any]:
        """A JSON-serialisable summary: layers, importances and the ids of the ``n_images``
        top input images of every node."""
        n_top = check_int(n_images, "n_images", minimum=1)
        out: dict[str, Any] = {
            "concept": int(self.concept), "layer": self.layer,
            "importance": None if self.importance_for_parent is None else _finite(self.importance_for_parent),
            "n_inputs": int(self.input_rows.size),
            "top_image_ids": [int(i) for i in self.image_ids[:n_top]],
            "note": self.note, "sub_layer": self.sub_layer,
        }
        if self.importance is not None:
            summary = self.importance.to_dict()
            summary.pop("per_input")
            out["sub_method"] = self.sub_bank.method
            out["sub_importance"] = summary
        out["children"] = [child.to_dict(n_top) for child in self.children]
        return out

    def render(self, digits: int = 3) -> str:
        """The tree as text, each sub-concept with its importance for its parent."""
        lines = [self._label(digits)]
        self._render_children(lines, "", digits)
        return "\n".join(lines)

    def _label(self, digits: int) -> str:
        text = f"concept {self.concept} @ {self.layer}"
        parent = self.parent.importance if self.parent is not None else None
        if self.importance_for_parent is not None and parent is not None and _unmeasured(parent):
            text += "  importance not measured (see the note above)"
        elif self.importance_for_parent is not None:
            text += f"  importance {self.importance_for_parent:.{digits}f}"
            if parent is not None and parent.ci_low is not None and np.isfinite(parent.ci_low[self.concept]):
                text += (f" [{parent.ci_low[self.concept]:.{digits}f}, "
                         f"{parent.ci_high[self.concept]:.{digits}f}]")
        text += f"  ({self.input_rows.size} inputs, {np.unique(self.image_ids).size} images)"
        return text + (f"  note: {self.note}" if self.note else "")

    def _render_children(self, lines: list[str], indent: str, digits: int) -> None:
        for i, child in enumerate(self.children):
            last = i == len(self.children) - 1
            lines.append(indent + ("└─ " if last else "├─ ") + child._label(digits))
            child._render_children(lines, indent + ("   " if last else "│  "), digits)


@dataclass(frozen=True)
class _Settings:
    n_concepts: int
    n_inputs: int
    method: str
    importance: str
    n_designs: int | None
    seed: int | None
    preprocess: Callable | None
    batch_size: int
    progress: bool


def decompose_concept(model: nn.Module, bank: ConceptBank, images: torch.Tensor, concept: int,
                      layer: str, *, n_concepts: int = 5, n_inputs: int = 64, depth: int = 1,
                      child_layers: Sequence[str] | None = None, method: str = "craft",
                      importance: str = "sobol", n_designs: int | None = None, seed: int | None = None,
                      preprocess: Callable | None = None, batch_size: int = 64,
                      progress: bool = True) -> ConceptTree:
    """Decompose concept ``concept`` of ``bank`` into sub-concepts at an earlier ``layer``.

    The ``n_inputs`` rows of ``bank`` with the highest code for the concept (rows with a zero
    code are left out) are cut from ``images`` through the bank's provenance and resized to the
    image size (crops, cells and segment boxes alike; segments keep ACE's grey outside their
    mask). An input whose own code for the concept is 0 once resized (an ICE cell can be: the
    code of the whole resized input is not the cell's) is left out, since no sub-concept can
    move the parent coefficient there; the node's :attr:`~ConceptTree.note` counts such inputs,
    and a node left with fewer than 2 is not decomposed (with a warning, as when fewer than half
    remain). CRAFT (crops of those crops) or ICE finds ``n_concepts`` sub-concepts in them at
    ``layer``, and each sub-concept is scored by how much it drives the parent concept's
    coefficient (see the module docstring). With ``depth > 1`` every sub-concept is decomposed
    again, at ``child_layers[d - 1]`` for depth ``d + 1``.

    Parameters
    ----------
    model : nn.Module
        The explained model; left exactly as found (flags restored, hooks removed), even on error.
    bank : ConceptBank
        The parent concepts; ``bank.layer`` is the parent layer.
    images : tensor of shape (N, C, H, W)
        The raw images ``bank`` was fitted on (its provenance indexes them).
    concept : int
        The concept to decompose.
    layer : str
        A layer that runs before ``bank.layer``; it must be a valid cut of ``model`` (no skip
        connection crossing it) and give feature maps ``(N, C, h, w)`` or vectors ``(N, C)``.
    n_concepts, n_inputs : int
        Sub-concepts per node, and most inputs decomposed per node (at least 2).
    depth : int
        Levels of sub-concepts.
    child_layers : sequence of str, optional
        The ``depth - 1`` layers of the deeper levels, each before the previous one. Default:
        the previous block that has parameters (the previous sibling module, else the parent's).
    method : {"craft", "ice"}
        Sub-concept discovery.
    importance : str
        Any method of :func:`conceptkit.importance.concept_importance` (default ``"sobol"``).
    n_designs : int, optional
        Sobol designs per input (default 32); only with ``importance="sobol"``.
    seed : int, optional
        Seeds every factorization and importance design (the same seed gives the same tree).
    preprocess : callable, optional
        Applied to image batches before the model (normalisation).
    batch_size : int
        Images per forward pass, and rows per call of the parent-coefficient function.
    progress : bool
        Progress bars.

    Returns
    -------
    ConceptTree
        The root (the concept itself) with one child per sub-concept.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module; got {describe(model)}.")
    if not isinstance(bank, ConceptBank):
        raise TypeError(f"`bank` must be a conceptkit ConceptBank; got {describe(bank)}.")
    images = check_images(images, "images", pixels=True)
    concept = check_int(concept, "concept", minimum=0, maximum=bank.n_concepts - 1)
    depth = check_int(depth, "depth", minimum=1)
    if preprocess is not None and not callable(preprocess):
        raise TypeError(f"`preprocess` must be callable; got {describe(preprocess)}.")
    settings = _Settings(
        n_concepts=check_int(n_concepts, "n_concepts", minimum=1),
        n_inputs=check_int(n_inputs, "n_inputs", minimum=2),
        method=check_choice(method, "method", SUB_METHODS),
        importance=check_choice(importance, "importance", IMPORTANCE_METHODS),
        n_designs=designs_setting(n_designs, importance),
        seed=None if seed is None else check_int(seed, "seed", minimum=0),
        preprocess=preprocess, batch_size=check_int(batch_size, "batch_size", minimum=1),
        progress=bool(progress))
    _check_source(images, bank)
    parent_layer, _ = get_layer(model, bank.layer, "bank.layer")
    model = unwrap_model(model)[0]  # DataParallel / torch.compile: hooks go on what they wrap
    levels = [get_layer(model, layer, "layer")[0]]
    if child_layers is not None:
        if isinstance(child_layers, str) or not isinstance(child_layers, Sequence):
            raise TypeError(f"`child_layers` must be a list of layer names; got {describe(child_layers)}.")
        if len(child_layers) != depth - 1:
            raise ValueError(f"`child_layers` must name depth - 1 = {depth - 1} layers (one per "
                             f"level below `layer`); got {len(child_layers)}.")
        levels += [get_layer(model, name, f"child_layers[{i}]")[0] for i, name in enumerate(child_layers)]

    rows = _concept_rows(bank, concept, settings.n_inputs)
    if rows.size < 2:
        raise ValueError(f"`concept` {concept} is present (code > 0) in {rows.size} of the bank's "
                         f"rows; decomposing it needs at least 2.")
    root = ConceptTree(concept=concept, layer=parent_layer, bank=bank, input_rows=rows,
                       image_ids=bank.provenance.image_ids[rows])
    inputs = _cut_inputs(images, bank, rows)
    with preserved_model_state(model):
        example = _prepare(inputs[:1], model, preprocess)
        while len(levels) < depth:
            levels.append(previous_block(model, levels[-1]))
        check_levels(model, [parent_layer, *levels], example, child_layers is None)
        check_cuts(model, [parent_layer, *levels])
        _expand(root, inputs, levels, model, settings)
    return root


def _expand(node: ConceptTree, inputs: torch.Tensor, levels: list[str], model: nn.Module,
            settings: _Settings) -> None:
    """Find the sub-concepts of ``node`` in ``inputs`` at ``levels[0]``, score them, recurse."""
    layer = levels[0]
    extractor = ActivationExtractor(model, layer, batch_size=settings.batch_size,
                                    progress=settings.progress, preprocess=settings.preprocess)
    discovery = SUB_METHODS[settings.method](
        settings.n_concepts, batch_size=settings.batch_size, progress=settings.progress,
        seed=settings.seed, preprocess=settings.preprocess)
    acts = extractor(inputs)
    example = _prepare(inputs[:1], model, settings.preprocess)
    code = ParentCode(model, layer, node.bank, node.concept, example, acts[:1])
    present = _parent_present(node, code, acts, model, settings.batch_size)
    if not present.all():
        inputs, acts = _keep_present(node, present, inputs, acts)
        if present.sum() < 2:
            return
    if settings.method == "ice":   # ICE factorizes these very maps: no second pass of g
        sub_bank = discovery.fit_activations(acts, layer, image_size=tuple(inputs.shape[-2:]))
    else:
        sub_bank = discovery.fit(model, layer, inputs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = concept_importance(code, acts, sub_bank, 0, method=settings.importance,
                                    **sobol_designs(settings.importance, settings.n_designs),
                                    seed=settings.seed,
                                    batch_size=settings.batch_size, progress=settings.progress)
    node.sub_layer, node.sub_bank, node.importance = layer, sub_bank, result
    _rewarn(caught, node, result)
    for j in tqdm(range(sub_bank.n_concepts), disable=not settings.progress or len(levels) == 1,
                  desc=f"sub-concepts @ {layer}", leave=False):
        rows = _concept_rows(sub_bank, j, settings.n_inputs)
        child = ConceptTree(concept=j, layer=layer, bank=sub_bank, input_rows=rows,
                            image_ids=node.image_ids[sub_bank.provenance.image_ids[rows]],
                            importance_for_parent=float(result.importances[j]), parent=node)
        node.children.append(child)
        if len(levels) == 1:
            continue
        if rows.size < 2:
            child.note = f"present in {rows.size} input(s); at least 2 are needed to decompose it"
            continue
        _expand(child, _cut_inputs(inputs, sub_bank, rows), levels[1:], model, settings)


def _prepare(batch: torch.Tensor, model: nn.Module, preprocess: Callable | None) -> torch.Tensor:
    batch = batch.to(device=model_device(model), dtype=model_dtype(model))
    return preprocess(batch) if preprocess is not None else batch


def _parent_present(node: ConceptTree, code: ParentCode, acts: torch.Tensor, model: nn.Module,
                    batch_size: int) -> np.ndarray:
    """``(m,)`` bool: where the parent coefficient ``code`` of each of ``node``'s inputs (from
    their activations ``acts`` at the earlier layer) is positive.

    Every input's row has a positive code, but an ICE cell resized to the image is another
    input than the cell, and its code can be 0. Crops and segments come back exactly as the
    bank saw them (their pooled activations are the bank's rows), so their code is the
    encoding of the row, with no pass of the model."""
    bank = node.bank
    rows = getattr(bank, "activations", None)
    with torch.no_grad():
        if bank.provenance.kind in ("crop", "segment") and rows is not None and rows.ndim == 2:
            pooled = torch.as_tensor(rows[node.input_rows]).float()
            values = bank.encode_differentiable(pooled)[:, node.concept]
            return (values.float().cpu() > 0).numpy()
        values = []
        for start in range(0, acts.shape[0], batch_size):
            batch = acts[start:start + batch_size].to(device=model_device(model),
                                                      dtype=model_dtype(model))
            values.append(code(batch).reshape(-1).float().cpu())
    return (torch.cat(values) > 0).numpy()


def _where(node: ConceptTree) -> str:
    return f"concept {node.concept} at `{node.layer}`"


def _keep_present(node: ConceptTree, present: np.ndarray, inputs: torch.Tensor,
                  acts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Leave out of ``node`` the inputs where its concept's code is 0 (``~present``), note how
    many, and warn when fewer than half remain (none left to decompose when fewer than 2)."""
    total, kept = present.size, int(present.sum())
    node.input_rows, node.image_ids = node.input_rows[present], node.image_ids[present]
    why = (f"its code is 0 on {total - kept} of its {total} top inputs once each is resized "
           f"to the image (its row's code is positive, the resized input's is not), so no "
           f"sub-concept can change it there")
    if kept < 2:
        node.note = (f"not decomposed: {why}; {kept} input(s) left, at least 2 are needed")
        warnings.warn(f"decompose_concept: {_where(node)} was not decomposed: {why}, which leaves "
                      f"{kept} input(s), and at least 2 are needed. A larger `n_inputs` gives it "
                      f"more inputs to keep.", RuntimeWarning, stacklevel=4)
    else:
        node.note = f"decomposed on {kept} of its {total} top inputs: {why}"
        if 2 * kept < total:
            warnings.warn(f"decompose_concept: {_where(node)} is decomposed on {kept} of its "
                          f"{total} top inputs only: {why}; those inputs are left out.",
                          RuntimeWarning, stacklevel=4)
    return inputs[torch.as_tensor(present)], acts[torch.as_tensor(present)]


def _unmeasured(importance: ConceptImportance) -> bool:
    """Whether every sub-concept scored exactly 0 on every input: the parent code did not move,
    and the zeros measure nothing."""
    return not np.any(importance.per_input)


def _rewarn(caught: list, node: ConceptTree, result: ConceptImportance) -> None:
    """Re-issue the warnings of the sub-concepts' importance in the recursion's words: the
    score differentiated is ``node``'s concept's code, not a class of a head ``h``."""
    score = f"the code of {_where(node)} (the parent coefficient)"
    for item in caught:
        message = str(item.message)
        if message.startswith("concept_importance(") and "every importance is 0" in message:
            continue
        message = re.sub(r"the class -?\d+ score of `h`", score, message)
        message = message.replace("No concept of `bank` moves the score",
                                  "No sub-concept moves it")
        warnings.warn(message, item.category, stacklevel=4)
    if _unmeasured(result):
        node.note = ((node.note + "; ") if node.note else "") + (
            f"every sub-concept importance is 0: {score} does not change when any sub-concept "
            f"is scaled or removed, on any of the {result.per_input.shape[0]} inputs, so the "
            f"importances measure nothing")
        warnings.warn(f"decompose_concept: every sub-concept importance of {_where(node)} is 0 — "
                      f"{score} does not change (up to rounding) when any sub-concept at "
                      f"`{node.sub_layer}` is scaled or removed, on any of the "
                      f"{result.per_input.shape[0]} inputs. The importances measure nothing; "
                      f"the tree shows them as not measured.", RuntimeWarning, stacklevel=4)


def _concept_rows(bank: ConceptBank, concept: int, n: int) -> np.ndarray:
    """The ``n`` rows with the highest code for ``concept``, rows with a zero code left out."""
    rows = bank.top_rows(concept, n)
    return rows[bank.codes[rows, concept].numpy() > 0]


def _check_source(images: torch.Tensor, bank: ConceptBank) -> None:
    prov = bank.provenance
    if tuple(images.shape[-2:]) != tuple(prov.source_size):
        raise ValueError(f"`images` are {tuple(images.shape[-2:])} pixels but the bank was fitted on "
                         f"{tuple(prov.source_size)}-pixel images; pass the images it was fitted on.")
    if len(prov) and int(prov.image_ids.max()) >= images.shape[0]:
        raise ValueError(f"`images` has {images.shape[0]} images but the bank's rows come from "
                         f"{int(prov.image_ids.max()) + 1}; pass the images it was fitted on.")


def _cut_inputs(images: torch.Tensor, bank: ConceptBank, rows: np.ndarray) -> torch.Tensor:
    """The inputs of ``rows`` cut from ``images`` and resized to the image size ``(m, C, H, W)``."""
    prov = bank.provenance
    height, width = images.shape[-2:]
    if prov.kind == "crop":   # exactly the crops the bank saw
        size = (height, width) if height == width else (min(height, width),) * 2
        return CropSet(images, prov, int(prov.extra.get("patch_size", 0)),
                       int(prov.extra.get("stride", 0)), size).batch(rows)
    if prov.kind == "segment":
        return SegmentSet(images, prov, (height, width), float(prov.extra.get("fill", 117 / 255))).batch(rows)
    out = []
    for row in rows:
        y0, x0, y1, x1 = prov.boxes[row]
        patch = images[prov.image_ids[row], :, y0:y1, x0:x1][None].float()
        out.append(F.interpolate(patch, size=(height, width), mode="bilinear", align_corners=False))
    return torch.cat(out)


def _node_inputs(node: ConceptTree, images: torch.Tensor) -> torch.Tensor:
    """The inputs ``node`` was decomposed on, re-cut from the root's images."""
    source = images if node.parent is None else _node_inputs(node.parent, images)
    return _cut_inputs(source, node.bank, node.input_rows)


@renamed_arguments(n="n_exemplars", size="image_size")
def subconcept_examples(node: ConceptTree, images: torch.Tensor, n_exemplars: int = 10,
                        image_size: int | None = None) -> list[torch.Tensor]:
    """The top ``n_exemplars`` crops / cells of every sub-concept of ``node``.

    ``images`` are the images given to :func:`decompose_concept`. Returns one tensor
    ``(n_j, C, s, s)`` per sub-concept (``n_j <= n_exemplars``), cut from the node's inputs and
    resized to ``image_size`` (default the crop's own size).
    """
    if not isinstance(node, ConceptTree):
        raise TypeError(f"`node` must be a ConceptTree; got {describe(node)}.")
    if node.sub_bank is None:
        raise ValueError("`node` is a leaf: it has no sub-concepts.")
    n = check_int(n_exemplars, "n_exemplars", minimum=1)
    root = node
    while root.parent is not None:
        root = root.parent
    images = check_images(images, "images", pixels=True)
    _check_source(images, root.bank)
    inputs = _node_inputs(node, images)
    return [cut_examples(inputs, node.sub_bank, node.sub_bank.top_rows(j, n), image_size)
            for j in range(node.sub_bank.n_concepts)]


@renamed_arguments(n="n_exemplars")
def plot_subconcepts(node: ConceptTree, images: torch.Tensor, n_exemplars: int = 8) -> Any:
    """A matplotlib figure: one row of ``n_exemplars`` top exemplars per sub-concept, most
    important first."""
    from ..report import plot_exemplar_grid

    examples = subconcept_examples(node, images, n_exemplars)
    order = node.importance.ranking
    labels = [f"sub-concept {j} @ {node.sub_layer}" for j in order]
    return plot_exemplar_grid([examples[j] for j in order], labels,
                              node.importance.importances[order], n_exemplars=n_exemplars,
                              title=f"concept {node.concept} @ {node.layer}")


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


# Short reprs: shapes of arrays, not their values (print(result) stays readable).
ConceptTree.__repr__ = dataclass_repr  # type: ignore[method-assign]
