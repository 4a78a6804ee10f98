"""Fourth review of saved files: attach sees a model's own code and what the preprocessing
reads, cached codes see in-place edits through numpy and ``.data``, tampered files are refused
naming the field."""

from __future__ import annotations

import copy
import textwrap
import warnings

import numpy as np
import pytest
import torch
from _shared import two_block_cnn
from torch import nn

import conceptkit
from conceptkit import io as cio
from conceptkit.concepts import ConceptBank
from conceptkit.concepts._bank import BANK_KIND, BANK_VERSION
from conceptkit.pipeline import ConceptAtlas
from conceptkit.pipeline._atlas_io import ATLAS_KIND, ATLAS_VERSION
from conceptkit.pipeline._result import RESULT_KIND, RESULT_VERSION, ClassConcepts

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")]

IMAGES = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def _net(activation: str) -> nn.Module:
    """A ``Net`` (same name, module, weights and structure every call) with its own forward."""
    namespace = {"nn": nn, "torch": torch, "__name__": __name__}
    exec(textwrap.dedent(f"""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = nn.Conv2d(3, 6, 3, padding=1)
            self.feat = nn.Identity()
            self.fc = nn.Linear(6, 3)
        def forward(self, x):
            return self.fc(self.feat(torch.{activation}(self.conv(x))).mean((2, 3)))
    """), namespace)
    return namespace["Net"]().eval()


class Scale:
    value = 1.0


def prep(x):
    return x * Scale.value


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ex = conceptkit.ConceptExplainer(_net("relu"), "feat", n_concepts=2, method="ice",
                                         seed=0, progress=False, preprocess=prep).fit(IMAGES, 1)
    path = ex.save(tmp_path_factory.mktemp("expl") / "e.safetensors", n_images=2,
                   n_exemplars=2)
    return ex, path


def _rewrite(path, out, kind, version, edit_meta=None, edit_tensors=None):
    tensors, meta = cio.load_file(path, kind=kind, version=version)
    meta, tensors = copy.deepcopy(meta), dict(tensors)
    if edit_meta:
        edit_meta(meta)
    if edit_tensors:
        edit_tensors(tensors)
    cio.save_file(out, tensors, meta, kind=kind, version=version)
    return out


# ---------------------------------------------------------------- 1, 2: what attach compares
def test_attach_refuses_a_model_whose_forward_changed(saved):
    _, path = saved
    loaded = conceptkit.load(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded.attach(_net("relu"), preprocess=prep, strict=True)  # the same: silent
    with pytest.raises(ValueError, match="model's code differs"):
        conceptkit.load(path).attach(_net("tanh"), preprocess=prep, strict=True)


def test_attach_sees_a_constant_read_through_a_class(saved):
    _, path = saved
    try:
        Scale.value = 3.0
        with pytest.raises(ValueError, match="a value it reads through a module or a class"):
            conceptkit.load(path).attach(_net("relu"), preprocess=prep, strict=True)
    finally:
        Scale.value = 1.0


def test_files_without_the_new_fields_attach_without_a_warning(saved, tmp_path):
    _, path = saved

    def older(meta):  # what conceptkit wrote before the code and reads were recorded
        del meta["fitted_with"]["model_code"], meta["fitted_with"]["preprocess_reads"]

    old = _rewrite(path, tmp_path / "old.safetensors", RESULT_KIND, RESULT_VERSION, older)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        conceptkit.load(old).attach(_net("tanh"), preprocess=prep, strict=True)


# ---------------------------------------------------------------- 4: cached class codes
@pytest.mark.parametrize("edit", [lambda a: a.numpy().__imul__(3.0),
                                  lambda a: a.data.mul_(0.5)])
def test_cached_codes_follow_edits_the_version_counter_misses(saved, edit):
    ex, _ = saved
    ex = copy.copy(ex)
    ex.activations = ex.activations.clone()
    ex.__dict__.pop("_codes_cache", None)
    before = ex._class_codes().clone()
    edit(ex.activations)
    fresh = torch.as_tensor(ex.bank.encode(ex.activations))
    assert not torch.allclose(before, fresh)
    torch.testing.assert_close(ex._class_codes(), fresh)


def test_codes_seeded_by_the_fit_are_kept(saved):
    ex, _ = saved
    first = ex._class_codes()
    assert ex._class_codes() is first  # no recompute while nothing changed


# ---------------------------------------------------------------- 6: tampered files
def _extra(tensors):
    for i in range(50):
        tensors[f"x{i}"] = torch.zeros(0, dtype=torch.uint8)


def test_unknown_tensors_in_an_explanation_are_refused(saved, tmp_path):
    _, path = saved
    edited = _rewrite(path, tmp_path / "e.safetensors", RESULT_KIND, RESULT_VERSION,
                      edit_tensors=_extra)
    with pytest.raises(cio.FormatError, match=r"50 unknown tensor\(s\) \['x0'"):
        conceptkit.load(edited)
    bank_extra = _rewrite(path, tmp_path / "b.safetensors", RESULT_KIND, RESULT_VERSION,
                          edit_tensors=lambda t: t.__setitem__("bank.junk", torch.zeros(1)))
    with pytest.raises(cio.FormatError, match=r"unknown tensor\(s\) \['junk'\]"):
        conceptkit.load(bank_extra)


def test_unknown_tensors_in_a_bank_are_refused(saved, tmp_path):
    ex, _ = saved
    path = ex.bank.save(tmp_path / "bank.safetensors")
    ConceptBank.load(path)  # as saved: loads
    edited = _rewrite(path, tmp_path / "edited.safetensors", BANK_KIND, BANK_VERSION,
                      edit_tensors=_extra)
    with pytest.raises(cio.FormatError, match=r"50 unknown tensor\(s\)"):
        ConceptBank.load(edited)


@pytest.mark.parametrize("field", ["model_name", "layer", "method", "class_name"])
@pytest.mark.parametrize("value", [None, [], {}, 3])
def test_names_of_the_wrong_type_are_refused(saved, tmp_path, field, value):
    _, path = saved
    edited = _rewrite(path, tmp_path / "e.safetensors", RESULT_KIND, RESULT_VERSION,
                      lambda meta: meta.__setitem__(field, value))
    with pytest.raises(cio.FormatError, match=rf"{field} must be a string"):
        ClassConcepts.load(edited)


@pytest.fixture(scope="module")
def atlas_file(tmp_path_factory):
    images = torch.rand(12, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    atlas = ConceptAtlas(two_block_cnn(), "block2", 3, seed=3, progress=False).fit(
        images, np.array([0] * 6 + [1] * 6))
    return atlas.save(tmp_path_factory.mktemp("atlas") / "a.safetensors", n_exemplars=2)


@pytest.mark.parametrize("classes", [[0, 1.0], [0, True], [0, 0.5], "01", [0, "1"]])
def test_atlas_classes_that_are_not_class_ids_are_refused(atlas_file, tmp_path, classes):
    ConceptAtlas.load(atlas_file)
    edited = _rewrite(atlas_file, tmp_path / "a.safetensors", ATLAS_KIND, ATLAS_VERSION,
                      lambda meta: meta.__setitem__("classes", classes))
    with pytest.raises(cio.FormatError, match="classes must be a list of class ids"):
        ConceptAtlas.load(edited)
