"""Label-free concept bottleneck model (Oikarinen et al., ICLR 2023).

No concept labels: the bottleneck is a linear projection ``W_c`` of frozen backbone features,
trained so that each concept's activation tracks the CLIP image–text similarity of that concept
over the data, followed by a sparse (elastic-net) linear head on the standardised activations.

Steps of :meth:`LabelFreeCBM.fit` (reference defaults in brackets):

1. text filters on the concept list (see ``_concept_filter``) [30 chars, 0.85, 0.9];
2. CLIP activation cutoff: drop concepts with mean top-5 image–text cosine ≤ ``clip_cutoff`` [0.25];
3. ``W_c`` (no bias) maximising the cubed-cosine similarity with the CLIP similarities: centre each
   concept column, cube it, L2-normalise per concept, dot product; Adam [lr 1e-3], full batch,
   ≤ ``proj_steps`` [1000] updates; after update ``i`` (counted from 0) the validation similarity
   is measured when ``i`` is a multiple of ``val_every`` [50] and after the last update; training
   stops at the first worsening and keeps the best validated weights (the reference's order);
4. interpretability cutoff: drop concepts whose validation similarity is ≤ 0.45;
5. z-score the concept activations with the training mean/std;
6. elastic-net head (L1 share ``l1_ratio`` [0.99], the reference's α; its strength ``alpha_`` is
   picked along a path) driven to ≤ ``nnz_per_class`` non-zero weights per class.

Validation (steps 3-4) never sees test data: pass ``val_images`` or a seeded ``val_fraction`` of
the training images is held out (the reference uses its test split here). ``val_fraction`` given
together with ``val_images`` would be ignored, and is an error.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator
from torch import nn
from tqdm.auto import tqdm

from .._deprecation import current_names, renamed_arguments, warn_deprecated
from .._torchutils import model_dtype, on_device, preserved_model_state
from .._validation import (
    check_float,
    check_images,
    check_int,
    check_seed,
    describe,
    make_rng,
    resolve_device,
    resolve_seed,
)
from ..io import load_file, loading, save_file
from ._clip import ClipEncoders, clip_similarity
from ._concept_filter import filter_by_text, top5_activation
from ._data import as_tensor, check_labels
from ._identity import check_identity, fitted_identity, read_identity
from ._model import warn_repeated
from ._sparse import check_l1_ratio, check_path, elastic_net_path, nnz_per_class
from ._train import DEFAULT_VAL_FRACTION  # held out when `val_fraction` is None

KIND = "label_free_cbm"
FORMAT_VERSION = 1


def cubed_cosine_similarity(target: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """Per-concept cos³ similarity of two ``(N, K)`` activation matrices: ``(K,)``."""
    target = target - target.mean(0, keepdim=True)
    output = output - output.mean(0, keepdim=True)
    target = target ** 3
    output = output ** 3
    target = target / target.norm(dim=0, keepdim=True).clamp_min(1e-12)
    output = output / output.norm(dim=0, keepdim=True).clamp_min(1e-12)
    return (target * output).sum(0)


def backbone_features(backbone: nn.Module, images: torch.Tensor, *, batch_size: int,
                      device: torch.device, progress: bool) -> torch.Tensor:
    """Backbone outputs ``(N, d)``; spatial maps ``(N, C, h, w)`` are average-pooled.

    Images are cast to the backbone's dtype (a float64 backbone gets float64 images); the
    features come back as float32.
    """
    out = []
    dtype = model_dtype(backbone)
    # the user's backbone stays where it was
    with preserved_model_state(backbone), on_device(backbone, device), torch.no_grad():
        for start in tqdm(range(0, len(images), batch_size), disable=not progress,
                          desc="backbone features", leave=False):
            batch = images[start:start + batch_size].to(device)
            if batch.is_floating_point():  # a no-op for a float32 backbone
                batch = batch.to(dtype)
            feats = backbone(batch)
            if isinstance(feats, torch.Tensor) and feats.ndim == 4:
                feats = feats.mean((2, 3))
            if not isinstance(feats, torch.Tensor) or feats.ndim != 2:
                raise ValueError(f"`backbone` must return features (N, d) or maps (N, C, h, w); "
                                 f"it returned {describe(feats)}.")
            out.append(feats.float().cpu())
    return torch.cat(out)


#: Arguments renamed in 0.2 (old name -> new name): accepted with a warning, and read silently
#: from files written by 0.1.
RENAMED_PARAMS = {"alpha": "l1_ratio"}


class LabelFreeCBM(BaseEstimator):
    """Label-free CBM: CLIP-supervised concept projection + sparse linear head.

    Parameters
    ----------
    backbone : nn.Module
        Frozen feature extractor: images ``(N, 3, H, W)`` → features ``(N, d)`` (maps are
        average-pooled). It sees images exactly as passed to :meth:`fit` / :meth:`predict`.
    clip : ClipEncoders, (open_clip model, tokenizer) or ClipLike
        Gives the image and text embeddings that supervise the concepts (only needed to fit).
    concepts : list of str
        Candidate concept texts, filtered during :meth:`fit`.
    class_names : list of str
    template : str
        Prompt template for concept texts (``"{}"``: the bare concept, as the reference).
    nnz_per_class : int
        Most non-zero head weights per class.
    l1_ratio : float
        L1 share of the head's elastic-net penalty (0.99, the reference); its strength ``alpha_``
        is picked along a path so that each class keeps at most ``nnz_per_class`` weights.
    val_fraction : float, optional
        Share of the training images held out for validation when :meth:`fit` gets no
        ``val_images`` (default ``None``: 0.2). Giving it together with ``val_images`` is an error
        (it would be ignored).
    seed : int or None
        Seeds the projection initialisation and the validation split (``None``: fresh entropy).
    cache_dir : path, optional
        Where text embeddings are cached on disk (safetensors).

    Fitted attributes
    -----------------
    concepts_ (kept concepts), removed_ ({concept: reason}), projection_ ``(K, d)``,
    proj_mean_, proj_std_ ``(K,)``, concept_similarity_ ``(K,)`` (validation cos³),
    weight_ ``(C, K)``, bias_ ``(C,)``, alpha_ (the head's penalty strength, picked along the
    path), path_, val_accuracy_, proj_steps_ (how many Adam updates the kept projection had: the
    best validated update, counted from 1; ``proj_steps`` when the last one was best).
    """

    @renamed_arguments(**RENAMED_PARAMS)
    def __init__(self, backbone: nn.Module, clip: Any, concepts: list[str], class_names: list[str],
                 *, template: str = "{}", max_length: int = 30,
                 class_similarity_cutoff: float = 0.85, concept_similarity_cutoff: float = 0.9,
                 clip_cutoff: float = 0.25, interpretability_cutoff: float = 0.45,
                 proj_steps: int = 1000, proj_lr: float = 1e-3, val_every: int = 50,
                 nnz_per_class: int = 10, l1_ratio: float = 0.99, val_fraction: float | None = None,
                 batch_size: int = 256, device: Any = None, seed: int | None = None,
                 cache_dir: str | os.PathLike | None = None, progress: bool = True):
        self.backbone = backbone
        self.clip = clip
        self.concepts = concepts
        self.class_names = class_names
        self.template = template
        self.max_length = max_length
        self.class_similarity_cutoff = class_similarity_cutoff
        self.concept_similarity_cutoff = concept_similarity_cutoff
        self.clip_cutoff = clip_cutoff
        self.interpretability_cutoff = interpretability_cutoff
        self.proj_steps = proj_steps
        self.proj_lr = proj_lr
        self.val_every = val_every
        self.nnz_per_class = nnz_per_class
        self.l1_ratio = l1_ratio
        self.val_fraction = val_fraction
        self.batch_size = batch_size
        self.device = device
        self.seed = seed
        self.cache_dir = cache_dir
        self.progress = progress

    # -- fitting --------------------------------------------------------------------------------
    def _check_setup(self) -> tuple[list[str], list[str]]:
        if not isinstance(self.backbone, nn.Module):
            raise TypeError(f"`backbone` must be a torch.nn.Module; got {describe(self.backbone)}.")
        concepts = [str(c) for c in self.concepts] if isinstance(self.concepts, (list, tuple)) else None
        if not concepts:
            raise ValueError(f"`concepts` must be a non-empty list of strings; got {describe(self.concepts)}.")
        classes = [str(c) for c in self.class_names] if isinstance(self.class_names, (list, tuple)) else None
        if not classes or len(classes) < 2:
            raise ValueError(f"`class_names` must list at least two classes; got {describe(self.class_names)}.")
        check_int(self.max_length, "max_length", minimum=1)
        check_template(self.template)
        check_int(self.proj_steps, "proj_steps", minimum=1)
        check_int(self.val_every, "val_every", minimum=1)
        check_int(self.nnz_per_class, "nnz_per_class", minimum=1)
        check_int(self.batch_size, "batch_size", minimum=1)
        if self.seed is not None:
            check_seed(self.seed)
        check_l1_ratio(self.l1_ratio)
        check_float(self.proj_lr, "proj_lr", minimum=0.0, strict_minimum=True)
        for name in ("class_similarity_cutoff", "concept_similarity_cutoff", "clip_cutoff",
                     "interpretability_cutoff"):
            check_float(getattr(self, name), name)
        fraction = check_float(self._val_fraction(), "val_fraction", minimum=0.0, maximum=1.0)
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"`val_fraction` must be strictly between 0 and 1; got "
                             f"{self.val_fraction!r}.")
        return concepts, classes

    def _val_fraction(self) -> float:
        """``val_fraction``, its default (0.2) when left at ``None``."""
        return DEFAULT_VAL_FRACTION if self.val_fraction is None else self.val_fraction

    @staticmethod
    def _embeddings(values: Any, name: str, rows: int, width: int | None = None) -> torch.Tensor:
        """A finite ``(rows, d)`` float tensor (``d == width`` when given), or an error naming it."""
        values = as_tensor(values, name)
        if values.ndim != 2 or values.shape[0] != rows:
            raise ValueError(f"`{name}` must have shape ({rows}, d), one row per labelled image; got "
                             f"{tuple(values.shape)}.")
        if width is not None and values.shape[1] != width:
            raise ValueError(f"`{name}` has {values.shape[1]} columns; the training ones have "
                             f"{width}.")
        if not torch.isfinite(values.float()).all():
            raise ValueError(f"`{name}` contains NaN or Inf values.")
        return values.float()

    def _labels(self, labels: Any, n: int, name: str, n_classes: int) -> torch.Tensor:
        labels = check_labels(as_tensor(labels, name), name)
        if labels.shape[0] != n:
            raise ValueError(f"`{name}` has {labels.shape[0]} entries for {n} images.")
        if int(labels.max()) >= n_classes:
            raise ValueError(f"`{name}` has class {int(labels.max())} but `class_names` lists {n_classes}.")
        return labels

    def fit(self, images: Any, labels: Any, val_images: Any = None,
            val_labels: Any = None) -> LabelFreeCBM:
        """Fit on images ``(N, 3, H, W)`` and class labels ``(N,)`` (no concept labels)."""
        _, classes = self._check_setup()
        if self.clip is None:
            raise ValueError("`clip` is required to fit a LabelFreeCBM.")
        clip = ClipEncoders.wrap(self.clip)
        images = check_images(images, "images")
        labels = self._labels(labels, len(images), "labels", len(classes))
        if val_images is None:
            if val_labels is not None:
                raise ValueError("`val_labels` was given without `val_images`; pass both, or "
                                 "neither to hold out `val_fraction` of the training images.")
            fraction = self._val_fraction()
            n_val = int(round(float(fraction) * len(images)))
            if not 1 <= n_val < len(images):
                raise ValueError(f"`val_fraction`={fraction} leaves no validation or no "
                                 f"training images out of {len(images)}; pass `val_images`.")
            order = torch.as_tensor(make_rng(self.seed).permutation(len(images)))
            val_images, val_labels = images[order[:n_val]], labels[order[:n_val]]
            images, labels = images[order[n_val:]], labels[order[n_val:]]
        else:
            if self.val_fraction is not None:
                raise ValueError(f"`val_fraction`={self.val_fraction!r} sets the share of the "
                                 f"training images held out for validation, but `val_images` "
                                 f"were given, so it would be ignored. Leave `val_fraction` out "
                                 f"(None), or do not pass `val_images`.")
            val_images = check_images(val_images, "val_images")
            val_labels = self._labels(val_labels, len(val_images), "val_labels", len(classes))
        feats = {}
        for part, imgs in (("train", images), ("val", val_images)):
            feats[part] = (self.features(imgs), clip.image_embeddings(imgs, progress=self.progress))
        return self._fit_embeddings(feats["train"][0], feats["train"][1], labels,
                                    feats["val"][0], feats["val"][1], val_labels,
                                    val_name="validation images (`val_images`, or the "
                                             "`val_fraction` held out)")

    def fit_from_embeddings(self, features: torch.Tensor, clip_image_emb: torch.Tensor,
                            labels: Any, val_features: torch.Tensor, val_clip_image_emb: torch.Tensor,
                            val_labels: Any) -> LabelFreeCBM:
        """Fit from cached backbone features ``(N, d)`` and CLIP image embeddings ``(N, D)``.

        ``features`` must be those of this model's ``backbone`` (its identity is recorded for
        :meth:`load`). The validation rows are given (``val_features`` ...), so a
        ``val_fraction`` set on the model would be ignored, and is an error, as in :meth:`fit`.
        """
        if self.val_fraction is not None:
            raise ValueError(f"`val_fraction`={self.val_fraction!r} sets the share of the "
                             f"training images held out for validation, but "
                             f"fit_from_embeddings takes its validation rows (`val_features`, "
                             f"`val_clip_image_emb`, `val_labels`), so it would be ignored. "
                             f"Leave `val_fraction` out (None), or call fit(images, labels).")
        return self._fit_embeddings(features, clip_image_emb, labels, val_features,
                                    val_clip_image_emb, val_labels,
                                    val_name="validation rows (`val_features`)")

    def _fit_embeddings(self, features: torch.Tensor, clip_image_emb: torch.Tensor,
                        labels: Any, val_features: torch.Tensor, val_clip_image_emb: torch.Tensor,
                        val_labels: Any, *, val_name: str) -> LabelFreeCBM:
        concepts, classes = self._check_setup()
        if self.clip is None:
            raise ValueError("`clip` is required to fit a LabelFreeCBM.")
        warn_repeated(classes, "class_names", "class")  # as ConceptBottleneckModel does
        repeated = sorted({c for c in concepts if concepts.count(c) > 1})
        if repeated:  # filtered by text, both copies would go ("duplicate of itself")
            warnings.warn(f"LabelFreeCBM: `concepts` lists {repeated[:8]} more than once; each "
                          f"is kept once (its first occurrence) and the later copies are "
                          f"dropped.", UserWarning, stacklevel=2)
            concepts = list(dict.fromkeys(concepts))
        clip = ClipEncoders.wrap(self.clip)
        labels = as_tensor(labels, "labels")
        labels = self._labels(labels, labels.shape[0] if labels.ndim else -1, "labels",
                              len(classes))
        val_labels = as_tensor(val_labels, "val_labels")
        val_labels = self._labels(val_labels, val_labels.shape[0] if val_labels.ndim else -1,
                                  "val_labels", len(classes))
        if len(torch.unique(labels)) < 2:
            raise ValueError(f"`labels` hold one class ({int(labels[0])}); a classifier needs "
                             f"images of at least two classes.")
        features = self._embeddings(features, "features", len(labels))
        clip_image_emb = self._embeddings(clip_image_emb, "clip_image_emb", len(labels))
        val_features = self._embeddings(val_features, "val_features", len(val_labels),
                                        features.shape[1])
        val_clip_image_emb = self._embeddings(val_clip_image_emb, "val_clip_image_emb",
                                              len(val_labels), clip_image_emb.shape[1])
        if len(val_labels) < 2:  # a similarity over one row is 0: every concept would go
            raise ValueError(f"the {val_name} hold {len(val_labels)} image(s): too few to "
                             f"measure a concept's validation similarity (a cos^3 similarity "
                             f"over the images, which needs at least 2); give more validation "
                             f"images.")
        device = resolve_device(self.device)
        concept_emb = clip.text_embeddings(concepts, template=self.template, cache_dir=self.cache_dir)
        class_emb = clip.text_embeddings(classes, template=self.template, cache_dir=self.cache_dir)
        removed = filter_by_text(concepts, classes, concept_emb, class_emb, max_length=self.max_length,
                                 class_cutoff=self.class_similarity_cutoff,
                                 concept_cutoff=self.concept_similarity_cutoff)
        clip_emb = torch.nn.functional.normalize(clip_image_emb.float(), dim=1)
        val_clip_emb = torch.nn.functional.normalize(val_clip_image_emb.float(), dim=1)
        target = clip_similarity(clip_emb, concept_emb)
        val_target = clip_similarity(val_clip_emb, concept_emb)
        activation = top5_activation(target)
        for i, concept in enumerate(concepts):
            if concept not in removed and float(activation[i]) <= self.clip_cutoff:
                removed[concept] = (f"weakly activated: mean top-5 CLIP similarity "
                                    f"{float(activation[i]):.3f} <= clip_cutoff {self.clip_cutoff}")
        keep = [i for i, c in enumerate(concepts) if c not in removed]
        self._require(keep, removed, "after the text filters and the CLIP activation cutoff")
        X, X_val = features.float().to(device), val_features.float().to(device)
        T, T_val = target[:, keep].to(device), val_target[:, keep].to(device)
        weight, steps = self._train_projection(X, T, X_val, T_val)
        with torch.no_grad():
            similarity = cubed_cosine_similarity(T_val, X_val @ weight.T).cpu()
        for local, i in enumerate(keep):
            if float(similarity[local]) <= self.interpretability_cutoff:
                removed[concepts[i]] = (f"not interpretable: validation cos^3 similarity "
                                        f"{float(similarity[local]):.3f} <= {self.interpretability_cutoff}")
        final = [local for local, i in enumerate(keep) if concepts[i] not in removed]
        self._require(final, removed, "after the interpretability cutoff")
        weight = weight[final]
        with torch.no_grad():
            acts = X @ weight.T
            mean, std = acts.mean(0), acts.std(0)
            std = torch.where(std > 0, std, torch.ones_like(std))
            Z = ((acts - mean) / std).double()
            Z_val = ((X_val @ weight.T - mean) / std).double()
        fit, path = elastic_net_path(Z, labels.to(device), len(classes), int(self.nnz_per_class),
                                     l1_ratio=float(self.l1_ratio))
        self.concepts_ = [concepts[keep[local]] for local in final]
        self.removed_ = removed
        self.projection_ = weight.cpu()
        self.proj_mean_, self.proj_std_ = mean.cpu(), std.cpu()
        self.concept_similarity_ = similarity[final]
        self.weight_, self.bias_ = fit.weight.float().cpu(), fit.bias.float().cpu()
        self.alpha_ = fit.alpha
        self.path_ = path
        self.proj_steps_ = steps
        self.classes_ = classes
        val_pred = (Z_val @ fit.weight.T + fit.bias).argmax(1).cpu()
        self.val_accuracy_ = float((val_pred == val_labels).double().mean())
        # what save() records and load() compares: the backbone the features come from
        self.fitted_with_ = fitted_identity(self.backbone, with_preprocess=False)
        return self

    @staticmethod
    def _require(kept: list[int], removed: dict[str, str], when: str) -> None:
        if not kept:
            reasons = "; ".join(f"{c!r}: {r}" for c, r in list(removed.items())[:8])
            raise ValueError(f"no concept is left {when}. Reasons: {reasons}. Loosen `clip_cutoff` / "
                             f"`interpretability_cutoff` or supply more concepts.")

    def _train_projection(self, X: torch.Tensor, T: torch.Tensor, X_val: torch.Tensor,
                          T_val: torch.Tensor) -> tuple[torch.Tensor, int]:
        with torch.random.fork_rng(devices=[X.device] if X.device.type == "cuda" else []):
            torch.manual_seed(resolve_seed(self.seed))
            layer = nn.Linear(X.shape[1], T.shape[1], bias=False).to(X.device)
        opt = torch.optim.Adam(layer.parameters(), lr=float(self.proj_lr))
        steps, val_every = int(self.proj_steps), int(self.val_every)
        best_loss, best_weight, best_updates = float("inf"), None, 0
        bar = tqdm(range(steps), disable=not self.progress, desc="concept projection", leave=False)
        # the reference's order: update, then validate (after update 0, every val_every-th and
        # the last), keep the best weights, stop at the first worsening
        for step in bar:
            opt.zero_grad(set_to_none=True)
            loss = -cubed_cosine_similarity(T, layer(X)).mean()
            loss.backward()
            opt.step()
            if step % val_every == 0 or step == steps - 1:
                with torch.no_grad():
                    val_loss = float(-cubed_cosine_similarity(T_val, layer(X_val)).mean())
                if best_weight is not None and not val_loss < best_loss:
                    break
                best_loss, best_weight = val_loss, layer.weight.detach().clone()
                best_updates = step + 1
                bar.set_postfix(val=f"{-val_loss:.4f}")
        bar.close()
        assert best_weight is not None  # update 0 is always validated
        return best_weight, best_updates

    @property
    def lam_(self) -> float:
        """Deprecated name of :attr:`alpha_` (the head's penalty strength)."""
        warn_deprecated("LabelFreeCBM.lam_", "alpha_")
        return self.alpha_

    # -- inference ------------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "weight_"):
            raise ValueError("this LabelFreeCBM is not fitted yet; call fit(images, labels) first.")

    def features(self, images: Any) -> torch.Tensor:
        """Backbone features ``(N, d)`` of images ``(N, 3, H, W)``."""
        images = check_images(images, "images")
        return backbone_features(self.backbone, images, batch_size=int(self.batch_size),
                                 device=resolve_device(self.device), progress=bool(self.progress))

    def transform(self, images: Any) -> torch.Tensor:
        """Standardised concept activations ``(N, K)`` (the bottleneck)."""
        self._check_fitted()
        features = self.features(images)
        if features.ndim != 2 or features.shape[1] != self.projection_.shape[1]:
            raise ValueError(f"`backbone` gives features of shape {tuple(features.shape)}, but "
                             f"this model's projection reads {self.projection_.shape[1]} "
                             f"features per image: pass the backbone it was fitted with.")
        return (features @ self.projection_.T - self.proj_mean_) / self.proj_std_

    def decision_function(self, images: Any) -> torch.Tensor:
        """Class logits ``(N, C)``."""
        return self.transform(images) @ self.weight_.T + self.bias_

    def predict(self, images: Any) -> torch.Tensor:
        return self.decision_function(images).argmax(1)

    def predict_proba(self, images: Any) -> torch.Tensor:
        return torch.softmax(self.decision_function(images), dim=1)

    @renamed_arguments(n="n_top_concepts", n_concepts="n_top_concepts")
    def top_concepts(self, class_index: int, n_top_concepts: int = 5) -> list[tuple[str, float]]:
        """The ``n_top_concepts`` concepts with the largest positive weight for the class in row
        ``class_index`` of ``classes_``: ``[(name, weight)]``."""
        self._check_fitted()
        class_index = check_int(class_index, "class_index", minimum=0, maximum=len(self.classes_) - 1)
        row = self.weight_[class_index]
        order = torch.argsort(row, descending=True, stable=True)[:check_int(n_top_concepts, "n_top_concepts", minimum=1)]
        return [(self.concepts_[j], float(row[j])) for j in order.tolist() if float(row[j]) > 0]

    @property
    def nnz_per_class_(self) -> np.ndarray:
        self._check_fitted()
        return nnz_per_class(self.weight_)

    # -- save / load ----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the fitted bottleneck and head (not the backbone or CLIP) to ``.safetensors``."""
        self._check_fitted()
        params = {k: v for k, v in self.get_params(deep=False).items()
                  if k not in ("backbone", "clip", "concepts", "class_names", "device", "cache_dir")}
        tensors = {"projection": self.projection_, "proj_mean": self.proj_mean_,
                   "proj_std": self.proj_std_, "concept_similarity": self.concept_similarity_,
                   "weight": self.weight_, "bias": self.bias_}
        meta = {"params": params, "concepts": list(self.concepts), "class_names": self.classes_,
                "concepts_": self.concepts_, "removed_": self.removed_,
                "lam_": self.alpha_,  # the 0.1 file key of alpha_, kept: same format version
                "path_": self.path_, "val_accuracy_": self.val_accuracy_, "proj_steps_": self.proj_steps_}
        fitted = getattr(self, "fitted_with_", None)
        if fitted is None:  # built from its attributes, or loaded from a file without the record
            fitted = fitted_identity(self.backbone, with_preprocess=False)
        if fitted:
            meta["fitted_with"] = dict(fitted)
        return save_file(path, tensors, meta, kind=KIND, version=FORMAT_VERSION)

    @classmethod
    def load(cls, path: str | os.PathLike, backbone: nn.Module, clip: Any = None, *,
             strict: bool = False) -> LabelFreeCBM:
        """Load a model written by :meth:`save`; pass the same ``backbone`` it was fitted with.

        The file records the backbone's weights and structure: another backbone warns, or
        raises a ``ValueError`` with ``strict=True`` (files saved without the record load
        unchecked).
        """
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"`backbone` must be a torch.nn.Module; got {describe(backbone)}.")
        if not isinstance(strict, bool):
            raise TypeError(f"`strict` must be a bool; got {describe(strict)}.")
        tensors, meta = load_file(path, kind=KIND, version=FORMAT_VERSION)
        with loading(path, "LabelFreeCBM"):
            if not isinstance(meta["params"], dict):
                raise TypeError(f"params must be a dict; got {describe(meta['params'])}")
            params = current_names(meta["params"], RENAMED_PARAMS)
            if params.get("val_fraction") == DEFAULT_VAL_FRACTION:
                # files written before val_fraction defaulted to None stored the default 0.2;
                # read as the default, so that refitting with `val_images` is not refused
                params["val_fraction"] = None
            model = cls(backbone, clip, meta["concepts"], meta["class_names"], **params)
            for key in ("concepts_", "removed_", "path_", "val_accuracy_", "proj_steps_"):
                setattr(model, key, meta[key])
            model.alpha_ = meta["lam_"]
            model.classes_ = list(meta["class_names"])
            # float16/float64 arrays are read as float32, as predictions compute (the checks
            # below refuse integer ones)
            tensors = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
            model.projection_ = tensors["projection"]
            model.proj_mean_, model.proj_std_ = tensors["proj_mean"], tensors["proj_std"]
            model.concept_similarity_ = tensors["concept_similarity"]
            model.weight_, model.bias_ = tensors["weight"], tensors["bias"]
            model.fitted_with_ = read_identity(meta.get("fitted_with"))
            model._check_loaded()
        check_identity(model.fitted_with_, backbone, None, fitted="the LabelFreeCBM",
                       where="LabelFreeCBM.load", strict=strict)
        return model

    def _check_loaded(self) -> None:
        """Refuse a loaded state whose settings or arrays do not fit together."""
        for key in ("concepts", "class_names"):  # saved as strings; _check_setup coerces
            value = getattr(self, key)
            if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
                raise TypeError(f"{key} must be a list of strings; got {describe(value)}.")
        for key in ("template", "max_length"):
            expected = {"template": str, "max_length": int}[key]
            value = getattr(self, key)
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                raise TypeError(f"{key} must be a {expected.__name__}; got {describe(value)}.")
        self._check_setup()
        names = self.concepts_
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or not names:
            raise ValueError(f"concepts_ must be a non-empty list of names; got {describe(names)}.")
        removed = self.removed_
        if not isinstance(removed, dict) or not all(isinstance(r, str) for r in removed.values()):
            raise TypeError(f"removed_ must map concepts to reasons (strings); got "
                            f"{describe(removed)}.")
        check_float(self.alpha_, "lam_ (alpha_)", minimum=0.0)
        check_float(self.val_accuracy_, "val_accuracy_", minimum=0.0, maximum=1.0)
        check_int(self.proj_steps_, "proj_steps_", minimum=0)
        check_path(self.path_, "path_")
        k, n_classes = len(names), len(self.classes_)
        shapes = {"projection": (self.projection_, (k, None)), "proj_mean": (self.proj_mean_, (k,)),
                  "proj_std": (self.proj_std_, (k,)), "weight": (self.weight_, (n_classes, k)),
                  "bias": (self.bias_, (n_classes,)),
                  "concept_similarity": (self.concept_similarity_, (k,))}
        for name, (tensor, shape) in shapes.items():
            if (tensor.ndim != len(shape) or any(s is not None and t != s
                                                 for t, s in zip(tensor.shape, shape))
                    or not tensor.is_floating_point() or not bool(torch.isfinite(tensor).all())):
                raise ValueError(f"{name} must be a finite float tensor of shape {shape}; got "
                                 f"{describe(tensor)}.")
        if not bool((self.proj_std_ > 0).all()):
            raise ValueError("proj_std must be positive.")


def check_template(template: Any) -> str:
    """A prompt template with exactly one ``{}`` where the concept text goes."""
    if not isinstance(template, str):
        raise TypeError(f"`template` must be a string with one '{{}}' where the concept text goes "
                        f"(e.g. 'a photo of {{}}'); got {describe(template)}.")
    import string

    try:  # the replacement fields as str.format reads them ('{{' and '}}' are literal braces)
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
        ok = fields == [""] and template.format("x") is not None
    except (IndexError, KeyError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"`template` must contain exactly one '{{}}' (where the concept text "
                         f"goes) and no other braces (write '{{{{' / '}}}}' for literal ones); "
                         f"got {template!r}.")
    return template


def load_needs_backbone(path: str | os.PathLike) -> LabelFreeCBM:
    """``conceptkit.load`` entry for label-free CBMs, which cannot be rebuilt without a backbone."""
    load_file(path, kind=KIND, version=FORMAT_VERSION)  # a damaged file is reported as such first
    raise ValueError(f"`path` {str(path)!r} holds a LabelFreeCBM, whose backbone is not saved with "
                     f"it: load it with conceptkit.bottleneck.LabelFreeCBM.load(path, backbone).")
