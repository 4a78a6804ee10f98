"""Training a :class:`ConceptBottleneckModel` in Koh et al.'s four modes.

- ``"independent"``: the concept encoder (x → c) is trained on concept labels alone; the head
  (c → y) is trained separately on the *true* concepts (expressed in bottleneck space) and fed
  predicted concepts at test time.
- ``"sequential"``: the same concept encoder, then the head is trained on the encoder's
  *predicted* bottleneck values (encoder frozen).
- ``"joint"``: encoder and head together on ``CE(y) + λ · Σ_j BCE_j(c_j)``.
- ``"standard"``: joint with ``λ = 0``: the bottleneck is an ordinary hidden layer.

Loss normalisation. ``BCE_j`` is the class-balanced binary cross-entropy of concept ``j``
(``pos_weight = n/n_pos − 1`` from the training split, Koh's ``find_class_imbalance``), averaged
over the batch. The joint loss *sums* it over concepts (as Koh's ``run_epoch`` does), so the
weight of the concept term grows with the number of concepts; the concept-only stage of the
independent and sequential modes uses the mean over concepts ``(1/k) Σ_j BCE_j``.

Optimiser. Adam (default) rather than the reference's SGD with momentum 0.9 and step decay:
on cached features and small CNNs it reaches the same optimum in far fewer epochs without a
tuned schedule. ``optimizer="sgd"`` gives SGD with momentum 0.9.

Early stopping watches the validation loss of the stage being trained and restores the weights
of the best epoch. Validation never uses test data: without ``val_data`` a seeded
``val_fraction`` of ``train_data`` is held out (Koh: 20 % of the official train split).
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .._reprs import dataclass_repr
from .._torchutils import model_device, model_dtype, seed_everything
from .._validation import check_choice, check_float, check_int, resolve_device, resolve_seed
from ._data import Batch, CBMData, as_cbm_data
from ._metrics import evaluate_cbm
from ._model import (
    MODES,
    ConceptBottleneckModel,
    check_cbm,
    check_inputs,
    pos_weight_from,
)

OPTIMIZERS = ("adam", "sgd")
#: The share of the training data held out when ``val_fraction`` is left at None
#: (:func:`train_cbm`, :class:`LabelFreeCBM`).
DEFAULT_VAL_FRACTION = 0.2
#: A stage that ends at the epoch limit warns when its validation loss fell by more than this
#: share over its last FALLING_EPOCHS epochs.
FALLING_EPOCHS = 5
FALLING_RELATIVE = 1e-3


@dataclass(frozen=True)
class StageHistory:
    """Loss curves of one training stage (``"concepts"``, ``"head"`` or ``"joint"``).

    ``best_epoch`` is the index of the best epoch in ``train_loss`` and ``val_loss`` (0-based);
    what a person reads counts epochs from 1: :meth:`describe` says "best epoch
    ``best_epoch + 1``", and so do the CBM report's page and its ``metrics.json``
    (``"best_epoch"``; ``"best_epoch_index"`` there is this index).
    """

    stage: str
    train_loss: tuple[float, ...]
    val_loss: tuple[float, ...]
    best_epoch: int
    stopped_early: bool

    @property
    def epochs_run(self) -> int:
        return len(self.train_loss)

    @property
    def still_improving(self) -> bool:
        """The stage ran out of epochs while its validation loss was still falling: its best
        epoch was the last one and the loss fell by more than 0.1 % over the last 5 epochs
        (a creep below that is a plateau). More epochs would likely help."""
        if self.stopped_early or self.best_epoch != self.epochs_run - 1:
            return False
        first = self.val_loss[-min(FALLING_EPOCHS, self.epochs_run)]
        return first - self.val_loss[-1] > FALLING_RELATIVE * abs(first)

    def describe(self) -> str:
        """One line: epochs, why it stopped, the best validation loss."""
        if self.stopped_early:
            why = "stopped early (no better validation loss for `patience` epochs)"
        elif self.still_improving:
            why = "stopped at the epoch limit while the validation loss was still falling"
        else:
            why = "stopped at the epoch limit"
        return (f"stage {self.stage}: {self.epochs_run} epochs, {why}; best epoch "
                f"{self.best_epoch + 1}, validation loss {self.val_loss[self.best_epoch]:.4g}")


@dataclass(frozen=True)
class TrainHistory:
    """What :func:`train_cbm` did: per-stage loss curves, the accuracies of the trained model on
    its training and validation data, and the settings that matter.

    ``concept_loss_weight`` is the λ the joint loss used (``0.0`` in mode ``"standard"``;
    ``None`` in the modes whose losses have no such weight, ``"independent"`` and
    ``"sequential"``). :attr:`under_trained` lists the stages that ran out of epochs while
    their validation loss was still falling.

    ``accuracies`` is ``{"train": {"task": a, "concepts": b}, "val": {...}}`` (task top-1
    accuracy and Koh's concept accuracy, see :func:`evaluate_cbm`); :meth:`summary` prints it
    all in a few lines.
    """

    mode: str
    stages: tuple[StageHistory, ...]
    concept_loss_weight: float | None
    pos_weight: tuple[float, ...]
    n_train: int
    n_val: int
    val_source: str
    seed: int
    seconds: float
    accuracies: dict = field(default_factory=dict)

    @property
    def under_trained(self) -> tuple[str, ...]:
        """The stages that stopped at the epoch limit while their validation loss was still
        falling (:attr:`StageHistory.still_improving`): more epochs would likely help."""
        return tuple(stage.stage for stage in self.stages if stage.still_improving)

    def summary(self) -> str:
        """A few readable lines: the data, each stage, the accuracies."""
        source = "split from train_data" if self.val_source == "split" else "val_data"
        lines = [f"{self.mode} CBM: {self.n_train} training / {self.n_val} validation examples "
                 f"({source}), seed {self.seed}, {self.seconds:.1f} s"]
        lines += [f"  {stage.describe()}" for stage in self.stages]
        for split in ("train", "val"):
            if split in self.accuracies:
                acc = self.accuracies[split]
                lines.append(f"  {'training' if split == 'train' else 'validation'} accuracy: "
                             f"task {acc['task']:.3f}, concepts {acc['concepts']:.3f}")
        return "\n".join(lines)


@dataclass
class _Settings:
    epochs: int
    lr: float
    weight_decay: float
    patience: int
    optimizer: str
    batch_size: int
    device: torch.device
    generator: torch.Generator
    progress: bool
    #: each submodule's mode during training (see :func:`_training_modes`); empty: all train
    train_modes: dict = field(default_factory=dict)


def _training_modes(model: nn.Module) -> dict[nn.Module, bool]:
    """The mode each submodule of ``model`` trains in.

    A model handed over in train mode trains each submodule in the mode the user left it in: a
    submodule put in eval mode (a frozen pretrained BatchNorm) stays in eval mode, so its running
    statistics are never overwritten. A model handed over wholly in eval mode (one trained
    before, or after ``model.eval()``) trains in train mode, but for the submodules that hold
    parameters of which none requires grad (frozen layers), which stay in eval mode.
    """
    if model.training:
        return {module: module.training for module in model.modules()}
    modes = {}
    for module in model.modules():
        own = list(module.parameters(recurse=False))
        frozen = bool(own) and not any(p.requires_grad for p in own)
        modes[module] = module.training or not frozen
    return modes


def _set_training(module: nn.Module, modes: dict[nn.Module, bool]) -> None:
    """Train mode for ``module`` and its submodules, except those ``modes`` keeps in eval."""
    for sub in module.modules():
        sub.training = modes.get(sub, True)


def _concept_loss(logits: torch.Tensor, target: torch.Tensor, pos_weight: torch.Tensor) -> torch.Tensor:
    """Per-concept class-balanced BCE, averaged over the batch: shape ``(k,)``."""
    losses = nn.functional.binary_cross_entropy_with_logits(
        logits, target, pos_weight=pos_weight, reduction="none")
    return losses.mean(0)


def _fit_stage(stage: str, module: nn.Module, loss_fn: Callable[[Batch], torch.Tensor],
               train: CBMData, val: CBMData, cfg: _Settings) -> StageHistory:
    """Train the parameters of ``module`` that require grad; keep the best validation epoch."""
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"nothing to train in the {stage!r} stage: every parameter of the "
                         f"{type(module).__name__} has requires_grad=False.")
    if cfg.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)

    dtype = model_dtype(module)  # float64 features train a float32 model (and vice versa)

    def mean_loss(batches: Iterator[Batch], step: bool) -> float:
        total, count = 0.0, 0
        for x, c, y in batches:
            x, c, y = x.to(cfg.device, dtype), c.to(cfg.device), y.to(cfg.device)
            loss = loss_fn((x, c, y))
            if step:
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            total += float(loss.detach()) * len(y)
            count += len(y)
        return total / count

    best, best_epoch, best_state, waited = float("inf"), -1, None, 0
    train_curve: list[float] = []
    val_curve: list[float] = []
    stopped = False
    bar = tqdm(range(cfg.epochs), desc=f"train {stage}", disable=not cfg.progress, leave=False)
    for epoch in bar:
        _set_training(module, cfg.train_modes)  # a frozen BatchNorm in eval mode stays so
        train_curve.append(mean_loss(train.batches(cfg.batch_size, shuffle=True,
                                                   generator=cfg.generator), step=True))
        module.eval()
        with torch.no_grad():
            val_curve.append(mean_loss(val.batches(cfg.batch_size), step=False))
        bar.set_postfix(train=f"{train_curve[-1]:.4f}", val=f"{val_curve[-1]:.4f}")
        if not (math.isfinite(train_curve[-1]) and math.isfinite(val_curve[-1])):
            # a run that diverged would otherwise end on its best finite epoch without a word
            raise ValueError(f"the {stage!r} stage diverged at epoch {epoch + 1}: its "
                             f"{'training' if not math.isfinite(train_curve[-1]) else 'validation'}"
                             f" loss is not finite (losses so far: train "
                             f"{[round(v, 4) for v in train_curve]}, validation "
                             f"{[round(v, 4) for v in val_curve]}); lower `lr`.")
        if val_curve[-1] < best:
            best, best_epoch, waited = val_curve[-1], epoch, 0
            best_state = copy.deepcopy(module.state_dict())
        else:
            waited += 1
            if waited >= cfg.patience:
                stopped = True
                break
    bar.close()
    if best_state is None:
        raise ValueError(f"the {stage!r} stage produced a non-finite validation loss in every "
                         f"epoch; lower `lr`.")
    module.load_state_dict(best_state)
    module.eval()
    return StageHistory(stage, tuple(train_curve), tuple(val_curve), best_epoch, stopped)


def _check_classes(labels: torch.Tensor, n_classes: int) -> None:
    """Refuse labels of one class (nothing to classify); warn about classes without examples."""
    present = torch.unique(labels).tolist()
    if len(present) < 2:
        raise ValueError(f"`train_data` labels hold one class ({present[0] if present else None}); "
                         f"a classifier needs examples of at least two classes.")
    absent = sorted(set(range(n_classes)) - set(present))
    if absent:
        warnings.warn(f"train_cbm: `train_data` has no example of class(es) {absent[:20]} of the "
                      f"model's n_classes={n_classes}: the head never sees them and will "
                      f"(almost) never predict them; check the labels or `n_classes`.",
                      UserWarning, stacklevel=3)


def train_cbm(model: ConceptBottleneckModel, train_data: Any, val_data: Any = None, *,
              mode: str = "joint", concept_loss_weight: float | None = None, epochs: int = 100,
              lr: float = 1e-3, batch_size: int = 64, weight_decay: float = 4e-5,
              patience: int = 10, optimizer: str = "adam", val_fraction: float | None = None,
              seed: int | None = None, device: Any = None,
              progress: bool = True) -> TrainHistory:
    """Train ``model`` in place in one of Koh et al.'s modes (see the module notes).

    Parameters
    ----------
    model : ConceptBottleneckModel
        Trained in place, left in eval mode on ``device``, with its intervention percentiles
        calibrated on the training split. Submodules the user put in eval mode inside a model
        in train mode (a frozen pretrained BatchNorm) stay in eval mode while training, so
        their running statistics are kept; a model passed wholly in eval mode trains in train
        mode, but for its frozen layers (parameters all with ``requires_grad=False``). If
        training fails, every submodule's mode and the device are restored.
    train_data, val_data : tuple (x, concepts, labels) or Dataset yielding (x, c, y)
        ``x``: ``(N, ...)`` images or cached features; ``concepts``: ``(N, k)`` in [0, 1];
        ``labels``: ``(N,)``. Without ``val_data``, a seeded ``val_fraction`` of ``train_data``
        is held out for early stopping. Never pass the test split as ``val_data``.
        ``x`` must be floating point (cast to the model's dtype, e.g. float64 to float32);
        integer inputs are refused: give images as floats, e.g. ``x.float() / 255`` in [0, 1].
    mode : {"independent", "sequential", "joint", "standard"}
    concept_loss_weight : float, optional
        λ of the joint loss ``CE + λ Σ_j BCE_j`` (default 1). Mode ``"joint"`` only (``0`` is
        also accepted with ``"standard"``, which is joint with λ = 0): the other modes have no
        such weight, and a value given with them is an error rather than ignored.
    val_fraction : float, optional
        Share of ``train_data`` held out when no ``val_data`` is given (default ``None``: 0.2).
        Giving it together with ``val_data`` is an error (it would be ignored).
    epochs, patience : int
        Maximum epochs per stage; stop after ``patience`` epochs without a better val loss.
    lr, weight_decay, batch_size, optimizer
        Optimiser settings (``"adam"`` or ``"sgd"`` with momentum 0.9).
    seed : int or None
        Seeds shuffling, the validation split and in-model randomness (dropout); the global
        torch RNG state is restored afterwards. Same seed, same model → same result on CPU.
        ``None`` draws a fresh seed, recorded in the history's ``seed``.
    device : str or torch.device, optional
        Where to train (default: CPU).

    Returns
    -------
    TrainHistory
    """
    model = check_cbm(model)
    mode = check_choice(mode, "mode", MODES)
    lam = _loss_weight(concept_loss_weight, mode)
    seed = resolve_seed(seed)
    if val_fraction is not None and val_data is not None:
        raise ValueError(f"`val_fraction`={val_fraction!r} sets the share of `train_data` held out "
                         f"for validation, but `val_data` was given, so it would be ignored. Leave "
                         f"`val_fraction` out, or do not pass `val_data`.")
    val_fraction = check_float(DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction,
                               "val_fraction", minimum=0.0, maximum=1.0, strict_minimum=True)
    if val_fraction >= 1.0:  # all held out: nothing left to train on
        raise ValueError(f"`val_fraction` must be strictly between 0 and 1 (the share of "
                         f"`train_data` held out for validation); got {val_fraction}, which "
                         f"would leave no training data.")
    dev = resolve_device(device)
    cfg = _Settings(epochs=check_int(epochs, "epochs", minimum=1),
                    lr=check_float(lr, "lr", minimum=0.0, strict_minimum=True),
                    weight_decay=check_float(weight_decay, "weight_decay", minimum=0.0),
                    patience=check_int(patience, "patience", minimum=1),
                    optimizer=check_choice(optimizer, "optimizer", OPTIMIZERS),
                    batch_size=check_int(batch_size, "batch_size", minimum=1),
                    device=dev, generator=seed_everything(seed), progress=bool(progress))
    train = as_cbm_data(train_data, "train_data", n_concepts=model.n_concepts,
                        n_classes=model.n_classes)
    _check_classes(train.columns()[1], model.n_classes)
    if val_data is None:
        train, val = train.split(val_fraction, seed)
        val_source = "split"
    else:
        val = as_cbm_data(val_data, "val_data", n_concepts=model.n_concepts,
                          n_classes=model.n_classes)
        val_source = "given"
    val_name = "train_data" if val_data is None else "val_data"
    for part, part_name in ((train, "train_data"), (val, val_name)):
        check_inputs(model, next(part.batches(2))[0], part_name)
    pos_weight = pos_weight_from(train.columns()[0]).to(dev)

    start = time.perf_counter()
    original_device = model_device(model)
    flags = [(m, m.training) for m in model.modules()]
    cfg.train_modes = _training_modes(model)
    model.to(dev)
    fork_devices = [dev] if dev.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(seed)
            stages = _train_stages(model, mode, lam or 0.0, train, val, pos_weight, cfg)
    except BaseException:
        # a failure midway: the weights may be partly trained, but the flags and the device are
        # given back as the user set them
        for module, flag in flags:
            module.training = flag
        model.to(original_device)
        raise
    model.eval()
    model.trained_mode = mode
    seconds = time.perf_counter() - start
    for stage in stages:
        if stage.still_improving:
            tail = stage.val_loss[-min(FALLING_EPOCHS, stage.epochs_run):]
            warnings.warn(
                f"train_cbm: the {stage.stage!r} stage stopped at the epoch limit (epochs="
                f"{cfg.epochs}) while its validation loss was still falling ({tail[0]:.4g} -> "
                f"{tail[-1]:.4g} over its last {len(tail)} epochs); the model is likely "
                f"under-trained: pass a larger `epochs` (early stopping ends training when the "
                f"loss stops improving).", UserWarning, stacklevel=2)
    accuracies = {}
    for split, part in (("train", train), ("val", val)):
        scores = evaluate_cbm(model, part, batch_size=max(cfg.batch_size, 256), device=dev)
        accuracies[split] = {"task": scores.task_accuracy, "concepts": scores.concept_accuracy}
    return TrainHistory(mode=mode, stages=tuple(stages), concept_loss_weight=lam,
                        pos_weight=tuple(float(w) for w in pos_weight.cpu()),
                        n_train=len(train), n_val=len(val), val_source=val_source, seed=seed,
                        seconds=seconds, accuracies=accuracies)


def _loss_weight(value: Any, mode: str) -> float | None:
    """The λ of the joint loss that ``mode`` uses: ``value`` (default 1) in mode joint, 0 in
    mode standard, ``None`` in the modes without a joint loss; a value the mode would ignore is
    an error naming the argument."""
    if value is None:
        return {"joint": 1.0, "standard": 0.0}.get(mode)
    lam = check_float(value, "concept_loss_weight", minimum=0.0)
    if mode == "joint" or (mode == "standard" and lam == 0.0):
        return lam
    uses = ("is joint training without a concept loss (λ = 0)" if mode == "standard" else
            "trains the concepts on their own loss, then the head: there is no joint loss")
    raise ValueError(f"`concept_loss_weight`={lam:g} weighs the concept loss of mode='joint', "
                     f"but mode={mode!r} {uses}, so it would be ignored. Leave "
                     f"`concept_loss_weight` out, or use mode='joint'.")


def _train_stages(model: ConceptBottleneckModel, mode: str, lam: float, train: CBMData,
                  val: CBMData, pos_weight: torch.Tensor, cfg: _Settings) -> list[StageHistory]:
    if mode in ("joint", "standard"):
        ce = nn.CrossEntropyLoss()

        def joint_loss(batch: Batch) -> torch.Tensor:
            x, c, y = batch
            out = model(x)
            loss = ce(out.class_logits, y)
            if lam > 0:
                loss = loss + lam * _concept_loss(out.concept_logits, c, pos_weight).sum()
            return loss

        stages = [_fit_stage("joint", model, joint_loss, train, val, cfg)]
        model.calibrate_intervention(train, batch_size=max(cfg.batch_size, 256), device=cfg.device)
        return stages

    def concept_loss(batch: Batch) -> torch.Tensor:
        x, c, _ = batch
        return _concept_loss(model.encode(x), c, pos_weight).mean()

    stages = [_fit_stage("concepts", model.concept_encoder, concept_loss, train, val, cfg)]
    model.calibrate_intervention(train, batch_size=max(cfg.batch_size, 256), device=cfg.device)

    def head_inputs(part: CBMData) -> CBMData:
        concepts, labels = part.columns()
        if mode == "independent":
            values = model.true_to_bottleneck(concepts.to(cfg.device)).cpu()
        else:
            values = model.predict_all(part, batch_size=max(cfg.batch_size, 256),
                                       device=cfg.device).concepts
        return CBMData((values, concepts, labels), part.name)

    ce = nn.CrossEntropyLoss()

    def head_loss(batch: Batch) -> torch.Tensor:
        values, _, y = batch
        return ce(model.predict_from_concepts(values), y)

    stages.append(_fit_stage("head", model.head, head_loss, head_inputs(train), head_inputs(val), cfg))
    return stages


# Short reprs: shapes of arrays, not their values (print(result) stays readable).
StageHistory.__repr__ = dataclass_repr  # type: ignore[method-assign]
TrainHistory.__repr__ = dataclass_repr  # type: ignore[method-assign]
