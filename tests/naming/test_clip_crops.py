"""CLIP naming on crops: a crop's concept activation read from the whole image's map.

``name_by_clip(crop_activation="map")`` (the default where the layer has maps) gives each crop the mean of the concept's map,
computed on the probe image, over the crop's box; ``"resized"`` is CRAFT's code of the crop resized
to the model's input. On the textures world the resized crops of the zigzag concept hold almost no
zigzag (the magnified background fires it), so CLIP-Dissect named it after an ImageNet word; the
map activations name the causal parts right.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from conceptkit import ConceptExplainer
from conceptkit.datasets import make_concept_dataset, reference_model
from conceptkit.naming import name_by_clip
from conceptkit.naming._probe import ConceptSource, as_probe, crop_probe

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "eval_naming.py"
_SPEC = importlib.util.spec_from_file_location("eval_naming", _PATH)
ev = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(ev)

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module")
def explained():
    train = make_concept_dataset(12, seed=0, split="train")
    probe = make_concept_dataset(4, seed=1, split="test")
    rows = train.class_indices(2)
    cc = ConceptExplainer(reference_model(), "block4", n_concepts=5, method="craft", seed=0,
                          progress=False, importance="gradient_input").fit(train.images[rows], 2)
    return cc, probe


def test_a_crop_activation_is_the_mean_of_the_map_over_its_box(explained):
    cc, probe = explained
    source = ConceptSource(cc, None, batch_size=5, progress=False)
    images = as_probe(probe).images
    cut = crop_probe(as_probe(probe), cc.bank.params["patch_size"])
    got = source.crop_map_means(images, cut.crops, "coefficient", batch_size=5)
    maps = cc.concept_maps(images, kind="coefficient").double()
    prov = cut.crops.provenance
    for row in (0, 7, len(prov.image_ids) - 1):
        y0, x0, y1, x1 = (int(v) for v in prov.boxes[row])
        i = int(prov.image_ids[row])
        np.testing.assert_allclose(got[row], maps[i, :, y0:y1, x0:x1].mean((-2, -1)).numpy(),
                                   rtol=1e-4, atol=1e-6)
    assert got.shape == (len(prov.image_ids), 5)


def test_crop_activation_is_checked_and_recorded(explained):
    cc, probe = explained
    clip = ev.OracleClip([probe])
    clip.add_crops(probe, cc.bank.params["patch_size"])
    words = list(probe.concept_names)
    with pytest.raises(ValueError, match="crop_activation"):
        name_by_clip(cc, probe, clip, vocabulary=words, crop_activation="pooled")
    names = name_by_clip(cc, probe, clip, vocabulary=words, class_images_only=False)
    assert names.params["crop_activation"] == "map"
    resized = name_by_clip(cc, probe, clip, vocabulary=words, class_images_only=False,
                           crop_activation="resized")
    assert resized.params["crop_activation"] == "resized"
    whole = name_by_clip(cc, probe, clip, vocabulary=words, patch_size=None)
    assert whole.params["crop_activation"] is None


def test_map_crops_name_the_texture_worlds_causal_parts():
    """Textures world (a ResNet; no shape cue), classes 2 and 3: zigzag + dots and zigzag +
    stripes. The synthetic CLIP knows the parts of every crop; the vocabulary is the part names
    and the 1000 ImageNet class names."""
    torch.set_num_threads(1)
    rows = ev.evaluate(seed=0, n_train=30, n_probe=30, classes=[2, 3], methods=("clip",),
                       world="textures")
    assert len(rows) == 4
    for row in rows:
        assert row["clip"]["right"], row
        assert row["clip"]["trust"] > 0.8, row


def test_soft_wpmi_default_top_k_is_capped_at_a_small_probe():
    """The default top_k (at least 5) on a probe of 4 inputs uses the 4 (it crashed in
    torch.topk before): the same scores as asking for top_k=4."""
    from conceptkit.naming import soft_wpmi

    gen = torch.Generator().manual_seed(0)
    sims, acts = torch.rand(4, 6, generator=gen), torch.rand(4, 3, generator=gen)
    np.testing.assert_allclose(soft_wpmi(sims, acts).numpy(),
                               soft_wpmi(sims, acts, top_k=4).numpy())


def test_ice_concepts_are_named_from_crops_of_crafts_default_size():
    """ICE has no crops of its own; read from the maps, its concepts are named from crops of
    CRAFT's default size (64/224 of the side: 18 px here), and from whole images when the crops'
    resized codes are asked for (ICE has no crop codes)."""
    train = make_concept_dataset(12, seed=0, split="train")
    probe = make_concept_dataset(4, seed=1, split="test")
    rows = train.class_indices(1)
    cc = ConceptExplainer(reference_model(), "block4", n_concepts=5, method="ice", seed=0,
                          progress=False, importance="gradient_input").fit(train.images[rows], 1)
    clip = ev.OracleClip([probe])
    clip.add_crops(probe, 18)
    words = list(probe.concept_names)
    names = name_by_clip(cc, probe, clip, vocabulary=words, class_images_only=False)
    assert names.params["patch_size"] == 18 and names.params["crop_activation"] == "map"
    assert names.params["n_probe_inputs"] > len(probe.images)
    whole = name_by_clip(cc, probe, clip, vocabulary=words, class_images_only=False,
                         crop_activation="resized")
    assert whole.params["patch_size"] is None
    assert whole.params["n_probe_inputs"] == len(probe.images)


def test_a_pooled_layer_has_no_maps_so_crops_use_their_resized_codes():
    """CRAFT at ``flatten`` (activations (N, C), no maps): ``crop_activation="auto"`` reads the
    crops' own codes and says so; asking for maps there is an error naming the layer's shape."""
    train = make_concept_dataset(8, seed=0, split="train")
    probe = make_concept_dataset(3, seed=1, split="test")
    rows = train.class_indices(2)
    cc = ConceptExplainer(reference_model(), "flatten", method="craft", n_concepts=3, seed=0,
                          progress=False, importance="gradient_input").fit(train.images[rows], 2)
    patch = cc.bank.params["patch_size"]
    clip = ev.OracleClip([probe])
    clip.add_crops(probe, patch)
    words = list(probe.concept_names)
    names = name_by_clip(cc, probe, clip, vocabulary=words, class_images_only=False)
    assert names.params["crop_activation"] == "resized" and names.params["patch_size"] == patch
    with pytest.raises(ValueError, match="crop_activation.*no spatial feature maps"):
        name_by_clip(cc, probe, clip, vocabulary=words, class_images_only=False,
                     crop_activation="map")
