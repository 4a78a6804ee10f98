"""Regression tests of a third review of the bottleneck models: the discovered CBM's curve
intervening on concepts without truth, PCBM probabilities, input dtypes, the label-free
projection's step order, ignored validation arguments, tampered CBM files and repeated names."""

import warnings

import numpy as np
import pytest
import torch
from _forge import forge, set_meta
from _shared import FakeClip
from _shared import small_cbm_data as _cbm_data
from sklearn.linear_model import SGDClassifier
from torch import nn
from torch.utils.data import TensorDataset

import conceptkit.bottleneck._label_free as label_free_module
from conceptkit.bottleneck import (
    CAVBank,
    ConceptBottleneckModel,
    DiscoveredCBM,
    LabelFreeCBM,
    PosthocCBM,
    evaluate_cbm,
    intervene,
    intervention_curve,
    train_cbm,
)
from conceptkit.bottleneck._label_free import cubed_cosine_similarity
from conceptkit.concepts import NMF, bank_from_activations
from conceptkit.extraction import Provenance
from conceptkit.io import FormatError

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


# -- label-free fixtures (as in the first review's tests; test modules do not import each other) --
CONCEPTS = ["red", "round", "furry", "shiny"]


def label_free_data(classes=("cat", "ball")):
    clip = FakeClip()
    for word in list(classes) + CONCEPTS:
        clip.encode_text([word])
    g = torch.Generator().manual_seed(0)
    pres = (torch.rand(200, 4, generator=g) > 0.5).float()
    y = ((pres[:, 0] + pres[:, 1] > 1) | (pres[:, 2] > 0.5)).long()
    img = pres @ clip.P[2:6] + 0.1 * torch.randn(200, 16, generator=g)
    feats = torch.cat([pres, torch.randn(200, 4, generator=g)], 1)
    return clip, feats, img, y


def fit_label_free(class_names=("cat", "ball"), **kwargs):
    kwargs.setdefault("proj_steps", 60)  # short: these tests are not about the projection's fit
    clip, f, img, y = label_free_data(class_names)
    model = LabelFreeCBM(nn.Identity(), clip, CONCEPTS, list(class_names), seed=0,
                         progress=False, clip_cutoff=0.0, interpretability_cutoff=0.0, **kwargs)
    return model.fit_from_embeddings(f[:150], img[:150], y[:150], f[150:], img[150:], y[150:])


# -- M1: DiscoveredCBM.intervention_curve only sets concepts that have a true value ---------------
@pytest.fixture(scope="module")
def discovered():
    g = torch.Generator().manual_seed(0)
    acts = torch.rand(80, 5, 3, 3, generator=g)
    rows = acts.permute(0, 2, 3, 1).reshape(-1, 5)
    prov = Provenance("position", np.repeat(np.arange(80), 9), np.zeros((720, 4)), (3, 3),
                      cells=np.zeros((720, 2)), grid=(3, 3))
    bank = bank_from_activations(NMF(n_concepts=3, random_state=0), rows, prov, layer="l",
                                 keep_activations=False)
    labels = (acts[:, 0].mean((1, 2)) > acts[:, 1].mean((1, 2))).long()
    cbm = DiscoveredCBM(bank, names=["p", "q", "r"], progress=False).fit(activations=acts,
                                                                          labels=labels)
    presence = (torch.rand(80, 2, generator=g) > 0.5).float()   # truth for parts "p", "q" only
    return cbm, acts, labels, presence


def _accuracy(out, labels):
    return float((out.class_logits.argmax(1) == labels).float().mean())


