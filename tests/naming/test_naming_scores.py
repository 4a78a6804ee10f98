"""The scores behind the names, against closed forms, a direct transcription and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from conceptkit.bottleneck._label_free import cubed_cosine_similarity
from conceptkit.naming import (
    ConceptName,
    ConceptNames,
    activation_auc,
    cos_cubed,
    iou_table,
    soft_wpmi,
    vocabulary,
)
from conceptkit.naming._clip import default_top_k
from conceptkit.naming._dissect import resolve_quantile


def _soft_wpmi_loop(sims, acts, top_k, a=10.0, lam=1.0, min_prob=1e-7, p_start=0.998,
                    p_end=0.97, prior="concepts"):
    """The formula of the module notes written out one concept and one word at a time."""
    sims, acts = np.asarray(sims, float), np.asarray(acts, float)
    n, m = sims.shape
    k = acts.shape[1]
    probs = np.exp(a * sims)
    probs /= probs.sum(1, keepdims=True)
    weights = [p_start - r / top_k * (p_start - p_end) for r in range(top_k)]
    given = np.zeros((k, m))
    for j in range(k):
        top = np.argsort(-acts[:, j], kind="stable")[:top_k]
        for w in range(m):
            given[j, w] = sum(np.log(1 + p * (probs[i, w] - 1) + min_prob)
                              for p, i in zip(weights, top))
    if prior == "concepts":
        word = np.log(np.exp(given).sum(0) / k)
    else:
        mean_in = float(np.mean(weights))
        word = top_k * np.log(1 + mean_in * (probs - 1) + min_prob).mean(0)
    return given - lam * word


@pytest.mark.parametrize("prior", ["concepts", "probe"])
def test_soft_wpmi_matches_the_formula(prior):
    rng = np.random.default_rng(0)
    sims = rng.uniform(-0.2, 0.4, size=(40, 7))
    acts = rng.normal(size=(40, 3))
    got = soft_wpmi(torch.tensor(sims), torch.tensor(acts), top_k=9, prior=prior).numpy()
    np.testing.assert_allclose(got, _soft_wpmi_loop(sims, acts, 9, prior=prior), rtol=1e-10,
                               atol=1e-10)


def test_soft_wpmi_picks_the_word_of_the_top_images():
    """Concept j fires on the images that show word j: every concept gets its own word."""
    rng = np.random.default_rng(1)
    shows = rng.random((300, 5)) < 0.3
    sims = 0.3 * shows + 0.02 * rng.normal(size=shows.shape)
    acts = shows[:, [2, 0, 4]] + 0.1 * rng.random((300, 3))
    for prior in ("concepts", "probe"):
        table = soft_wpmi(torch.tensor(sims), torch.tensor(acts), prior=prior)
        assert table.argmax(1).tolist() == [2, 0, 4]


def test_default_top_k_follows_the_reference_for_large_probes():
    assert default_top_k(10_000) == 100
    assert default_top_k(480) == 24
    assert default_top_k(20) == 5


def test_cos_cubed_equals_the_label_free_cubed_cosine():
    rng = np.random.default_rng(2)
    sims, acts = torch.tensor(rng.normal(size=(50, 4))), torch.tensor(rng.normal(size=(50, 3)))
    table = cos_cubed(sims, acts)
    for j in range(3):
        for w in range(4):
            expected = cubed_cosine_similarity(acts[:, j:j + 1], sims[:, w:w + 1])[0]
            assert float(table[j, w]) == pytest.approx(float(expected), rel=1e-9, abs=1e-12)


def test_iou_table_closed_form():
    """Two images 4x4; concept 0's map equals part 0's mask, concept 1's map is part 1's mask
    shifted by one column. With as many top pixels as each part has, IoU 1 and 1/3."""
    masks = torch.zeros(2, 2, 4, 4, dtype=torch.bool)
    masks[0, 0, :2, :2] = True          # part 0: 4 pixels in image 0
    masks[1, 1, 2:, :2] = True          # part 1: 4 pixels in image 1
    maps = torch.zeros(2, 2, 4, 4)
    maps[:, 0] = masks[:, 0].float()
    maps[1, 1, 2:, 1:3] = 1.0           # overlaps part 1 on 2 of its 4 pixels
    table = iou_table(maps, masks, quantile=4 / 32)
    np.testing.assert_allclose(table, [[1.0, 0.0], [0.0, 2 / 6]])


def test_resolve_quantile_auto_is_the_mean_part_share():
    masks = torch.zeros(2, 3, 10, 10, dtype=torch.bool)
    masks[0, 0, :5] = True   # 50 of 200 pixels
    masks[1, 2, :1] = True   # 10 of 200 pixels; part 1 never shows
    assert resolve_quantile("auto", masks) == pytest.approx((0.25 + 0.05) / 2)
    assert resolve_quantile(0.005, masks) == 0.005
    with pytest.raises(ValueError, match="quantile"):
        resolve_quantile("top", masks)


def test_activation_auc_equals_sklearn_with_ties():
    rng = np.random.default_rng(3)
    values = rng.integers(0, 5, size=200).astype(float)   # many ties
    positive = rng.random(200) < 0.3
    assert activation_auc(values, positive) == pytest.approx(roc_auc_score(positive, values))
    assert activation_auc(values, np.zeros(200, bool)) is None


def test_vocabularies_offline():
    imagenet = vocabulary("imagenet")
    assert len(imagenet) == 1000 and imagenet[967] == "espresso"
    words = vocabulary("imagenet21k")
    assert len(words) == len(set(words)) == 20101
    assert vocabulary(["red disk", " red disk", "cup"]) == ["red disk", "cup"]
    with pytest.raises(ValueError, match="at least two distinct words"):
        vocabulary(["red disk", " red disk"])  # one word names every concept, at score 0
    with pytest.raises(ValueError, match="vocabulary"):
        vocabulary("imagenet22")
    with pytest.raises(TypeError, match="vocabulary"):
        vocabulary(["ok", ""])


def test_concept_names_table_round_trip_and_repr():
    entries = (ConceptName(0, "red disk", 0.42, (("cyan diamond", 0.05),), 0.97),
               ConceptName(1, None, 0.01, (), None, None))
    names = ConceptNames("dissect", entries, "IoU", {"quantile": 0.05})
    assert names.labels() == ["red disk", "concept 1"]
    back = ConceptNames.from_dict(names.to_dict())
    assert back == names
    text = repr(names)
    assert "red disk" in text and "0.420" in text and "0.97" in text and "cyan diamond" in text
    with pytest.raises(ValueError, match="concept order"):
        ConceptNames("dissect", entries[::-1], "IoU")
    with pytest.raises(ValueError, match="name"):
        ConceptNames.from_dict({"method": "dissect", "entries": [{"concept": 0, "name": 3,
                                                                   "score": 0.1}]})
    # what an edited file may hold (its digest removed): each refused, none shown as is
    good = {"concept": 0, "name": "red disk", "score": 0.1, "trust": 0.9, "runner_ups": []}
    for change, match in (({"trust": 7.5}, "trust"), ({"name": ""}, "empty"),
                          ({"concept": 0.7}, "concept"), ({"runner_ups": [[None, 0.1]]}, "runner")):
        with pytest.raises(ValueError, match=match):
            ConceptNames.from_dict({"method": "dissect", "entries": [{**good, **change}]})
    with pytest.raises(ValueError, match="method"):
        ConceptNames.from_dict({"method": "bogus", "entries": [good]})
