"""Post-hoc CBM: CAV concept banks, the sparse SGD head, PCBM-h and save/load."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import SGDClassifier
from sklearn.svm import SVC

from conceptkit.bottleneck import CAVBank, PosthocCBM
from conceptkit.datasets import make_concept_dataset, reference_model
from conceptkit.extraction import split_model
from conceptkit.io import FormatError

K, DIM = 6, 20


def synthetic(n, seed, noise=0.5):
    """Three classes; class c is caused by concepts 2c and 2c+1 (plus random extra concepts)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    concepts = (rng.random((n, K)) < 0.15).astype(float)
    concepts[np.arange(n), 2 * labels] = 1
    concepts[np.arange(n), 2 * labels + 1] = 1
    concepts[np.arange(n), 2 * ((labels + 1) % 3)] = 0  # no other class's pair is complete
    mixing = np.random.default_rng(77).normal(size=(K, DIM))
    return concepts @ mixing + noise * rng.normal(size=(n, DIM)), concepts, labels


NAMES = [f"concept {j}" for j in range(K)]


def test_margins_are_signed_distances_to_the_hyperplanes():
    rng = np.random.default_rng(0)
    vectors, intercepts, emb = rng.normal(size=(3, 5)), rng.normal(size=3), rng.normal(size=(4, 5))
    bank = CAVBank(vectors, intercepts, ["a", "b", "c"])
    expected = [[(e @ v + b) / np.linalg.norm(v) for v, b in zip(vectors, intercepts)] for e in emb]
    np.testing.assert_allclose(bank.margins(emb), expected)
    with pytest.raises(ValueError, match="5 columns"):
        bank.margins(rng.normal(size=(2, 4)))
    with pytest.raises(ValueError, match="zero"):
        CAVBank(np.zeros((1, 5)), [0.0], ["z"])
    with pytest.raises(ValueError, match="names"):
        CAVBank(vectors, intercepts, ["a"])


def test_cavs_are_linear_svms_on_the_examples():
    x, concepts, _ = synthetic(120, 0)
    pos, neg = x[concepts[:, 0] == 1], x[concepts[:, 0] == 0]
    # n_samples above the counts: every example is used, so the SVM is fully determined
    bank = CAVBank.from_examples({"c0": pos}, neg, C=0.1, n_samples=1000, seed=0)
    svm = SVC(kernel="linear", C=0.1).fit(np.concatenate([pos, neg]),
                                          np.r_[np.ones(len(pos)), np.zeros(len(neg))])
    # same problem; libsvm stops at tol=1e-3, and the example order (shuffled by the bank)
    # moves the solution within that tolerance
    cosine = bank.vectors[0] @ svm.coef_[0] / np.linalg.norm(bank.vectors[0]) / np.linalg.norm(svm.coef_[0])
    assert cosine > 0.9999
    np.testing.assert_allclose(bank.margins(x)[:, 0], (x @ svm.coef_[0] + svm.intercept_[0])
                               / np.linalg.norm(svm.coef_[0]), atol=2e-3)
    assert np.isnan(bank.accuracy[0])  # nothing held out


def test_cavs_from_concept_labels_separate_the_concepts():
    x, concepts, _ = synthetic(600, 1)
    bank = CAVBank.from_concept_labels(x, concepts, NAMES, n_samples=50, seed=0)
    assert bank.names == NAMES
    assert bank.accuracy.min() >= 0.9  # held-out accuracy of each SVM
    x_test, c_test, _ = synthetic(300, 2)
    predicted = bank.margins(x_test) > 0
    assert (predicted == (c_test == 1)).mean() >= 0.9
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        CAVBank.from_concept_labels(x, concepts[:, :3], NAMES)


@pytest.fixture(scope="module")
def fitted():
    x, concepts, labels = synthetic(900, 3)
    bank = CAVBank.from_concept_labels(x, concepts, NAMES, n_samples=100, seed=0)
    model = PosthocCBM(bank, alpha=1e-2, seed=0, progress=False).fit(x, labels)
    return model, bank, (x, labels)


def test_sparse_head_is_sklearns_sgd_on_standardised_margins(fitted):
    model, bank, (x, labels) = fitted
    margins = bank.margins(x)
    z = (margins - margins.mean(0)) / margins.std(0)
    sgd = SGDClassifier(loss="log_loss", penalty="elasticnet", alpha=1e-2, l1_ratio=0.99,
                        max_iter=10000, random_state=0).fit(z, labels)
    np.testing.assert_allclose(model.coef_, sgd.coef_)
    np.testing.assert_allclose(model.intercept_, sgd.intercept_)
    np.testing.assert_array_equal(model.predict(x), sgd.predict(z))


def test_posthoc_cbm_finds_the_causal_concepts(fitted):
    model, _, _ = fitted
    x_test, _, y_test = synthetic(300, 4)
    assert (model.predict(x_test) == y_test).mean() >= 0.95
    for c in range(3):
        top = {name for name, _ in model.top_concepts(c, 2)}
        assert top == {f"concept {2 * c}", f"concept {2 * c + 1}"}
    proba = model.predict_proba(x_test)
    np.testing.assert_allclose(proba.sum(1), 1.0)


