"""Sixth review of the pipeline: the atlas's store path keeps the user's factorizer, float64
models, calls under torch.inference_mode(), the user's own hooks registered during a call,
seeds drawn for seed=None recorded, class names that must name the model's outputs, errors
named after the caller's arguments, and options that must be dicts or bools."""

import functools
import warnings

import numpy as np
import pytest
import torch
from _shared import two_block_cnn
from torch import nn

import conceptkit
from conceptkit import ConceptAtlas, ConceptExplainer, ConceptManager
from conceptkit._torchutils import median_colour, preserved_model_state
from conceptkit.concepts import NMF
from conceptkit.extraction import write_store
from conceptkit.importance import tcav, tcav_images
from conceptkit.models._candidates import class_index
from conceptkit.pipeline._assemble import build_class_report

pytestmark = pytest.mark.filterwarnings("ignore:NMF solver 'cd' reached max_iter")

IMAGES = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(3))
LABELS = np.array([0, 0, 1, 1, 2, 2, 3, 3])  # two_block_cnn has 4 outputs


def explainer(**kwargs):
    kwargs.setdefault("seed", 0)
    kwargs.setdefault("importance", "gradient_input")
    return ConceptExplainer(two_block_cnn(), "block2", n_concepts=3, progress=False, **kwargs)


def atlas(model=None, **kwargs):
    kwargs.setdefault("seed", 0)
    return ConceptAtlas(model if model is not None else two_block_cnn(), "block2", 3,
                        importance="sobol", n_designs=8, progress=False, **kwargs)


# ------------------------------------------------------------ A1: the user's factorizer
def test_an_atlas_on_a_store_fits_a_clone_of_the_users_factorizer(tmp_path):
    model = two_block_cnn()

    def block2(images):  # the maps at block2 (a plain callable: no tracing of the model)
        with torch.no_grad():
            return model.block2(model.block1(images))

    store = write_store(block2, IMAGES, tmp_path / "store", chunk_size=4, layout="maps",
                        progress=False)
    mine = NMF(3, solver="torch_hals")
    first = atlas(model, factorizer=mine).fit(store, LABELS)
    assert not hasattr(mine, "components_") and mine.random_state is None
    assert first.data_.bank.factorizer is not mine
    assert first.data_.bank.factorizer.random_state == 0  # the atlas's seed, on the clone
    maps = first.concept_maps(IMAGES[:2]).clone()
    atlas(model, factorizer=mine, seed=1).fit(store, LABELS)  # another atlas, the same object
    mine.fit(np.abs(np.random.default_rng(0).normal(size=(100, 24))))  # the user's own fit
    torch.testing.assert_close(first.concept_maps(IMAGES[:2]), maps, rtol=0, atol=0)


# ------------------------------------------------------------ A3: a float64 model
def test_an_atlas_fits_a_float64_model():
    """Its head was fed float32 activations: torch failed with a dtype error."""
    single = atlas().fit(IMAGES, LABELS)
    double = atlas(two_block_cnn().double()).fit(IMAGES, LABELS)
    assert np.isfinite(double.importance.values).all()
    np.testing.assert_allclose(double.data_.logits, single.data_.logits, rtol=1e-4, atol=1e-5)
    assert double.concept_maps(IMAGES[:2]).shape == single.concept_maps(IMAGES[:2]).shape


# ------------------------------------------------------------ A5: torch.inference_mode()
def _inference_calls():
    images, ex = IMAGES[:4], explainer()
    concepts = {"a": IMAGES[:3], "b": IMAGES[3:6]}
    return {
        "ConceptExplainer.fit": lambda: ex.fit(images, 1),
        "ConceptExplainer.discover": lambda: ex.discover(images),
        "ConceptAtlas.fit": lambda: atlas().fit(IMAGES, LABELS),
        "ConceptManager.fit": lambda: ConceptManager(two_block_cnn(), "block2", n_concepts=3,
                                                     progress=False).fit(IMAGES, LABELS),
        "tcav_images": lambda: tcav_images(two_block_cnn(), "block2", images, concepts,
                                           IMAGES, 1, n_runs=2, progress=False),
    }


@pytest.mark.parametrize("name", list(_inference_calls()))
def test_calls_under_inference_mode_are_refused_in_one_sentence(name):
    """They failed deep inside torch ("Inference tensors do not track version counter"), or
    blamed the model ("`h` is not differentiable")."""
    call = _inference_calls()[name]
    with torch.inference_mode(), pytest.raises(
            RuntimeError, match=rf"^{name} was called inside torch.inference_mode\(\).*call it "
                                rf"outside torch.inference_mode\(\) \(torch.no_grad\(\) is fine\)"):
        call()


