"""ClassConcepts keeps its names and visualisations: saved, loaded, refused when tampered with."""

from __future__ import annotations

import pytest
import torch

import conceptkit
from conceptkit import io
from conceptkit.datasets import make_concept_dataset, reference_model
from conceptkit.naming import ConceptNames, name_by_masks
from conceptkit.pipeline._naming import concept_labels

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module")
def named():
    train = make_concept_dataset(12, seed=0, split="train")
    probe = make_concept_dataset(6, seed=0, split="test", spurious=False)
    rows = train.class_indices(1)
    cc = conceptkit.ConceptExplainer(reference_model(), "block4", n_concepts=4, seed=0,
                                     progress=False, importance="gradient_input",
                                     method="ice").fit(train.images[rows], 1)
    assert cc.labels == [f"concept {j}" for j in range(4)]       # unnamed: the index
    names = cc.name_concepts("dissect", probe)
    cc.visualize(0, steps=2, progress=False)
    return cc, names, probe


def test_names_and_visualisations_round_trip(named, tmp_path):
    cc, names, _ = named
    assert isinstance(names, ConceptNames) and cc.names is names
    assert cc.labels == concept_labels(names, cc.n_concepts)  # repeated names get [j]
    path = cc.save(tmp_path / "named.safetensors")
    back = conceptkit.load(path)
    assert back.names == names
    assert sorted(back.visualizations) == [0]
    vis, again = cc.visualizations[0], back.visualizations[0]
    assert torch.allclose(again.image, vis.image, atol=1 / 255)       # stored as uint8
    assert torch.allclose(again.transparency, vis.transparency, atol=1e-3)
    assert list(again.objective) == pytest.approx(list(vis.objective))


def test_concepts_by_name(named):
    cc, names, _ = named
    saved = cc.names
    try:
        cc.names = ConceptNames.from_dict({**names.to_dict(), "entries": [
            {**e.to_dict(), "name": f"part {e.concept}"} for e in names]})
        crops, ids = cc.top_examples("part 2", 3)
        same, same_ids = cc.top_examples(2, 3)
        assert torch.equal(crops, same) and list(ids) == list(same_ids)
        with pytest.raises(ValueError, match="not the name of a concept"):
            cc.top_examples("a flying saucer", 3)
    finally:
        cc.names = saved


def test_ambiguous_name_is_refused(named):
    cc, names, _ = named
    saved = cc.names
    try:
        cc.names = ConceptNames.from_dict({**names.to_dict(), "entries": [
            {**e.to_dict(), "name": "twin"} for e in names]})
        with pytest.raises(ValueError, match="names concepts"):
            cc.top_examples("twin", 2)
    finally:
        cc.names = saved


@pytest.mark.parametrize("damage", ["short", "bad_record", "bad_visualisation"])
def test_tampered_names_raise_format_error(named, tmp_path, damage):
    cc, _, _ = named
    path = cc.save(tmp_path / "ok.safetensors")
    tensors, meta = io.load_file(path, kind="ClassConcepts", version=2)
    if damage == "short":
        meta["names"]["entries"] = meta["names"]["entries"][:2]
    elif damage == "bad_record":
        meta["names"]["entries"][0]["score"] = "high"
    else:
        meta["visualizations"]["7"] = meta["visualizations"]["0"]
    io.save_file(tmp_path / "bad.safetensors", tensors, meta, kind="ClassConcepts", version=2)
    with pytest.raises(io.FormatError):
        conceptkit.load(tmp_path / "bad.safetensors")


def test_naming_leaves_the_model_as_found(named, snapshot):
    cc, _, probe = named
    model = reference_model()
    model.train()
    before = snapshot(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    name_by_masks(cc.bank, probe.subset(probe.labels == 1), model=model)
    conceptkit.naming.name_by_classes(cc.bank, probe.images[:6], model=model)
    assert snapshot(model) == before
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
