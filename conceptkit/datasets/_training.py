"""Training and evaluating the reference CNN on the concept dataset."""

from __future__ import annotations

import contextlib
import inspect
import platform
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .._torchutils import model_device, preserved_model_state, seed_everything
from .._validation import check_float, check_int
from ._cue import add_concept
from ._dataset import ConceptDataset, check_concept_dataset
from ._generate import make_concept_dataset
from ._reference import ReferenceCNN


@contextlib.contextmanager
def deterministic_cpu() -> Iterator[None]:
    """One thread and deterministic algorithms inside the block; the previous settings after."""
    threads = torch.get_num_threads()
    strict = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(strict, warn_only=warn_only)
        torch.set_num_threads(threads)


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Logits ``(N, n_classes)`` of ``model`` in eval mode for ``images`` ``(N, 3, H, W)``."""
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    device = model_device(model)
    with preserved_model_state(model):
        chunks = [model(images[i:i + batch_size].to(device)).cpu()
                  for i in range(0, len(images), batch_size)]
    return torch.cat(chunks)


def evaluate_accuracy(model: nn.Module, dataset: ConceptDataset, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` on ``dataset``."""
    dataset = check_concept_dataset(dataset)
    predictions = predict_logits(model, dataset.images, batch_size).argmax(1)
    return float((predictions == dataset.labels).float().mean())


def spurious_cue_effect(model: nn.Module, dataset: ConceptDataset, seed: int = 0,
                        concept: int | None = None) -> dict[str, float]:
    """How much ``model`` relies on the spurious cue: the same images without and with it.

    The cue is drawn (:func:`add_concept`) into the images of ``dataset`` that lack it, and the
    predictions before and after are compared. Use a test split made with ``spurious=False``.
    Passing a distractor as ``concept`` gives the control: the same measurement for a concept the
    model has no reason to link with the spurious class.

    Returns
    -------
    dict
        ``n_images`` (images that received the cue), ``spurious_class_accuracy_without_cue`` /
        ``_with_cue`` (images of the spurious class), ``other_accuracy_without_cue`` / ``_with_cue``
        (images of the other classes), ``flipped_to_spurious_class`` (fraction of other-class images
        predicted correctly before and predicted as the spurious class after), and
        ``spurious_probability_shift`` (mean rise of the softmax probability of the spurious class on
        other-class images) and ``spurious_margin_shift`` (mean rise of the logit of the spurious
        class minus the logit of the true class, on other-class images).
    """
    dataset = check_concept_dataset(dataset)
    concept = dataset.spurious_concept if concept is None else concept
    with_cue = add_concept(dataset, concept, seed=seed)
    changed = (with_cue.concepts[:, concept] - dataset.concepts[:, concept]) > 0
    before = predict_logits(model, dataset.images[changed])
    after = predict_logits(model, with_cue.images[changed])
    labels = dataset.labels[changed]
    target = dataset.spurious_class
    own, other = labels == target, labels != target
    correct_before, correct_after = before.argmax(1) == labels, after.argmax(1) == labels

    def mean(values: torch.Tensor) -> float:
        return float(values.float().mean()) if values.numel() else float("nan")

    shift = after.softmax(1)[:, target] - before.softmax(1)[:, target]
    rows = torch.arange(len(labels))

    def margin(logits: torch.Tensor) -> torch.Tensor:
        return logits[:, target] - logits[rows, labels]

    margin_shift = margin(after) - margin(before)
    return {
        "n_images": int(changed.sum()),
        "spurious_class_accuracy_without_cue": mean(correct_before[own]),
        "spurious_class_accuracy_with_cue": mean(correct_after[own]),
        "other_accuracy_without_cue": mean(correct_before[other]),
        "other_accuracy_with_cue": mean(correct_after[other]),
        "flipped_to_spurious_class": mean((correct_before & (after.argmax(1) == target))[other]),
        "spurious_probability_shift": mean(shift[other]),
        "spurious_margin_shift": mean(margin_shift[other]),
    }


