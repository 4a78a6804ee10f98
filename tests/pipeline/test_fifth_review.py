"""Fifth review of the pipeline: the factorizer registry and saved class names, importances
that cancel, zero codes with pixel ablation, method_kwargs that repeat the explainer's own
arguments, settings changed after construction, ACE's n_segments / fill / exemplars, and
top_examples that pad with rows where the concept is absent."""

import math
import warnings

import numpy as np
import pytest
import torch
from _shared import two_block_cnn

import conceptkit
import conceptkit.concepts as cc
from conceptkit import ClassConcepts
from conceptkit.concepts import ACE, ConceptBank, PCAConcepts, SparseDictionary, _base
from conceptkit.concepts._methods import bank_from_activations, restrict_bank
from conceptkit.extraction import positions, segments
from conceptkit.importance._engine import CANCELLED_SHARE, check_not_cancelled
from conceptkit.io import FormatError

pytestmark = pytest.mark.filterwarnings("ignore:NMF solver 'cd' reached max_iter")

IMAGES = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(3))
ACE_OPTIONS = {"n_segments": (4, 8), "min_cluster_size": 1}


def explainer(**kwargs):
    kwargs.setdefault("seed", 0)
    return conceptkit.ConceptExplainer(two_block_cnn(), "block2", progress=False, **kwargs)


@pytest.fixture
def registry():
    """The factorizer registry as it was before the test (test classes are forgotten)."""
    names, qualified = dict(_base.FACTORIZERS), dict(_base._QUALIFIED)
    yield
    _base.FACTORIZERS.clear()
    _base.FACTORIZERS.update(names)
    _base._QUALIFIED.clear()
    _base._QUALIFIED.update(qualified)


def small_bank(factorizer):
    maps = torch.rand(3, 8, 4, 4, generator=torch.Generator().manual_seed(0))
    rows = positions(maps, image_size=(16, 16))
    return bank_from_activations(factorizer, rows.rows, rows.provenance, layer="block2",
                                 method="ice")


# ---------------------------------------------------------------- 1 and 5: the registry
def test_a_user_class_named_like_a_library_factorizer_does_not_replace_it(registry, tmp_path):
    bank = small_bank(cc.NMF(3, random_state=0))
    path = bank.save(tmp_path / "nmf.safetensors")
    expected = np.asarray(bank.encode(bank.activations[:2]))

    def user_helper():
        class NMF(cc.NMF):  # a user's tweak, never given to conceptkit
            def _transform(self, X):
                return super()._transform(X) * 0 + 42.0
        return NMF

    mine = user_helper()
    assert cc.FACTORIZERS["NMF"] is conceptkit.concepts._nmf.NMF
    loaded = ConceptBank.load(path)
    assert type(loaded.factorizer) is conceptkit.concepts._nmf.NMF
    np.testing.assert_allclose(np.asarray(loaded.encode(bank.activations[:2])), expected)
    # ACE's restriction rebuilds the bank's own class, whatever is registered under its name
    assert type(restrict_bank(bank, np.array([0, 2])).factorizer) is conceptkit.concepts._nmf.NMF
    # the user's class is saved under its qualified name and loads back as itself
    theirs = small_bank(mine(3, random_state=0))
    assert type(restrict_bank(theirs, np.array([1])).factorizer) is mine
    meta = theirs.to_state()[1]["factorizer"]
    assert meta["name"] == f"{__name__}.{mine.__qualname__}"
    again = ConceptBank.load(theirs.save(tmp_path / "theirs.safetensors"))
    assert type(again.factorizer) is mine
    assert float(np.asarray(again.encode(bank.activations[:1])).max()) == 42.0


def test_library_classes_keep_the_bare_name_files_always_recorded():
    for factorizer in (cc.NMF(3, random_state=0), cc.KMeansConcepts(3, random_state=0)):
        assert small_bank(factorizer).to_state()[1]["factorizer"]["name"] == \
            type(factorizer).__name__


