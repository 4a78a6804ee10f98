"""DiscoveredCBM: discover (CRAFT per class), name (dissect), then bottleneck, on the shapes world."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import conceptkit
from conceptkit.bottleneck import DiscoveredCBM
from conceptkit.datasets import make_concept_dataset, reference_model
from conceptkit.io import FormatError

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module")
def setup():
    model = reference_model()
    discover = make_concept_dataset(30, seed=0, split="train")
    train = make_concept_dataset(40, seed=1, split="train", spurious=False)
    test = make_concept_dataset(30, seed=0, split="test", spurious=False)
    probe = make_concept_dataset(6, seed=2, split="val", spurious=False)
    manager = conceptkit.ConceptManager(model, "block4", n_concepts=10, seed=0, progress=False,
                                        importance="gradient_input")
    manager.fit(discover.images, discover.labels)
    for cc in manager.classes_.values():   # named over every probe image: the CBM reads them all
        cc.name_concepts("dissect", probe, class_images_only=False)
    explainer = conceptkit.ConceptExplainer(model, "block4", progress=False)
    acts = {"train": explainer.activations(train.images), "test": explainer.activations(test.images)}
    cbm = DiscoveredCBM(manager, nnz_per_class=10, progress=False)
    cbm.fit(activations=acts["train"], labels=train.labels)
    return model, manager, cbm, train, test, acts


def test_accuracy_within_two_points_of_the_reference_cnn(setup):
    model, manager, cbm, _, test, acts = setup
    assert cbm.n_concepts == 60                                     # 10 concepts per class
    assert cbm.nnz_per_class_.max() <= 10
    with torch.no_grad():
        reference = float((model(test.images).argmax(1) == test.labels).float().mean())
    accuracy = float((cbm.predict(activations=acts["test"]) == test.labels).float().mean())
    assert accuracy >= reference - 0.02, (accuracy, reference)
    # the images path gives the same predictions as the activations path
    assert torch.equal(cbm.predict(test.images[:40]), cbm.predict(activations=acts["test"][:40]))
    # names come from the explanations' dissect names
    named = [n for n in cbm.names_ if not n.startswith("concept ")]
    assert len(named) >= 30 and set(named) <= set(test.concept_names)
    top = [name for name, _ in cbm.top_concepts(0, 10)]
    assert set(top) & {"red disk", "blue square"}


def test_interventions_on_the_named_concepts_raise_accuracy(setup):
    """On noisy images (the CBM errs), setting the concepts whose name is trusted (AUC >= 0.9) to
    whether the image shows that part raises accuracy, and more concepts raise it more."""
    model, manager, cbm, _, test, _ = setup
    noisy = (test.images + 0.2 * torch.randn(test.images.shape,
                                             generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    acts = conceptkit.ConceptExplainer(model, "block4", progress=False).activations(noisy)
    values, mask = cbm.true_concepts(test.concepts, list(test.concept_names), min_trust=0.9)
    _, every = cbm.true_concepts(test.concepts, list(test.concept_names))
    assert 20 <= int(mask.sum()) < int(every.sum())
    assert (cbm.trust_[mask.numpy()] >= 0.9).all()
    before = float((cbm.predict(activations=acts) == test.labels).float().mean())
    out = cbm.intervene(activations=acts, concept_values=values, mask=mask)
    after = float((out.class_logits.argmax(1) == test.labels).float().mean())
    assert after >= before + 0.1, (before, after)
    untouched = ~mask
    torch.testing.assert_close(out.concepts[:, untouched], out.concept_logits[:, untouched])
    curve = cbm.intervention_curve(activations=acts, concept_values=values, labels=test.labels,
                                   groups=[[j] for j in np.flatnonzero(mask.numpy())], n_trials=3)
    assert curve.accuracy_mean[0] == pytest.approx(before)
    assert curve.accuracy_mean[-1] == pytest.approx(after)
    assert curve.accuracy_mean[-1] > curve.accuracy_mean[len(curve.accuracy_mean) // 4] \
        > curve.accuracy_mean[0]
    ordered = cbm.intervention_curve(activations=acts, concept_values=values, labels=test.labels,
                                     groups=[[j] for j in np.flatnonzero(mask.numpy())],
                                     policy="importance")
    assert ordered.area >= curve.area - 0.02
    # what would broadcast into a curve is refused, naming the argument
    labels = test.labels
    for kwargs, match in (({"labels": labels[:1]}, "`labels` must hold one class per image"),
                          ({"labels": labels + 6}, "`labels` must be class indices"),
                          ({"concept_values": values[:1]}, "`concept_values` must have shape"),
                          ({"concept_values": values[:, :1]}, "`concept_values` must have shape"),
                          ({"groups": [[0, 1], [1, 2]]}, "`groups` must not overlap"),
                          ({"groups": [[]]}, "non-empty")):
        call = {"activations": acts, "concept_values": values, "mask": mask, "labels": labels,
                **kwargs}
        with pytest.raises((ValueError, TypeError), match=match):
            cbm.intervention_curve(**call)
    with pytest.raises(TypeError, match="`mask` is required"):
        cbm.intervene(activations=acts, concept_values=values)
    with pytest.raises(TypeError, match=r"`mask` is required \(or `groups`\)"):
        cbm.intervention_curve(activations=acts, concept_values=values, labels=labels)


def test_save_and_conceptkit_load(setup, tmp_path):
    model, _, cbm, _, test, acts = setup
    path = cbm.save(tmp_path / "cbm.safetensors")
    back = conceptkit.load(path)
    assert isinstance(back, DiscoveredCBM) and back.names_ == cbm.names_
    np.testing.assert_array_equal(back.trust_, cbm.trust_)
    torch.testing.assert_close(back.decision_function(activations=acts["test"]),
                               cbm.decision_function(activations=acts["test"]))
    with pytest.raises(ValueError, match="model"):
        back.predict(test.images[:2])
    back.attach(model)
    assert torch.equal(back.predict(test.images[:20]), cbm.predict(test.images[:20]))
    raw = bytearray(path.read_bytes())
    raw[-20:] = b"\x00" * 20
    (tmp_path / "bad.safetensors").write_bytes(raw[:-40])
    with pytest.raises(FormatError):
        conceptkit.load(tmp_path / "bad.safetensors")


def test_a_model_fitted_through_a_preprocess_needs_it_back_after_loading(setup, tmp_path):
    model, manager, _, train, test, acts = setup

    def brighter(x):  # any preprocessing the file cannot hold
        return (x * 1.2).clamp(0, 1)

    cbm = DiscoveredCBM(manager, model, preprocess=brighter, nnz_per_class=5, progress=False)
    cbm.fit(train.images[:60], train.labels[:60])
    path = cbm.save(tmp_path / "pre.safetensors")
    bare = DiscoveredCBM.load(path, model)
    with pytest.raises(ValueError, match="through a `preprocess`"):  # it predicted otherwise
        bare.predict(test.images[:8])
    again = DiscoveredCBM.load(path, model, preprocess=brighter)
    assert torch.equal(again.decision_function(test.images[:8]), cbm.decision_function(test.images[:8]))
    torch.testing.assert_close(bare.decision_function(activations=acts["test"][:8]),
                               cbm.decision_function(activations=acts["test"][:8]))


def test_one_class_and_a_bare_bank(setup):
    _, manager, _, train, test, acts = setup
    cc = manager.classes_[2]
    one = DiscoveredCBM(cc, nnz_per_class=5, progress=False).fit(activations=acts["train"],
                                                                   labels=train.labels)
    assert one.n_concepts == 10 and one.names_ == list(cc.names.labels())  # bare names
    bank = DiscoveredCBM(cc.bank, progress=False).fit(activations=acts["train"],
                                                      labels=train.labels)
    assert bank.names_ == [f"concept {j}" for j in range(10)]
    torch.testing.assert_close(bank.coefficients(activations=acts["test"]),
                               one.coefficients(activations=acts["test"]))


@pytest.mark.parametrize("kwargs, match", [
    ({"concepts": "craft"}, "concepts"),
    ({"pooling": "median"}, "pooling"),
    ({"names": ["a", "b"]}, "names"),
])
def test_bad_arguments_are_named(setup, kwargs, match):
    _, manager, _, train, _, acts = setup
    args = {"concepts": manager, **kwargs}
    with pytest.raises((TypeError, ValueError), match=match):
        DiscoveredCBM(progress=False, **args).fit(activations=acts["train"], labels=train.labels)
    with pytest.raises(ValueError, match="not fitted"):
        DiscoveredCBM(manager).predict(activations=acts["train"])


def test_a_head_that_could_only_come_out_empty_is_refused(setup):
    _, manager, _, train, _, acts = setup
    # l1_ratio 0 gave weights of 1e-12 (a constant predictor); one class gave a trivial head
    with pytest.raises(ValueError, match="`l1_ratio` must be in \\(0, 1\\]"):
        DiscoveredCBM(manager, l1_ratio=0.0, progress=False).fit(activations=acts["train"],
                                                                 labels=train.labels)
    with pytest.raises(ValueError, match="at least two classes"):
        DiscoveredCBM(manager, progress=False).fit(activations=acts["train"],
                                                   labels=torch.ones_like(train.labels))