def test_no_grad_is_fine():
    with torch.no_grad():
        result = explainer().fit(IMAGES[:4], 1)
    assert np.isfinite(result.importances).all() and np.ptp(result.importances) > 0


# ------------------------------------------------------------ A6: the user's hooks
def test_a_hook_the_user_registers_during_a_call_stays():
    """A user hook that instruments the model lazily, the first time it runs, was deleted."""
    model = two_block_cnn()
    added = {}

    def lazy(module, inputs, output):
        if "handle" not in added:
            added["handle"] = model.fc.register_forward_hook(lambda *args: None)

    model.block1.register_forward_hook(lazy)
    ConceptExplainer(model, "block2", n_concepts=3, seed=0, progress=False,
                     importance="gradient_input").fit(IMAGES[:4], 1)
    assert added["handle"].id in model.fc._forward_hooks


def test_the_guard_still_removes_hooks_of_conceptkit_left_behind():
    model = two_block_cnn()
    with preserved_model_state(model):
        mine = model.fc.register_forward_hook(lambda *args: None)
        leaked = [model.fc.register_forward_hook(functools.partial(median_colour)),
                  model.block1.register_forward_pre_hook(median_colour, with_kwargs=True),
                  model.block2.register_full_backward_hook(median_colour)]
    assert list(model.fc._forward_hooks) == [mine.id]
    assert not model.block1._forward_pre_hooks and not model.block1._forward_pre_hooks_with_kwargs
    assert not model.block2._backward_hooks
    assert all(handle.id not in model.fc._forward_hooks for handle in leaked)


# ------------------------------------------------------------ A7: seeds drawn for seed=None
def test_an_atlas_records_the_seed_it_drew_and_repeats_with_it():
    model = two_block_cnn()
    drawn = ConceptAtlas(model, "block2", 3, method="craft", importance="sobol", n_designs=8,
                         seed=None, progress=False).fit(IMAGES, LABELS)
    seed = drawn.fitted_settings_["seed"]
    assert isinstance(seed, int) and drawn.importance.params["seed"] == seed
    assert drawn.explainer.seed is None  # the next fit draws afresh
    again = ConceptAtlas(model, "block2", 3, method="craft", importance="sobol", n_designs=8,
                         seed=seed, progress=False).fit(IMAGES, LABELS)
    np.testing.assert_array_equal(again.importance.values, drawn.importance.values)
    np.testing.assert_array_equal(again.data_.bank.components, drawn.data_.bank.components)


def test_tcav_records_the_seed_it_drew_and_repeats_with_it():
    rng = np.random.default_rng(0)
    h = nn.Linear(6, 3)
    acts = torch.from_numpy(rng.normal(size=(10, 6))).float()
    concepts = {"a": rng.normal(size=(8, 6)) + 1, "b": rng.normal(size=(8, 6)) - 1}
    pool = rng.normal(size=(40, 6))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        drawn = tcav(h, acts, concepts, pool, 1, n_runs=3, n_permutations=99, progress=False)
        again = tcav(h, acts, concepts, pool, 1, n_runs=3, n_permutations=99, progress=False,
                     seed=drawn.seed)
        given = tcav(h, acts, concepts, pool, 1, n_runs=3, n_permutations=99, progress=False,
                     seed=4)
    assert isinstance(drawn.seed, int) and given.seed == 4 and drawn.to_dict()["seed"] == drawn.seed
    np.testing.assert_array_equal(again.random_magnitudes, drawn.random_magnitudes)
    np.testing.assert_array_equal(again.p_values, drawn.p_values)


# ------------------------------------------------------------ F4: class names and outputs
def test_class_names_must_name_every_output():
    with pytest.raises(ValueError, match=r"`class_names` has 3 names, but the model has 4 "
                                         r"outputs"):
        explainer(class_names=["a", "b", "c"]).fit(IMAGES[:4], 1)
    with pytest.raises(ValueError, match=r"`class_names` has 6 names, but the model has 4"):
        explainer(class_names=list("abcdef")).fit(IMAGES[:4], "e")
    result = explainer(class_names=list("abcd")).fit(IMAGES[:4], "c")
    assert (result.class_id, result.class_name) == (2, "c")


