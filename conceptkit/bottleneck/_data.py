"""The data that concept bottleneck models train and evaluate on.

Users hand us either a tuple of tensors ``(x, concepts, labels)`` or a ``torch.utils.data.Dataset``
whose items are ``(x, concepts, label)``. ``x`` may be images ``(N, C, H, W)`` (end-to-end training)
or cached features ``(N, d)`` from a frozen backbone. :class:`CBMData` validates either form once,
at the boundary, and offers the few operations the trainers need: seeded mini-batches, a seeded
split, and the concept/label columns.

One rule for ``x`` in both forms (and for a bare input tensor): it must be floating point, of any
precision — the model casts it to its own dtype (float64 features run through a float32 model) —
and integer inputs are refused by name, since their scale is ambiguous (uint8 images in 0-255 are
not the [0, 1] floats a model expects): convert them first, e.g. ``x.float() / 255``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from .._validation import check_not_meta, describe, make_rng

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def as_tensor(value: Any, name: str) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":  # strings, objects, complex: torch has no such tensor
            raise TypeError(f"`{name}` must hold numbers; got {describe(value)}.")
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor or numpy array; got {describe(value)}.")
    check_not_meta(value, name)  # shapes without values: refused before torch reads them
    return value


def check_floating(x: torch.Tensor, name: str) -> None:
    """Refuse integer (and boolean) inputs, whose scale is ambiguous; floats of any precision
    pass (the model casts them to its dtype)."""
    if not x.is_floating_point():
        raise TypeError(f"{name} must be floating point (of any precision: it is cast to the "
                        f"model's dtype); got dtype {x.dtype}. Integer inputs are refused because "
                        f"their scale is ambiguous: convert them first, e.g. images in [0, 1] as "
                        f"x.float() / 255, or features as x.float().")


def check_concepts(concepts: torch.Tensor, name: str) -> torch.Tensor:
    if concepts.ndim != 2:
        raise ValueError(f"`{name}` must be 2-D (N, n_concepts); got shape {tuple(concepts.shape)}.")
    concepts = concepts.float()
    if not bool(torch.isfinite(concepts).all()):
        raise ValueError(f"`{name}` contains NaN or Inf values.")
    if concepts.numel() and (float(concepts.min()) < 0 or float(concepts.max()) > 1):
        raise ValueError(f"`{name}` must hold concept presence in [0, 1] (0/1 labels or soft "
                         f"probabilities); got values in [{float(concepts.min()):.3g}, "
                         f"{float(concepts.max()):.3g}].")
    return concepts


def check_labels(labels: torch.Tensor, name: str) -> torch.Tensor:
    if labels.ndim != 1:
        raise ValueError(f"`{name}` must be 1-D (N,) class indices; got shape {tuple(labels.shape)}.")
    if labels.is_floating_point():
        if not bool((labels == labels.round()).all()):
            raise TypeError(f"`{name}` must hold integer class indices; got non-integer floats.")
    elif labels.dtype == torch.bool:
        raise TypeError(f"`{name}` must hold integer class indices; got dtype torch.bool.")
    labels = labels.long()
    if labels.numel() and int(labels.min()) < 0:
        raise ValueError(f"`{name}` must hold class indices >= 0; got {int(labels.min())}.")
    return labels


def as_labels(value: Any, name: str) -> torch.Tensor:
    """Class labels ``(N,)`` as a long tensor; names instead of indices are refused clearly."""
    if isinstance(value, np.ndarray) and value.dtype.kind in "USO":
        raise TypeError(f"`{name}` must hold integer class indices (0, 1, ...); got "
                        f"{describe(value)}. Map class names to indices first, e.g. "
                        f"`class_names, {name} = np.unique({name}, return_inverse=True)`.")
    return check_labels(as_tensor(value, name), name)


class CBMData:
    """Validated ``(x, concepts, labels)`` data, held as tensors or as a Dataset.

    Parameters
    ----------
    data : tuple of (x, concepts, labels) or Dataset
        ``x``: ``(N, ...)`` floating inputs (any precision; integers are refused);
        ``concepts``: ``(N, k)`` presence in [0, 1];
        ``labels``: ``(N,)`` integer class indices. A Dataset must yield ``(x, c, y)`` items.
    name : str
        The argument name used in error messages.
    """

    def __init__(self, data: Any, name: str = "train_data"):
        self.name = name
        self.dataset: Dataset | None = None
        self.tensors: Batch | None = None
        if isinstance(data, CBMData):
            self.dataset, self.tensors, self.name = data.dataset, data.tensors, data.name
            self._columns = data._columns
            return
        self._columns: tuple[torch.Tensor, torch.Tensor] | None = None
        if isinstance(data, (tuple, list)):
            if len(data) != 3:
                raise ValueError(f"`{name}` must be a tuple (x, concepts, labels); got a "
                                 f"{type(data).__name__} of length {len(data)}.")
            x = as_tensor(data[0], f"{name}[0] (x)")
            concepts = check_concepts(as_tensor(data[1], f"{name}[1] (concepts)"),
                                       f"{name}[1] (concepts)")
            labels = check_labels(as_tensor(data[2], f"{name}[2] (labels)"), f"{name}[2] (labels)")
            n = x.shape[0] if x.ndim else 0
            if not (n == concepts.shape[0] == labels.shape[0]):
                raise ValueError(f"`{name}`: x, concepts and labels must have the same number of rows; "
                                 f"got {n}, {concepts.shape[0]} and {labels.shape[0]}.")
            if n == 0:
                raise ValueError(f"`{name}` is empty; need at least one example.")
            if x.ndim < 2:
                raise ValueError(f"`{name}[0]` (x) must be a float tensor (N, ...) of inputs; "
                                 f"got {describe(x)}.")
            check_floating(x, f"`{name}[0]` (x)")
            if not bool(torch.isfinite(x).all()):
                raise ValueError(f"`{name}[0]` (x) contains NaN or Inf values.")
            self.tensors = (x, concepts, labels)
            self._columns = (concepts, labels)
        elif isinstance(data, Dataset):
            if len(data) == 0:  # type: ignore[arg-type]
                raise ValueError(f"`{name}` is an empty Dataset.")
            item = data[0]
            if not isinstance(item, (tuple, list)) or len(item) != 3:
                raise ValueError(f"`{name}` must yield (x, concepts, label) items; its first item is "
                                 f"{describe(item)}.")
            if isinstance(item[0], (torch.Tensor, np.ndarray)):  # the same rule as the tuple form
                check_floating(as_tensor(item[0], f"{name} inputs (x)"), f"`{name}` inputs (x)")
            self.dataset = data
        else:
            raise TypeError(f"`{name}` must be a tuple (x, concepts, labels) of tensors or a Dataset "
                            f"yielding (x, concepts, label); got {describe(data)}.")

    def __len__(self) -> int:
        if self.tensors is not None:
            return int(self.tensors[0].shape[0])
        return len(self.dataset)  # type: ignore[arg-type]

    def batches(self, batch_size: int, *, shuffle: bool = False,
                generator: torch.Generator | None = None) -> Iterator[Batch]:
        """Yield ``(x, concepts, labels)`` mini-batches, shuffled with ``generator`` if asked."""
        n = len(self)
        if self.tensors is not None:
            order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
            x, c, y = self.tensors
            for start in range(0, n, batch_size):
                idx = order[start:start + batch_size]
                yield x[idx], c[idx], y[idx]
            return
        # our own permutation (not DataLoader's shuffle, which also draws a base seed from the
        # generator): a Dataset and the same data as tensors then see the same batches
        order = torch.randperm(n, generator=generator).tolist() if shuffle else None
        loader = DataLoader(self.dataset, batch_size=batch_size, sampler=order, num_workers=0,
                            collate_fn=self._collate)
        for x, c, y in loader:
            for value, what in ((x, "inputs (x)"), (c, "concepts"), (y, "labels")):
                check_not_meta(value, f"{self.name} {what}")
            if y.is_floating_point():  # .long() would truncate 2.7 to class 2
                raise TypeError(f"`{self.name}` labels must hold integer class indices; the "
                                f"Dataset yields {y.dtype} values such as {float(y.flatten()[0])}.")
            if y.dtype == torch.bool:  # as the tuple form: True / False are no class indices
                raise TypeError(f"`{self.name}` labels must hold integer class indices; the "
                                f"Dataset yields torch.bool values.")
            check_floating(x, f"`{self.name}` inputs (x)")  # cast to the model's dtype there
            if not bool(torch.isfinite(x).all()):
                raise ValueError(f"`{self.name}` inputs (x) contain NaN or Inf values.")
            yield x, c.float(), y.long()

    def _collate(self, items: list[Any]) -> Batch:
        """Stack a Dataset's ``(x, c, y)`` items into a batch; items that do not stack (an
        ``x`` of another shape, concepts of another length) are refused naming the argument.
        Concepts and labels may be Python numbers or lists."""
        columns: list[list[torch.Tensor]] = [[], [], []]
        what = ("inputs (x)", "concepts", "labels")
        for item in items:
            if not isinstance(item, (tuple, list)) or len(item) != 3:
                raise ValueError(f"`{self.name}` must yield (x, concepts, label) items; one item "
                                 f"is {describe(item)}.")
            for j, value in enumerate(item):
                if not isinstance(value, torch.Tensor):
                    try:
                        value = torch.as_tensor(np.asarray(value))
                    except (TypeError, ValueError, RuntimeError) as err:
                        raise ValueError(f"`{self.name}` yields {what[j]} that are no numbers or "
                                         f"arrays: {describe(value)} ({err}).") from err
                columns[j].append(value)
        out = []
        for j, values in enumerate(columns):
            shapes = sorted({tuple(v.shape) for v in values})
            if len(shapes) > 1:
                raise ValueError(f"`{self.name}` yields {what[j]} of different shapes "
                                 f"({shapes[0]} and {shapes[1]}); every item's {what[j]} must "
                                 f"have one shape to be batched (resize or crop the images to "
                                 f"one size).")
            out.append(torch.stack(values))
        x, c, y = out
        if c.ndim != 2:
            raise ValueError(f"`{self.name}` concepts must be one vector (k,) per item; got "
                             f"items of shape {tuple(c.shape[1:])}.")
        if y.ndim != 1:
            raise ValueError(f"`{self.name}` labels must be one class index per item; got items "
                             f"of shape {tuple(y.shape[1:])}.")
        return x, c, y

    def columns(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The concept matrix ``(N, k)`` and the labels ``(N,)`` (one pass over a Dataset)."""
        if self._columns is None:
            cs, ys = [], []
            for _, c, y in self.batches(256):
                cs.append(c)
                ys.append(y)
            concepts = check_concepts(torch.cat(cs), f"{self.name} concepts")
            labels = check_labels(torch.cat(ys), f"{self.name} labels")
            self._columns = (concepts, labels)
        return self._columns

    def inputs(self, batch_size: int) -> Iterator[torch.Tensor]:
        for x, _, _ in self.batches(batch_size):
            yield x

    def subset(self, indices: np.ndarray) -> CBMData:
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        if self.tensors is not None:
            return CBMData(tuple(t[idx] for t in self.tensors), self.name)
        sub = CBMData(Subset(self.dataset, idx.tolist()), self.name)  # type: ignore[arg-type]
        if self._columns is not None:
            sub._columns = (self._columns[0][idx], self._columns[1][idx])
        return sub

    def split(self, fraction: float, seed: int) -> tuple[CBMData, CBMData]:
        """Split off a seeded random ``fraction`` of the rows: returns ``(rest, held_out)``."""
        n = len(self)
        n_held = int(round(fraction * n))
        if n_held < 1 or n_held >= n:
            raise ValueError(f"`{self.name}` has {n} examples: too few to split off a validation "
                             f"fraction of {fraction}; pass `val_data` explicitly.")
        order = make_rng(seed).permutation(n)
        return self.subset(np.sort(order[n_held:])), self.subset(np.sort(order[:n_held]))

    @property
    def n_concepts(self) -> int:
        if self.tensors is not None:
            return int(self.tensors[1].shape[1])
        return int(torch.as_tensor(self.dataset[0][1]).reshape(-1).shape[0])  # type: ignore[index]


