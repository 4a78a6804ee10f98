"""A concept bottleneck built from discovered concepts (discover, name, then bottleneck).

The concepts come from CRAFT / ICE / ACE explanations — one class's ``ClassConcepts``, every class
of a ``ConceptManager``, or a dataset-wide :class:`~conceptkit.concepts.ConceptBank` — and stay
fixed. An image's bottleneck is its *concept coefficients*: its activations at the banks' layer
(one pass of ``g``), every position encoded with each bank's dictionary and averaged over the
positions (``pooling="mean"``; ``"max"`` takes the strongest position), standardised with the
training mean and standard deviation. A sparse multinomial logistic head (the elastic net of
:mod:`._sparse`, ``l1_ratio`` = L1 share 0.99) driven to at most ``nnz_per_class`` non-zero weights
per class predicts the class, as in the label-free CBM.

Names come from :mod:`conceptkit.naming` (names stored on the explanations are picked up, with
their trust scores; pass ``names`` otherwise). The bottleneck uses every concept on every image,
so name the concepts over the whole probe set (``class_images_only=False``): a concept named in
its own class's images can respond to another part in other classes' images. Interventions
replace standardised coefficients by "true" values: presence 0 / 1 maps to each concept's 5th /
95th training percentile, as Koh et al. do for logit bottlenecks; :meth:`true_concepts` maps
ground-truth part presence onto the concepts named after the parts, optionally only those whose
name is trusted (``min_trust``, the naming's AUC).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator
from torch import nn
from tqdm.auto import tqdm

from .._deprecation import renamed_arguments
from .._validation import (
    check_choice,
    check_float,
    check_images,
    check_int,
    describe,
    make_rng,
)
from ..concepts import ConceptBank
from ..extraction import ActivationExtractor
from ..io import load_file, loading, save_file
from ._data import as_tensor, check_concepts, check_labels
from ._identity import check_identity, fitted_identity, read_identity
from ._intervene import (
    RANDOM_SEED,
    RANDOM_TRIALS,
    InterventionCurve,
    _check_groups,
    refuse_random_arguments,
)
from ._model import CBMOutput, warn_repeated
from ._sparse import check_l1_ratio, check_path, elastic_net_path, nnz_per_class

KIND = "discovered_cbm"
FORMAT_VERSION = 1
POOLINGS = ("mean", "max")


def _labels_of(source: Any) -> tuple[list[str], list[float]] | None:
    """Names stored on an explanation (``ClassConcepts.names``) and their trust, if any."""
    names = getattr(source, "names", None)
    if names is None:
        return None
    trust = [np.nan if getattr(e, "trust", None) is None else float(e.trust) for e in names]
    return list(names.labels()), trust


def concept_blocks(concepts: Any) -> list[tuple[ConceptBank, str, Any]]:
    """``[(bank, prefix, source)]`` from any accepted form of discovered concepts."""
    if isinstance(concepts, ConceptBank):
        return [(concepts, "", concepts)]
    if hasattr(concepts, "classes_") and isinstance(concepts.classes_, Mapping):  # ConceptManager
        concepts = concepts.classes_
        if not concepts:
            raise ValueError("`concepts` is a ConceptManager that has not been fitted.")
    if hasattr(concepts, "bank") and hasattr(concepts, "class_id"):               # ClassConcepts
        return [(concepts.bank, "", concepts)]
    if isinstance(concepts, Mapping):
        items = sorted(concepts.items())
    elif isinstance(concepts, (list, tuple)) and concepts:
        items = list(enumerate(concepts))
    else:
        raise TypeError(f"`concepts` must be a ClassConcepts, a ConceptManager, a dict or list of "
                        f"ClassConcepts, or a ConceptBank; got {describe(concepts)}.")
    blocks = []
    for key, item in items:
        if isinstance(item, ConceptBank):
            blocks.append((item, f"bank {key}", item))
        elif hasattr(item, "bank") and hasattr(item, "class_id"):
            blocks.append((item.bank, f"class {int(item.class_id)}", item))
        else:
            raise TypeError(f"`concepts[{key!r}]` must be a ClassConcepts or a ConceptBank; got "
                            f"{describe(item)}.")
    return blocks


def _split_truth(concept_values: Any, mask: Any) -> tuple[Any, Any]:
    """``(values, mask)`` from ``concept_values`` — the pair :meth:`DiscoveredCBM.true_concepts`
    returns, or the values alone — and ``mask=``; both masks at once is an error."""
    pair = (isinstance(concept_values, tuple) and len(concept_values) == 2
            and np.ndim(concept_values[0]) == 2)  # a tuple of two rows has 1-D items
    if not pair:
        return concept_values, mask
    if mask is not None:
        raise TypeError("`concept_values` is a (values, mask) pair and `mask=` is given too: "
                        "pass the mask once.")
    values, pair_mask = concept_values
    return values, pair_mask


def _check_mask(mask: Any, Z: torch.Tensor) -> torch.Tensor:
    """``mask`` as a boolean tensor of shape ``Z.shape`` (per image) or ``(K,)``."""
    mask = (mask.to(Z.device) if isinstance(mask, torch.Tensor)
            else torch.as_tensor(np.asarray(mask)))
    if mask.dtype != torch.bool or mask.shape not in (Z.shape, Z.shape[1:]):
        raise ValueError(f"`mask` must be boolean of shape {tuple(Z.shape)} or ({Z.shape[1]},), "
                         f"True where a concept is set to its true value; got {describe(mask)}.")
    return mask


class DiscoveredCBM(BaseEstimator):
    """Concept bottleneck over discovered concepts; see the module notes.

    Parameters
    ----------
    concepts : ClassConcepts, ConceptManager, dict / list of ClassConcepts, or ConceptBank(s)
        The discovered concepts (all at the same layer).
    model : nn.Module, optional
        The network the concepts were found in; default the explanations' own model. Not saved;
        :meth:`load` takes it again (or :meth:`attach` later).
    names : list of str, optional
        One name per concept (all banks, in order); default the names stored on the explanations
        (``ClassConcepts.name_concepts``), else ``"class c concept j"``.
    nnz_per_class : int
        Most non-zero head weights per class.
    l1_ratio : float
        L1 share of the elastic net (its strength ``alpha_`` is picked along a path, as in
        :class:`LabelFreeCBM`).
    pooling : {"mean", "max"}
        How an image's coefficient maps become one coefficient per concept.
    preprocess : callable, optional
        Input normalisation of the model (default the explanations' own).

    Fitted attributes: ``weight_ (n_classes, K)``, ``bias_``, ``coef_mean_`` / ``coef_std_``
    ``(K,)``, ``intervention_low_`` / ``intervention_high_`` ``(K,)``, ``alpha_``, ``path_``,
    ``n_classes_``, ``names_``, ``trust_`` (the names' trust scores, NaN where unknown).
    """

    def __init__(self, concepts: Any, model: nn.Module | None = None, *,
                 names: list[str] | None = None, nnz_per_class: int = 10, l1_ratio: float = 0.99,
                 pooling: str = "mean", preprocess: Callable | None = None,
                 batch_size: int = 64, device: Any = None, progress: bool = True):
        self.concepts = concepts
        self.model = model
        self.names = names
        self.nnz_per_class = nnz_per_class
        self.l1_ratio = l1_ratio
        self.pooling = pooling
        self.preprocess = preprocess
        self.batch_size = batch_size
        self.device = device
        self.progress = progress

    # -- the concepts ---------------------------------------------------------------------------
    def _setup(self) -> None:
        blocks = concept_blocks(self.concepts)
        layers = {bank.layer for bank, _, _ in blocks}
        if len(layers) != 1:
            raise ValueError(f"all concepts must come from one layer; got layers {sorted(layers)}.")
        check_choice(self.pooling, "pooling", POOLINGS)
        self.banks_ = [bank for bank, _, _ in blocks]
        self.layer_ = layers.pop()
        labels: list[str] = []
        trust: list[float] = []
        for bank, prefix, source in blocks:
            stored = _labels_of(source)
            if stored is not None and len(stored[0]) == bank.n_concepts:
                labels += stored[0]
                trust += stored[1]
            else:
                labels += [f"{prefix} concept {j}".strip() for j in range(bank.n_concepts)]
                trust += [np.nan] * bank.n_concepts
        if self.names is not None:
            if not isinstance(self.names, (list, tuple)) or len(self.names) != len(labels):
                raise ValueError(f"`names` must list one name per concept ({len(labels)}); got "
                                 f"{describe(self.names)}.")
            labels = [str(n) for n in self.names]
            warn_repeated(labels, "names", "concept")
            trust = [np.nan] * len(labels)
        self.names_ = labels
        self.trust_ = np.asarray(trust, dtype=np.float64)
        sources = [s for _, _, s in blocks if getattr(s, "model_at_layer", None) is not None]
        explainer = sources[0].model_at_layer if sources else None
        self.model_ = self.model if self.model is not None else (
            None if explainer is None else explainer.model)
        self.preprocess_ = self.preprocess if self.preprocess is not None else (
            None if explainer is None else explainer.preprocess)

    @property
    def n_concepts(self) -> int:
        return sum(bank.n_concepts for bank in self.banks_)

    def attach(self, model: nn.Module, preprocess: Callable | None = None, *,
               strict: bool = False) -> DiscoveredCBM:
        """Give a loaded model the network it needs to read images.

        ``model`` and ``preprocess`` are compared with what the model was fitted with (its
        weights, its structure and its preprocessing, as far as recorded): a difference warns,
        or raises a ``ValueError`` with ``strict=True``.
        """
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be a torch.nn.Module; got {describe(model)}.")
        check_identity(getattr(self, "fitted_with_", None), model, preprocess,
                       fitted="the DiscoveredCBM", where="DiscoveredCBM.attach", strict=strict)
        self.model = self.model_ = model
        self.preprocess = self.preprocess_ = preprocess
        return self

    # -- the bottleneck -------------------------------------------------------------------------
    def activations(self, images: Any) -> torch.Tensor:
        """Activations ``(N, C, h, w)`` (or ``(N, C)``) of images at the concepts' layer."""
        if self.model_ is None:
            raise ValueError("reading images needs the model: pass `model=` (or `attach(model)` "
                             "after loading), or give activations to `coefficients`.")
        images = check_images(images, "images")
        if self.preprocess_ is None and getattr(self, "fitted_with_preprocess_", False):
            raise ValueError("this model was fitted on images through a `preprocess` (e.g. a "
                             "normalisation), which a file cannot hold: pass the same one to "
                             "`DiscoveredCBM.load(path, model, preprocess=...)` or "
                             "`attach(model, preprocess)`; without it the images would be read "
                             "differently and the predictions would change.")
        return ActivationExtractor(self.model_, self.layer_, batch_size=int(self.batch_size),
                                   device=self.device, progress=bool(self.progress),
                                   preprocess=self.preprocess_)(images)

    def coefficients(self, images: Any = None, *, activations: Any = None) -> torch.Tensor:
        """Raw concept coefficients ``(N, K)`` of images (or of their activations)."""
        if (images is None) == (activations is None):
            raise ValueError("pass exactly one of `images` and `activations`.")
        acts = self.activations(images) if activations is None else as_tensor(activations, "activations")
        acts = acts.detach().cpu().float()
        if acts.ndim < 2 or acts.shape[0] == 0:  # the banks would name their own argument
            raise ValueError(f"`activations` must hold at least one image's activations, "
                             f"(N, C, h, w) or (N, C); got shape {tuple(acts.shape)}.")
        out = []
        for bank in tqdm(self.banks_, disable=not self.progress or len(self.banks_) < 2,
                         desc="concept coefficients", leave=False):
            codes = torch.as_tensor(bank.encode(acts)).float()
            if codes.ndim == 4:
                codes = codes.mean((2, 3)) if self.pooling == "mean" else codes.amax((2, 3))
            out.append(codes)
        return torch.cat(out, dim=1)

    def transform(self, images: Any = None, *, activations: Any = None) -> torch.Tensor:
        """Standardised concept coefficients ``(N, K)``: the bottleneck."""
        self._check_fitted()
        raw = self.coefficients(images, activations=activations)
        return (raw - self.coef_mean_) / self.coef_std_

    # -- fitting --------------------------------------------------------------------------------
    def fit(self, images: Any = None, labels: Any = None, *, activations: Any = None) -> DiscoveredCBM:
        """Fit the sparse head on images (or their activations) and class labels ``(N,)``."""
        self._setup()
        check_int(self.nnz_per_class, "nnz_per_class", minimum=1)
        check_int(self.batch_size, "batch_size", minimum=1)  # saved: load checks it as well
        check_l1_ratio(self.l1_ratio)
        raw = self.coefficients(images, activations=activations)
        labels = check_labels(as_tensor(labels, "labels"), "labels")
        if labels.shape[0] != raw.shape[0]:
            raise ValueError(f"`labels` has {labels.shape[0]} entries for {raw.shape[0]} images.")
        mean, std = raw.mean(0), raw.std(0)
        std = torch.where(std > 0, std, torch.ones_like(std))
        Z = ((raw - mean) / std).double()
        n_classes = int(labels.max()) + 1
        if n_classes < 2 or len(torch.unique(labels)) < 2:
            raise ValueError("`labels` must hold at least two classes.")
        absent = sorted(set(range(n_classes)) - set(torch.unique(labels).tolist()))
        if absent:  # classes 0..max are the head's rows: as train_cbm, say which have no image
            warnings.warn(f"DiscoveredCBM.fit: `labels` has no example of class(es) "
                          f"{absent[:20]} below its largest class {n_classes - 1}; the head gets "
                          f"n_classes={n_classes} rows and will (almost) never predict those "
                          f"classes. Check the labels (or map them to 0..C-1).",
                          UserWarning, stacklevel=2)
        fit, path = elastic_net_path(Z, labels, n_classes, int(self.nnz_per_class),
                                     l1_ratio=float(self.l1_ratio))
        self.coef_mean_, self.coef_std_ = mean, std
        self.weight_, self.bias_ = fit.weight.float(), fit.bias.float()
        self.alpha_, self.path_, self.n_classes_ = float(fit.alpha), path, n_classes
        self.intervention_low_ = torch.quantile(Z.float(), 0.05, dim=0)
        self.intervention_high_ = torch.quantile(Z.float(), 0.95, dim=0)
        # what save() records and attach() / load() compare: the network and preprocessing
        self.fitted_with_ = fitted_identity(self.model_, self.preprocess_) or None
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "weight_"):
            raise ValueError("this DiscoveredCBM is not fitted yet; call fit(images, labels) first.")

    # -- prediction -----------------------------------------------------------------------------
    def predict_from_concepts(self, bottleneck: torch.Tensor) -> torch.Tensor:
        """Class logits ``(N, n_classes)`` of standardised coefficients ``(N, K)``."""
        self._check_fitted()
        return bottleneck.float() @ self.weight_.T + self.bias_

    def decision_function(self, images: Any = None, *, activations: Any = None) -> torch.Tensor:
        return self.predict_from_concepts(self.transform(images, activations=activations))

    def predict(self, images: Any = None, *, activations: Any = None) -> torch.Tensor:
        return self.decision_function(images, activations=activations).argmax(1)

    def predict_proba(self, images: Any = None, *, activations: Any = None) -> torch.Tensor:
        return torch.softmax(self.decision_function(images, activations=activations), dim=1)

    @renamed_arguments(n_concepts="n_top_concepts")
    def top_concepts(self, class_index: int, n_top_concepts: int = 5) -> list[tuple[str, float]]:
        """The ``n_top_concepts`` concepts with the largest positive weight for a class:
        ``[(name, weight)]``."""
        self._check_fitted()
        row = self.weight_[check_int(class_index, "class_index", minimum=0,
                                     maximum=self.n_classes_ - 1)]
        order = torch.argsort(row, descending=True, stable=True)[:check_int(n_top_concepts, "n_top_concepts", minimum=1)]
        return [(self.names_[j], float(row[j])) for j in order.tolist() if float(row[j]) > 0]

    @property
    def nnz_per_class_(self) -> np.ndarray:
        self._check_fitted()
        return nnz_per_class(self.weight_)

    # -- interventions --------------------------------------------------------------------------
    def true_to_bottleneck(self, concept_values: torch.Tensor) -> torch.Tensor:
        """Presence in [0, 1] ``(N, K)`` → bottleneck values (5th / 95th training percentiles)."""
        self._check_fitted()
        p = check_concepts(as_tensor(concept_values, "concept_values"), "concept_values")
        if p.ndim != 2 or p.shape[1] != self.n_concepts:  # a column would broadcast to all
            raise ValueError(f"`concept_values` must have shape (N, {self.n_concepts}), one "
                             f"column per concept; got {tuple(p.shape)}.")
        return self.intervention_low_ * (1 - p) + self.intervention_high_ * p

    def true_concepts(self, presence: Any, part_names: list[str],
                      min_trust: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """True values of the named concepts from ground-truth part presence.

        ``presence (N, G)`` of parts ``part_names``; a concept whose name is a part's name gets
        that part's presence. With ``min_trust``, only concepts whose name's trust score (AUC,
        from the naming) reaches it are kept. Returns ``(concept_values (N, K), mask (K,))``,
        mask True for the concepts that found their part; the other columns of
        ``concept_values`` are 0 and mean "unknown", not "absent". Pass the pair whole to
        :meth:`intervention_curve` (``concept_values=cbm.true_concepts(...)``), or its two parts
        to :meth:`intervene`, so that only the concepts with a true value are intervened on.
        """
        self._check_fitted()
        if min_trust is not None:
            min_trust = check_float(min_trust, "min_trust", minimum=0.0, maximum=1.0)
        presence = check_concepts(as_tensor(presence, "presence"), "presence")
        if presence.shape[1] != len(part_names):
            raise ValueError(f"`presence` has {presence.shape[1]} columns for {len(part_names)} "
                             f"part names.")
        index = {name: g for g, name in enumerate(part_names)}
        values = torch.zeros(presence.shape[0], self.n_concepts)
        mask = torch.zeros(self.n_concepts, dtype=torch.bool)
        for j, name in enumerate(self.names_):
            trusted = min_trust is None or (np.isfinite(self.trust_[j]) and self.trust_[j] >= min_trust)
            if name in index and trusted:
                values[:, j] = presence[:, index[name]]
                mask[j] = True
        return values, mask

    def intervene(self, images: Any = None, concept_values: Any = None, mask: Any = None, *,
                  activations: Any = None) -> CBMOutput:
        """Predict with the concepts where ``mask`` (``(N, K)`` or ``(K,)`` bool) is True set to
        their true values ``concept_values (N, K)`` (presence in [0, 1]). ``concept_values`` may
        also be the ``(values, mask)`` pair of :meth:`true_concepts`.

        Returns a :class:`CBMOutput`: ``concept_logits`` the standardised coefficients before,
        ``concepts`` after the replacement, ``class_logits`` the head on them.
        """
        concept_values, mask = _split_truth(concept_values, mask)
        Z = self.transform(images, activations=activations)
        if mask is None:
            raise TypeError(f"`mask` is required: booleans of shape {tuple(Z.shape)} or "
                            f"({Z.shape[1]},), True where a concept is set to its true value.")
        mask = _check_mask(mask, Z)
        true = self.true_to_bottleneck(concept_values)
        if true.shape != Z.shape:
            raise ValueError(f"`concept_values` must have shape {tuple(Z.shape)}; got "
                             f"{tuple(true.shape)}.")
        replaced = torch.where(mask.expand_as(Z), true, Z)
        return CBMOutput(Z, replaced, self.predict_from_concepts(replaced))

    def intervention_curve(self, images: Any = None, concept_values: Any = None,
                           labels: Any = None, *, mask: Any = None,
                           groups: list[list[int]] | None = None, policy: str = "random",
                           n_trials: int | None = None, seed: int | None = None,
                           activations: Any = None) -> InterventionCurve:
        """Task accuracy as concept groups are set to their true values, one group at a time.

        Only concepts with a true value are ever intervened on. Which ones have one is said by a
        ``mask`` (``(K,)``, or ``(N, K)`` per image; True = the value in ``concept_values`` is
        known), given either as ``concept_values=(values, mask)`` — the pair
        :meth:`true_concepts` returns — or as ``mask=``:

        - ``groups`` left out: each concept that is True in the mask (for some image) is its own
          group; the others are never touched.
        - ``groups`` given: every concept in them must be True in the mask for some image; a
          group sets its concepts only on the images where the mask is True.

        ``concept_values (N, K)`` alone, without a mask, is accepted only with ``groups`` (the
        concepts in the groups are taken to have true values). Without either it is refused
        (a ``TypeError``): the curve cannot tell a concept without a true value (0 in
        :meth:`true_concepts`) from one that is absent, and would set it to "absent". Pass
        ``mask=torch.ones(K, dtype=torch.bool)`` when every concept has a true value.

        ``policy``: ``"random"`` (``n_trials`` orders, default 5, drawn with ``seed``, default
        0; mean ± std over them) or ``"importance"`` (per image, the groups with the largest
        ``|W[ŷ, j]|`` first; deterministic, so ``n_trials`` and ``seed`` are refused).
        """
        check_choice(policy, "policy", ("random", "importance"))
        refuse_random_arguments(policy, n_trials=n_trials, seed=seed)
        values, mask = _split_truth(concept_values, mask)
        Z = self.transform(images, activations=activations)
        true = self.true_to_bottleneck(values)
        if true.shape != Z.shape:  # one row or one column would broadcast into a curve
            raise ValueError(f"`concept_values` must have shape {tuple(Z.shape)} (one row per "
                             f"image, one column per concept); got {tuple(true.shape)}.")
        if mask is None:
            if groups is None:
                raise TypeError(
                    f"`mask` is required (or `groups`): which of the {self.n_concepts} concepts "
                    f"have a true value in `concept_values`? Pass the (values, mask) pair that "
                    f"`true_concepts` returns as `concept_values`, or `mask=` (booleans of shape "
                    f"({self.n_concepts},) or {tuple(Z.shape)}); "
                    f"mask=torch.ones({self.n_concepts}, dtype=torch.bool) if every concept has "
                    f"one. Without it every concept would be set, those without truth to "
                    f"\"absent\".")
            known = torch.ones_like(Z, dtype=torch.bool)
        else:
            known = _check_mask(mask, Z).expand_as(Z)
            with_truth = known.any(0)
            if not bool(with_truth.any()):
                raise ValueError("`mask` is False everywhere: no concept has a true value to "
                                 "intervene with.")
            if groups is None:
                groups = [[j] for j in torch.nonzero(with_truth).flatten().tolist()]
        labels = check_labels(as_tensor(labels, "labels"), "labels")
        if labels.shape != (Z.shape[0],):
            raise ValueError(f"`labels` must hold one class per image ({Z.shape[0]}); got shape "
                             f"{tuple(labels.shape)}.")
        if int(labels.min()) < 0 or int(labels.max()) >= self.n_classes_:
            raise ValueError(f"`labels` must be class indices in [0, {self.n_classes_ - 1}]; got "
                             f"values in [{int(labels.min())}, {int(labels.max())}].")
        groups = _check_groups(groups, self.n_concepts)
        without = sorted(j for g in groups for j in g if not bool(known[:, j].any()))
        if without:
            raise ValueError(f"`groups` hold concept(s) {without[:10]} that have no true value "
                             f"(False in `mask` for every image); leave them out of `groups`.")
        membership = torch.zeros(len(groups), self.n_concepts, dtype=torch.bool)
        for g, members in enumerate(groups):
            membership[g, members] = True
        n = Z.shape[0]
        if policy == "random":
            rng = make_rng(RANDOM_SEED if seed is None else seed)
            trials = RANDOM_TRIALS if n_trials is None else n_trials
            orders = [torch.as_tensor(rng.permutation(len(groups))).expand(n, -1)
                      for _ in range(check_int(trials, "n_trials", minimum=1))]
        else:
            predicted = self.predict_from_concepts(Z).argmax(1)
            weight = self.weight_.abs()[predicted]                                  # (N, K)
            scores = torch.stack([weight[:, g].sum(1) for g in groups], dim=1)
            orders = [torch.sort(scores, dim=1, descending=True, stable=True).indices]
        accuracies = np.zeros((len(orders), len(groups) + 1))
        for t, order in enumerate(orders):
            chosen = torch.zeros_like(Z, dtype=torch.bool)  # the groups set so far
            for step in range(len(groups) + 1):
                if step > 0:
                    chosen |= membership[order[:, step - 1]]
                replaced = torch.where(chosen & known, true, Z)  # only where a truth is known
                predicted = self.predict_from_concepts(replaced).argmax(1)
                accuracies[t, step] = float((predicted == labels).double().mean())
        mean = accuracies.mean(0)
        steps = np.arange(len(groups) + 1)
        area = float(np.trapezoid(mean, steps / max(len(groups), 1)))
        return InterventionCurve(n_intervened=steps, accuracy_mean=mean,
                                 accuracy_std=accuracies.std(0), accuracies=accuracies,
                                 policy=policy, groups=tuple(tuple(g) for g in groups), area=area)

    # -- save / load ----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the banks, the head and the standardisation (never the model) to safetensors."""
        self._check_fitted()
        tensors: dict[str, Any] = {"weight": self.weight_, "bias": self.bias_,
                                   "coef_mean": self.coef_mean_, "coef_std": self.coef_std_,
                                   "intervention_low": self.intervention_low_,
                                   "intervention_high": self.intervention_high_,
                                   "trust": torch.as_tensor(self.trust_)}
        banks = []
        for i, bank in enumerate(self.banks_):
            bank_tensors, bank_meta = bank.to_state()
            tensors.update({f"bank{i}.{k}": v for k, v in bank_tensors.items()})
            banks.append(bank_meta)
        meta = {"banks": banks, "names": self.names_, "layer": self.layer_,
                "preprocess": self.preprocess_ is not None
                or bool(getattr(self, "fitted_with_preprocess_", False)),
                "n_classes": self.n_classes_, "alpha_": self.alpha_, "path": self.path_,
                "params": {"nnz_per_class": int(self.nnz_per_class),
                           "l1_ratio": float(self.l1_ratio),
                           "pooling": self.pooling, "batch_size": int(self.batch_size)}}
        fitted = getattr(self, "fitted_with_", None)
        if fitted is None:  # fitted on activations, or loaded without the record: the network
            fitted = fitted_identity(self.model_, self.preprocess_)  # it predicts with now
        if fitted:
            meta["fitted_with"] = dict(fitted)
        return save_file(path, tensors, meta, kind=KIND, version=FORMAT_VERSION)

    @classmethod
    def load(cls, path: str | os.PathLike, model: nn.Module | None = None,
             preprocess: Callable | None = None, *, strict: bool = False) -> DiscoveredCBM:
        """Read a model written by :meth:`save`; pass (or later :meth:`attach`) the network to
        predict from images — activations work without it.

        The file records the network's weights and structure and the preprocessing the model
        was fitted with: a ``model`` or ``preprocess`` that differs warns, or raises a
        ``ValueError`` with ``strict=True`` (files saved without the record load unchecked).
        """
        if not isinstance(strict, bool):
            raise TypeError(f"`strict` must be a bool; got {describe(strict)}.")
        tensors, meta = load_file(path, kind=KIND, version=FORMAT_VERSION)
        with loading(path, "DiscoveredCBM file"):
            banks = []
            for i, bank_meta in enumerate(meta["banks"]):
                prefix = f"bank{i}."
                part = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
                banks.append(ConceptBank.from_state(part, bank_meta))
            params = meta["params"]
            names = meta["names"]
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise TypeError(f"names must be a list of strings; got {describe(names)}")
            # the fitted names as saved (a naming's, or the user's), set after _setup
            model_ = cls(banks, model, names=None, preprocess=preprocess,
                         nnz_per_class=params["nnz_per_class"], l1_ratio=params["l1_ratio"],
                         pooling=params["pooling"], batch_size=params["batch_size"], progress=False)
            model_._setup()
            if len(names) != model_.n_concepts:
                raise ValueError(f"names must list one name per concept ({model_.n_concepts}); "
                                 f"got {len(names)}")
            model_.names = model_.names_ = names
            if meta["layer"] != model_.layer_:
                raise ValueError(f"layer {meta['layer']!r} is not the concepts' layer "
                                 f"{model_.layer_!r}")
            model_.n_classes_ = check_int(meta["n_classes"], "n_classes", minimum=2)
            model_.alpha_ = check_float(meta["alpha_"], "alpha_", minimum=0.0)
            model_.path_ = check_path(meta["path"])
            needs = meta.get("preprocess", False)
            if not isinstance(needs, bool):
                raise TypeError(f"preprocess must be true or false; got {needs!r}")
            model_.fitted_with_preprocess_ = needs
            model_.fitted_with_ = read_identity(meta.get("fitted_with"))
            model_.trust_ = tensors["trust"].double().numpy()
            if model_.trust_.shape != (model_.n_concepts,):
                raise ValueError(f"trust must have one value per concept; got {describe(model_.trust_)}")
            for name in ("weight", "bias", "coef_mean", "coef_std", "intervention_low",
                         "intervention_high"):
                setattr(model_, f"{name}_", tensors[name].float())
            model_._check_loaded()
        if model is not None:
            check_identity(model_.fitted_with_, model, preprocess, fitted="the DiscoveredCBM",
                           where="DiscoveredCBM.load", strict=strict)
        return model_

    def _check_loaded(self) -> None:
        check_int(self.nnz_per_class, "nnz_per_class", minimum=1)
        check_int(self.batch_size, "batch_size", minimum=1)
        check_l1_ratio(self.l1_ratio)
        check_float(self.alpha_, "alpha_", minimum=0.0)
        check_path(self.path_)
        k, n_classes = self.n_concepts, self.n_classes_
        shapes = {"weight": (n_classes, k), "bias": (n_classes,), "coef_mean": (k,),
                  "coef_std": (k,), "intervention_low": (k,), "intervention_high": (k,)}
        for name, shape in shapes.items():
            tensor = getattr(self, f"{name}_")
            if tuple(tensor.shape) != shape or not bool(torch.isfinite(tensor).all()):
                raise ValueError(f"{name} must be a finite tensor of shape {shape}; got "
                                 f"{describe(tensor)}.")
        if n_classes < 2 or not bool((self.coef_std_ > 0).all()):
            raise ValueError("need at least two classes and positive coefficient scales.")
