"""Interventions and CBM metrics, checked against brute-force loops and sklearn."""

import itertools

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, roc_auc_score
from torch import nn

from conceptkit.bottleneck import (
    ConceptBottleneckModel,
    evaluate_cbm,
    intervene,
    intervention_curve,
    leakage_score,
    train_cbm,
)

N_CLASSES, K, DIM = 3, 8, 16


def synthetic(n, seed, noise):
    """Class c is caused by concepts 2c and 2c+1; concepts 6, 7 are distractors."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, N_CLASSES, n)
    concepts = np.zeros((n, K), np.float32)
    concepts[np.arange(n), 2 * labels] = 1
    concepts[np.arange(n), 2 * labels + 1] = 1
    concepts[:, 6:] = rng.random((n, 2)) < 0.4
    mixing = np.random.default_rng(99).normal(size=(K, DIM)).astype(np.float32)
    x = concepts @ mixing + noise * rng.normal(size=(n, DIM)).astype(np.float32)
    return torch.from_numpy(x), torch.from_numpy(concepts), torch.from_numpy(labels)


@pytest.fixture(scope="module", params=["sigmoid", "logits"])
def noisy_model(request):
    """An independent CBM whose concept predictions are imperfect (heavy feature noise)."""
    train, val, test = synthetic(600, 0, 3.0), synthetic(200, 1, 3.0), synthetic(300, 2, 3.0)
    torch.manual_seed(0)
    model = ConceptBottleneckModel(nn.Linear(DIM, K), K, N_CLASSES, bottleneck=request.param)
    train_cbm(model, train, val, mode="independent", epochs=20, lr=2e-2, batch_size=128,
              seed=0, progress=False)
    return model, test


def _accuracy(model, values, labels):
    with torch.no_grad():
        return float((model.head(values).argmax(1) == labels).double().mean())


def test_intervene_replaces_exactly_the_masked_concepts(noisy_model):
    model, (x, concepts, _) = noisy_model
    x, concepts = x[:20], concepts[:20]
    mask = torch.zeros(20, K, dtype=torch.bool)
    mask[::2, 1] = True
    mask[3, [0, 5]] = True
    out = intervene(model, x, concepts, mask)
    with torch.no_grad():
        plain = model(x)
    target = model.true_to_bottleneck(concepts)
    torch.testing.assert_close(out.concepts[mask], target[mask])
    torch.testing.assert_close(out.concepts[~mask], plain.concepts[~mask])
    torch.testing.assert_close(out.class_logits, model.head(out.concepts).detach())
    if model.bottleneck == "logits":  # 0/1 map to the calibrated 5th/95th percentiles
        low, high = model.intervention_low, model.intervention_high
        assert torch.all((target == low) | (target == high))
    # a (k,) mask applies to every example
    everywhere = intervene(model, x, concepts, torch.ones(K, dtype=torch.bool))
    torch.testing.assert_close(everywhere.concepts, target)


def test_intervene_checks_its_arguments(noisy_model):
    model, (x, concepts, _) = noisy_model
    with pytest.raises(TypeError, match="boolean"):
        intervene(model, x[:4], concepts[:4], torch.ones(4, K))
    with pytest.raises(ValueError, match="mask"):
        intervene(model, x[:4], concepts[:4], torch.ones(4, K - 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="concept_values"):
        intervene(model, x[:4], concepts[:3], torch.ones(K, dtype=torch.bool))
    torch.manual_seed(0)
    raw = ConceptBottleneckModel(nn.Linear(DIM, K), K, N_CLASSES, bottleneck="logits")
    with pytest.raises(ValueError, match="calibrate_intervention"):
        intervene(raw, x[:4], concepts[:4], torch.ones(K, dtype=torch.bool))


def test_curve_endpoints(noisy_model):
    model, test = noisy_model
    x, concepts, labels = test
    curve = intervention_curve(model, test, policy="random", n_trials=3, seed=0)
    assert curve.accuracy_mean[0] == pytest.approx(evaluate_cbm(model, test).task_accuracy)
    assert curve.accuracy_mean[-1] == pytest.approx(_accuracy(model, model.true_to_bottleneck(concepts), labels))
    # imperfect concepts, a head trained on true concepts: interventions fix the task
    assert curve.accuracy_mean[0] < 0.97
    assert curve.accuracy_mean[-1] >= 0.99
    np.testing.assert_allclose(curve.accuracy_mean, curve.accuracies.mean(0))
    np.testing.assert_allclose(curve.accuracy_std, curve.accuracies.std(0))
    assert curve.area == pytest.approx(np.trapezoid(curve.accuracy_mean, np.arange(K + 1) / K))
    np.testing.assert_array_equal(curve.n_intervened, np.arange(K + 1))


def _order_curve(model, values, target, labels, groups, orders):
    """Accuracy after each step, with a per-example group order ``orders (N, G)``."""
    accs = []
    for step in range(len(groups) + 1):
        current = values.clone()
        for i in range(len(labels)):
            for g in orders[i][:step]:
                current[i, groups[g]] = target[i, groups[g]]
        accs.append(_accuracy(model, current, labels))
    return np.array(accs)


def test_random_policy_uses_one_order_per_trial_for_all_examples(noisy_model):
    model, test = noisy_model
    x, concepts, labels = test
    groups = [[0, 1, 6], [2, 3], [4, 5, 7]]
    curve = intervention_curve(model, test, policy="random", groups=groups, n_trials=4, seed=7)
    with torch.no_grad():
        values = model(x).concepts
    target = model.true_to_bottleneck(concepts)
    candidates = [_order_curve(model, values, target, labels, groups, [perm] * len(labels))
                  for perm in itertools.permutations(range(3))]
    for trial in curve.accuracies:
        assert any(np.allclose(trial, c) for c in candidates)
    again = intervention_curve(model, test, policy="random", groups=groups, n_trials=4, seed=7)
    np.testing.assert_array_equal(again.accuracies, curve.accuracies)


def test_uncertainty_policy_matches_brute_force(noisy_model):
    model, test = noisy_model
    x, concepts, labels = test
    curve = intervention_curve(model, test, policy="uncertainty")
    with torch.no_grad():
        out = model(x)
    distance = (torch.sigmoid(out.concept_logits) - 0.5).abs().numpy()
    orders = [np.argsort(row, kind="stable") for row in distance]
    groups = [[j] for j in range(K)]
    expected = _order_curve(model, out.concepts, model.true_to_bottleneck(concepts), labels, groups, orders)
    np.testing.assert_allclose(curve.accuracy_mean, expected)
    assert curve.accuracies.shape == (1, K + 1) and np.all(curve.accuracy_std == 0)


def test_importance_policy_uses_head_weights_of_the_predicted_class(noisy_model):
    model, test = noisy_model
    x, concepts, labels = test
    curve = intervention_curve(model, test, policy="importance")
    with torch.no_grad():
        out = model(x)
    weight = model.head.weight.detach().abs().numpy()
    predicted = out.class_logits.argmax(1).numpy()
    orders = [np.argsort(-weight[c], kind="stable") for c in predicted]
    groups = [[j] for j in range(K)]
    expected = _order_curve(model, out.concepts, model.true_to_bottleneck(concepts), labels, groups, orders)
    np.testing.assert_allclose(curve.accuracy_mean, expected)
    # the head ignores the distractors (6, 7); a task-aware order fixes the class concepts first
    random = intervention_curve(model, test, policy="random", n_trials=5)
    assert curve.area > random.area


def test_groups_leave_ungrouped_concepts_predicted(noisy_model):
    model, test = noisy_model
    x, concepts, labels = test
    groups = [[0, 1], [2, 3]]
    curve = intervention_curve(model, test, policy="random", groups=groups, n_trials=2)
    with torch.no_grad():
        values = model(x).concepts.clone()
    values[:, :4] = model.true_to_bottleneck(concepts)[:, :4]
    assert curve.accuracy_mean[-1] == pytest.approx(_accuracy(model, values, labels))
    assert curve.groups == ((0, 1), (2, 3))
    with pytest.raises(ValueError, match="overlap"):
        intervention_curve(model, test, groups=[[0, 1], [1, 2]])
    with pytest.raises(ValueError, match="groups"):
        intervention_curve(model, test, groups=[[0, K]])
    with pytest.raises(ValueError, match="policy"):
        intervention_curve(model, test, policy="entropy")


def test_evaluate_matches_sklearn(noisy_model):
    model, test = noisy_model
    x, concepts, labels = test
    result = evaluate_cbm(model, test)
    with torch.no_grad():
        out = model(x)
    probs = torch.sigmoid(out.concept_logits).numpy()
    truth = concepts.numpy().astype(bool)
    predicted = probs >= 0.5
    assert result.task_accuracy == pytest.approx(float((out.class_logits.argmax(1) == labels).double().mean()))
    assert result.concept_accuracy == pytest.approx((predicted == truth).mean())
    for j in range(K):
        assert result.per_concept_f1[j] == pytest.approx(f1_score(truth[:, j], predicted[:, j]))
        assert result.per_concept_auc[j] == pytest.approx(roc_auc_score(truth[:, j], probs[:, j]))
    constant = (x, torch.cat([torch.ones(len(x), 1), concepts[:, 1:]], 1), labels)
    assert np.isnan(evaluate_cbm(model, constant).per_concept_auc[0])


def _handmade_model(leaky: bool):
    """One concept, two classes, inputs one-hot of the class.

    Leaky: the concept is present in every example, but its logit (0.5 vs 3.0) reveals the class.
    Not leaky: the concept is the class, logits -3 / +3.
    """
    encoder = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        encoder.weight.copy_(torch.tensor([[0.5, 3.0]] if leaky else [[-3.0, 3.0]]))
    model = ConceptBottleneckModel(encoder, 1, 2)
    labels = torch.arange(2).repeat(50)
    x = nn.functional.one_hot(labels, 2).float()
    concepts = torch.ones(100, 1) if leaky else labels[:, None].float()
    return model, (x, concepts, labels)


def test_leakage_of_a_handmade_leaky_bottleneck():
    model, data = _handmade_model(leaky=True)
    report = leakage_score(model, data, data)
    assert report.soft_accuracy == 1.0
    assert report.hard_accuracy == 0.5 and report.true_accuracy == 0.5
    assert report.leakage == 0.5
    model, data = _handmade_model(leaky=False)
    report = leakage_score(model, data, data)
    assert report.soft_accuracy == report.hard_accuracy == report.true_accuracy == 1.0
    assert report.leakage == 0.0
