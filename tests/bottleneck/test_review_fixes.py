"""Regression tests of a review of the bottleneck models: settings, names and saved files that
were accepted silently (or failed with a raw traceback) before."""

import warnings

import numpy as np
import pytest
import torch
from _forge import forge, set_meta
from _shared import FakeClip

from conceptkit.bottleneck import (
    CAVBank,
    ConceptBottleneckModel,
    DiscoveredCBM,
    LabelFreeCBM,
    PosthocCBM,
    train_cbm,
)
from conceptkit.bottleneck._concept_filter import filter_by_text
from conceptkit.concepts import NMF, bank_from_activations
from conceptkit.extraction import Provenance
from conceptkit.io import FormatError


# -- fixtures -------------------------------------------------------------------------------------
def posthoc_data():
    g = np.random.default_rng(0)
    e = g.normal(size=(200, 6))
    lab = (e[:, :3] > 0).astype(float)
    y = (lab[:, 0] + 2 * lab[:, 1]).astype(int)
    return e, lab, y


@pytest.fixture(scope="module")
def posthoc_file(tmp_path_factory):
    e, lab, y = posthoc_data()
    bank = CAVBank.from_concept_labels(e, lab, ["a", "b", "c"], seed=0)
    model = PosthocCBM(bank, residual=True, residual_epochs=2, seed=0, progress=False).fit(e, y)
    return model.save(tmp_path_factory.mktemp("ph") / "ph.safetensors"), e


def label_free_data(concepts=("red", "round", "furry", "shiny"), classes=("cat", "ball")):
    clip = FakeClip()
    for word in list(classes) + list(dict.fromkeys(concepts)):
        clip.encode_text([word])
    g = torch.Generator().manual_seed(0)
    pres = (torch.rand(200, 4, generator=g) > 0.5).float()
    y = ((pres[:, 0] + pres[:, 1] > 1) | (pres[:, 2] > 0.5)).long()
    k = len(classes)
    img = pres @ clip.P[k:k + 4] + 0.1 * torch.randn(200, 16, generator=g)
    feats = torch.cat([pres, torch.randn(200, 4, generator=g)], 1)
    return clip, feats, img, y


def fit_label_free(concepts=("red", "round", "furry", "shiny"), **kwargs):
    clip, f, img, y = label_free_data(concepts)
    model = LabelFreeCBM(torch.nn.Identity(), clip, list(concepts), ["cat", "ball"], seed=0,
                         progress=False, clip_cutoff=0.0, interpretability_cutoff=0.0, **kwargs)
    return model.fit_from_embeddings(f[:150], img[:150], y[:150], f[150:], img[150:], y[150:]), f


@pytest.fixture(scope="module")
def label_free_file(tmp_path_factory):
    model, feats = fit_label_free()
    return model.save(tmp_path_factory.mktemp("lf") / "lf.safetensors"), model, feats


def discovered_setup():
    g = torch.Generator().manual_seed(0)
    acts = torch.rand(60, 5, 3, 3, generator=g)
    rows = acts.permute(0, 2, 3, 1).reshape(-1, 5)
    prov = Provenance("position", np.repeat(np.arange(60), 9), np.zeros((540, 4)), (3, 3),
                      cells=np.zeros((540, 2)), grid=(3, 3))
    bank = bank_from_activations(NMF(n_concepts=3, random_state=0), rows, prov, layer="l",
                                 keep_activations=False)
    labels = (acts[:, 0].mean((1, 2)) > acts[:, 1].mean((1, 2))).long()
    return bank, acts, labels


@pytest.fixture(scope="module")
def discovered_file(tmp_path_factory):
    bank, acts, labels = discovered_setup()
    model = DiscoveredCBM(bank, names=["p", "q", "r"], progress=False).fit(activations=acts,
                                                                            labels=labels)
    return model.save(tmp_path_factory.mktemp("dc") / "dc.safetensors"), acts


@pytest.fixture(scope="module")
def cbm_file(tmp_path_factory):
    model = ConceptBottleneckModel(torch.nn.Linear(8, 3), 3, 4)
    return model.save(tmp_path_factory.mktemp("cbm") / "cbm.safetensors")


# -- 1: a concept listed twice --------------------------------------------------------------------
def test_text_filter_keeps_the_first_copy_of_a_repeated_concept():
    emb = torch.nn.functional.normalize(torch.tensor([[1., 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0]]),
                                        dim=1)
    cls = torch.nn.functional.normalize(torch.tensor([[0., 0, 1, 0], [0, 0, 0, 1]]), dim=1)
    assert filter_by_text(["red", "red", "round"], ["cat", "ball"], emb, cls) == {}
    # a variant spelling is still a duplicate of the first one
    emb3 = torch.eye(4)[[0, 0, 0, 1]]
    assert filter_by_text(["red", "Red", "red", "round"], ["cat"], emb3, torch.eye(4)[2:3]) == \
        {"Red": "duplicate of 'red'"}