def test_discovered_curve_takes_the_true_concepts_pair_and_skips_concepts_without_truth(discovered):
    cbm, acts, labels, presence = discovered
    pair = cbm.true_concepts(presence, ["p", "q"])
    values, mask = pair
    assert mask.tolist() == [True, True, False]
    curve = cbm.intervention_curve(activations=acts, concept_values=pair, labels=labels,
                                   n_trials=2)
    assert curve.groups == ((0,), (1,))                   # "r" has no truth: never set
    full = cbm.intervene(activations=acts, concept_values=values, mask=mask)
    assert curve.accuracy_mean[-1] == pytest.approx(_accuracy(full, labels))
    assert curve.accuracy_mean[0] == pytest.approx(
        float((cbm.predict(activations=acts) == labels).float().mean()))
    # the same with mask=, and intervene takes the pair too
    again = cbm.intervention_curve(activations=acts, concept_values=values, mask=mask,
                                   labels=labels, n_trials=2)
    np.testing.assert_array_equal(again.accuracies, curve.accuracies)
    torch.testing.assert_close(cbm.intervene(activations=acts, concept_values=pair).class_logits,
                               full.class_logits)


def test_discovered_curve_refuses_a_call_that_cannot_tell_unknown_from_absent(discovered):
    cbm, acts, labels, presence = discovered
    values, mask = cbm.true_concepts(presence, ["p", "q"])
    with pytest.raises(TypeError, match=r"`mask` is required \(or `groups`\)"):
        cbm.intervention_curve(activations=acts, concept_values=values, labels=labels)
    with pytest.raises(ValueError, match=r"`groups` hold concept\(s\) \[2\] that have no true value"):
        cbm.intervention_curve(activations=acts, concept_values=(values, mask), labels=labels,
                               groups=[[0], [2]])
    with pytest.raises(TypeError, match="pass the mask once"):
        cbm.intervention_curve(activations=acts, concept_values=(values, mask), mask=mask,
                               labels=labels)
    with pytest.raises(ValueError, match="False everywhere"):
        cbm.intervention_curve(activations=acts, concept_values=values, labels=labels,
                               mask=torch.zeros(3, dtype=torch.bool))
    # values alone with explicit groups keep their meaning: the groups say what is set
    curve = cbm.intervention_curve(activations=acts, concept_values=values, labels=labels,
                                   groups=[[0], [1]], n_trials=2)
    assert curve.accuracy_mean[-1] == pytest.approx(
        _accuracy(cbm.intervene(activations=acts, concept_values=values, mask=mask), labels))


def test_discovered_curve_with_a_per_image_mask_sets_only_the_known_entries(discovered):
    cbm, acts, labels, presence = discovered
    values, _ = cbm.true_concepts(presence, ["p", "q"])
    mask = torch.zeros(80, 3, dtype=torch.bool)
    mask[:40, 0] = True                                    # "p" known on half the images
    mask[:, 1] = True
    curve = cbm.intervention_curve(activations=acts, concept_values=values, mask=mask,
                                   labels=labels, policy="importance")
    assert curve.groups == ((0,), (1,))
    full = cbm.intervene(activations=acts, concept_values=values, mask=mask)
    assert curve.accuracy_mean[-1] == pytest.approx(_accuracy(full, labels))


# -- M2: PosthocCBM.predict_proba is the reference head's ------------------------------------------
def _posthoc_data(n_classes, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, 300)
    emb = rng.normal(size=(300, 20)) + np.eye(n_classes, 20)[y] * 2
    bank = CAVBank(rng.normal(size=(8, 20)), rng.normal(size=8), [f"c{i}" for i in range(8)])
    return bank, emb, y