def test_hybrid_residual_recovers_what_the_bank_misses():
    """The bank only has class 0's concepts: PCBM cannot tell classes 1 and 2 apart, PCBM-h can."""
    x, concepts, labels = synthetic(900, 5)
    partial = CAVBank.from_concept_labels(x, concepts[:, :2], NAMES[:2], n_samples=100, seed=0)
    pcbm = PosthocCBM(partial, alpha=1e-2, seed=0, progress=False).fit(x, labels)
    hybrid = PosthocCBM(partial, alpha=1e-2, residual=True, seed=0, progress=False).fit(x, labels)
    x_test, _, y_test = synthetic(400, 6)
    plain_acc = (pcbm.predict(x_test) == y_test).mean()
    hybrid_acc = (hybrid.predict(x_test) == y_test).mean()
    assert plain_acc < 0.85
    assert hybrid_acc >= 0.95
    # only the residual is trained: the bottleneck head is PCBM's
    np.testing.assert_allclose(hybrid.coef_, pcbm.coef_)
    logits = hybrid.decision_function(x_test)
    expected = pcbm.decision_function(x_test) + x_test @ hybrid.residual_weight_.T + hybrid.residual_bias_
    np.testing.assert_allclose(logits, expected, rtol=1e-10)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_save_load_round_trip(tmp_path, n_classes):
    x, concepts, labels = synthetic(600, 7)
    keep = labels < n_classes
    x, concepts, labels = x[keep], concepts[keep], labels[keep]
    bank = CAVBank.from_concept_labels(x, concepts, NAMES, n_samples=60, seed=0)
    model = PosthocCBM(bank, alpha=1e-3, residual=True, residual_epochs=3, seed=0,
                       progress=False).fit(x, labels)
    loaded = PosthocCBM.load(model.save(tmp_path / "pcbm.safetensors"))
    np.testing.assert_allclose(loaded.decision_function(x), model.decision_function(x))
    z = model._head_inputs(x)
    np.testing.assert_array_equal(loaded.head_.predict(z), model.head_.predict(z))
    np.testing.assert_allclose(loaded.head_.decision_function(z), model.head_.decision_function(z))
    assert loaded.concept_bank.names == NAMES
    np.testing.assert_allclose(loaded.concept_bank.accuracy, bank.accuracy)
    with pytest.raises(FormatError):
        from conceptkit.bottleneck import LabelFreeCBM

        LabelFreeCBM.load(tmp_path / "pcbm.safetensors", backbone=torch.nn.Identity())


def test_images_need_a_backbone_and_unfitted_models_refuse(fitted):
    model, bank, _ = fitted
    with pytest.raises(ValueError, match="backbone"):
        model.predict(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match="not fitted"):
        PosthocCBM(bank).predict(np.zeros((1, DIM)))
    with pytest.raises(TypeError, match="CAVBank"):
        PosthocCBM("bank").fit(np.zeros((4, DIM)), [0, 1, 0, 1])


def test_a_head_that_can_only_predict_one_class_is_refused_or_flagged(fitted):
    _, bank, _ = fitted
    x, _, y = synthetic(60, seed=5)
    with pytest.raises(ValueError, match="`y` holds one class"):  # sklearn's error before
        PosthocCBM(bank).fit(x, np.zeros_like(y))
    with pytest.warns(UserWarning, match="zeroed every concept weight"):
        PosthocCBM(bank, alpha=10.0).fit(x, y)


def test_cavs_from_labels_refuse_nan_out_of_range_and_repeated_names():
    x, concepts, _ = synthetic(60, seed=6)
    for bad_concepts, names, match in ((np.where(concepts == 1, np.nan, concepts), NAMES, "NaN"),
                                       (concepts * 3, NAMES, "0/1 labels"),
                                       (concepts, NAMES[:-1] + NAMES[:1], "unique")):
        with pytest.raises(ValueError, match=match):
            CAVBank.from_concept_labels(x, bad_concepts, names, n_samples=10, seed=0)


def test_posthoc_cbm_on_the_reference_dataset():
    """CAVs from the frozen reference CNN's pooled features, with images passed through it."""
    backbone, _ = split_model(reference_model(), "flatten")
    train = make_concept_dataset(60, seed=0, split="train", spurious=False)
    test = make_concept_dataset(40, seed=0, split="test")
    with torch.no_grad():
        embeddings = backbone(train.images)
    bank = CAVBank.from_concept_labels(embeddings, train.concepts, list(train.concept_names),
                                       n_samples=50, seed=0)
    causal = sorted({j for pair in train.class_concepts for j in pair})
    assert bank.accuracy[causal].min() >= 0.95  # the CNN encodes every causal concept linearly
    model = PosthocCBM(bank, backbone, alpha=1e-2, seed=0, progress=False).fit(train.images,
                                                                           train.labels)
    assert (model.predict(test.images) == test.labels.numpy()).mean() >= 0.95
