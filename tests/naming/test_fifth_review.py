"""Found by the fifth (newcomer) review: after naming, "concept <j>" still picks concept j and
repeated names stay apart in every label; a name whose trust is below chance is kept and
flagged; wrong arguments of name_concepts / visualize are refused naming the public call."""

from __future__ import annotations

import numpy as np
import pytest

import conceptkit
from conceptkit.datasets import make_concept_dataset, reference_model
from conceptkit.naming import ConceptName, ConceptNames
from conceptkit.pipeline._naming import name_details

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module")
def named():
    """Class 2 (green triangle + yellow ring), four concepts: concepts 0 and 3 are named
    "yellow ring", 1 and 2 "green triangle"; concepts 2 and 3 fire harder on other classes'
    images (a checkerboard, a blue square), so over the whole probe their trust is far below
    chance."""
    data = make_concept_dataset(n_per_class=6, seed=0)
    cc = conceptkit.ConceptExplainer(reference_model(), "block4", n_concepts=4, seed=0,
                                     progress=False, importance="gradient_input").fit(data.images[data.labels == 2], 2)
    probe = make_concept_dataset(6, seed=1, split="test")
    names = cc.name_concepts("dissect", probe)
    return cc, names, probe


def test_concept_j_is_concept_j_after_naming(named):
    cc, names, _ = named
    assert [e.name for e in names] == ["yellow ring", "green triangle", "green triangle",
                                       "yellow ring"]
    for j in range(4):   # before: 'concept 0' is not the name of a concept
        np.testing.assert_array_equal(cc.top_examples(f"concept {j}", 2)[1],
                                      cc.top_examples(j, 2)[1])
        assert cc.concept_label(f"concept {j}") == cc.labels[j]
    with pytest.raises(ValueError, match=r"'concept 4' is out of range: this explanation has 4"):
        cc.top_examples("concept 4")
    # a name two concepts share is still refused, with the concepts that have it
    with pytest.raises(ValueError, match=r"'green triangle' names concepts \[1, 2\]; pass one"):
        cc.top_examples("green triangle")


def test_repeated_names_get_their_index_in_every_label(named):
    cc, names, _ = named
    assert cc.labels == ["yellow ring [0]", "green triangle [1]", "green triangle [2]",
                         "yellow ring [3]"]
    assert names.labels() == ["yellow ring", "green triangle", "green triangle", "yellow ring"]
    assert cc.concept_label(3) == "yellow ring [3]"
    np.testing.assert_array_equal(cc.top_examples("yellow ring [3]", 2)[1],
                                  cc.top_examples(3, 2)[1])
    shown = repr(cc)   # before: "top: yellow ring 0.313, green triangle 0.134, yellow ring ..."
    assert "yellow ring [0]" in shown and "yellow ring [3]" in shown
    assert "yellow ring 0." not in shown


def test_a_name_below_chance_is_kept_and_flagged(named):
    cc, names, _ = named
    trust = [e.trust for e in names]
    assert trust[0] > 0.9 and trust[1] > 0.9 and trust[2] < 0.1 and trust[3] < 0.1
    assert [e.below_chance for e in names] == [False, False, True, True]
    assert names[2].name == "green triangle"   # named by its score, as the docs say
    table = repr(names)
    assert "(! = below chance, 0.5)" in table
    rows = {int(line.split()[0]): line for line in table.splitlines()[2:6]}
    assert f"{trust[2]:5.2f}!" in rows[2] and f"{trust[3]:5.2f}!" in rows[3]
    assert "!" not in rows[0] and "!" not in rows[1]
    flagged = [n for n in names.notes if "below chance (0.5)" in n]
    assert len(flagged) == 2
    assert flagged[0].startswith(f"concept 2 ('green triangle') has trust {trust[2]:.2f}")
    assert "class_images_only" in flagged[0]
    assert "trust below chance" in name_details(names[2], names.score_name)
    assert "trust below chance" not in name_details(names[0], names.score_name)
    # across all classes the same concepts get names they are trusted for: nothing flagged
    again = conceptkit.naming.name_concepts(cc, "dissect", named[2], class_images_only=False)
    assert not any(e.below_chance for e in again)
    assert not any("below chance" in n for n in again.notes)


def test_below_chance_of_a_plain_table():
    entries = (ConceptName(0, "wing", 0.3, trust=0.2), ConceptName(1, "tail", 0.3, trust=0.5),
               ConceptName(2, None, 0.01, trust=0.1), ConceptName(3, "beak", 0.3))
    table = ConceptNames("dissect", entries, "IoU")
    assert [e.below_chance for e in table] == [True, False, False, False]   # 0.5 is chance
    assert " 0.20!" in repr(table) and " 0.50 " in repr(table)
    assert "!" not in repr(ConceptNames("dissect", (ConceptName(0, "tail", 0.3, trust=0.5),),
                                        "IoU"))
    assert ConceptNames.from_dict(table.to_dict())[0].below_chance


def test_wrong_arguments_of_name_concepts_name_the_public_call(named):
    cc, _, probe = named
    # before: "name_by_masks() missing 1 required positional argument: 'probe'"
    with pytest.raises(TypeError, match=r"name_concepts\('dissect'\) needs `probe`: probe "
                                        r"images with part masks"):
        cc.name_concepts("dissect")
    with pytest.raises(TypeError, match=r"needs `probe` and `clip`"):
        cc.name_concepts("clip")
    with pytest.raises(TypeError, match=r"unknown argument\(s\) \['prob'\] \(did you mean "
                                        r"`probe`\?\); it takes probe, model"):
        cc.name_concepts("dissect", prob=probe)
    with pytest.raises(TypeError, match=r"\['topk'\] \(did you mean `top_k`\?\)"):
        cc.name_concepts("clip", probe, object(), topk=3)
    with pytest.raises(TypeError, match=r"`probe` both by position and by name"):
        cc.name_concepts("dissect", probe, probe=probe)
    with pytest.raises(TypeError, match=r"takes at most 1 argument\(s\) by position"):
        cc.name_concepts("dissect", probe, 0.1)
    with pytest.raises(TypeError, match=r"`visualize` got unknown option\(s\) \['step'\] "
                                        r"\(did you mean `steps`\?\)"):
        cc.visualize(0, step=4, progress=False)


def test_naming_by_classes_without_activations_says_how_to_pass_images(named, tmp_path):
    cc, _, _ = named
    loaded = conceptkit.load(cc.save(tmp_path / "cc.safetensors"))
    with pytest.raises(ValueError, match=r"loaded without its activations: pass the class's "
                                         r"images as `images`, e.g. name_concepts\('classes', "
                                         r"images=class_images\)"):
        loaded.name_concepts("classes")


def test_visualize_suggests_only_options_it_takes():
    """`visualize` never suggests `preprocess`, which it refuses (the explanation's own)."""
    from conceptkit.pipeline._naming import _check_visualize_options

    with pytest.raises(TypeError) as err:
        _check_visualize_options({"preprocess": None})
    assert "`preprocess`?" not in str(err.value) and "explanation's" in str(err.value)
    with pytest.raises(TypeError, match="did you mean `steps`"):
        _check_visualize_options({"step": 4})
