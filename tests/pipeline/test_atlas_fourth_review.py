"""Found by the fourth review of the atlas: a load with the model dropped the preprocessing and
every setting of the fit, a saved atlas's metadata was loosely checked, and maps of images of the
wrong channel count named the wrong argument."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from _shared import two_block_cnn

import conceptkit
from conceptkit import io as cio
from conceptkit.pipeline import ConceptAtlas
from conceptkit.pipeline._atlas_io import ATLAS_KIND, ATLAS_VERSION

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")]

LABELS = np.array([0] * 6 + [1] * 6)


def normalise(x):
    return (x - 0.5) / 0.25


def other_normalisation(x):
    return (x - 0.4) / 0.25


@pytest.fixture(scope="module")
def images():
    return torch.rand(12, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def saved(images, tmp_path_factory):
    """An atlas fitted with a preprocessing and settings other than the defaults, saved."""
    atlas = ConceptAtlas(two_block_cnn(), "block2", 3, importance="gradient_input", seed=3,
                         progress=False, preprocess=normalise, max_inputs_per_class=5,
                         class_names=["zero", "one"]).fit(images, LABELS)
    path = atlas.save(tmp_path_factory.mktemp("atlas") / "atlas.safetensors", n_exemplars=3)
    return atlas, path


def _rewrite(path, out, edit_meta=None, edit_tensors=None):
    tensors, meta = cio.load_file(path, kind=ATLAS_KIND, version=ATLAS_VERSION)
    meta, tensors = copy.deepcopy(meta), dict(tensors)
    if edit_meta:
        edit_meta(meta)
    if edit_tensors:
        edit_tensors(tensors)
    cio.save_file(out, tensors, meta, kind=ATLAS_KIND, version=ATLAS_VERSION)
    return out


# ---------------------------------------------------------------- 1: the fit's settings
def test_a_load_with_the_model_and_its_preprocess_computes_as_the_fitted_atlas(saved, images):
    atlas, path = saved
    back = ConceptAtlas.load(path, model=two_block_cnn(), preprocess=normalise)
    torch.testing.assert_close(back.concept_maps(images[:3]), atlas.concept_maps(images[:3]),
                               atol=1e-5, rtol=1e-5)
    new = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    want = atlas.explain_confusion(0, 1, images=new, min_images=3)
    got = back.explain_confusion(0, 1, images=new, min_images=3)
    np.testing.assert_allclose(got.margins, want.margins, atol=1e-5)
    np.testing.assert_allclose(got.contributions, want.contributions, atol=1e-5)
    # the settings of the fit, restored: a refit runs as the first one did
    assert back.explainer.seed == atlas.explainer.seed == 3
    assert back.max_inputs_per_class == atlas.max_inputs_per_class == 5
    assert back.importance_method == atlas.importance_method == "gradient_input"
    refit = back.fit(images, LABELS)
    np.testing.assert_allclose(refit.importance.values, atlas.importance.values, atol=1e-6)


def test_a_load_with_the_model_but_without_its_preprocess_is_refused(saved):
    _, path = saved
    with pytest.raises(ValueError, match=r"^`preprocess` was not given, and this atlas was "
                                         r"fitted with the preprocessing .*normalise.*"
                                         r"preprocess=\.\.\.\)\.$"):
        ConceptAtlas.load(path, model=two_block_cnn())


def test_a_load_with_another_preprocess_says_it_differs(saved, images):
    atlas, path = saved
    with pytest.raises(ValueError, match=r"^`preprocess` differs from the preprocessing this "
                                         r"atlas was fitted with: fitted with .*normalise.*, "
                                         r"given .*other_normalisation"):
        ConceptAtlas.load(path, model=two_block_cnn(), preprocess=other_normalisation)
    with pytest.warns(UserWarning, match="`preprocess` differs"):
        loose = ConceptAtlas.load(path, model=two_block_cnn(), preprocess=other_normalisation,
                                  strict=False)
    assert loose.explainer.preprocess is other_normalisation
    with pytest.raises(ValueError, match="no `model` was given"):
        ConceptAtlas.load(path, preprocess=normalise)


def test_a_load_with_other_weights_warns(saved):
    _, path = saved
    model = two_block_cnn()
    with torch.no_grad():
        model.fc.bias += 1.0
    with pytest.warns(UserWarning, match="the model's weights differ"):
        ConceptAtlas.load(path, model=model, preprocess=normalise)


def test_an_atlas_loaded_without_its_model_saves_what_it_was_fitted_with(saved, tmp_path):
    atlas, path = saved
    again = conceptkit.load(path).save(tmp_path / "again.safetensors", n_exemplars=2)
    with pytest.raises(ValueError, match="`preprocess` was not given"):
        ConceptAtlas.load(again, model=two_block_cnn())
    back = ConceptAtlas.load(again, model=two_block_cnn(), preprocess=normalise)
    assert back.explainer.seed == 3 and back.max_inputs_per_class == 5


def test_an_atlas_file_from_before_the_settings_loads_as_before(saved, tmp_path):
    """A file without ``settings`` and ``fitted_with`` (written by earlier versions): loaded
    with the constructor's defaults and no check, as then."""
    _, path = saved

    def drop(meta):
        del meta["settings"], meta["fitted_with"]

    old = _rewrite(path, tmp_path / "old.safetensors", drop)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        back = ConceptAtlas.load(old, model=two_block_cnn())
    assert back.explainer.preprocess is None and back.explainer.seed is None
    assert back.max_inputs_per_class == 512
    assert back.importance_method == "gradient_input"
    assert conceptkit.load(old).importance.shape == (2, 3)
    with_pre = ConceptAtlas.load(old, model=two_block_cnn(), preprocess=normalise)
    assert with_pre.explainer.preprocess is normalise


