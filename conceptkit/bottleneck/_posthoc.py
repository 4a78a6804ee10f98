"""Post-hoc concept bottleneck models (Yuksekgonul et al., ICLR 2023).

A frozen backbone's embeddings ``e`` are projected on a :class:`CAVBank` — concept activation
vectors from linear SVMs, or CLIP text embeddings — as signed margins ``(v·e + b)/‖v‖``; a sparse
elastic-net logistic head (``SGDClassifier(loss="log_loss", penalty="elasticnet", alpha,
l1_ratio=0.99)``) reads the margins. The hybrid PCBM-h adds a residual linear layer on the
embedding, ``logits = W·margins + W_res·e``, with only ``W_res`` trained (Adam, lr 0.01,
20 epochs, ``CE + 1e-3·mean(W_res²)``).

Probabilities (:meth:`PosthocCBM.predict_proba`) follow the reference: a PCBM gives its
``SGDClassifier`` head's (one-vs-rest sigmoids normalised to sum 1, or ``σ`` of the single
decision value for two classes); a PCBM-h gives the softmax of its logits, which its residual is
trained with cross-entropy to fit.

Margins are standardised with their training mean and standard deviation before the head
(``standardize=True``): ``SGDClassifier`` is scale-sensitive and raw margins of CLIP text banks
are tiny. With ``standardize=False`` the head reads raw margins.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.special import expit
from sklearn.base import BaseEstimator
from sklearn.linear_model import SGDClassifier
from torch import nn
from tqdm.auto import tqdm

from .._deprecation import current_names, renamed_arguments
from .._validation import (
    check_float,
    check_int,
    check_matrix,
    describe,
    make_rng,
    resolve_device,
    resolve_seed,
    to_numpy,
)
from ..concepts._cav import fit_boundary
from ..io import load_file, loading, save_file
from ._clip import ClipEncoders
from ._data import as_labels, as_tensor
from ._identity import check_identity, fitted_identity, read_identity
from ._label_free import backbone_features
from ._model import warn_repeated

KIND = "posthoc_cbm"
FORMAT_VERSION = 1


class CAVBank:
    """Concept directions ``vectors (K, d)`` with ``intercepts (K,)`` and ``names``.

    ``margins(e) = (e · v_k + b_k) / ‖v_k‖`` is the signed distance of ``e`` to concept ``k``'s
    decision hyperplane. ``accuracy`` holds each CAV's held-out SVM accuracy (NaN when unknown).
    """

    def __init__(self, vectors: Any, intercepts: Any, names: list[str], accuracy: Any = None):
        vectors = np.asarray(check_matrix(to_numpy(vectors), "vectors"), dtype=np.float64)
        intercepts = np.asarray(to_numpy(intercepts), dtype=np.float64).reshape(-1)
        if isinstance(names, np.ndarray):
            names = names.tolist()
        if isinstance(names, str) or not isinstance(names, (list, tuple)):
            raise TypeError(f"`names` must be a list of concept names; got {describe(names)}.")
        if intercepts.shape[0] != vectors.shape[0] or len(names) != vectors.shape[0]:
            raise ValueError(f"`vectors` has {vectors.shape[0]} rows but `intercepts` has "
                             f"{intercepts.shape[0]} and `names` {len(names)}.")
        if not np.isfinite(intercepts).all():  # a NaN intercept makes every margin NaN
            raise ValueError(f"`intercepts` must be finite; entries "
                             f"{np.flatnonzero(~np.isfinite(intercepts)).tolist()} are NaN or Inf.")
        names = [str(n) for n in names]
        warn_repeated(names, "names", "concept")
        norms = np.linalg.norm(vectors, axis=1)
        if not (norms > 0).all():
            raise ValueError(f"concept vector(s) {np.flatnonzero(norms == 0).tolist()} are zero.")
        self.vectors, self.intercepts, self.names = vectors, intercepts, names
        self.accuracy = (np.full(len(names), np.nan) if accuracy is None
                         else np.asarray(to_numpy(accuracy), dtype=np.float64).reshape(-1))
        if self.accuracy.shape != (len(names),):
            raise ValueError(f"`accuracy` must hold one value per concept ({len(names)}); got "
                             f"{describe(accuracy)}.")

    def __len__(self) -> int:
        return len(self.names)

    def margins(self, embeddings: Any) -> np.ndarray:
        """Signed margins ``(N, K)`` of embeddings ``(N, d)``."""
        emb = np.asarray(check_matrix(to_numpy(embeddings), "embeddings",
                                      columns=self.vectors.shape[1]), dtype=np.float64)
        return (emb @ self.vectors.T + self.intercepts) / np.linalg.norm(self.vectors, axis=1)

    @classmethod
    def from_examples(cls, positives: Mapping[str, Any], negatives: Any, *, C: float = 0.1,
                      n_samples: int = 50, seed: int | None = None) -> CAVBank:
        """One linear SVM (``SVC(kernel="linear", C)``) per concept: its examples vs negatives.

        The fit is :func:`conceptkit.concepts._cav.fit_boundary`, the one CAV fit of conceptkit
        (TCAV's CAVs use it too): unit-norm vectors, intercepts scaled alike.

        Parameters
        ----------
        positives : dict of name -> array (n_i, d)
            Embeddings of examples showing each concept.
        negatives : array (m, d) or dict of name -> array
            Embeddings without the concept (one shared pool, or one pool per concept).
        C : float
            SVM regularisation (the reference sweeps 1e-3 .. 10).
        n_samples : int
            Examples drawn (seeded) per side for training; up to ``n_samples`` of the remaining
            ones per side measure the held-out ``accuracy``.
        seed : int or None
            Seeds the draws (``None``: fresh entropy).
        """
        C = check_float(C, "C", minimum=0.0, strict_minimum=True)
        n_samples = check_int(n_samples, "n_samples", minimum=2)
        rng = make_rng(seed)
        if not isinstance(positives, Mapping) or not positives:
            raise TypeError(f"`positives` must be a non-empty dict name -> embeddings; got {describe(positives)}.")
        if isinstance(negatives, Mapping):
            missing = [name for name in positives if name not in negatives]
            if missing:
                raise ValueError(f"`negatives` is a dict but has no negative examples for the "
                                 f"concept(s) {missing[:10]}: give one pool per concept of "
                                 f"`positives`, or one shared array.")
        vectors, intercepts, accuracy = [], [], []
        for name, pos in positives.items():
            neg = negatives[name] if isinstance(negatives, Mapping) else negatives
            pos = np.asarray(check_matrix(to_numpy(pos), f"positives[{name!r}]", min_rows=2), np.float64)
            neg = np.asarray(check_matrix(to_numpy(neg), f"negatives for {name!r}", min_rows=2,
                                          columns=pos.shape[1]), np.float64)
            pos, neg = pos[rng.permutation(len(pos))], neg[rng.permutation(len(neg))]
            n_pos, n_neg = min(n_samples, len(pos)), min(n_samples, len(neg))
            cav = fit_boundary(pos[:n_pos], neg[:n_neg], pos[n_pos:n_pos + n_samples],
                               neg[n_neg:n_neg + n_samples], classifier="svm", space="pooled",
                               C=C, what=f"the CAV of {name!r}")
            vectors.append(cav.vector)
            intercepts.append(cav.intercept)
            accuracy.append(cav.accuracy)
        return cls(np.stack(vectors), np.array(intercepts), list(positives), accuracy)

    @classmethod
    def from_concept_labels(cls, embeddings: Any, concepts: Any, names: list[str], *,
                            C: float = 0.1, n_samples: int = 50,
                            seed: int | None = None) -> CAVBank:
        """CAVs from embeddings ``(N, d)`` and 0/1 concept labels ``(N, K)``: for each concept,
        examples with it against examples without it (see :meth:`from_examples`)."""
        emb = np.asarray(check_matrix(to_numpy(embeddings), "embeddings"), np.float64)
        names = list(names)
        if len(set(names)) != len(names):
            raise ValueError(f"`names` must be unique (a concept per name); "
                             f"{sorted({n for n in names if names.count(n) > 1})} repeat.")
        values = np.asarray(to_numpy(concepts), dtype=np.float64)
        if values.ndim != 2 or values.shape != (len(emb), len(names)):
            raise ValueError(f"`concepts` must have shape (N, K) = ({len(emb)}, {len(names)}); "
                             f"got {tuple(values.shape)}.")
        if not np.isfinite(values).all() or values.min(initial=0) < 0 or values.max(initial=0) > 1:
            # NaN read as "absent" and 3.0 as "present" before
            raise ValueError("`concepts` must hold 0/1 labels (or presences in [0, 1]) without "
                             "NaN; got values outside that.")
        labels = values >= 0.5
        positives = {n: emb[labels[:, k]] for k, n in enumerate(names)}
        negatives = {n: emb[~labels[:, k]] for k, n in enumerate(names)}
        return cls.from_examples(positives, negatives, C=C, n_samples=n_samples, seed=seed)

    @classmethod
    def from_clip_text(cls, clip: Any, names: list[str], *, template: str = "{}",
                       cache_dir: str | os.PathLike | None = None) -> CAVBank:
        """Normalised CLIP text embeddings of ``names`` as concept vectors, intercept 0."""
        emb = ClipEncoders.wrap(clip).text_embeddings(names, template=template, cache_dir=cache_dir)
        return cls(emb.double().numpy(), np.zeros(len(names)), list(names))


#: Arguments renamed in 0.2 (old name -> new name): accepted with a warning, and read silently
#: from files written by 0.1.
RENAMED_PARAMS = {"lam": "alpha"}


class PosthocCBM(BaseEstimator):
    """Post-hoc CBM (PCBM), optionally hybrid (PCBM-h); see the module notes.

    Parameters
    ----------
    concept_bank : CAVBank
    backbone : nn.Module, optional
        Maps images to embeddings; without it, :meth:`fit` / :meth:`predict` take embeddings.
    alpha, l1_ratio, max_iter : float, float, int
        ``SGDClassifier`` settings: penalty strength, L1 share, iterations (reference: 1e-5,
        0.99, 10000).
    residual : bool
        Train the PCBM-h residual ``W_res`` after the sparse head.
    residual_epochs, residual_lr, residual_penalty, batch_size
        PCBM-h training (reference: 20 epochs, Adam lr 0.01, penalty 1e-3, batch 64).
    standardize : bool
        Standardise margins before the head (see module notes).
    seed : int or None
        Seeds the head's SGD and the PCBM-h residual layer (``None``: fresh entropy).

    Fitted attributes: ``coef_ (C, K)``, ``intercept_ (C,)``, ``classes_``, ``margin_mean_``,
    ``margin_std_``, and for PCBM-h ``residual_weight_ (C, d)``, ``residual_bias_ (C,)``.
    """

    @renamed_arguments(**RENAMED_PARAMS)
    def __init__(self, concept_bank: CAVBank, backbone: nn.Module | None = None, *,
                 alpha: float = 1e-5, l1_ratio: float = 0.99, max_iter: int = 10000,
                 residual: bool = False, residual_epochs: int = 20, residual_lr: float = 0.01,
                 residual_penalty: float = 1e-3, batch_size: int = 64, standardize: bool = True,
                 seed: int | None = None, device: Any = None, progress: bool = True):
        self.concept_bank = concept_bank
        self.backbone = backbone
        self.alpha = alpha
        self.l1_ratio = l1_ratio
        self.max_iter = max_iter
        self.residual = residual
        self.residual_epochs = residual_epochs
        self.residual_lr = residual_lr
        self.residual_penalty = residual_penalty
        self.batch_size = batch_size
        self.standardize = standardize
        self.seed = seed
        self.device = device
        self.progress = progress

    def embed(self, X: Any) -> np.ndarray:
        """Embeddings ``(N, d)``: ``X`` itself, or the backbone's features of images ``X``."""
        if isinstance(X, (torch.Tensor, np.ndarray)) and X.ndim == 4:
            if self.backbone is None:
                raise ValueError("`X` holds images (N, C, H, W) but this PosthocCBM has no "
                                 "`backbone`; pass embeddings (N, d) or set `backbone`.")
            X = backbone_features(self.backbone, as_tensor(X, "X").float(),
                                  batch_size=max(int(self.batch_size), 64),
                                  device=resolve_device(self.device), progress=bool(self.progress))
            source = "the `backbone` features of the images `X`"
        else:
            source = "`X`"
        emb = np.asarray(check_matrix(to_numpy(X), "X"), dtype=np.float64)
        bank = self.concept_bank
        width = bank.vectors.shape[1] if isinstance(bank, CAVBank) else None
        if width is not None and emb.shape[1] != width:  # the bank would name `embeddings`
            raise ValueError(f"{source} have {emb.shape[1]} columns, but the concept vectors of "
                             f"`concept_bank` have {width}: pass embeddings of the space the "
                             f"CAVs were fitted in.")
        return emb

    def _head_inputs(self, emb: np.ndarray) -> np.ndarray:
        return (self.concept_bank.margins(emb) - self.margin_mean_) / self.margin_std_

    def _check_settings(self) -> None:
        """The checks of :meth:`fit`, which :meth:`load` repeats on a file's settings: a model
        that fits and saves can be loaded again."""
        check_float(self.alpha, "alpha", minimum=0.0, strict_minimum=True)
        check_float(self.l1_ratio, "l1_ratio", minimum=0.0, maximum=1.0)
        for name in ("max_iter", "batch_size", "residual_epochs"):  # used or not, all saved
            check_int(getattr(self, name), name, minimum=1)
        check_float(self.residual_lr, "residual_lr", minimum=0.0, strict_minimum=True)
        check_float(self.residual_penalty, "residual_penalty", minimum=0.0)
        for name in ("residual", "standardize"):
            value = getattr(self, name)
            if not (isinstance(value, (bool, np.bool_)) or (  # "no" is truthy; 0 and 1 are flags
                    isinstance(value, (int, np.integer)) and value in (0, 1))):
                raise TypeError(f"`{name}` must be True or False; got {describe(value)}.")
        if self.seed is not None:
            check_int(self.seed, "seed", minimum=0)

    def fit(self, X: Any, y: Any) -> PosthocCBM:
        """Fit the sparse head (and the residual for PCBM-h) on embeddings or images ``X``."""
        if not isinstance(self.concept_bank, CAVBank):
            raise TypeError(f"`concept_bank` must be a CAVBank; got {describe(self.concept_bank)}.")
        self._check_settings()
        alpha, l1_ratio = float(self.alpha), float(self.l1_ratio)
        emb = self.embed(X)
        labels = as_labels(y, "y").numpy()
        if len(labels) != len(emb):
            raise ValueError(f"`y` has {len(labels)} labels for {len(emb)} examples.")
        if len(np.unique(labels)) < 2:
            raise ValueError(f"`y` holds one class ({int(labels[0])}); the head needs examples of "
                             f"at least two classes.")
        margins = self.concept_bank.margins(emb)
        if self.standardize:
            self.margin_mean_, std = margins.mean(0), margins.std(0)
            self.margin_std_ = np.where(std > 0, std, 1.0)
        else:
            self.margin_mean_, self.margin_std_ = np.zeros(margins.shape[1]), np.ones(margins.shape[1])
        seed = resolve_seed(self.seed)  # one int for the head and the residual, even for None
        head = SGDClassifier(loss="log_loss", penalty="elasticnet", alpha=alpha, l1_ratio=l1_ratio,
                             max_iter=check_int(self.max_iter, "max_iter", minimum=1),
                             random_state=seed)
        head.fit(self._head_inputs(emb), labels)
        self.head_ = head
        self.coef_, self.intercept_, self.classes_ = _full_coef(head)
        if not np.any(self.coef_):
            warnings.warn(f"PosthocCBM: `alpha`={alpha:g} zeroed every concept weight, so the "
                          f"head predicts from its intercept alone (a constant class); lower "
                          f"`alpha`.", UserWarning, stacklevel=2)
        self.residual_weight_ = self.residual_bias_ = None
        if self.residual:
            self._fit_residual(emb, labels, seed)
        return self

    def _fit_residual(self, emb: np.ndarray, labels: np.ndarray, seed: int) -> None:
        device = resolve_device(self.device)
        inputs = torch.as_tensor(emb, dtype=torch.float32, device=device)
        base = torch.as_tensor(self._bottleneck_logits(emb), dtype=torch.float32, device=device)
        index = {c: i for i, c in enumerate(self.classes_)}
        target = torch.as_tensor([index[v] for v in labels], device=device)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            layer = nn.Linear(emb.shape[1], len(self.classes_)).to(device)
            generator = torch.Generator().manual_seed(seed)
            opt = torch.optim.Adam(layer.parameters(), lr=check_float(self.residual_lr, "residual_lr",
                                                                      minimum=0.0, strict_minimum=True))
            batch = check_int(self.batch_size, "batch_size", minimum=1)
            penalty = check_float(self.residual_penalty, "residual_penalty", minimum=0.0)
            epochs = check_int(self.residual_epochs, "residual_epochs", minimum=1)
            for _ in tqdm(range(epochs), disable=not self.progress, desc="PCBM-h residual", leave=False):
                order = torch.randperm(len(inputs), generator=generator).to(device)
                for start in range(0, len(order), batch):
                    idx = order[start:start + batch]
                    logits = base[idx] + layer(inputs[idx])
                    loss = nn.functional.cross_entropy(logits, target[idx]) \
                        + penalty * layer.weight.pow(2).mean()
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
        self.residual_weight_ = layer.weight.detach().cpu().double().numpy()
        self.residual_bias_ = layer.bias.detach().cpu().double().numpy()

    def _bottleneck_logits(self, emb: np.ndarray) -> np.ndarray:
        return self._head_inputs(emb) @ self.coef_.T + self.intercept_

    def _check_fitted(self) -> None:
        if not hasattr(self, "coef_"):
            raise ValueError("this PosthocCBM is not fitted yet; call fit(X, y) first.")

    def decision_function(self, X: Any) -> np.ndarray:
        """Class logits ``(N, C)`` (the residual term included for PCBM-h)."""
        self._check_fitted()
        emb = self.embed(X)
        logits = self._bottleneck_logits(emb)
        if self.residual_weight_ is not None:
            logits = logits + emb @ self.residual_weight_.T + self.residual_bias_
        return logits

    def predict(self, X: Any) -> np.ndarray:
        logits = self.decision_function(X)  # checks that the model is fitted
        return np.asarray(self.classes_)[logits.argmax(1)]

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities ``(N, C)``, columns in the order of ``classes_``.

        PCBM: those of the sparse head, ``SGDClassifier.predict_proba`` (as the reference's
        classifier): with two classes ``[1 − σ(s), σ(s)]`` of the decision value ``s``; with more,
        one-vs-rest ``σ(s_c)`` normalised to sum 1 (not a softmax of the decision values).
        PCBM-h: ``softmax(W·margins + W_res·e)`` of :meth:`decision_function`, the probabilities
        its residual is trained for (cross-entropy, as the reference's ``train_pcbm_h.py``).
        """
        logits = self.decision_function(X)
        if self.residual_weight_ is None and len(self.classes_) > 2:
            prob = expit(logits)                           # one-vs-rest, as sklearn's log_loss
            total = prob.sum(1, keepdims=True)
            zero = total[:, 0] == 0                        # every sigmoid underflowed: uniform
            prob[zero], total[zero] = 1.0, prob.shape[1]
            return prob / total
        # binary PCBM: logits (0, s), whose softmax is [1 − σ(s), σ(s)], sklearn's binary case
        logits = logits - logits.max(1, keepdims=True)
        prob = np.exp(logits)
        return prob / prob.sum(1, keepdims=True)

    @renamed_arguments(n="n_top_concepts", n_concepts="n_top_concepts")
    def top_concepts(self, class_index: int, n_top_concepts: int = 5) -> list[tuple[str, float]]:
        """The ``n_top_concepts`` concepts with the largest positive weight for the class in row
        ``class_index`` of ``classes_``: ``[(name, weight)]``."""
        self._check_fitted()
        row = self.coef_[check_int(class_index, "class_index", minimum=0, maximum=len(self.classes_) - 1)]
        order = np.argsort(-row, kind="stable")[:check_int(n_top_concepts, "n_top_concepts", minimum=1)]
        return [(self.concept_bank.names[j], float(row[j])) for j in order if row[j] > 0]

    # -- save / load ----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write bank, head (``coef_``/``intercept_`` arrays, never pickle) and residual."""
        self._check_fitted()
        bank = self.concept_bank
        params = {k: v for k, v in self.get_params(deep=False).items()
                  if k not in ("concept_bank", "backbone", "device")}
        tensors = {"bank_vectors": bank.vectors, "bank_intercepts": bank.intercepts,
                   "bank_accuracy": bank.accuracy, "coef": self.coef_, "intercept": self.intercept_,
                   "margin_mean": self.margin_mean_, "margin_std": self.margin_std_,
                   "residual_weight": self.residual_weight_, "residual_bias": self.residual_bias_}
        meta = {"params": params, "bank_names": bank.names, "classes": np.asarray(self.classes_).tolist()}
        if self.backbone is not None:  # what load() compares a given backbone with
            meta["fitted_with"] = fitted_identity(self.backbone, with_preprocess=False)
        return save_file(path, tensors, meta, kind=KIND, version=FORMAT_VERSION)

    @classmethod
    def load(cls, path: str | os.PathLike, backbone: nn.Module | None = None, *,
             strict: bool = False) -> PosthocCBM:
        """Load a model written by :meth:`save` (``head_`` is rebuilt from its arrays).

        A model saved with a ``backbone`` records its weights and structure: another
        ``backbone`` warns, or raises a ``ValueError`` with ``strict=True`` (files saved without
        the record, or without a backbone, load unchecked).
        """
        if not isinstance(strict, bool):
            raise TypeError(f"`strict` must be a bool; got {describe(strict)}.")
        tensors, meta = load_file(path, kind=KIND, version=FORMAT_VERSION)
        with loading(path, "PosthocCBM"):
            arr = {k: v.double().numpy() for k, v in tensors.items()}
            names = meta["bank_names"]
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise TypeError(f"bank_names must be a list of strings; got {describe(names)}")
            if not isinstance(meta["params"], dict):
                raise TypeError(f"params must be a dict; got {describe(meta['params'])}")
            bank = CAVBank(arr["bank_vectors"], arr["bank_intercepts"], names,
                           arr["bank_accuracy"])
            model = cls(bank, backbone, **current_names(meta["params"], RENAMED_PARAMS))
            model.coef_, model.intercept_ = arr["coef"], arr["intercept"]
            model.classes_ = np.asarray(meta["classes"])
            model.margin_mean_, model.margin_std_ = arr["margin_mean"], arr["margin_std"]
            model.residual_weight_ = arr.get("residual_weight")
            model.residual_bias_ = arr.get("residual_bias")
            model._check_loaded()
            model.head_ = _rebuild_head(model)
            known = read_identity(meta.get("fitted_with"))
        if backbone is not None:
            check_identity(known, backbone, None, fitted="the PosthocCBM",
                           where="PosthocCBM.load", strict=strict)
        return model

    def _check_loaded(self) -> None:
        """Refuse a loaded state whose settings or arrays do not fit together."""
        self._check_settings()
        classes = np.asarray(self.classes_)
        if classes.ndim != 1 or len(classes) < 2 or classes.dtype.kind not in "iub":
            raise ValueError(f"classes must list at least two class labels; got {describe(classes)}.")
        k, d = self.concept_bank.vectors.shape
        n_classes = len(classes)
        shapes = {"coef": (self.coef_, (n_classes, k)), "intercept": (self.intercept_, (n_classes,)),
                  "margin_mean": (self.margin_mean_, (k,)), "margin_std": (self.margin_std_, (k,)),
                  "residual_weight": (self.residual_weight_, (n_classes, d)),
                  "residual_bias": (self.residual_bias_, (n_classes,))}
        for name, (array, shape) in shapes.items():
            if array is None and name.startswith("residual"):
                continue
            if array is None or array.shape != shape or not np.isfinite(array).all():
                raise ValueError(f"{name} must be a finite array of shape {shape}; got "
                                 f"{describe(array)}.")
        if (self.residual_weight_ is None) != (self.residual_bias_ is None):
            raise ValueError("residual_weight and residual_bias must be saved together.")
        if bool(self.residual) != (self.residual_weight_ is not None):
            raise ValueError(f"residual={self.residual} but the file "
                             f"{'lacks' if self.residual else 'holds'} the residual layer.")
        if not (self.margin_std_ > 0).all():
            raise ValueError("margin_std must be positive.")


def _full_coef(head: SGDClassifier) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``coef_`` as ``(C, K)`` even for two classes (sklearn stores one row: class 1 vs 0)."""
    coef, intercept = head.coef_.astype(np.float64), head.intercept_.astype(np.float64)
    if coef.shape[0] == 1:  # binary: logits (0, w·x + b) give the same softmax as sklearn
        coef = np.vstack([np.zeros_like(coef[0]), coef[0]])
        intercept = np.r_[0.0, intercept[0]]
    return coef, intercept, head.classes_


def _rebuild_head(model: PosthocCBM) -> SGDClassifier:
    head = SGDClassifier(loss="log_loss", penalty="elasticnet", alpha=float(model.alpha),
                         l1_ratio=float(model.l1_ratio), max_iter=int(model.max_iter),
                         random_state=model.seed)
    coef, intercept = model.coef_, model.intercept_
    if coef.shape[0] == 2:
        coef, intercept = (coef[1] - coef[0])[None], np.r_[intercept[1] - intercept[0]]
    head.coef_, head.intercept_, head.classes_ = coef, intercept, model.classes_
    head.n_features_in_ = coef.shape[1]
    return head
