"""Acceptance checks on the reference concept dataset (cached frozen features).

The reference CNN is frozen and cut at ``block3``; its 8×8 maps are computed once per module and
a :class:`SpatialProbe` is the concept encoder, as in ``conceptkit train-cbm``. Targets: joint and
independent CBMs reach concept accuracy >= 95 % and task accuracy within 3 points of the standard
model; intervening on every concept gives >= 99 % task accuracy.
"""

import numpy as np
import pytest
import torch

from conceptkit.bottleneck import (
    ConceptBottleneckModel,
    SpatialProbe,
    evaluate_cbm,
    intervention_curve,
    train_cbm,
)
from conceptkit.datasets import make_concept_dataset, reference_model
from conceptkit.extraction import ActivationExtractor

SETTINGS = dict(epochs=20, lr=2e-2, batch_size=128, seed=0, progress=False)


@pytest.fixture(scope="module")
def features():
    extractor = ActivationExtractor(reference_model(), "block3", batch_size=256, progress=False)
    data = {}
    for split, n_per_class in (("train", 100), ("val", 30), ("test", 100)):
        ds = make_concept_dataset(n_per_class, seed=0, split=split)
        data[split] = (extractor(ds.images), ds.concepts, ds.labels)
    return data, ds.concept_names, ds.class_names


@pytest.fixture(scope="module")
def trained(features):
    data, concept_names, class_names = features
    models = {}
    for mode in ("joint", "independent", "sequential", "standard"):
        torch.manual_seed(0)
        model = ConceptBottleneckModel(SpatialProbe(data["train"][0].shape[1], 10), 10, 6,
                                       concept_names=list(concept_names), class_names=list(class_names))
        train_cbm(model, data["train"], data["val"], mode=mode, **SETTINGS)
        models[mode] = (model, evaluate_cbm(model, data["test"]))
    return models


@pytest.mark.parametrize("mode", ["joint", "independent", "sequential"])
def test_bottleneck_models_learn_the_concepts_and_keep_task_accuracy(trained, mode):
    _, result = trained[mode]
    _, standard = trained["standard"]
    assert result.concept_accuracy >= 0.95
    assert result.per_concept_accuracy.min() >= 0.9
    assert result.task_accuracy >= standard.task_accuracy - 0.03


def test_standard_model_is_accurate_but_its_bottleneck_is_not_the_concepts(trained):
    _, standard = trained["standard"]
    assert standard.task_accuracy >= 0.97
    assert standard.concept_accuracy < 0.8


@pytest.mark.parametrize("mode", ["joint", "independent"])
def test_full_intervention_reaches_99_percent(trained, features, mode):
    model, result = trained[mode]
    data, _, _ = features
    curve = intervention_curve(model, data["test"], policy="random", n_trials=3, seed=0)
    assert curve.accuracy_mean[0] == pytest.approx(result.task_accuracy)
    assert curve.accuracy_mean[-1] >= 0.99


def test_saved_model_reproduces_predictions(trained, features, tmp_path):
    model, _ = trained["joint"]
    data, _, _ = features
    loaded = ConceptBottleneckModel.load(model.save(tmp_path / "joint.safetensors"))
    x = data["test"][0][:64]
    with torch.no_grad():
        np.testing.assert_allclose(loaded(x).class_logits.numpy(), model(x).class_logits.numpy(), rtol=1e-6)
    assert loaded.concept_names == model.concept_names