def test_a_private_factorizer_is_refused_at_save_not_at_load(registry, tmp_path):
    class _Mine(cc.NMF):
        pass

    bank = small_bank(_Mine(3, random_state=0))
    with pytest.raises(ValueError, match=r"\._Mine' is not registered .*starts with '_'"):
        bank.save(tmp_path / "mine.safetensors")
    assert not (tmp_path / "mine.safetensors").exists()


def test_loading_a_class_not_defined_here_names_it(registry, tmp_path):
    class Elsewhere(cc.NMF):
        pass

    path = small_bank(Elsewhere(3, random_state=0)).save(tmp_path / "elsewhere.safetensors")
    del _base.FACTORIZERS["Elsewhere"]  # as in a process that never defined it
    del _base._QUALIFIED[f"{__name__}.{Elsewhere.__qualname__}"]
    with pytest.raises(FormatError, match=r"class 'Elsewhere', which is not defined in this "
                                          r"process: define or import"):
        ConceptBank.load(path)


# ---------------------------------------------------------------- 2: importances that cancel
@pytest.mark.parametrize("importance", ["gradient_input", "occlusion"])
def test_centred_codes_with_a_pooled_linear_head_are_refused(importance):
    ex = explainer(method="ice", importance=importance, factorizer=PCAConcepts(3))
    with pytest.raises(ValueError, match=r"is 0 up to rounding.*PCAConcepts's codes are centred"
                                         r".*pixel_ablation"):
        ex.fit(IMAGES, 1)


def test_the_cancellation_check_reads_the_share_of_the_largest_value():
    per_input = np.array([[1e-3, -2e-3], [-1e-3, 2e-3]])
    with pytest.raises(ValueError, match="cancel"):
        check_not_cancelled(per_input + 1e-9, "gradient_input")
    check_not_cancelled(per_input + 3 * CANCELLED_SHARE * 2e-3, "gradient_input")  # means
    check_not_cancelled(np.abs(per_input) * 1e-12, "sobol")  # one sign: cannot cancel
    check_not_cancelled(np.zeros((2, 2)), "occlusion")  # all 0: the engine warns about it


def test_non_centred_codes_pass_the_cancellation_check():
    result = explainer(method="ice", importance="gradient_input", n_concepts=3).fit(IMAGES, 1)
    assert np.abs(result.importances).max() > CANCELLED_SHARE * np.abs(
        result.importance.per_input).max()


# ---------------------------------------------------------------- 3: method_kwargs
@pytest.mark.parametrize("key, value", [("seed", 123), ("patch_size", 8),
                                        ("factorizer", cc.NMF(3)), ("n_concepts", 3),
                                        ("batch_size", 4)])
def test_method_kwargs_may_not_repeat_the_explainers_own_arguments(key, value):
    with pytest.raises(ValueError, match=rf"`method_kwargs` sets '{key}', which is the "
                                         rf"explainer's own `{key}` argument"):
        explainer(method="craft", method_kwargs={key: value})


def test_method_kwargs_are_checked_when_the_explainer_is_made():
    with pytest.raises(TypeError, match=r"`method_kwargs` has \['stride'\], which "
                                        r"method='ice' does not take; it takes "
                                        r"\['keep_activations'\]"):
        explainer(method="ice", method_kwargs={"stride": 4})
    with pytest.raises(ValueError, match="`fill` must be <= 1.0"):
        explainer(method="ace", method_kwargs={"fill": 7.0})


# ---------------------------------------------------------------- 4: zero codes, pixel importance
def test_zero_codes_are_refused_with_pixel_ablation_too():
    ex = explainer(method="craft", factorizer=SparseDictionary(3, alpha=1e6))
    assert ex.importance == "pixel_ablation"
    with pytest.raises(ValueError, match=r"`bank.encode\(activations\)` is zero for every "
                                         r"input.*SparseDictionary.*penalty `alpha`"):
        ex.fit(IMAGES, 1)


