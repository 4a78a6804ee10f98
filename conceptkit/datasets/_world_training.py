"""Training a world's model deterministically on the CPU, and a quick measure of part reliance."""

from __future__ import annotations

import math
import platform
import sys
import time
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .._torchutils import median_colour
from .._validation import check_float, check_int
from ._architectures import build_model, n_parameters
from ._dataset import ConceptDataset, check_concept_dataset
from ._training import deterministic_cpu, evaluate_accuracy, predict_logits
from ._world import World, load_world

#: the validation and test images per class the shipped records were measured on
_RECORD_DEFAULTS = (50, 250)


@torch.no_grad()
def part_reliance(model: nn.Module, dataset: ConceptDataset, batch_size: int = 256) -> np.ndarray:
    """How much ``model`` relies on each part: the drop of the true-class probability.

    Each part drawn in an image is painted out with the image's per-channel median (in these
    worlds, about the background colour) and the softmax probability of the image's class is
    compared before and after. Returns ``(n_classes, n_parts)``: the mean drop over the images of
    each class that show the part, NaN where no image of the class shows it. A quick measure for
    the training record; :mod:`conceptkit.evaluate` gives the full one.
    """
    dataset = check_concept_dataset(dataset)
    images, labels = dataset.images, dataset.labels
    rows = torch.arange(len(labels))
    before = predict_logits(model, images, batch_size).softmax(1)[rows, labels]
    median = median_colour(images)
    drops = np.full((dataset.n_classes, dataset.n_concepts), np.nan)
    for k in range(dataset.n_concepts):
        shown = dataset.concepts[:, k] > 0
        if not shown.any():
            continue
        mask = dataset.masks[shown, k][:, None]
        painted = torch.where(mask, median[shown], images[shown])
        after = predict_logits(model, painted, batch_size).softmax(1)
        drop = before[shown] - after[torch.arange(len(after)), labels[shown]]
        for c in range(dataset.n_classes):
            of_class = labels[shown] == c
            if of_class.any():
                drops[c, k] = float(drop[of_class].mean())
    return drops


def reliance_table(drops: np.ndarray, world: World) -> dict[str, dict[str, float | None]]:
    """``{class name: {part name: drop}}`` from :func:`part_reliance`, ``None`` for NaN."""
    return {world.class_names[c]: {world.part_names[k]: (None if math.isnan(v) else round(float(v), 4))
                                   for k, v in enumerate(row)} for c, row in enumerate(drops)}


def _versions() -> dict[str, str]:
    import timm

    from .._version import __version__

    return {"conceptkit": __version__, "torch": torch.__version__, "timm": timm.__version__,
            "numpy": np.__version__, "python": sys.version.split()[0]}


