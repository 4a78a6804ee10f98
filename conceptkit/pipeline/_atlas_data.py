"""The data behind a concept atlas: images in memory or an activation store, one dictionary,
per-image concept scores and logits (what every atlas question is answered from)."""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .._torchutils import model_device, model_dtype, preserved_model_state
from .._validation import check_images, describe
from ..concepts import Factorizer
from ..concepts._checks import configured_factorizer
from ..importance import METHODS as IMPORTANCE_METHODS
from ._pixel import PIXEL_METHODS

ATLAS_METHODS = ("craft", "ice")
#: Importance methods of the atlas: "auto", pixel ablation and the activation-space methods.
ATLAS_IMPORTANCES = ("auto", *PIXEL_METHODS, *IMPORTANCE_METHODS)


class DictionaryBank:
    """A fitted factorizer seen as a concept bank: ``components``, ``encode``, ``decode``.

    Encodes rows ``(n, C)`` and feature maps ``(N, C, h, w)`` position by position, as
    :class:`~conceptkit.concepts.ConceptBank` does, for dictionaries fitted on a store (no
    per-row provenance) or read back from a saved atlas.
    """

    def __init__(self, factorizer: Factorizer, layer: str = "", method: str = "ice"):
        self.factorizer = factorizer
        self.layer = layer
        self.method = method
        self.components = torch.as_tensor(np.asarray(factorizer.components_)).float()

    @property
    def n_concepts(self) -> int:
        return int(self.components.shape[0])

    def encode(self, activations: Any) -> Any:
        if activations.ndim == 2:
            return self.factorizer.transform(activations)
        n, c, h, w = activations.shape
        if isinstance(activations, torch.Tensor):
            rows = activations.permute(0, 2, 3, 1).reshape(-1, c)
            return self.factorizer.transform(rows).reshape(n, h, w, -1).permute(0, 3, 1, 2)
        rows = np.ascontiguousarray(np.asarray(activations).transpose(0, 2, 3, 1).reshape(-1, c))
        codes = np.asarray(self.factorizer.transform(rows))
        return np.ascontiguousarray(codes.reshape(n, h, w, -1).transpose(0, 3, 1, 2))

    def decode(self, codes: Any) -> Any:
        if codes.ndim == 2:
            return self.factorizer.inverse_transform(codes)
        n, k, h, w = codes.shape
        rows = np.ascontiguousarray(np.asarray(codes).transpose(0, 2, 3, 1).reshape(-1, k))
        flat = np.asarray(self.factorizer.inverse_transform(rows))
        return np.ascontiguousarray(flat.reshape(n, h, w, -1).transpose(0, 3, 1, 2))


