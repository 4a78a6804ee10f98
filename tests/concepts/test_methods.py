"""ConceptBank, CRAFT / ICE / ACE on small in-test models, persistence of banks."""

import numpy as np
import pytest
import torch
from torch import nn

from conceptkit.concepts import (
    ACE,
    CRAFT,
    ICE,
    NMF,
    ConceptBank,
    KMeansConcepts,
    SemiNMF,
    bank_from_activations,
)
from conceptkit.concepts._methods import ace_keep_clusters, restrict_bank
from conceptkit.extraction import Provenance
from conceptkit.io import FormatError


def _cnn(relu=True):
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, stride=2, padding=1)]
    if relu:
        layers.append(nn.ReLU())
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 3)]
    return nn.Sequential(*layers).eval()


def test_craft_bank_shapes_and_provenance():
    images = torch.rand(5, 3, 32, 32)
    bank = CRAFT(4, patch_size=16, progress=False, seed=0).fit(_cnn(), "3", images)
    assert bank.components.shape == (4, 12)
    per_image = len(range(0, 32 - 16 + 1, 12)) ** 2  # stride int(0.8 * 16) = 12
    assert bank.codes.shape == (5 * per_image, 4)
    assert bank.provenance.kind == "crop" and bank.params["stride"] == 12
    assert bank.method == "craft" and bank.layer == "3"
    assert (bank.codes >= 0).all() and (bank.components >= 0).all()
    # the codes and dictionary reconstruct the stored crop activations with the factorizer's error
    residual = bank.activations - bank.codes @ bank.components
    assert float(residual.norm()) == pytest.approx(bank.factorizer.reconstruction_err_, rel=1e-3)


def test_craft_default_patch_is_64_over_224():
    bank = CRAFT(3, progress=False, seed=0).fit(_cnn(), "3", torch.rand(2, 3, 56, 56))
    assert bank.params["patch_size"] == 16  # 56 * 64 / 224


def test_factorizer_is_swappable_and_not_mutated():
    user = SemiNMF(n_concepts=3, random_state=0)
    bank = CRAFT(factorizer=user, n_concepts=None, patch_size=16, progress=False).fit(
        _cnn(relu=False), "2", torch.rand(4, 3, 32, 32))
    assert isinstance(bank.factorizer, SemiNMF) and bank.n_concepts == 3
    assert not hasattr(user, "components_")  # the user's object was cloned, not fitted


def test_nmf_on_negative_activations_points_to_seminmf():
    with pytest.raises(ValueError, match="SemiNMF") as info:
        CRAFT(3, patch_size=16, progress=False).fit(_cnn(relu=False), "2", torch.rand(4, 3, 32, 32))
    assert "relu=True" in str(info.value)


def test_ice_every_position_is_a_row():
    images = torch.rand(3, 3, 16, 16)
    bank = ICE(5, progress=False, seed=0).fit(_cnn(), "3", images)
    assert bank.codes.shape == (3 * 8 * 8, 5)
    assert bank.provenance.grid == (8, 8)
    assert bank.provenance.boxes[9].tolist() == [2, 2, 4, 4]  # cell (1, 1) of image 0


def test_ace_cluster_rule_matches_reference():
    # D = 10 discovery images; one cluster per branch of the rule
    image_ids = np.concatenate([
        np.arange(25) % 10,            # cluster 0: 25 rows from 10 images -> m=10 > 0.25*25, > 0.25*D
        np.zeros(25, dtype=int),       # cluster 1: 25 rows from 1 image  -> dropped
        np.arange(5),                  # cluster 2: 5 rows (<= min size)  -> dropped
        np.repeat(np.arange(7), 9),    # cluster 3: 63 rows from 7 images: m > 0.1*63 and > 0.5*D
        np.repeat(np.arange(5), 12),   # cluster 4: 60 rows from 5 images: m = 0.5*D -> dropped
        np.arange(25) % 5 + 5,         # cluster 5: 25 rows from 5 images: m <= 0.25*25 -> dropped
    ])
    assignments = np.repeat([0, 1, 2, 3, 4, 5], [25, 25, 5, 63, 60, 25])
    keep = ace_keep_clusters(assignments, image_ids, 6, n_images=10, min_cluster_size=20)
    assert keep.tolist() == [0, 3]


def test_ace_end_to_end_and_restriction():
    torch.manual_seed(0)
    images = torch.rand(6, 3, 32, 32)
    ace = ACE(6, n_segments=(4, 8), min_cluster_size=1, progress=False, seed=0)
    bank = ace.fit(_cnn(), "3", images)
    assert isinstance(bank.factorizer, KMeansConcepts)
    assert bank.provenance.kind == "segment"
    assert 1 <= bank.n_concepts <= 6
    assert bank.codes.shape == (len(bank.provenance), bank.n_concepts)