@pytest.mark.parametrize("n_classes", [2, 4])
def test_posthoc_probabilities_are_those_of_the_sgd_head(n_classes, tmp_path):
    bank, emb, y = _posthoc_data(n_classes)
    model = PosthocCBM(bank, alpha=1e-3, seed=0, progress=False).fit(emb, y)
    margins = bank.margins(emb)
    Z = (margins - margins.mean(0)) / margins.std(0)
    reference = SGDClassifier(loss="log_loss", penalty="elasticnet", alpha=1e-3, l1_ratio=0.99,
                              max_iter=10000, random_state=0).fit(Z, y)
    np.testing.assert_allclose(model.predict_proba(emb), reference.predict_proba(Z),
                               rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(model.predict(emb), reference.predict(Z))
    loaded = PosthocCBM.load(model.save(tmp_path / "ph.safetensors"))
    np.testing.assert_allclose(loaded.predict_proba(emb), reference.predict_proba(Z),
                               rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("n_classes", [2, 4])
def test_posthoc_hybrid_probabilities_are_the_softmax_of_its_logits(n_classes):
    bank, emb, y = _posthoc_data(n_classes)
    model = PosthocCBM(bank, alpha=1e-3, residual=True, residual_epochs=2, seed=0,
                       progress=False).fit(emb, y)
    expected = torch.softmax(torch.as_tensor(model.decision_function(emb)), dim=1).numpy()
    np.testing.assert_allclose(model.predict_proba(emb), expected, rtol=1e-9, atol=1e-12)


# -- M3: one dtype rule for inputs, in both data forms and every entry point -----------------------
def _cbm(bottleneck="logits"):
    torch.manual_seed(0)
    return ConceptBottleneckModel(nn.Linear(10, 6), 6, 3, bottleneck=bottleneck)


def _fit(data):
    model = _cbm()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        history = train_cbm(model, data, epochs=3, seed=0, progress=False)
    return model, history


@pytest.mark.parametrize("form", ["tuple", "dataset"])
def test_float64_inputs_train_as_their_float32_values(form):
    x, c, y = _cbm_data()
    make = (lambda *t: t) if form == "tuple" else TensorDataset
    single, history = _fit(make(x, c, y))
    double, history64 = _fit(make(x.double(), c, y))
    assert history64.accuracies == history.accuracies
    for a, b in zip(single.state_dict().values(), double.state_dict().values()):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("form", ["tuple", "dataset"])
def test_integer_inputs_are_refused_in_both_forms(form):
    x, c, y = _cbm_data()
    pixels = (x.abs() * 50).to(torch.uint8)
    data = (pixels, c, y) if form == "tuple" else TensorDataset(pixels, c, y)
    with pytest.raises(TypeError, match=r"`train_data.* must be floating point .*got dtype "
                                        r"torch.uint8.*x.float\(\) / 255"):
        train_cbm(_cbm(), data, epochs=1, seed=0, progress=False)


def test_every_evaluation_entry_point_casts_float64_and_refuses_integers():
    model, _ = _fit(_cbm_data())
    x, c, y = _cbm_data(60, seed=3)
    x64 = x.double()
    for data32, data64 in (((x, c, y), (x64, c, y)),
                           (TensorDataset(x, c, y), TensorDataset(x64, c, y))):
        assert evaluate_cbm(model, data64).task_accuracy == evaluate_cbm(model, data32).task_accuracy
        np.testing.assert_array_equal(intervention_curve(model, data64, n_trials=2).accuracies,
                                      intervention_curve(model, data32, n_trials=2).accuracies)
    for a, b in zip(model.predict_all(x64), model.predict_all(x)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    mask = torch.ones(6, dtype=torch.bool)
    torch.testing.assert_close(intervene(model, x64, c, mask).class_logits,
                               intervene(model, x, c, mask).class_logits, atol=0, rtol=0)
    ints = x.round().to(torch.int64)
    for call in (lambda: evaluate_cbm(model, (ints, c, y)),
                 lambda: evaluate_cbm(model, TensorDataset(ints, c, y)),
                 lambda: intervention_curve(model, (ints, c, y)),
                 lambda: model.predict_all(ints),
                 lambda: intervene(model, ints, c, mask)):
        with pytest.raises(TypeError, match="must be floating point"):
            call()


def test_a_float64_model_reads_float32_inputs():
    model, _ = _fit(_cbm_data())
    x = _cbm_data(30, seed=4)[0]
    expected = model.predict_all(x.double().float()).class_logits
    model.double()
    torch.testing.assert_close(model.predict_all(x).class_logits.float(), expected,
                               atol=1e-5, rtol=1e-5)


# -- L1: the label-free projection updates, then validates, and keeps the best -------------------
def _projection_problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(120, 8, generator=g)
    W = torch.randn(5, 8, generator=g)
    T = X @ W.T + 0.5 * torch.randn(120, 5, generator=g)
    return X[:80], T[:80], X[80:], T[80:]


def _reference_projection(X, T, X_val, T_val, steps, val_every, lr=1e-3, seed=0):
    """The reference's loop: update, then validate at step 0, every val_every-th and the last;
    the first validation is kept, then any better one; stop at the first worsening."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layer = nn.Linear(X.shape[1], T.shape[1], bias=False)
    opt = torch.optim.Adam(layer.parameters(), lr=lr)
    best_loss, best_weight, best_step = None, None, None
    for i in range(steps):
        opt.zero_grad()
        loss = -cubed_cosine_similarity(T, layer(X)).mean()
        loss.backward()
        opt.step()
        if i % val_every == 0 or i == steps - 1:
            with torch.no_grad():
                val_loss = float(-cubed_cosine_similarity(T_val, layer(X_val)).mean())
            if i == 0 or val_loss < best_loss:
                best_loss, best_weight, best_step = val_loss, layer.weight.detach().clone(), i
            else:
                break
    return best_weight, best_step


@pytest.mark.parametrize("steps, val_every", [(1, 50), (2, 50), (60, 25), (80, 7)])
def test_label_free_projection_follows_the_reference_order(steps, val_every):
    X, T, X_val, T_val = _projection_problem()
    model = LabelFreeCBM(nn.Identity(), None, ["a"], ["x", "y"], proj_steps=steps,
                         val_every=val_every, seed=0, progress=False)
    weight, count = model._train_projection(X, T, X_val, T_val)
    expected, best_step = _reference_projection(X, T, X_val, T_val, steps, val_every)
    torch.testing.assert_close(weight, expected, atol=0, rtol=0)
    assert count == best_step + 1                     # a count of updates, not the last index


def test_label_free_proj_steps_is_a_count_and_one_step_trains():
    model = fit_label_free(proj_steps=1)
    assert model.proj_steps_ == 1
    init = model.projection_.clone()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        untrained = nn.Linear(8, 4, bias=False).weight.detach()
    kept = [CONCEPTS.index(c) for c in model.concepts_]
    assert not torch.equal(init, untrained[kept])
    many = fit_label_free(proj_steps=40, val_every=1000)
    assert many.proj_steps_ in (1, 40)                # validated after update 1 and update 40


# -- L2: a validation share that would be ignored is an error --------------------------------------
def test_train_cbm_refuses_val_fraction_with_val_data():
    x, c, y = _cbm_data()
    val = _cbm_data(60, seed=1)
    with pytest.raises(ValueError, match=r"`val_fraction`=0.5 .* but `val_data` was given, so it "
                                         r"would be ignored"):
        train_cbm(_cbm(), (x, c, y), val, val_fraction=0.5, epochs=1, seed=0, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        given = train_cbm(_cbm(), (x, c, y), val, epochs=1, seed=0, progress=False)
        split = train_cbm(_cbm(), (x, c, y), epochs=1, seed=0, progress=False)
        quarter = train_cbm(_cbm(), (x, c, y), val_fraction=0.25, epochs=1, seed=0, progress=False)
    assert (given.n_train, given.n_val, given.val_source) == (120, 60, "given")
    assert (split.n_train, split.n_val, split.val_source) == (96, 24, "split")   # default 0.2
    assert (quarter.n_train, quarter.n_val) == (90, 30)


class _PixelClip:
    """Image embedding: the first 16 values of the image; text i: the i-th axis."""

    def encode_image(self, images):
        return images.flatten(1)[:, :16]

    def encode_text(self, texts):
        return torch.eye(16)[[hash(t) % 16 for t in texts]]


def test_label_free_refuses_val_fraction_with_val_images():
    g = torch.Generator().manual_seed(0)
    images, labels = torch.rand(40, 1, 4, 4, generator=g), torch.arange(40) % 2
    model = LabelFreeCBM(nn.Flatten(), _PixelClip(), ["a", "b"], ["x", "y"], val_fraction=0.3,
                         progress=False)
    with pytest.raises(ValueError, match=r"`val_fraction`=0.3 .* but `val_images` were given, so "
                                         r"it would be ignored"):
        model.fit(images[:30], labels[:30], images[30:], labels[30:])
    with pytest.raises(ValueError, match="`val_labels` was given without `val_images`"):
        LabelFreeCBM(nn.Flatten(), _PixelClip(), ["a", "b"], ["x", "y"],
                     progress=False).fit(images, labels, None, labels)


def test_label_free_val_fraction_defaults_to_a_fifth_and_old_files_load(tmp_path):
    assert LabelFreeCBM(nn.Identity(), None, ["a"], ["x", "y"]).val_fraction is None
    assert label_free_module.DEFAULT_VAL_FRACTION == 0.2
    model = fit_label_free()
    path = model.save(tmp_path / "lf.safetensors")
    old = forge(path, tmp_path / "old.safetensors", set_meta("params", "val_fraction", value=0.2))
    assert LabelFreeCBM.load(old, nn.Identity()).val_fraction is None
    kept = forge(path, tmp_path / "kept.safetensors", set_meta("params", "val_fraction", value=0.3))
    assert LabelFreeCBM.load(kept, nn.Identity()).val_fraction == 0.3


# -- L3: tampered CBM files ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def calibrated_file(tmp_path_factory):
    model, _ = _fit(_cbm_data())
    assert bool((model.intervention_low < model.intervention_high).all())
    return model.save(tmp_path_factory.mktemp("cbm3") / "cbm.safetensors")


def _swap(info, tensors):
    tensors["intervention_low"], tensors["intervention_high"] = (
        tensors["intervention_high"].clone(), tensors["intervention_low"].clone())


def _calibrated_uint8(info, tensors):
    tensors["calibrated"] = torch.tensor(7, dtype=torch.uint8)


def _int_head(info, tensors):  # load_state_dict cast it to floats without a word
    tensors["head.weight"] = (tensors["head.weight"] * 100).to(torch.int32)


@pytest.mark.parametrize("edit, match", [
    (_swap, r"intervention_low above intervention_high for concept\(s\) \[0, 1"),
    (set_meta("trained_mode", value="banana"), "trained_mode='banana'"),
    (set_meta("trained_mode", value=3), "trained_mode=3"),
    (_calibrated_uint8, "calibrated as torch.uint8 7"),
    (_int_head, "stores head.weight as torch.int32, where the model holds floating-point"),
])
def test_cbm_file_with_impossible_state_is_a_format_error(calibrated_file, tmp_path, edit, match):
    bad = forge(calibrated_file, tmp_path / "bad.safetensors", edit)
    with pytest.raises(FormatError, match=match) as err:
        ConceptBottleneckModel.load(bad)
    assert "bad.safetensors" in str(err.value)


def test_valid_cbm_files_still_load(calibrated_file, tmp_path):
    loaded = ConceptBottleneckModel.load(calibrated_file)
    assert loaded.trained_mode == "joint" and bool(loaded.calibrated)
    untrained = forge(calibrated_file, tmp_path / "none.safetensors",
                      set_meta("trained_mode", value=None))
    assert ConceptBottleneckModel.load(untrained).trained_mode is None
    fresh = ConceptBottleneckModel(nn.Linear(10, 6), 6, 3, bottleneck="logits")
    assert not bool(ConceptBottleneckModel.load(fresh.save(tmp_path / "f.safetensors")).calibrated)


# -- L4 / L5: repeated class names, docstrings -----------------------------------------------------
def test_label_free_warns_about_repeated_class_names_as_the_cbm_does():
    message = r"`class_names` repeats \['cat'\]: several classes share a name"
    with pytest.warns(UserWarning, match=message):
        fit_label_free(class_names=("cat", "cat"))
    with pytest.warns(UserWarning, match=message):
        ConceptBottleneckModel(nn.Linear(3, 2), 2, 2, class_names=["cat", "cat"])


def test_label_free_docstring_names_l1_ratio_not_alpha():
    doc = label_free_module.__doc__
    assert "α = 0.99" not in doc and "``l1_ratio`` [0.99]" in doc
