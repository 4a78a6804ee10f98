"""What train_cbm says about its training: a warning when it stops at the epoch limit while the
validation loss still falls, a summary with accuracies, a short repr."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from conceptkit.bottleneck import ConceptBottleneckModel, evaluate_cbm, train_cbm
from conceptkit.bottleneck._train import StageHistory

N_CLASSES, DIM, K = 3, 16, 6


def synthetic(n, seed, noise=0.3):
    """Class c is caused by concepts 2c and 2c+1; features are a fixed linear map plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, N_CLASSES, n)
    concepts = np.zeros((n, K), np.float32)
    concepts[np.arange(n), 2 * labels] = 1
    concepts[np.arange(n), 2 * labels + 1] = 1
    mixing = np.random.default_rng(1234).normal(size=(K, DIM)).astype(np.float32)
    x = concepts @ mixing + noise * rng.normal(size=(n, DIM)).astype(np.float32)
    return torch.from_numpy(x), torch.from_numpy(concepts), torch.from_numpy(labels)


TRAIN, VAL = synthetic(600, 0), synthetic(200, 1)


def model():
    torch.manual_seed(0)
    return ConceptBottleneckModel(nn.Linear(DIM, K), K, N_CLASSES)


def train(**kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cbm = model()
        history = train_cbm(cbm, TRAIN, VAL, mode="joint", batch_size=128, progress=False, seed=0,
                            **kwargs)
    falling = [w for w in caught if "still falling" in str(w.message)]
    return cbm, history, falling


def test_stopping_at_the_epoch_limit_while_the_loss_falls_warns():
    _, history, falling = train(epochs=4, lr=1e-3)
    stage = history.stages[0]
    assert stage.epochs_run == 4 and not stage.stopped_early and stage.still_improving
    assert list(stage.val_loss) == sorted(stage.val_loss, reverse=True)  # still falling
    assert len(falling) == 1
    message = str(falling[0].message)
    assert "'joint' stage stopped at the epoch limit (epochs=4)" in message
    assert "pass a larger `epochs`" in message
    assert "stopped at the epoch limit while the validation loss was still falling" in history.summary()


def test_early_stopping_does_not_warn():
    # 30 noisy training examples and an MLP encoder: the validation loss turns up within epochs.
    torch.manual_seed(0)
    cbm = ConceptBottleneckModel(nn.Sequential(nn.Linear(DIM, 64), nn.ReLU(), nn.Linear(64, K)),
                                 K, N_CLASSES)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = train_cbm(cbm, synthetic(30, 0, noise=3.0), synthetic(200, 1, noise=3.0),
                            mode="joint", epochs=400, lr=5e-2, patience=3, batch_size=128,
                            progress=False, seed=0)
    stage = history.stages[0]
    assert stage.stopped_early and stage.epochs_run < 400 and not stage.still_improving
    assert not [w for w in caught if "still falling" in str(w.message)]
    assert "stopped early" in history.summary()


def test_a_plateau_at_the_limit_is_not_called_falling():
    plateau = StageHistory("joint", (1.0,) * 7, (2.0, 1.2, 1.1999, 1.19985, 1.1998, 1.19975, 1.1997),
                           6, False)
    assert not plateau.still_improving  # the last epoch is the best, but by < 0.1 % over 5 epochs
    falling = StageHistory("joint", (1.0,) * 6, (2.0, 1.5, 1.3, 1.25, 1.2, 1.15), 5, False)
    assert falling.still_improving


def test_summary_reports_the_accuracies_of_the_trained_model():
    cbm, history, _ = train(epochs=30, lr=2e-2)
    for split, data in (("train", TRAIN), ("val", VAL)):
        scores = evaluate_cbm(cbm, data)
        assert history.accuracies[split]["task"] == pytest.approx(scores.task_accuracy)
        assert history.accuracies[split]["concepts"] == pytest.approx(scores.concept_accuracy)
    text = history.summary()
    val = history.accuracies["val"]
    assert f"validation accuracy: task {val['task']:.3f}, concepts {val['concepts']:.3f}" in text
    assert text.startswith("joint CBM: 600 training / 200 validation examples (val_data), seed 0")
    assert val["task"] > 0.9


def test_history_repr_is_short():
    _, history, _ = train(epochs=30, lr=2e-2)
    text = repr(history)
    assert len(text) < 600 and "stages=tuple of 1" in text
    stage = repr(history.stages[0])
    assert "train_loss=(" in stage and "... (30 items)" in stage
    assert np.isfinite(history.seconds)