def train_reference_cnn(epochs: int = 5, seed: int = 0, n_per_class: int = 500,
                        n_val_per_class: int = 100, n_test_per_class: int = 300, image_size: int = 64,
                        batch_size: int = 64, lr: float = 3e-3, width: int = 16, progress: bool = True
                        ) -> tuple[ReferenceCNN, dict[str, Any]]:
    """Train :class:`ReferenceCNN` on the concept dataset, deterministically for a seed on the
    CPU (one thread and deterministic algorithms, as :func:`train_world_model`; the caller's
    settings are restored after).

    The train and val splits carry the spurious cue; the model is scored on a spurious-free test
    split (the held-out accuracy) and on a test split with the cue correlated. Adam with a cosine
    learning-rate decay, a fixed-seed batch order, and random horizontal flips.

    Returns
    -------
    model : ReferenceCNN
        The trained model in eval mode.
    info : dict
        JSON-ready record: ``architecture``, ``dataset``, ``training``, ``test_accuracy`` (on the
        spurious-free test split), ``test_accuracy_with_spurious``, ``spurious_cue_effect``,
        ``distractor_control_effect``, ``history``, ``train_seconds`` and ``shipped`` (whether
        every setting is the shipped model's, i.e. these defaults).
    """
    epochs = check_int(epochs, "epochs", minimum=1)
    seed = check_int(seed, "seed", minimum=0)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    lr = check_float(lr, "lr", minimum=0.0, strict_minimum=True)
    n_per_class = check_int(n_per_class, "n_per_class", minimum=1)
    n_val_per_class = check_int(n_val_per_class, "n_val_per_class", minimum=1)
    n_test_per_class = check_int(n_test_per_class, "n_test_per_class", minimum=1)
    with deterministic_cpu():  # one thread, deterministic algorithms, as train_world_model
        return _fit_reference_cnn(epochs, seed, n_per_class, n_val_per_class, n_test_per_class,
                                  image_size, batch_size, lr, width, progress)


def _fit_reference_cnn(epochs: int, seed: int, n_per_class: int, n_val_per_class: int,
                       n_test_per_class: int, image_size: int, batch_size: int, lr: float,
                       width: int, progress: bool) -> tuple[ReferenceCNN, dict[str, Any]]:
    """:func:`train_reference_cnn` on checked arguments, inside :func:`deterministic_cpu`."""
    started = time.perf_counter()
    train = make_concept_dataset(n_per_class, image_size, seed, "train", progress=progress)
    val = make_concept_dataset(n_val_per_class, image_size, seed, "val", progress=progress)

    # Initialise from the seed without leaving the caller's global RNG changed.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ReferenceCNN(n_classes=train.n_classes, width=width)
    generator = seed_everything(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = -(-len(train) // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()
    history = []
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(train), generator=generator)
        flips = torch.rand(len(train), generator=generator) < 0.5
        total_loss, total_correct = 0.0, 0
        batches = tqdm(range(0, len(train), batch_size), desc=f"epoch {epoch + 1}/{epochs}",
                       disable=not progress, leave=False)
        for start in batches:
            index = order[start:start + batch_size]
            images = train.images[index]
            images = torch.where(flips[index, None, None, None], images.flip(-1), images)
            labels = train.labels[index]
            logits = model(images)
            loss = loss_fn(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += float(loss.detach()) * len(index)
            total_correct += int((logits.argmax(1) == labels).sum())
        record = {"epoch": epoch + 1, "train_loss": total_loss / len(train),
                  "train_accuracy": total_correct / len(train),
                  "val_accuracy": evaluate_accuracy(model, val)}
        history.append(record)
        if progress:
            tqdm.write(f"epoch {epoch + 1}: loss {record['train_loss']:.4f}, train accuracy "
                       f"{record['train_accuracy']:.4f}, val accuracy {record['val_accuracy']:.4f}")
    model.eval()
    train_seconds = time.perf_counter() - started

    test_clean = make_concept_dataset(n_test_per_class, image_size, seed, "test", spurious=False)
    test_cue = make_concept_dataset(n_test_per_class, image_size, seed, "test", spurious=True)
    info = {
        "architecture": {"n_classes": model.n_classes, "width": model.width},
        "dataset": {"image_size": image_size, "seed": seed, "n_per_class": {
            "train": n_per_class, "val": n_val_per_class, "test": n_test_per_class},
            "class_names": train.class_names, "concept_names": train.concept_names,
            "input": "images in [0, 1], no normalisation"},
        "training": {"optimizer": "Adam", "lr": lr, "weight_decay": 1e-4, "schedule": "cosine",
                     "epochs": epochs, "batch_size": batch_size, "augmentation": "horizontal flip",
                     "torch": torch.__version__, "machine": platform.machine(),
                     "threads": torch.get_num_threads(),
                     "deterministic_algorithms": torch.are_deterministic_algorithms_enabled()},
        "test_accuracy": evaluate_accuracy(model, test_clean),
        "test_accuracy_with_spurious": evaluate_accuracy(model, test_cue),
        "spurious_cue_effect": spurious_cue_effect(model, test_clean, seed=seed),
        "distractor_control_effect": spurious_cue_effect(
            model, test_clean, seed=seed, concept=test_clean.distractor_concepts[1]),
        "history": history,
        "train_seconds": round(train_seconds, 1),
        "shipped": all(given == _REFERENCE_DEFAULTS[name] for name, given in (
            ("epochs", epochs), ("seed", seed), ("n_per_class", n_per_class),
            ("n_val_per_class", n_val_per_class), ("n_test_per_class", n_test_per_class),
            ("image_size", image_size), ("batch_size", batch_size), ("lr", lr), ("width", width))),
    }
    return model, info


#: the settings of the shipped reference CNN: :func:`train_reference_cnn`'s defaults
_REFERENCE_DEFAULTS = {name: p.default for name, p in
                       inspect.signature(train_reference_cnn).parameters.items()}
