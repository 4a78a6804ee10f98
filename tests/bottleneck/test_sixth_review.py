"""Found by the sixth review (fuzzing the public API): every evaluation of a concept bottleneck
model refuses inputs its encoder cannot take naming the argument; the deterministic
intervention policies refuse `n_trials` and `seed`; meta-device data and a model that is no
CBM are refused by name.

Tiny linear models throughout, CPU only.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from conceptkit.bottleneck import (
    ConceptBottleneckModel,
    DiscoveredCBM,
    evaluate_cbm,
    intervene,
    intervention_curve,
    leakage_score,
    train_cbm,
)
from conceptkit.bottleneck._report import concept_class_weights
from conceptkit.concepts import NMF, bank_from_activations
from conceptkit.extraction import Provenance

pytestmark = [pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning"),
              pytest.mark.filterwarnings("ignore:train_cbm. the 'joint' stage stopped at the "
                                         "epoch limit:UserWarning")]


def _toy(n=64, d=12, k=5, n_classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    c = (x @ torch.randn(d, k, generator=g) > 0).float()
    y = c[:, :2].sum(1).long().clamp(max=n_classes - 1)
    return x, c, y


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    data = _toy()
    model = ConceptBottleneckModel(nn.Linear(12, 5), 5, 3)
    train_cbm(model, data, epochs=3, progress=False, seed=0)
    return model, data


# ---------------------------------------------------------------------------------------------
# Finding 2: inputs the encoder cannot take (before: torch's "mat1 and mat2 shapes cannot be
# multiplied" from inside the model)
# ---------------------------------------------------------------------------------------------

def test_evaluations_refuse_inputs_the_encoder_cannot_take_naming_the_argument(trained):
    model, (x, c, y) = trained
    bad = (x[:, :5], c, y)
    fit = r"does not fit the model: its inputs of shape \(5,\) \(per example\) fail in the " \
          r"concept encoder Linear: RuntimeError: mat1 and mat2"
    for call, name in [(lambda: evaluate_cbm(model, bad), "data"),
                       (lambda: intervention_curve(model, bad), "data"),
                       (lambda: leakage_score(model, bad, (x, c, y)), "train_data"),
                       (lambda: leakage_score(model, (x, c, y), bad), "test_data"),
                       (lambda: model.predict_all(x[:, :5]), "data")]:
        with pytest.raises(ValueError, match=rf"^`{name}` {fit}") as caught:
            call()
        assert isinstance(caught.value.__cause__, RuntimeError)


def test_a_dataset_the_encoder_cannot_take_is_refused_too(trained):
    model, (x, c, y) = trained

    class Items(Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return x[i, :5], c[i], y[i]

    with pytest.raises(ValueError, match=r"^`data` does not fit the model: its inputs of shape "
                                         r"\(5,\)"):
        evaluate_cbm(model, Items())


def test_evaluations_of_inputs_that_fit_are_unchanged(trained):
    model, (x, c, y) = trained
    with torch.no_grad():
        expected = model.eval()(x)
    out = model.predict_all((x, c, y), batch_size=16)
    torch.testing.assert_close(out.class_logits, expected.class_logits)
    evaluation = evaluate_cbm(model, (x, c, y))
    assert evaluation.task_accuracy == pytest.approx(
        float((expected.class_logits.argmax(1) == y).double().mean()))


# ---------------------------------------------------------------------------------------------
# Finding 4: n_trials and seed with a deterministic policy (before: silently ignored)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("policy", ["uncertainty", "importance"])
def test_deterministic_policies_refuse_n_trials_and_seed(trained, policy):
    model, data = trained
    with pytest.raises(ValueError, match=rf"^`n_trials` and `seed` set the random orders of "
                                         rf"policy='random'; policy='{policy}' is deterministic "
                                         rf"\(one order per example\) and would ignore them\. "
                                         rf"Leave `n_trials` and `seed` out"):
        intervention_curve(model, data, policy=policy, n_trials=50, seed=123)
    for kwargs, name in (({"n_trials": 1}, "n_trials"), ({"seed": 0}, "seed")):
        with pytest.raises(ValueError, match=rf"^`{name}` sets the random orders .* would "
                                             rf"ignore it\."):
            intervention_curve(model, data, policy=policy, **kwargs)
    curve = intervention_curve(model, data, policy=policy)
    assert curve.accuracies.shape == (1, 6) and np.all(curve.accuracy_std == 0)


def test_the_random_policy_keeps_its_defaults(trained):
    model, data = trained
    default = intervention_curve(model, data)
    explicit = intervention_curve(model, data, policy="random", n_trials=5, seed=0)
    assert default.accuracies.shape == (5, 6)
    np.testing.assert_array_equal(default.accuracies, explicit.accuracies)
    other = intervention_curve(model, data, n_trials=3, seed=7)
    assert other.accuracies.shape == (3, 6)
    with pytest.raises(ValueError, match=r"`n_trials` must be"):
        intervention_curve(model, data, n_trials=0)


def test_the_discovered_cbm_importance_curve_refuses_n_trials_and_seed():
    g = torch.Generator().manual_seed(0)
    acts = torch.rand(40, 5, 2, 2, generator=g)
    rows = acts.permute(0, 2, 3, 1).reshape(-1, 5)
    prov = Provenance("position", np.repeat(np.arange(40), 4), np.zeros((160, 4)), (2, 2),
                      cells=np.zeros((160, 2)), grid=(2, 2))
    bank = bank_from_activations(NMF(n_concepts=3, random_state=0), rows, prov, layer="l",
                                 keep_activations=False)
    labels = (acts[:, 0].mean((1, 2)) > acts[:, 1].mean((1, 2))).long()
    cbm = DiscoveredCBM(bank, names=["p", "q", "r"], progress=False).fit(activations=acts,
                                                                          labels=labels)
    values, mask = (torch.rand(40, 3, generator=g) > 0.5).float(), torch.ones(3, dtype=torch.bool)
    common = {"activations": acts, "concept_values": values, "mask": mask, "labels": labels}
    with pytest.raises(ValueError, match=r"^`n_trials` sets the random orders of "
                                         r"policy='random'; policy='importance' is deterministic"):
        cbm.intervention_curve(policy="importance", n_trials=3, **common)
    ordered = cbm.intervention_curve(policy="importance", **common)
    assert ordered.accuracies.shape == (1, 4)
    default = cbm.intervention_curve(**common)      # random: 5 orders drawn with seed 0
    np.testing.assert_array_equal(default.accuracies,
                                  cbm.intervention_curve(n_trials=5, seed=0, **common).accuracies)
    assert default.accuracies.shape == (5, 4)


# ---------------------------------------------------------------------------------------------
# Finding 6: meta-device data (before: "Tensor.item() cannot be called on meta tensors")
# ---------------------------------------------------------------------------------------------

def test_train_cbm_refuses_meta_tensors_naming_the_column():
    x, c, y = _toy()
    model = ConceptBottleneckModel(nn.Linear(12, 5), 5, 3)
    for data, name in (((x.to("meta"), c, y), r"train_data\[0\] \(x\)"),
                       ((x, c.to("meta"), y), r"train_data\[1\] \(concepts\)"),
                       ((x, c, y.to("meta")), r"train_data\[2\] \(labels\)")):
        with pytest.raises(ValueError, match=rf"^`{name}` is on the 'meta' device, which holds "
                                             rf"shapes but no data"):
            train_cbm(model, data, epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"^`x` is on the 'meta' device"):  # a bare input
        intervene(model, x.to("meta"), c, torch.ones(5, dtype=torch.bool))


# ---------------------------------------------------------------------------------------------
# Finding 7: concept_class_weights of something that is no model (before: AttributeError)
# ---------------------------------------------------------------------------------------------

def test_concept_class_weights_refuse_what_is_no_cbm(trained):
    model, _ = trained
    with pytest.raises(TypeError, match=r"^`model` must be a ConceptBottleneckModel; got str "
                                        r"'model'\.$"):
        concept_class_weights("model")
    np.testing.assert_array_equal(concept_class_weights(model),
                                  model.head.weight.detach().double().numpy())