def test_restrict_bank_keeps_rows_of_the_dictionary():
    rng = np.random.default_rng(0)
    acts = rng.uniform(size=(60, 5)).astype(np.float32)
    prov = Provenance("image", np.arange(60), np.zeros((60, 4)), (4, 4))
    bank = bank_from_activations(NMF(4, random_state=0), acts, prov)
    small = restrict_bank(bank, np.array([0, 2]))
    assert torch.equal(small.components, bank.components[[0, 2]])
    assert small.concept_ids.tolist() == [0, 2]
    assert small.codes.shape == (60, 2)


def test_bank_save_load_round_trip(tmp_path):
    bank = CRAFT(4, patch_size=16, progress=False, seed=0).fit(_cnn(), "3", torch.rand(5, 3, 32, 32))
    path = bank.save(tmp_path / "bank.safetensors")
    again = ConceptBank.load(path)
    assert torch.equal(again.components, bank.components)
    assert torch.equal(again.codes, bank.codes)
    assert np.array_equal(again.provenance.boxes, bank.provenance.boxes)
    assert again.params == bank.params and again.layer == "3" and again.method == "craft"
    probe = torch.rand(2, 12, 4, 4)
    assert torch.equal(again.encode(probe), bank.encode(probe))
    assert again.activations is None  # not saved unless asked
    with_acts = ConceptBank.load(bank.save(tmp_path / "b2.safetensors", include_activations=True))
    assert torch.equal(with_acts.activations, bank.activations)


def test_bank_load_refuses_damaged_and_foreign_files(tmp_path):
    bank = CRAFT(3, patch_size=16, progress=False, seed=0).fit(_cnn(), "3", torch.rand(3, 3, 32, 32))
    path = tmp_path / "bank.safetensors"
    bank.save(path)
    data = path.read_bytes()
    (tmp_path / "short.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError, match="truncated"):
        ConceptBank.load(tmp_path / "short.safetensors")
    future = data.replace(b'\\"format_version\\": 1', b'\\"format_version\\": 9')
    assert future != data
    (tmp_path / "future.safetensors").write_bytes(future)
    with pytest.raises(FormatError, match="version"):
        ConceptBank.load(tmp_path / "future.safetensors")
    with pytest.raises(FileNotFoundError, match="`path`"):
        ConceptBank.load(tmp_path / "missing.safetensors")


def test_encode_decode_layouts():
    bank = CRAFT(3, patch_size=16, progress=False, seed=0).fit(_cnn(), "3", torch.rand(3, 3, 32, 32))
    maps = torch.rand(2, 12, 5, 6)
    codes = bank.encode(maps)
    assert codes.shape == (2, 3, 5, 6)
    rows = bank.encode(maps.permute(0, 2, 3, 1).reshape(-1, 12))
    assert torch.allclose(codes.permute(0, 2, 3, 1).reshape(-1, 3), rows)
    assert bank.decode(codes).shape == (2, 12, 5, 6)
    assert isinstance(bank.encode(maps.numpy()), np.ndarray)
    with pytest.raises(ValueError, match="channels"):
        bank.encode(torch.rand(2, 7, 5, 6))


def test_restrict_bank_slices_only_per_concept_arrays():
    from conceptkit.concepts import PCAConcepts

    rng = np.random.default_rng(0)
    acts = rng.normal(size=(50, 3)).astype(np.float32)  # C == k: mean_ (C,) must not be sliced
    prov = Provenance("image", np.arange(50), np.zeros((50, 4)), (4, 4))
    bank = bank_from_activations(PCAConcepts(3), acts, prov)
    small = restrict_bank(bank, np.array([0, 2]))
    assert np.array_equal(small.factorizer.mean_, bank.factorizer.mean_)
    assert np.array_equal(small.factorizer.components_, bank.factorizer.components_[[0, 2]])


def test_ace_codes_do_not_depend_on_keep_activations():
    """A segment of a dropped (outlier) cluster belongs to no concept whether or not the bank
    keeps its activations; with them kept it used to be re-encoded to the nearest kept
    centroid (524 of 555 rows moved in the review's repro)."""
    import warnings

    from conceptkit.concepts import ACE

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    images = torch.rand(6, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ACE's localisation warning, scikit-learn's KMeans
        kept, sliced = (ACE(5, seed=1, progress=False, min_cluster_size=0,
                            keep_activations=keep).fit(model, "3", images) for keep in (True, False))
    assert kept.extra["clusters_found"] > kept.n_concepts  # some clusters were dropped
    torch.testing.assert_close(kept.components, sliced.components)
    torch.testing.assert_close(kept.codes, sliced.codes)
    members = kept.codes.sum(1) > 0
    assert 0 < int(members.sum()) < kept.codes.shape[0]  # dropped clusters' rows have no concept