# ---------------------------------------------------------------- 7: settings changed later
def test_settings_changed_after_construction_are_checked_at_fit():
    ex = explainer(method="craft", patch_size=8, n_concepts=3)
    ex.method = "ace"
    with pytest.raises(ValueError, match="`patch_size` is the side of CRAFT's crops"):
        ex.fit(IMAGES, 1)
    with pytest.raises(ValueError, match="`patch_size` is the side of CRAFT's crops"):
        ex.discover(IMAGES)
    ex = explainer(method="craft", n_concepts=3)
    ex.method = "pca"
    with pytest.raises(ValueError, match=r"`method` must be one of \['craft', 'ice', 'ace'\]"):
        ex.fit(IMAGES, 1)
    ex = explainer(method="craft", n_concepts=3)
    ex.importance = "bogus"
    with pytest.raises(ValueError, match=r"`importance` must be one of"):
        ex.fit(IMAGES, 1)
    ex = explainer(method="craft", n_concepts=3)
    ex.method_kwargs = {"seed": 5}
    with pytest.raises(ValueError, match="`method_kwargs` sets 'seed'"):
        ex.fit(IMAGES, 1)


def test_designs_dropped_by_a_later_importance_are_not_dropped_silently():
    """tests/pipeline/test_designs_setting.py keeps this pair working at fit (the designs go
    unused); it is no longer silent."""
    ex = explainer(method="craft", importance="sobol", n_designs=64, n_concepts=3)
    ex.importance = "gradient_input"
    with pytest.warns(UserWarning, match=r"`n_designs`=64 went unused: `importance` was changed "
                                         r"to 'gradient_input'"):
        result = ex.fit(IMAGES, 1)
    assert result.params["n_designs"] is None and ex.n_designs is None
    ex.importance = "sobol"  # the value given is kept for Sobol
    assert ex.n_designs == 64


def test_the_default_designs_follow_the_importance():
    ex = explainer(method="craft", importance="sobol", n_concepts=3)
    assert ex.n_designs == 32
    ex.importance = "gradient_input"  # 32 was the default, not a value given: no refusal
    assert ex.n_designs is None
    result = ex.fit(IMAGES, 1)
    assert result.params["n_designs"] is None and result.params["importance"] == "gradient_input"


# ---------------------------------------------------------------- 8: ACE's n_segments and fill
def test_ace_takes_one_int_of_segments():
    assert ACE(n_segments=10).n_segments == (10,)
    assert ACE(n_segments=np.array([4, 8])).n_segments == (4, 8)
    bank = ACE(3, n_segments=8, min_cluster_size=0, seed=0, progress=False).fit(
        two_block_cnn(), "block2", IMAGES)
    assert bank.params["n_segments"] == [8]
    assert segments(IMAGES[:1], 8, progress=False).provenance.extra["n_segments"] == [8]


@pytest.mark.parametrize("value, error, match", [
    ("10", TypeError, "`n_segments` must be an int or a sequence of ints"),
    ((), ValueError, "`n_segments` must give at least one resolution"),
    ((10, 1), ValueError, "`n_segments` must be >= 2"),
    ((10.5,), TypeError, "`n_segments` must be an integer")])
def test_ace_refuses_bad_segment_counts_when_made(value, error, match):
    with pytest.raises(error, match=match):
        ACE(n_segments=value)


@pytest.mark.parametrize("fill, error, match", [
    (math.nan, ValueError, "`fill` must be finite"), (7.0, ValueError, r"`fill` must be <= 1.0"),
    (-0.5, ValueError, r"`fill` must be >= 0.0"), ("grey", TypeError, "`fill` must be a number")])
def test_ace_refuses_a_fill_outside_the_pixel_range(fill, error, match):
    with pytest.raises(error, match=match):
        ACE(fill=fill)
    with pytest.raises(error, match=match):
        segments(IMAGES[:1], (4,), fill=fill, progress=False)


