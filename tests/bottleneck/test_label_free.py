"""Label-free CBM: filters, cos³ projection and the recovered bottleneck (its elastic-net solver:
test_sparse.py).

The end-to-end check uses a CLIP stand-in built from the reference dataset's concept labels:
an image embeds as ``P · concepts(image) + noise`` (``P`` orthonormal concept directions), the
text of concept ``j`` embeds as ``P[:, j]``, unrelated words embed in the orthogonal complement.
So the truth is known, and the label-free CBM must find each class's causal concepts.
"""

import hashlib

import numpy as np
import pytest
import torch
from torch import nn

from conceptkit.bottleneck import ClipEncoders, LabelFreeCBM
from conceptkit.bottleneck._concept_filter import filter_by_text, top5_activation
from conceptkit.bottleneck._label_free import cubed_cosine_similarity
from conceptkit.datasets import make_concept_dataset, reference_model
from conceptkit.extraction import split_model

# -- cos³ similarity and filters -------------------------------------------------------------------


def test_cubed_cosine_similarity_formula():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 3)), rng.normal(size=(50, 3))
    expected = []
    for j in range(3):
        u = (a[:, j] - a[:, j].mean()) ** 3
        v = (b[:, j] - b[:, j].mean()) ** 3
        expected.append(u @ v / np.linalg.norm(u) / np.linalg.norm(v))
    got = cubed_cosine_similarity(torch.tensor(a), torch.tensor(b)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    # invariant to positive scaling and shifting of a column; 1 for identical columns
    scaled = torch.tensor(a) * torch.tensor([2.0, 0.5, 3.0]) + 7
    np.testing.assert_allclose(cubed_cosine_similarity(torch.tensor(a), scaled).numpy(), 1.0, rtol=1e-10)


def _unit(*rows):
    return torch.nn.functional.normalize(torch.tensor(rows, dtype=torch.float64), dim=1)


def test_text_filters_follow_the_reference_rules():
    concepts = ["wing", "A Wing", "feather", "plume", "sky", "an extremely long concept phrase!", "Robin", "beak"]
    classes = ["robin", "eagle"]
    #                wing     A Wing   feather           plume            sky      long     Robin    beak
    concept_emb = _unit([1, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0.1, 0], [0, 1, 0.12, 0], [0, 0, 0, 1],
                        [0, 0, 1, 1], [0, 0, 1, 0], [0.6, 0, 0.8, 0])
    class_emb = _unit([0, 0, 1, 0], [0, 0.5, 0.5, 0.7])
    removed = filter_by_text(concepts, classes, concept_emb, class_emb)
    assert removed["A Wing"] == "duplicate of 'wing'"
    assert removed["an extremely long concept phrase!"] == "longer than 30 characters"
    assert removed["Robin"] == "is the class name 'robin'"
    assert "beak" not in removed  # cosine 0.8 to 'robin' < 0.85
    # feather and plume (cosine ≈ 0.9998): the one with the lower summed similarity goes
    sims = concept_emb @ concept_emb.T
    kept_ids = [0, 2, 3, 4, 7]
    summed = {i: float(sims[i, kept_ids].sum() - 1) for i in (2, 3)}
    loser = "feather" if summed[2] < summed[3] else "plume"
    assert removed[loser].startswith("too similar to")
    assert set(removed) == {"A Wing", "an extremely long concept phrase!", "Robin", loser}
    strict = filter_by_text(concepts, classes, concept_emb, class_emb, class_cutoff=0.75)
    assert strict["beak"].startswith("too similar to class 'robin'")


def test_top5_activation():
    sims = torch.tensor(np.random.default_rng(0).normal(size=(40, 4)))
    expected = np.sort(sims.numpy(), axis=0)[-5:].mean(0)
    np.testing.assert_allclose(top5_activation(sims).numpy(), expected)


# -- the CLIP stand-in and the recovered bottleneck -----------------------------------------------


def _key(image):
    return hashlib.sha1(image.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


class OracleClip:
    """CLIP stand-in that knows the concepts of every image of the given datasets."""

    def __init__(self, datasets, dim=32, noise=0.1, seed=0):
        first = datasets[0]
        basis = torch.linalg.qr(torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed)))[0]
        k = first.n_concepts
        self.directions, self.unrelated = basis[:, :k], basis[:, k:]
        self.names, self.noise, self.dim = list(first.concept_names), noise, dim
        self.class_text = {name: self.directions[:, list(pair)].sum(1)
                           for name, pair in zip(first.class_names, first.class_concepts)}
        self.table = {_key(img): c for ds in datasets for img, c in zip(ds.images, ds.concepts)}
        self.text_calls = 0

    def encode_image(self, images):
        rows = []
        for image in images:
            key = _key(image)
            noise = torch.randn(self.dim, generator=torch.Generator().manual_seed(int(key[:8], 16)))
            rows.append(self.directions @ self.table[key] + self.noise * noise)
        return torch.stack(rows)

    def encode_text(self, texts):
        self.text_calls += 1
        rows = []
        for text in texts:
            if text in self.names:
                rows.append(self.directions[:, self.names.index(text)])
            elif text in self.class_text:
                rows.append(self.class_text[text])
            else:  # unrelated words live in the orthogonal complement: CLIP never sees them
                seed = int(hashlib.sha1(text.encode()).hexdigest()[:8], 16)
                rows.append(self.unrelated @ torch.randn(self.unrelated.shape[1],
                                                         generator=torch.Generator().manual_seed(seed)))
        return torch.stack(rows)


