"""train_cbm refuses a concept loss weight its mode would ignore; the CBM report carries the
under-training result and shows dict-valued extras (the command's settings) as tables."""

import json
import warnings

import pytest
import torch
from _shared import small_cbm_data as _data
from torch import nn

from conceptkit.bottleneck import (
    ConceptBottleneckModel,
    evaluate_cbm,
    intervention_curve,
    train_cbm,
)
from conceptkit.bottleneck._report import write_cbm_report

TRAIN, VAL = _data(), _data(60, 1)


def _model():
    torch.manual_seed(0)
    return ConceptBottleneckModel(nn.Linear(10, 6), 6, 3)


def _train(**kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return train_cbm(_model(), TRAIN, VAL, epochs=2, progress=False, seed=0, **kwargs)


@pytest.mark.parametrize("mode", ["independent", "sequential", "standard"])
def test_a_concept_loss_weight_the_mode_ignores_is_an_error(mode):
    with pytest.raises(ValueError, match=rf"`concept_loss_weight`=5 weighs the concept loss of "
                                         rf"mode='joint', but mode='{mode}'"):
        train_cbm(_model(), TRAIN, VAL, mode=mode, concept_loss_weight=5.0, epochs=1,
                  progress=False, seed=0)


def test_the_history_records_the_weight_the_mode_used():
    assert _train(mode="joint").concept_loss_weight == 1.0
    assert _train(mode="joint", concept_loss_weight=2.5).concept_loss_weight == 2.5
    assert _train(mode="standard").concept_loss_weight == 0.0
    assert _train(mode="standard", concept_loss_weight=0).concept_loss_weight == 0.0  # what it uses
    assert _train(mode="independent").concept_loss_weight is None  # it has no such weight
    with pytest.raises(ValueError, match="`concept_loss_weight` must be >= 0"):
        _train(mode="joint", concept_loss_weight=-1.0)


def test_the_report_carries_under_training_and_shows_settings_as_a_table(tmp_path):
    model = _model()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = train_cbm(model, TRAIN, VAL, mode="sequential", epochs=2, lr=1e-3,
                            progress=False, seed=0)
    assert any("still falling" in str(w.message) for w in caught)
    assert history.under_trained == tuple(s.stage for s in history.stages if s.still_improving)
    assert history.under_trained  # two epochs at lr 1e-3: the loss is still falling
    evaluation = evaluate_cbm(model, VAL)
    curves = {"random": intervention_curve(model, VAL, n_trials=1)}
    page = write_cbm_report(tmp_path, model, evaluation, curves, history=history,
                            extra={"settings": {"epochs": 2, "layer": "block3", "device": None},
                                   "note": "unit test"})
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    saved = metrics["history"]
    assert saved["under_trained"] == list(history.under_trained)
    assert [s["still_improving"] for s in saved["stages"]] == [s.still_improving
                                                              for s in history.stages]
    assert saved["concept_loss_weight"] is None
    assert metrics["extra"]["settings"] == {"epochs": 2, "layer": "block3", "device": None}
    html = page.read_text()
    assert "Under-trained: the &#x27;" in html and "--epochs" in html
    assert "<h2>Training</h2>" in html and "<h2>Settings</h2>" in html
    assert "<td>block3</td>" in html and "unit test" in html


def test_a_report_of_a_model_trained_to_a_plateau_has_no_under_training_note(tmp_path):
    model = _model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        history = train_cbm(model, TRAIN, VAL, mode="joint", epochs=300, patience=2, lr=0.3,
                            progress=False, seed=0)
    assert history.stages[0].stopped_early and not history.under_trained
    page = write_cbm_report(tmp_path, model, evaluate_cbm(model, VAL),
                            {"random": intervention_curve(model, VAL, n_trials=1)},
                            history=history)
    assert json.loads((tmp_path / "metrics.json").read_text())["history"]["under_trained"] == []
    assert "Under-trained" not in page.read_text()