# ---------------------------------------------------------------- 9: ACE exemplars
def test_ace_exemplars_do_not_depend_on_keep_activations(tmp_path):
    results = {keep: explainer(method="ace", importance="gradient_input", n_concepts=4,
                               method_kwargs={**ACE_OPTIONS, "keep_activations": keep}
                               ).fit(IMAGES, 1) for keep in (True, False)}
    kept, dropped = results[True], results[False]
    assert dropped.bank.activations is None and kept.bank.row_scores is not None
    for concept in range(kept.n_concepts):
        rows = kept.bank.top_rows(concept, 5, present_only=True)
        np.testing.assert_array_equal(rows, dropped.bank.top_rows(concept, 5, present_only=True))
        # the order a kept bank always gave: ties by a . w_concept of the kept activations
        codes = kept.bank.codes[:, concept].numpy()
        tie = kept.bank.activations.numpy() @ kept.bank.components[concept].numpy()
        order = np.lexsort((-tie, -codes))
        np.testing.assert_array_equal(rows, order[codes[order] > 0][:5])
    loaded = ConceptBank.load(dropped.bank.save(tmp_path / "ace.safetensors"))
    torch.testing.assert_close(loaded.row_scores, dropped.bank.row_scores)
    np.testing.assert_array_equal(loaded.top_rows(0, 5), dropped.bank.top_rows(0, 5))


def test_continuous_codes_keep_no_row_scores():
    assert small_bank(cc.NMF(3, random_state=0)).row_scores is None


# ---------------------------------------------------------------- 10: top_examples
@pytest.fixture(scope="module")
def craft_result():
    return explainer(method="craft", n_concepts=3, importance="gradient_input").fit(IMAGES, 1)


def test_top_examples_returns_only_rows_where_the_concept_is_present(craft_result):
    result = craft_result
    codes = result.bank.codes.numpy()
    concept = int(np.argmin((codes > 0).sum(0)))
    present = int((codes[:, concept] > 0).sum())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        examples, ids = result.top_examples(concept, present + 5)
    assert examples.shape[0] == present == len(ids)
    rows = result.bank.top_rows(concept, present + 5, present_only=True)
    assert (codes[rows, concept] > 0).all()
    if present < codes.shape[0]:
        assert [str(w.message) for w in caught] == [
            f"top_examples: concept {concept} is present (code > 0) in only {present} of the "
            f"{codes.shape[0]} fitted crops; returning {present} exemplar(s), not the "
            f"{present + 5} asked."]


def test_top_examples_says_when_there_are_fewer_rows_than_asked(craft_result):
    rows = craft_result.bank.codes.shape[0]
    with pytest.warns(UserWarning, match=rf"crops; returning \d+ exemplar\(s\), not the "
                                         rf"{rows + 100} asked"):
        examples, _ = craft_result.top_examples(0, rows + 100)
    assert examples.shape[0] <= rows
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # enough rows: no warning
        assert craft_result.top_examples(0, 2)[0].shape[0] == 2


def test_a_concept_absent_everywhere_has_no_exemplars(craft_result, tmp_path):
    result = ClassConcepts.__new__(ClassConcepts)
    result.__dict__.update(craft_result.__dict__)
    bank = craft_result.bank
    codes = bank.codes.clone()
    codes[:, 0] = 0
    result.bank = ConceptBank(components=bank.components, codes=codes,
                              provenance=bank.provenance, layer=bank.layer, method=bank.method,
                              params=bank.params, factorizer=bank.factorizer)
    with pytest.warns(UserWarning, match=r"concept 0 is present \(code > 0\) in only 0 of the"):
        examples, ids = result.top_examples(0, 4, image_size=16)
    assert tuple(examples.shape) == (0, 3, 16, 16) and len(ids) == 0


def test_signed_codes_rank_every_row():
    bank = small_bank(PCAConcepts(3))
    rows = bank.top_rows(0, len(bank.provenance), present_only=True)
    assert len(rows) == len(bank.provenance)  # no row is "absent" for PCA
    assert (np.diff(bank.codes[rows, 0].numpy()) <= 0).all()