def as_cbm_data(data: Any, name: str, *, n_concepts: int | None = None,
                n_classes: int | None = None) -> CBMData:
    """Wrap ``data`` and check its concept width and label range against a model."""
    wrapped = CBMData(data, name)
    if n_concepts is not None and wrapped.n_concepts != n_concepts:
        raise ValueError(f"`{name}` has {wrapped.n_concepts} concept columns but the model has "
                         f"n_concepts={n_concepts}.")
    if n_classes is not None:
        top = int(wrapped.columns()[1].max())  # one pass over a Dataset, cached
        if top >= n_classes:
            raise ValueError(f"`{name}` has class label {top} but the model has n_classes={n_classes} "
                             f"(labels must lie in [0, {n_classes - 1}]).")
    return wrapped


def as_inputs(data: Any, name: str) -> torch.Tensor | CBMData:
    """Accept a bare input tensor ``(N, ...)`` or any :class:`CBMData` form."""
    if isinstance(data, (torch.Tensor, np.ndarray)):
        x = as_tensor(data, name)
        if x.ndim < 2 or x.shape[0] == 0:
            raise ValueError(f"`{name}` must be a non-empty float tensor (N, ...); got {describe(x)}.")
        check_floating(x, f"`{name}`")
        return x
    return CBMData(data, name)


def iter_inputs(data: torch.Tensor | CBMData, batch_size: int) -> Iterator[torch.Tensor]:
    if isinstance(data, torch.Tensor):
        for start in range(0, data.shape[0], batch_size):
            yield data[start:start + batch_size]
    else:
        yield from data.inputs(batch_size)


def n_rows(data: torch.Tensor | CBMData) -> int:
    return int(data.shape[0]) if isinstance(data, torch.Tensor) else len(data)