# ---------------------------------------------------------------- 9: edited metadata
@pytest.mark.parametrize("field, edit", [
    ("image_size", lambda m: m.__setitem__("image_size", "ab")),
    ("image_size", lambda m: m.__setitem__("image_size", [-5, 0])),
    ("layer", lambda m: m.__setitem__("layer", 123)),
    ("method", lambda m: m.__setitem__("method", "bogus")),
    ("importance.method", lambda m: m["importance"].__setitem__("method", "bogus")),
    ("confusions", lambda m: m.__setitem__("confusions", "xyz")),
    (r"confusions\[0\]", lambda m: m.__setitem__("confusions", [1])),
    (r"confusions\[0\]", lambda m: m["confusions"][0].__setitem__("a", 7)),
    (r"confusions\[0\].probability", lambda m: m["confusions"][0].__setitem__("probability", 2)),
    (r"confusions\[0\].concepts", lambda m: m["confusions"][0]["concepts"][0].__setitem__(
        "concept", 99)),
    ("settings.seed", lambda m: m["settings"].__setitem__("seed", "zero")),
    ("settings", lambda m: m["settings"].__setitem__("colour", 1)),
    ("fitted_with", lambda m: m.__setitem__("fitted_with", {"preprocess": 3})),
])
def test_edited_metadata_is_refused_naming_the_field(saved, tmp_path, field, edit):
    _, path = saved
    edited = _rewrite(path, tmp_path / "edited.safetensors", edit)
    with pytest.raises(cio.FormatError, match=rf"not a valid ConceptAtlas file: {field} "):
        ConceptAtlas.load(edited)


@pytest.mark.parametrize("field, value", [("importance.values", float("nan")),
                                          ("importance.values", float("inf")),
                                          ("importance.ci_high", float("inf")),
                                          ("importance.ci_low", -float("inf"))])
def test_non_finite_importances_are_refused(saved, tmp_path, field, value):
    _, path = saved

    def edit(tensors):
        tensors[field] = torch.full_like(tensors[field], value)

    edited = _rewrite(path, tmp_path / "edited.safetensors", edit_tensors=edit)
    with pytest.raises(cio.FormatError, match=rf"{field} holds"):
        ConceptAtlas.load(edited)


def test_intervals_of_nan_where_there_is_none_still_load(saved, tmp_path):
    _, path = saved

    def edit(tensors):
        for field in ("importance.ci_low", "importance.ci_high"):
            tensors[field] = torch.full_like(tensors[field], float("nan"))

    back = ConceptAtlas.load(_rewrite(path, tmp_path / "nan_ci.safetensors", edit_tensors=edit))
    assert np.isnan(back.importance.ci_low).all()


# ---------------------------------------------------------------- 8: the argument named
def test_maps_of_images_with_the_wrong_channels_name_images(saved, images):
    atlas, _ = saved
    gray = images[:2, :1]
    with pytest.raises(ValueError, match=r"^`images` must have 3 channels"):
        atlas.concept_maps(gray)
    with pytest.raises(ValueError, match=r"^`images` must have 3 channels"):
        atlas.explain_confusion(0, 1, images=gray, min_images=1)