@dataclass(eq=False)
class AtlasData:
    """Everything fitted: the dictionary (``bank``), labels, logits and concept scores of every
    image, and access to the activations (in memory, from the store, or none once loaded)."""

    bank: Any
    labels: np.ndarray
    classes: list[int]
    logits: np.ndarray
    scores: np.ndarray  # (N, k): mean code of each concept over the image's feature map
    images: torch.Tensor | None
    image_size: tuple[int, int] | None
    acts: torch.Tensor | None = None
    context: torch.Tensor | None = None
    store: Any = None

    @property
    def n_concepts(self) -> int:
        return int(self.bank.components.shape[0])

    def activations(self, ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Feature maps (and transformer context) of images ``ids``."""
        ids = np.asarray(ids, dtype=np.int64)
        if self.acts is not None:
            index = torch.as_tensor(ids)
            return self.acts[index], None if self.context is None else self.context[index]
        if self.store is not None:
            size = int(self.store.manifest["chunk_size"])
            parts = []
            for chunk in np.unique(ids // size):
                mine = ids[ids // size == chunk]
                parts.append((mine, np.asarray(self.store.chunk(int(chunk))[mine - chunk * size])))
            return torch.from_numpy(np.ascontiguousarray(_reorder(parts, ids))).float(), None
        raise RuntimeError("This atlas holds no activations of its fitted images (it was "
                           "loaded from a file): with the model given to `ConceptAtlas.load(path, "
                           "model=...)`, pass new `images` (e.g. explain_confusion(a, b, "
                           "images=...)) or refit; without it, use `top_images(..., "
                           "with_maps=False)` and the saved confusions.")

    @property
    def holds_activations(self) -> bool:
        """Whether the fitted images' activations can be read (in memory or from the store)."""
        return self.acts is not None or self.store is not None


def _reorder(parts: list[tuple[np.ndarray, np.ndarray]], ids: np.ndarray) -> np.ndarray:
    """Rows gathered chunk by chunk, put back in the order of ``ids``."""
    gathered_ids = np.concatenate([p[0] for p in parts])
    rows = np.concatenate([p[1] for p in parts])
    position = {int(i): n for n, i in enumerate(gathered_ids)}
    return rows[[position[int(i)] for i in ids]]


def class_labels(labels: Any, n: int) -> np.ndarray:
    """Integer class labels, one per image, with a clear error otherwise."""
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    if labels.dtype.kind not in "iuf" or (labels.dtype.kind == "f"
                                           and not np.array_equal(labels, np.round(labels))):
        raise TypeError(f"`labels` must hold integer class indices; got {describe(labels)}.")
    if labels.shape != (n,):
        raise ValueError(f"`labels` must have one entry per image ({n}); got shape {labels.shape}.")
    if n and labels.min() < 0:
        raise ValueError(f"`labels` must be class indices >= 0; got {int(labels.min())}.")
    return labels.astype(np.int64)


def _fitted_classes(labels: np.ndarray) -> list[int]:
    values, counts = np.unique(labels, return_counts=True)
    classes = [int(v) for v, c in zip(values, counts) if c >= 2]
    if len(classes) < 2:
        raise ValueError(f"an atlas needs at least 2 classes with 2 images or more; `labels` has "
                         f"{dict(zip(values.tolist(), counts.tolist()))}.")
    single = [int(v) for v, c in zip(values, counts) if c < 2]
    if single:  # their images still shape the dictionary; the class gets no importance row
        warnings.warn(f"the atlas scores no importance for class(es) {single}: one image each "
                      f"(a class needs 2 for an interval).", UserWarning, stacklevel=3)
    return classes


def _check_labels_fit_head(labels: np.ndarray, logits: np.ndarray) -> None:
    """Labels must be outputs of the model: a label past its last logit names no class."""
    n_outputs = logits.shape[1]
    if labels.size and int(labels.max()) >= n_outputs:
        raise ValueError(f"`labels` holds class {int(labels.max())}, but the model has "
                         f"{n_outputs} outputs (classes 0 to {n_outputs - 1}).")


def head_logits(head: Any, acts: torch.Tensor, context: Any, batch_size: int) -> np.ndarray:
    """Logits of ``head`` on activations ``(N, C, h, w)``, in batches, the head left as found;
    the activations (and context) are cast to the head's dtype (a float64 model's own)."""
    module = head if isinstance(head, nn.Module) else None
    device = model_device(module) if module is not None else torch.device("cpu")
    dtype = model_dtype(module) if module is not None else torch.float32
    guard = preserved_model_state(module) if module is not None else contextlib.nullcontext()
    out = []
    with guard, torch.no_grad():
        for s in range(0, acts.shape[0], batch_size):
            x = torch.as_tensor(acts[s:s + batch_size]).to(device=device, dtype=dtype)
            y = head(x) if context is None else head(
                x, context[s:s + batch_size].to(device=device, dtype=dtype))
            out.append((y[0] if isinstance(y, (tuple, list)) else y).double().cpu())
    return torch.cat(out).numpy()


def _images_and_labels(data: Any, labels: Any) -> tuple[torch.Tensor, Any]:
    if isinstance(data, torch.utils.data.Dataset) and not isinstance(data, torch.Tensor):
        if hasattr(data, "images") and hasattr(data, "labels"):
            return data.images, data.labels if labels is None else labels
        items = [data[i] for i in range(len(data))]
        images = torch.stack([torch.as_tensor(item[0]) for item in items])
        if labels is None and isinstance(items[0], (tuple, list)) and len(items[0]) > 1:
            labels = [int(item[1]) for item in items]
        return images, labels
    return data, labels


def from_images(ex: Any, data: Any, labels: Any) -> AtlasData:
    """Fit the shared dictionary on images in memory (one pass of ``g``)."""
    from ._explainer import predict_labels

    images, labels = _images_and_labels(data, labels)
    images = check_images(images, "images")
    if labels is None:
        labels = predict_labels(ex.model, images, ex.batch_size, ex.preprocess, ex.progress,
                                output=ex.output)
    labels = class_labels(labels, images.shape[0])
    classes = _fitted_classes(labels)
    acts, context = ex.activations(images, with_context=True)
    if acts.ndim != 4:
        raise ValueError(f"`layer` {ex.layer!r} gives activations of shape {tuple(acts.shape)}; "
                         f"the atlas needs feature maps (N, C, h, w).")
    logits = head_logits(ex.maps_head, acts, context, ex.batch_size)
    _check_labels_fit_head(labels, logits)  # before the dictionary is fitted
    # ICE factorizes these very feature maps; CRAFT and ACE cut crops or segments instead
    bank = ex.discover(images, acts if ex.method == "ice" else None)
    codes = torch.as_tensor(np.asarray(bank.encode(acts))).float()
    scores = codes.mean(dim=(2, 3)).numpy().astype(np.float64)
    return AtlasData(bank=bank, labels=labels, classes=classes, logits=logits, scores=scores,
                     images=images.detach().cpu(), image_size=tuple(images.shape[-2:]),
                     acts=acts, context=context)


def _check_head_reads_store(ex: Any, store: Any) -> np.ndarray:
    """Run the rest of the model on one stored map before anything is fitted. A store of a
    transformer layer holds its patch tokens as maps, without the CLS/register tokens that the
    rest of the model reads; that head cannot take them, and torch would fail deep inside it
    (or, after the factorizer, NMF would refuse the signed tokens and suggest a SemiNMF that a
    store cannot fit)."""
    first = np.array(store.chunk(0)[:1], dtype=np.float32)
    try:
        return head_logits(ex.maps_head, torch.from_numpy(first), None, 1)
    except Exception as err:  # noqa: BLE001 - re-raised with what to do instead
        raise ValueError(
            f"the rest of the model after {ex.layer!r} cannot read this store's maps "
            f"{tuple(first.shape[1:])} ({type(err).__name__}: {str(err).splitlines()[0][:160]}). "
            f"A store of a transformer layer holds only its patch tokens, without the CLS/register "
            f"tokens that the rest of the model needs, so an atlas cannot be fitted on it: fit on "
            f"the images instead (`atlas.fit(images, labels)`), which keeps those tokens.") from None


def _check_store_is_of(ex: Any, store: Any) -> None:
    """A store records the model (a digest of its weights) and the layer it was extracted
    from; maps of another model or layer would be explained through this one's head without a
    word (the shapes often agree: two layers of one width, the same network retrained)."""
    from ..extraction._fingerprint import module_digest, structure_digest

    fingerprint = store.manifest.get("fingerprint")
    if not isinstance(fingerprint, dict) or "model" not in fingerprint:
        return  # written by a plain callable: nothing recorded to compare
    if fingerprint.get("layer") not in (None, str(ex.layer)):
        raise ValueError(f"the store was extracted at layer {fingerprint['layer']!r}, not at "
                         f"`layer` {ex.layer!r}: its maps are not this layer's. Use "
                         f"layer={fingerprint['layer']!r} (on the command line, leave `--layer` "
                         f"out), or extract a store at {ex.layer!r}.")
    # stores written before non-persistent buffers were read record the state_dict's digest
    if fingerprint["model"] not in (module_digest(ex.model),
                                    module_digest(ex.model, state_dict_only=True)):
        raise ValueError("the store was extracted from another model (other weights, or "
                         "another architecture) than `model`: its maps are not this model's. "
                         "Extract a store with this model (`conceptkit extract` with the same "
                         "--model and --weights), or pass the model the store was written with.")
    if fingerprint.get("model_structure") not in (None, structure_digest(ex.model)):
        raise ValueError("the store was extracted from a model with the same weights but another "
                         "structure (a module or a setting such as a stride or an activation "
                         "differs) than `model`: its maps are not this model's. Extract a store "
                         "with this model, or pass the model the store was written with.")


def from_store(ex: Any, source: Any, labels: Any, options: dict) -> AtlasData:
    """Fit the shared dictionary on a ``"maps"`` activation store, streamed (and across the
    ranks of an initialised torch.distributed group)."""
    from ..concepts import NMF, fit_distributed
    from ..extraction import ActivationStore

    store = source if isinstance(source, ActivationStore) else ActivationStore(os.fspath(source))
    layout = store.manifest["layout"]
    if layout != "maps":
        raise ValueError(f"the atlas needs a store of feature maps (layout 'maps', one (C, h, w) "
                         f"map per image); this store has layout {layout!r}. Extract with "
                         f"`--layout maps`.")
    n = int(store.manifest["n_inputs"])
    if labels is None:
        labels = store.manifest.get("meta", {}).get("labels")
        if labels is None:
            raise ValueError("`labels` is required for a store whose manifest has no "
                             "meta['labels']: pass one class index per stored image.")
    labels = class_labels(labels, n)
    classes = _fitted_classes(labels)
    _check_store_is_of(ex, store)
    _check_labels_fit_head(labels, _check_head_reads_store(ex, store))
    # the user's factorizer is cloned (with the atlas's seed where its random_state is unset),
    # as the images path does: fitting it in place would change it under the user, and a
    # second atlas given the same object would refit the first one's dictionary
    factorizer = (configured_factorizer(ex.factorizer, ex.n_concepts, ex.seed)
                  if ex.factorizer is not None else
                  NMF(ex.n_concepts, solver="torch_hals", random_state=ex.seed))
    fit_distributed(factorizer, store, seed=ex.seed, progress=ex.progress, **options)
    bank = DictionaryBank(factorizer, layer=ex.layer, method=ex.method)
    scores, logits = [], []
    for index in tqdm(range(len(store.manifest["chunks"])), disable=not ex.progress,
                      desc="atlas: codes and logits", leave=False):
        maps = np.array(store.chunk(index), dtype=np.float32)  # a writable copy
        scores.append(np.asarray(bank.encode(maps)).mean(axis=(2, 3)))
        logits.append(head_logits(ex.maps_head, torch.from_numpy(maps), None, ex.batch_size))
    meta_size = store.manifest.get("meta", {}).get("image_size")
    return AtlasData(bank=bank, labels=labels, classes=classes, logits=np.concatenate(logits),
                     scores=np.concatenate(scores).astype(np.float64), images=None,
                     image_size=None if meta_size is None else tuple(meta_size), store=store)


__all__ = ["AtlasData", "DictionaryBank", "class_labels", "from_images", "from_store",
           "head_logits"]
