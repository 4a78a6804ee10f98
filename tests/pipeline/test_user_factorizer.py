"""A user's factorizer: its number of concepts is used, a contradiction is refused, ``seed``
reaches it when its ``random_state`` is unset, and the user's object is never changed."""

import numpy as np
import pytest
import torch
from _shared import two_block_cnn

import conceptkit
from conceptkit.concepts import ACE, CRAFT, ICE, NMF, KMeansConcepts, SemiNMF, TopKSAE

IMAGES = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def explain(factorizer, seed=0, **kwargs):
    explainer = conceptkit.ConceptExplainer(two_block_cnn(), "block2", factorizer=factorizer,
                                            seed=seed, progress=False, **kwargs)
    return explainer.fit(IMAGES, 1)


def test_k_comes_from_the_factorizer():
    result = explain(SemiNMF(4))
    assert result.n_concepts == 4 and result.components.shape == (4, 24)
    assert isinstance(result.bank.factorizer, SemiNMF)
    assert result.params["n_concepts"] == 4


def test_default_is_ten_without_a_factorizer():
    result = explain(None)
    assert result.n_concepts == 10 and result.params["n_concepts"] == 10


def test_same_k_twice_is_fine():
    assert explain(SemiNMF(3), n_concepts=3).n_concepts == 3


def test_contradicting_k_is_refused_before_any_work():
    with pytest.raises(ValueError, match=r"`n_concepts`=6 contradicts `factorizer`=SemiNMF\(n_concepts=4\)"):
        conceptkit.ConceptExplainer(two_block_cnn(), "block2", n_concepts=6, factorizer=SemiNMF(4))
    with pytest.raises(ValueError, match="contradicts"):
        CRAFT(6, factorizer=NMF(4), progress=False).fit(two_block_cnn(), "block2", IMAGES)


def test_seed_reaches_an_unseeded_factorizer_without_changing_it():
    user = SemiNMF(4)
    first, second = explain(user, seed=5), explain(user, seed=5)
    assert torch.equal(first.components, second.components)
    assert first.bank.factorizer.random_state == 5
    assert user.random_state is None and not hasattr(user, "components_")
    other = explain(user, seed=6)
    assert not torch.allclose(other.components, first.components)


def test_a_random_state_the_user_set_wins_over_seed():
    a = explain(SemiNMF(4, random_state=11), seed=0)
    b = explain(SemiNMF(4, random_state=11), seed=1)
    assert a.bank.factorizer.random_state == 11
    assert torch.equal(a.components, b.components)


@pytest.mark.parametrize("method, factorizer, k", [
    (ICE, NMF(3), 3), (CRAFT, NMF(5, max_iter=50), 5), (ACE, KMeansConcepts(4), None)])
def test_discovery_methods_take_k_and_seed_from_the_same_rule(method, factorizer, k):
    kwargs = {"min_cluster_size": 0, "n_segments": (6,)} if method is ACE else {}
    banks = [method(factorizer=factorizer, seed=2, progress=False, **kwargs).fit(
        two_block_cnn(), "block2", IMAGES) for _ in range(2)]
    assert banks[0].factorizer.random_state == 2 and factorizer.random_state is None
    np.testing.assert_array_equal(banks[0].components.numpy(), banks[1].components.numpy())
    if k is not None:
        assert banks[0].n_concepts == k
    else:  # ACE keeps the clusters that pass its rule, out of the factorizer's 4
        assert banks[0].params["n_concepts"] == 4 and banks[0].n_concepts <= 4


def _tiny_vit():
    from conceptkit.datasets import small_vit

    torch.manual_seed(0)
    return small_vit(n_classes=3, embed_dim=32, depth=2, n_heads=2).eval()