def test_label_free_cbm_keeps_a_repeated_concept_once():
    with pytest.warns(UserWarning, match=r"lists \['red'\] more than once"):
        model, _ = fit_label_free(("red", "round", "red", "furry", "shiny"))
    assert model.concepts_.count("red") == 1
    assert "red" not in model.removed_
    reference, _ = fit_label_free()  # the same fit without the copy
    assert model.concepts_ == reference.concepts_
    torch.testing.assert_close(model.projection_, reference.projection_)


# -- 2: saved settings that the file's own load refused -------------------------------------------
@pytest.mark.parametrize("kwargs, name", [(dict(batch_size=0), "batch_size"),
                                          (dict(residual_epochs=0), "residual_epochs"),
                                          (dict(residual_lr=0.0), "residual_lr"),
                                          (dict(residual_penalty=-1.0), "residual_penalty")])
def test_posthoc_settings_that_could_not_be_loaded_are_refused_at_fit(kwargs, name):
    e, lab, y = posthoc_data()
    bank = CAVBank.from_concept_labels(e, lab, ["a", "b", "c"], seed=0)
    with pytest.raises(ValueError, match=f"`{name}`"):
        PosthocCBM(bank, progress=False, **kwargs).fit(e, y)


def test_discovered_batch_size_is_checked_at_fit():
    bank, acts, labels = discovered_setup()
    with pytest.raises(ValueError, match="`batch_size` must be >= 1"):
        DiscoveredCBM(bank, batch_size=0, progress=False).fit(activations=acts, labels=labels)


def test_valid_settings_still_round_trip(tmp_path):
    e, lab, y = posthoc_data()
    bank = CAVBank.from_concept_labels(e, lab, ["a", "b", "c"], seed=0)
    model = PosthocCBM(bank, batch_size=1, residual_epochs=1, standardize=False, seed=0,
                       progress=False).fit(e, y)
    loaded = PosthocCBM.load(model.save(tmp_path / "m.safetensors"))
    np.testing.assert_array_equal(loaded.decision_function(e), model.decision_function(e))
    assert loaded.standardize is False and loaded.batch_size == 1


# -- 3: NaN intercepts ----------------------------------------------------------------------------
def test_cav_bank_refuses_nan_intercepts():
    with pytest.raises(ValueError, match=r"`intercepts` must be finite; entries \[1\]"):
        CAVBank(np.eye(3), [0.0, np.nan, 0.0], ["a", "b", "c"])


def test_posthoc_file_with_a_nan_intercept_is_a_format_error(posthoc_file, tmp_path):
    path, e = posthoc_file
    bad = forge(path, tmp_path / "bad.safetensors",
                lambda info, t: t["bank_intercepts"].__setitem__(0, float("nan")))
    with pytest.raises(FormatError, match="intercepts"):
        PosthocCBM.load(bad)
    assert np.isfinite(PosthocCBM.load(path).decision_function(e)).all()


# -- 4: repeated names ----------------------------------------------------------------------------
def test_repeated_names_are_kept_with_a_warning_and_reports_lose_no_concept(tmp_path):
    """Names may repeat (a naming gives two concepts one name; files written before load):
    a warning names the argument, and the report keys repeated names by their index (its
    metrics.json had kept one entry per name)."""
    with pytest.warns(UserWarning, match=r"`concept_names` repeats \['wing'\]"):
        model = ConceptBottleneckModel(torch.nn.Linear(4, 3), 3, 2,
                                       concept_names=["wing", "beak", "wing"])
    assert model.concept_names == ["wing", "beak", "wing"]
    with pytest.warns(UserWarning, match=r"`names` repeats \['a'\]"):
        CAVBank(np.eye(3), np.zeros(3), ["a", "b", "a"])
    bank, acts, labels = discovered_setup()
    with pytest.warns(UserWarning, match=r"`names` repeats \['p'\]"):
        DiscoveredCBM(bank, names=["p", "q", "p"], progress=False).fit(activations=acts,
                                                                       labels=labels)
    from conceptkit.bottleneck._report import distinct

    assert distinct(["wing", "beak", "wing"]) == ["wing [0]", "beak", "wing [2]"]


def test_a_file_with_repeated_names_loads_as_written(cbm_file, tmp_path):
    old = forge(cbm_file, tmp_path / "old.safetensors",
                set_meta("config", "concept_names", value=["x", "y", "x"]))
    with pytest.warns(UserWarning, match="repeats"):
        assert ConceptBottleneckModel.load(old).concept_names == ["x", "y", "x"]