@pytest.fixture(scope="module")
def reference_setup():
    splits = {s: make_concept_dataset(n, seed=0, split=s, spurious=False)
              for s, n in (("train", 80), ("val", 25), ("test", 50))}
    clip = OracleClip(list(splits.values()))
    backbone, _ = split_model(reference_model(), "flatten")  # pooled block4 features (N, 64)
    train = splits["train"]
    unrelated = ["wooden table", "blue sky", "a photo of a dog", "a very long concept description here"]
    candidates = list(train.concept_names) + unrelated + ["a red disk", train.class_names[0]]
    model = LabelFreeCBM(backbone, clip, candidates, list(train.class_names), nnz_per_class=4,
                         seed=0, progress=False)
    model.fit(train.images, train.labels, splits["val"].images, splits["val"].labels)
    return model, splits, clip


def _embeddings(model, images):
    return model.features(images), ClipEncoders.wrap(model.clip).image_embeddings(images)


def test_label_free_cbm_recovers_the_causal_concepts(reference_setup):
    model, splits, _ = reference_setup
    train = splits["train"]
    for c, pair in enumerate(train.class_concepts):
        top = [name for name, _ in model.top_concepts(c, 2)]
        causal = {train.concept_names[j] for j in pair}
        assert causal == set(top), (train.class_names[c], top)
    test = splits["test"]
    assert float((model.predict(test.images) == test.labels).double().mean()) >= 0.95
    assert model.nnz_per_class_.max() <= 4


def test_label_free_cbm_filters_with_reasons(reference_setup):
    model, splits, _ = reference_setup
    removed = model.removed_
    for word in ("wooden table", "blue sky", "a photo of a dog"):
        assert removed[word].startswith("weakly activated")
    assert removed["a very long concept description here"] == "longer than 30 characters"
    assert removed["a red disk"] == "duplicate of 'red disk'"
    assert removed[splits["train"].class_names[0]].startswith("is the class name")
    for name, reason in removed.items():
        if reason.startswith("not interpretable"):
            assert name in splits["train"].concept_names
    assert set(model.concepts_).isdisjoint(removed)
    assert torch.all(model.concept_similarity_ > 0.45)
    assert model.projection_.shape == (len(model.concepts_), 64)