def test_a_class_past_the_outputs_is_named_from_the_model():
    """With 3 names for a 4-output model, class 3 was 'out of range: this model has 3
    classes': the names were taken for the model's outputs."""
    with pytest.raises(ValueError, match=r"`class_id` must be in \[0, 3\]: the model returns 4 "
                                         r"classes; got 7"):
        explainer().fit(IMAGES[:4], 7)
    with pytest.raises(ValueError, match=r"`class_id` 7 is out of range: this model has 4 "
                                         r"classes \(0 to 3\)"):
        explainer(class_names=list("abcd")).fit(IMAGES[:4], 7)
    with pytest.raises(ValueError, match=r"`--class` 5 is out of range: the 3 class names name "
                                         r"classes 0 to 2\.$"):
        class_index(5, ["a", "b", "c"], "`--class`")  # the names alone: said of the names


def test_the_manager_checks_its_class_names_against_the_outputs():
    def manager(names):
        return ConceptManager(two_block_cnn(), "block2", class_names=names, n_concepts=3,
                              importance="gradient_input", progress=False, seed=0)

    with pytest.raises(ValueError, match=r"`class_names` names class 99, but the model has 4 "
                                         r"outputs"):
        manager({99: "x"}).fit(IMAGES, LABELS, classes=[0])
    with pytest.raises(ValueError, match=r"`class_names` has 1 name, but the model has 4"):
        manager(["a"]).fit(IMAGES, LABELS, classes=[0])
    named = manager({1: "one"})
    fitted = named.fit(IMAGES, LABELS, classes=[0, 1])
    assert {k: v.class_name for k, v in fitted.items()} == {0: "class 0", 1: "one"}
    assert named.explainer.class_names == ["class 0", "one", "class 2", "class 3"]


def test_the_manager_refuses_labels_past_the_outputs_and_empty_classes():
    manager = ConceptManager(two_block_cnn(), "block2", n_concepts=3, progress=False)
    with pytest.raises(ValueError, match=r"`labels` holds class 7, but the model has 4 outputs"):
        manager.fit(IMAGES[:4], [7, 7, 0, 0])
    with pytest.raises(ValueError, match=r"`classes` is empty"):
        manager.fit(IMAGES, LABELS, classes=[])


# ------------------------------------------------------------ F6, F8: the caller's argument
def test_discover_names_the_activations_it_was_given():
    ex = explainer()
    acts = ex.activations(IMAGES[:4])
    bad = acts.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"^`activations` contains NaN or Inf"):
        ex.discover(IMAGES[:4], activations=bad)
    with pytest.raises(ValueError, match=r"^`activations` is on the 'meta' device"):
        ex.discover(IMAGES[:4], activations=acts.to("meta"))


# ------------------------------------------------------------ F9, F11: options and switches
def test_report_labels_must_be_a_dict_of_concepts():
    result = explainer().fit(IMAGES[:4], 1)
    with pytest.raises(TypeError, match=r"`labels` must be a dict \{concept index: label\}"):
        build_class_report(result, labels="x", n_images=1, n_exemplars=1)
    with pytest.raises(ValueError, match=r"`labels` has concept 99, but this explanation has 3 "
                                         r"concepts"):
        build_class_report(result, labels={99: "x"}, n_images=1, n_exemplars=1)
    report = build_class_report(result, labels={np.int64(1): "wheel"}, n_images=1,
                                n_exemplars=1)
    assert [c.label for c in report.concepts if c.index == 1] == ["wheel"]


@pytest.mark.parametrize("make, name", [
    (lambda: explainer(importance="integrated_gradients", importance_kwargs="steps"),
     "importance_kwargs"),
    (lambda: explainer(method_kwargs=[1]), "method_kwargs"),
    (lambda: explainer(method_kwargs=[("keep_activations", True)]), "method_kwargs"),
    (lambda: atlas(importance_kwargs=[("quantile", 0.9)]), "importance_kwargs"),
])
def test_keyword_options_must_be_a_dict(make, name):
    """A string or a list failed inside dict(), and a list of pairs was taken as a dict."""
    with pytest.raises(TypeError, match=rf"^`{name}` must be a dict of keyword options"):
        make()


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_progress_must_be_a_bool(value):
    with pytest.raises(TypeError, match=r"`progress` must be True or False"):
        ConceptExplainer(two_block_cnn(), "block2", progress=value)
    with pytest.raises(TypeError, match=r"`progress` must be True or False"):
        conceptkit.ConceptAtlas(two_block_cnn(), "block2", progress=value)