# -- 6: wrong-typed metadata ----------------------------------------------------------------------
@pytest.mark.parametrize("edit", [
    set_meta("config", "concept_names", value=[None, float("nan"), []]),
    set_meta("config", "class_names", value=[1e15, -1, {}, None]),
    set_meta("config", "class_names", value="abcd"),
    set_meta("encoder", "bias", value="x"),
    set_meta("encoder", "in_features", value=8.0),
    set_meta("encoder_class", value=None),
])
def test_cbm_metadata_of_the_wrong_type_is_a_format_error(cbm_file, tmp_path, edit):
    bad = forge(cbm_file, tmp_path / "bad.safetensors", edit)
    with pytest.raises(FormatError):
        ConceptBottleneckModel.load(bad)


def test_cbm_file_round_trips(cbm_file):
    model = ConceptBottleneckModel.load(cbm_file)
    assert model.concept_names == ["concept_0", "concept_1", "concept_2"]
    assert model.concept_encoder.bias is not None


@pytest.mark.parametrize("key, value", [("residual", "no"), ("residual", 2), ("standardize", "x"),
                                        ("standardize", None), ("residual_lr", "x"),
                                        ("residual_lr", float("nan")), ("residual_lr", 0),
                                        ("residual_penalty", []), ("residual_penalty", -1),
                                        ("residual", False)])
def test_posthoc_params_of_the_wrong_type_are_a_format_error(posthoc_file, tmp_path, key, value):
    path, _ = posthoc_file
    bad = forge(path, tmp_path / "bad.safetensors", set_meta("params", key, value=value))
    with pytest.raises(FormatError, match=key):
        PosthocCBM.load(bad)


@pytest.mark.parametrize("edit", [set_meta("params", value=[]),
                                  set_meta("bank_names", value=[1, 2, 3])])
def test_posthoc_params_and_names_must_have_their_types(posthoc_file, tmp_path, edit):
    path, _ = posthoc_file
    with pytest.raises(FormatError):
        PosthocCBM.load(forge(path, tmp_path / "bad.safetensors", edit))


@pytest.mark.parametrize("edit", [
    set_meta("lam_", value="x"), set_meta("lam_", value=None), set_meta("lam_", value=-1),
    set_meta("params", "max_length", value=None), set_meta("params", "max_length", value=1.5),
    set_meta("params", "template", value=5), set_meta("params", "template", value="{} {}"),
    set_meta("class_names", value=[1, 2]), set_meta("concepts", 0, value=None),
    set_meta("concepts_", 0, value=7), set_meta("removed_", value=[]),
    set_meta("val_accuracy_", value=2.0), set_meta("proj_steps_", value="x"),
    set_meta("path_", 0, "alpha", value=None), set_meta("path_", value={}),
    set_meta("params", value=[]),
])
def test_label_free_metadata_of_the_wrong_type_is_a_format_error(label_free_file, tmp_path, edit):
    path, _, _ = label_free_file
    with pytest.raises(FormatError):
        LabelFreeCBM.load(forge(path, tmp_path / "bad.safetensors", edit), torch.nn.Identity())


@pytest.mark.parametrize("edit", [
    set_meta("names", 0, value=None), set_meta("names", 1, value=float("nan")),
    set_meta("names", value="pqr"), set_meta("layer", value=None), set_meta("layer", value="m"),
    set_meta("path", 0, value=None), set_meta("path", 0, "alpha", value="x"),
    set_meta("path", 0, "nnz_max", value=-1), set_meta("n_classes", value=2.5),
])
def test_discovered_metadata_of_the_wrong_type_is_a_format_error(discovered_file, tmp_path, edit):
    path, _ = discovered_file
    with pytest.raises(FormatError):
        DiscoveredCBM.load(forge(path, tmp_path / "bad.safetensors", edit))


def test_discovered_file_round_trips(discovered_file):
    path, acts = discovered_file
    model = DiscoveredCBM.load(path)
    assert model.names_ == ["p", "q", "r"] and model.layer_ == "l"
    assert model.predict(activations=acts).shape == (60,)


# -- 7: a float16 projection ----------------------------------------------------------------------
def test_label_free_half_precision_arrays_are_read_as_float32(label_free_file, tmp_path):
    path, model, feats = label_free_file

    def halve(info, tensors):
        tensors["projection"] = tensors["projection"].half()
    loaded = LabelFreeCBM.load(forge(path, tmp_path / "half.safetensors", halve),
                               torch.nn.Identity())
    assert loaded.projection_.dtype == torch.float32
    images = feats[:8, :, None, None]
    torch.testing.assert_close(loaded.decision_function(images), model.decision_function(images),
                               atol=1e-2, rtol=1e-2)
    exact = LabelFreeCBM.load(path, torch.nn.Identity())
    torch.testing.assert_close(exact.decision_function(images), model.decision_function(images),
                               atol=0, rtol=0)


