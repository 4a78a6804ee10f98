"""Progress of a concept extraction: every bar says what it counts, the NMF fit has one (an
iteration count for the torch solvers, an honest timer for scikit-learn's)."""

from __future__ import annotations

import re

import torch
from _shared import planted_nmf, two_block_cnn

import conceptkit
from conceptkit.concepts import NMF, KMeansConcepts, SemiNMF, TopKSAE, bank_from_activations


def bars(text: str) -> list[str]:
    """The last state of every progress bar line written to stderr."""
    return [part.strip() for part in re.split(r"[\r\n]", text) if "|" in part or "elapsed" in part]



def fit(factorizer, capsys, rows=300):
    A, _ = planted_nmf(n=rows, c=30, k=4)
    from conceptkit.extraction import positions

    maps = torch.from_numpy(A).T.reshape(1, 30, rows // 15, 15)
    prov = positions(maps).provenance
    bank = bank_from_activations(factorizer, torch.from_numpy(A), prov, progress=True)
    return bank, capsys.readouterr().err


def test_torch_solver_bar_counts_iterations(capsys):
    bank, err = fit(NMF(4, solver="torch_hals", max_iter=150, random_state=0), capsys)
    n_iter = bank.factorizer.n_iter_
    assert 1 < n_iter < 150  # converged before the cap: the bar ends where the solver stopped
    shown = [b for b in bars(err) if b.startswith("NMF fit (torch_hals, k=4, 300 x 30)")]
    assert shown and "iterations, stops early once converged" in shown[-1]
    assert f"{n_iter}/150" in shown[-1]


def test_seminmf_bar_counts_its_iterations(capsys):
    """SemiNMF is the default on transformer tokens: its bar counts its own iterations (it
    claimed to be a scikit-learn solver with no progress)."""
    bank, err = fit(SemiNMF(4, max_iter=400, random_state=0), capsys)
    n_iter = bank.factorizer.n_iter_
    shown = [b for b in bars(err) if b.startswith("SemiNMF fit (hals, k=4, 300 x 30)")]
    assert shown and "iterations, stops early once converged" in shown[-1], err
    assert f"{n_iter}/400" in shown[-1] and "scikit-learn" not in err


def test_topksae_bar_counts_its_epochs(capsys):
    """TopKSAE (the default on transformer tokens) trains by epochs: its bar counts them (it
    claimed to be a scikit-learn solver with no progress)."""
    bank, err = fit(TopKSAE(4, top_k=2, epochs=300, batch_size=64, random_state=0, lr=1e-2),
                    capsys)
    n_epochs = bank.factorizer.n_epochs_
    shown = [b for b in bars(err) if b.startswith("TopKSAE fit (torch Adam, k=4, 300 x 30)")]
    assert shown and "epochs, stops early once converged" in shown[-1], err
    assert f"{n_epochs}/300" in shown[-1] and "scikit-learn" not in err
    assert n_epochs < 300   # converged: the bar stopped before the end


def test_solver_without_callback_gets_a_timer_not_a_fake_count(capsys):
    for factorizer, name in ((NMF(4, random_state=0), "NMF fit (scikit-learn cd"),
                             (KMeansConcepts(4, random_state=0), "KMeansConcepts fit (scikit-learn")):
        _, err = fit(factorizer, capsys)
        shown = [b for b in bars(err) if b.startswith(name)]
        assert shown, err
        assert "no per-iteration progress, time elapsed" in shown[-1]
        assert "%" not in shown[-1] and "/" not in shown[-1].split(":", 1)[1]


def test_no_bar_without_progress(capsys):
    A, _ = planted_nmf(n=60, c=10, k=3)
    from conceptkit.extraction import positions

    prov = positions(torch.from_numpy(A).T.reshape(1, 10, 6, 10)).provenance
    bank_from_activations(NMF(3, random_state=0), A, prov)
    assert capsys.readouterr().err == ""


def test_pipeline_bars_say_what_they_count(capsys):
    images = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    conceptkit.ConceptExplainer(two_block_cnn(), "block2", n_concepts=3, patch_size=16, seed=0,
                                method="craft").fit(images, 1)
    shown = bars(capsys.readouterr().err)
    descriptions = [b.split(":")[0] for b in shown]
    assert all(d.strip() for d in descriptions), shown  # no unlabelled bar
    assert "g on 6 class images @ block2" in descriptions
    assert "g on 24 crops @ block2" in descriptions
    assert any(d.startswith("NMF fit (scikit-learn cd, k=3, 24 x 24)") for d in descriptions)
    order = [d for d in descriptions if d.startswith(("g on", "NMF fit"))]
    assert order.index("g on 24 crops @ block2") < next(
        i for i, d in enumerate(order) if d.startswith("NMF fit"))
    assert not any(re.fullmatch(r"\s*\d+%\|.*\| 1/1 .*", b) for b in shown)