def test_label_free_cbm_save_load_and_transform(reference_setup, tmp_path):
    model, splits, _ = reference_setup
    test = splits["test"]
    loaded = LabelFreeCBM.load(model.save(tmp_path / "lf.safetensors"), model.backbone)
    torch.testing.assert_close(loaded.decision_function(test.images), model.decision_function(test.images))
    assert loaded.concepts_ == model.concepts_ and loaded.removed_ == model.removed_
    acts = model.transform(splits["train"].images)  # z-scored on the training split
    np.testing.assert_allclose(acts.mean(0).numpy(), 0, atol=1e-4)
    np.testing.assert_allclose(acts.std(0).numpy(), 1, atol=1e-4)
    with pytest.raises(ValueError, match="clip` is required"):
        loaded.fit(test.images, test.labels)
    # a backbone of another width: refused by name (a matmul shape error inside torch before)
    other = LabelFreeCBM.load(tmp_path / "lf.safetensors", nn.Sequential(
        nn.AdaptiveAvgPool2d(1), nn.Flatten()))  # 3 features (the colours), not 64
    with pytest.raises(ValueError, match="`backbone` gives features of shape"):
        other.predict(test.images[:4])


def test_label_free_cbm_is_deterministic_and_clonable(reference_setup):
    from sklearn.base import clone

    model, splits, _ = reference_setup
    train, val = splits["train"], splits["val"]
    feats, emb = _embeddings(model, train.images)
    val_feats, val_emb = _embeddings(model, val.images)
    twin = clone(model).fit_from_embeddings(feats, emb, train.labels, val_feats, val_emb, val.labels)
    torch.testing.assert_close(twin.weight_, model.weight_, rtol=0, atol=0)
    assert twin.get_params()["nnz_per_class"] == 4
    with pytest.raises(ValueError, match="no concept is left"):
        clone(model).set_params(clip_cutoff=0.99).fit_from_embeddings(
            feats, emb, train.labels, val_feats, val_emb, val.labels)


def test_label_free_cbm_argument_errors(reference_setup):
    model, splits, _ = reference_setup
    train = splits["train"]
    from sklearn.base import clone

    with pytest.raises(ValueError, match="class_names"):
        clone(model).set_params(class_names=["only"]).fit(train.images, train.labels)
    with pytest.raises(ValueError, match="labels"):
        clone(model).fit(train.images, train.labels[:-1])
    with pytest.raises(ValueError, match="not fitted"):
        clone(model).predict(train.images)
    with pytest.raises(ValueError, match="4 dimensions"):
        model.predict(train.images[0])


def test_label_free_cbm_refuses_settings_and_embeddings_that_would_mislead(reference_setup):
    model, splits, _ = reference_setup
    train, val = splits["train"], splits["val"]
    from sklearn.base import clone

    feats, emb = _embeddings(model, train.images)
    vfeats, vemb = _embeddings(model, val.images)
    # l1_ratio 0 gave a head of exact zeros (a constant predictor) without a word
    for setting, match in (({"l1_ratio": 0.0}, "`l1_ratio` must be in \\(0, 1\\]"),
                           ({"proj_lr": -1.0}, "`proj_lr`"),
                           ({"val_fraction": float("nan")}, "`val_fraction`"),
                           ({"clip_cutoff": "x"}, "`clip_cutoff`")):
        with pytest.raises((ValueError, TypeError), match=match):
            clone(model).set_params(**setting).fit_from_embeddings(
                feats, emb, train.labels, vfeats, vemb, val.labels)
    one_class = torch.zeros_like(train.labels)
    bad_inputs = ((feats, emb[:-1], train.labels, vfeats, vemb, val.labels, "`clip_image_emb`"),
                  (feats, emb, train.labels, vfeats[:, :-1], vemb, val.labels, "`val_features`"),
                  (feats.numpy(), emb, train.labels, vfeats, vemb, val.labels, None),
                  (feats * float("nan"), emb, train.labels, vfeats, vemb, val.labels, "NaN"),
                  (feats, emb, one_class, vfeats, vemb, val.labels, "one class"))
    for *args, match in bad_inputs:
        if match is None:  # numpy arrays are taken as tensors are
            clone(model).fit_from_embeddings(*args)
            continue
        with pytest.raises(ValueError, match=match):
            clone(model).fit_from_embeddings(*args)