def test_label_free_integer_arrays_are_a_format_error(label_free_file, tmp_path):
    path, _, _ = label_free_file

    def to_int(info, tensors):
        tensors["projection"] = tensors["projection"].long()
    with pytest.raises(FormatError, match="projection"):
        LabelFreeCBM.load(forge(path, tmp_path / "int.safetensors", to_int), torch.nn.Identity())


# -- 8: train_cbm on one class --------------------------------------------------------------------
def cbm_data(labels):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(len(labels), 8, generator=g)
    return x, (x[:, :3] > 0).float(), labels


def test_train_cbm_refuses_one_class_labels():
    model = ConceptBottleneckModel(torch.nn.Linear(8, 3), 3, 4)
    with pytest.raises(ValueError, match=r"`train_data` labels hold one class \(0\)"):
        train_cbm(model, cbm_data(torch.zeros(120, dtype=torch.long)), epochs=2, seed=0,
                  progress=False)


def test_train_cbm_warns_about_classes_without_examples():
    model = ConceptBottleneckModel(torch.nn.Linear(8, 3), 3, 4)
    with pytest.warns(UserWarning, match=r"no example of class\(es\) \[2, 3\]"):
        train_cbm(model, cbm_data(torch.arange(120) % 2), epochs=2, seed=0, progress=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*no example of class")
        train_cbm(ConceptBottleneckModel(torch.nn.Linear(8, 3), 3, 4),
                  cbm_data(torch.arange(120) % 4), epochs=2, seed=0, progress=False)


# -- 9: bool flags ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["standardize", "residual"])
def test_posthoc_flags_must_be_bools(name):
    e, lab, y = posthoc_data()
    bank = CAVBank.from_concept_labels(e, lab, ["a", "b", "c"], seed=0)
    with pytest.raises(TypeError, match=f"`{name}` must be True or False; got str 'no'"):
        PosthocCBM(bank, progress=False, **{name: "no"}).fit(e, y)
    model = PosthocCBM(bank, progress=False, seed=0, **{name: np.bool_(False)}).fit(e, y)
    assert model.residual_weight_ is None


# -- 10: max_length and template -------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, error, match", [
    (dict(max_length=None), TypeError, "`max_length` must be an integer"),
    (dict(max_length=0), ValueError, "`max_length` must be >= 1"),
    (dict(template=5), TypeError, "`template` must be a string"),
    (dict(template="{} and {}"), ValueError, "`template` must contain exactly one"),
    (dict(template="a {name}"), ValueError, "`template` must contain exactly one"),
    (dict(template="{} of {x}"), ValueError, "`template` must contain exactly one"),
])
def test_label_free_checks_max_length_and_template(kwargs, error, match):
    with pytest.raises(error, match=match):
        fit_label_free(**kwargs)


def test_label_free_template_with_one_placeholder_fits():
    model, _ = fit_label_free(template="a photo of {}")
    assert len(model.concepts_) >= 1
    from conceptkit.bottleneck._label_free import check_template

    # literal braces, as the error message says to write them, are not placeholders
    assert check_template("{} {{}}") == "{} {{}}"
    with pytest.raises(ValueError, match="exactly one"):
        check_template("{0}")


# -- 11: a dict of negatives without a concept ----------------------------------------------------
def test_from_examples_names_the_concepts_missing_from_negatives():
    e = np.random.default_rng(0).normal(size=(100, 6))
    with pytest.raises(ValueError, match=r"`negatives`.*\['stripes'\]"):
        CAVBank.from_examples({"stripes": e[:50], "dots": e[:50] + 1}, {"dots": e[50:]}, seed=0)


# -- 13: class names as labels --------------------------------------------------------------------
def test_string_labels_get_an_error_naming_y():
    e, lab, y = posthoc_data()
    bank = CAVBank.from_concept_labels(e, lab, ["a", "b", "c"], seed=0)
    names = np.array(["cat", "dog", "cow", "ant"])[y]
    with pytest.raises(TypeError, match=r"`y` must hold integer class indices.*np\.unique"):
        PosthocCBM(bank, progress=False).fit(e, names)
    with pytest.raises(TypeError, match="`y` must hold integer class indices"):
        PosthocCBM(bank, progress=False).fit(e, names.astype(object))