VIT_IMAGES = torch.rand(6, 3, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("method", ["ice", "craft"])
def test_without_a_factorizer_transformer_tokens_get_the_seeded_token_factorizer(method):
    """Tokens are signed and NMF refuses them, so with no factorizer ICE and CRAFT use a top-k
    sparse autoencoder seeded by ``seed`` (``token_factorizer``): exactly the explanation that
    passing ``TopKSAE(k, top_k=min(2, k), epochs=200, batch_size=64, random_state=seed,
    distributed=False, n_iter_no_change=1, normalize=False)`` gives (it stops at the first
    epoch without progress and trains on the tokens as they are: what was measured), and the
    result names it. The layer's kind is read while the model is prepared."""
    model = _tiny_vit()
    given_factorizer = TopKSAE(3, top_k=2, epochs=200, batch_size=64, random_state=5,
                               distributed=False, n_iter_no_change=1, normalize=False)
    fits = [conceptkit.ConceptExplainer(model, "blocks.0", 3, method, seed=5, progress=False,
                                        factorizer=factorizer).fit(VIT_IMAGES, 1)
            for factorizer in (None, given_factorizer)]
    default, given = fits
    assert isinstance(default.bank.factorizer, TopKSAE)
    assert default.bank.factorizer.random_state == 5 and default.bank.factorizer.top_k == 2
    assert default.params["factorizer"] == "TopKSAE" == given.params["factorizer"]
    assert torch.equal(torch.as_tensor(default.components), torch.as_tensor(given.components))
    np.testing.assert_array_equal(default.importances, given.importances)
    # the same default through discover() alone, which has not prepared the model
    bank = conceptkit.ConceptExplainer(model, "blocks.0", 3, method, seed=5,
                                       progress=False).discover(VIT_IMAGES)
    assert isinstance(bank.factorizer, TopKSAE)
    assert torch.equal(torch.as_tensor(bank.components), torch.as_tensor(given.components))
    # one concept: it is the one active
    assert conceptkit.pipeline.token_factorizer(1, 0).top_k == 1
    # minibatches of 64 as measured (one class: 30 images x 64 tokens), at most 30 per epoch
    # beyond that (an atlas of 3,000 images x 64 tokens: 6,400 rows each), resolved at fit time
    # unless the rows are given
    assert conceptkit.pipeline.token_factorizer(10, 0).batch_size == "auto"
    sizes = [conceptkit.pipeline.token_factorizer(10, 0, n_rows=n).batch_size
             for n in (96, 1920, 192_000)]
    assert sizes == [64, 64, 6400]
    auto = TopKSAE(3, batch_size="auto")
    assert [auto._rows_per_batch(n) for n in (96, 1920, 1921, 192_000)] == [64, 64, 65, 6400]


def test_convolutional_layers_keep_nmf_and_a_users_nmf_on_tokens_is_still_refused():
    from conceptkit.concepts._checks import NegativeActivationsError

    assert explain(None).params["factorizer"] == "NMF"
    explainer = conceptkit.ConceptExplainer(_tiny_vit(), "blocks.0", 3, factorizer=NMF(3),
                                            progress=False)
    with pytest.raises(NegativeActivationsError, match="factorizer=SemiNMF"):
        explainer.fit(VIT_IMAGES, 1)


def test_an_atlas_of_transformer_tokens_defaults_to_the_token_factorizer():
    labels = torch.arange(6) % 3
    atlas = conceptkit.ConceptAtlas(_tiny_vit(), "blocks.0", 3, method="ice",
                                    importance="gradient_input", seed=0, progress=False)
    atlas.fit(VIT_IMAGES, labels)
    assert isinstance(atlas.data_.bank.factorizer, TopKSAE)


def test_an_explanation_of_tokens_says_what_the_vit_worlds_measured(tmp_path):
    """The ViT worlds' measured limits are told on every explanation of tokens (notes, report,
    after a save and load), and on no explanation of a convolutional layer."""
    from conceptkit.pipeline._notes import TOKEN_LIMITATION

    vit = conceptkit.ConceptExplainer(_tiny_vit(), "blocks.0", 3, seed=0, tokens="patches",
                                      progress=False).fit(VIT_IMAGES, 1)
    assert vit.params["layer_gives_tokens"] and TOKEN_LIMITATION in vit.notes()
    assert "Spearman 0.62 and 0.74" in TOKEN_LIMITATION and "0.67 of the classes" in TOKEN_LIMITATION
    loaded = conceptkit.load(vit.save(tmp_path / "vit.safetensors"))
    assert TOKEN_LIMITATION in loaded.notes()
    page = vit.report(tmp_path / "report", n_images=2)
    assert "This layer gives transformer tokens." in open(page, encoding="utf-8").read()
    cnn = explain(None)
    assert cnn.params["layer_gives_tokens"] is False and TOKEN_LIMITATION not in cnn.notes()


def test_dominant_maps_of_an_explanation_of_tokens():
    """``kind="dominant"`` keeps each position for its strongest concept (relative to the
    bank's fitted codes): the fitted images' maps, new images' maps and the maps module agree,
    and every position has one concept with a positive code at most."""
    from conceptkit.maps import dominant_maps

    model = _tiny_vit()
    explainer = conceptkit.ConceptExplainer(model, "blocks.0", 3, seed=0, progress=False)
    cc = explainer.fit(VIT_IMAGES, 1)
    fitted = cc.concept_maps(kind="dominant", image_size=(8, 8))
    assert cc.concept_maps().shape == (6, 3, 64, 64)
    expected = dominant_maps(cc.activations, cc.bank)
    # the codes cached at fit time and a fresh encoding differ by solver tolerance only, which
    # can move the winner where two concepts tie
    assert (fitted - expected).abs().gt(1e-3).float().mean() < 0.02
    assert int((fitted > 0).sum(dim=1).max()) <= 1
    new = cc.concept_maps(VIT_IMAGES[:2], kind="dominant")
    assert new.shape == (2, 3, 64, 64)
    assert (new - dominant_maps(cc.activations[:2], cc.bank, (64, 64))).abs().gt(1e-3).float().mean() < 0.02