def train_world_model(world: str | World, arch: str | None = None, *, epochs: int | None = None, seed: int = 0,
                      n_per_class: int | None = None, n_val_per_class: int = 50,
                      n_test_per_class: int = 250,
                      lr: float | None = None, progress: bool = True,
                      config: dict[str, Any] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Train a world's model, deterministically for a seed on the CPU (one thread).

    Every epoch draws fresh training images (``world.sample(n_per_class, seed=seed * 1000 + epoch,
    split="train")``), so the model never sees the same image twice. AdamW, a linear warm-up and a
    cosine decay, random horizontal flips (they keep every class rule). The held-out accuracy is
    measured on ``world.sample(n_test_per_class, seed=seed + 1, split="test")``, a split and seed
    no training image comes from.

    ``world`` is a name of :data:`~conceptkit.datasets.WORLDS` or a :class:`World` itself (one
    built for a check, which the library does not ship). ``arch`` may also be an architecture the
    world does not ship (``"resnet"`` or ``"vit"``, with
    the settings it has in the other worlds), and ``config`` overrides architecture settings
    (``World.training_spec``): a model to check explanations on that the defaults were not
    chosen on. Such a model is saved elsewhere and loaded with ``world.model(weights=PATH)``.

    Returns
    -------
    model : nn.Module
        The trained model in eval mode.
    info : dict
        JSON-ready record: ``world``, ``architecture``, ``config``, ``layer``, ``training``,
        ``versions``, ``test_accuracy``, ``test_seed``, ``n_parameters``, ``reliance`` (the
        drop of the true-class probability when each part is painted out, per class; see
        :func:`part_reliance`), ``history``, ``train_seconds`` (wall clock) and
        ``train_cpu_seconds`` (CPU time: the wall clock grows with the machine's load, this
        does not), ``shipped`` (whether these are a shipped model's settings: its architecture
        settings and its epochs, images per class, learning rate, seed and record sizes).
    """
    the_world = world if isinstance(world, World) else load_world(world)
    spec = the_world.training_spec(arch, config)
    if spec.is_reference(the_world.name):
        raise ValueError("the shapes world's CNN (`world` 'shapes', `arch` 'cnn') is trained by "
                         "`python -m conceptkit.datasets.train_reference`.")
    settings = dict(spec.training)
    epochs = check_int(settings["epochs"] if epochs is None else epochs, "epochs", minimum=1)
    n_per_class = check_int(settings["n_per_class"] if n_per_class is None else n_per_class,
                            "n_per_class", minimum=1)
    lr = check_float(settings["lr"] if lr is None else lr, "lr", minimum=0.0, strict_minimum=True)
    seed = check_int(seed, "seed", minimum=0)
    n_val_per_class = check_int(n_val_per_class, "n_val_per_class", minimum=1)
    n_test_per_class = check_int(n_test_per_class, "n_test_per_class", minimum=1)
    batch_size, warmup = settings["batch_size"], settings["warmup_epochs"]
    started, started_cpu = time.perf_counter(), time.process_time()
    with deterministic_cpu():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_model(spec.architecture, dict(spec.config))
        generator = torch.Generator().manual_seed(seed)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=settings["weight_decay"])
        steps_per_epoch = -(-the_world.n_classes * n_per_class // batch_size)
        total, warm = epochs * steps_per_epoch, warmup * steps_per_epoch

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        loss_fn = nn.CrossEntropyLoss()
        val = the_world.sample(n_val_per_class, seed=seed, split="val")
        history = []
        for epoch in range(epochs):
            train = the_world.sample(n_per_class, seed=seed * 1000 + epoch, split="train")
            model.train()
            order = torch.randperm(len(train), generator=generator)
            flips = torch.rand(len(train), generator=generator) < 0.5
            total_loss, total_correct = 0.0, 0
            batches = tqdm(range(0, len(train), batch_size), desc=f"epoch {epoch + 1}/{epochs}",
                           disable=not progress, leave=False)
            for start in batches:
                index = order[start:start + batch_size]
                images = torch.where(flips[index, None, None, None], train.images[index].flip(-1),
                                     train.images[index])
                logits = model(images)
                loss = loss_fn(logits, train.labels[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                total_loss += float(loss.detach()) * len(index)
                total_correct += int((logits.argmax(1) == train.labels[index]).sum())
            model.eval()
            record = {"epoch": epoch + 1, "train_loss": round(total_loss / len(train), 5),
                      "train_accuracy": round(total_correct / len(train), 4),
                      "val_accuracy": round(evaluate_accuracy(model, val), 4)}
            history.append(record)
            if progress:
                tqdm.write(f"epoch {epoch + 1}: loss {record['train_loss']:.4f}, train accuracy "
                           f"{record['train_accuracy']:.4f}, val accuracy {record['val_accuracy']:.4f}")
        train_seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - started_cpu
        test = the_world.sample(n_test_per_class, seed=seed + 1, split="test")
        accuracy = evaluate_accuracy(model, test)
        drops = part_reliance(model, test)
    info = {
        "world": the_world.name, "architecture": spec.architecture, "config": dict(spec.config),
        "layer": spec.layer, "n_parameters": n_parameters(model),
        "dataset": {"image_size": the_world.image_size, "class_names": the_world.class_names,
                    "part_names": the_world.part_names, "class_parts": the_world.class_parts,
                    "train": f"{n_per_class} fresh images per class per epoch, split 'train', "
                             f"seeds {seed * 1000}..{seed * 1000 + epochs - 1}",
                    "input": "images in [0, 1], no normalisation"},
        "training": {"optimizer": "AdamW", "lr": lr, "weight_decay": settings["weight_decay"],
                     "schedule": f"linear warm-up {warmup} epochs, cosine", "epochs": epochs,
                     "batch_size": batch_size, "augmentation": "horizontal flip", "seed": seed,
                     "threads": 1, "deterministic_algorithms": True, "machine": platform.machine()},
        "versions": _versions(),
        "test_accuracy": round(accuracy, 4), "test_seed": seed + 1,
        "n_test_per_class": n_test_per_class,
        "reliance": reliance_table(drops, the_world),
        "reliance_fill": "per-image channel median",
        "history": history, "train_seconds": round(train_seconds, 1),
        "train_cpu_seconds": round(cpu_seconds, 1),
        # the shipped model's settings, architecture and training both (a record written with
        # other epochs or images is not the shipped model, whatever file it goes to)
        "shipped": (the_world.shipped(arch, config, epochs=epochs, n_per_class=n_per_class, lr=lr,
                                      seed=seed)
                    and (n_val_per_class, n_test_per_class) == _RECORD_DEFAULTS),
    }
    return model, info
