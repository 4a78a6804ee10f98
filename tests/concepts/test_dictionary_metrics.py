"""Extraction metrics for dictionaries: dead codes and cross-seed stability (Hungarian-matched)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from _shared import planted_nmf
from scipy.optimize import linear_sum_assignment

from conceptkit.concepts import NMF, KMeansConcepts
from conceptkit.concepts.metrics import (
    EXTRACTION_METRICS,
    dead_codes,
    extraction_metrics,
    seed_stability,
)


def test_dead_codes_counts_all_zero_columns():
    U = np.abs(np.random.default_rng(0).standard_normal((50, 8)))
    U[:, [1, 5]] = 0.0
    U[:, 6] = 1e-9
    assert dead_codes(U, count=True) == 2 and dead_codes(U) == pytest.approx(2 / 8)
    assert dead_codes(U, eps=1e-6, count=True) == 3
    assert not EXTRACTION_METRICS["dead_codes"].higher_is_better


def test_seed_stability_is_the_matched_cosine_of_two_seeded_runs():
    A, parts = planted_nmf(n=300, c=30, k=4, noise=0.02)
    est = NMF(4, init="random", solver="cd", max_iter=500, random_state=0)
    # The planted parts are found whatever the seed: stability close to 1.
    assert seed_stability(est, A) > 0.99
    # On unstructured data the runs disagree; the value is the Hungarian-matched mean cosine.
    noise = np.abs(np.random.default_rng(1).standard_normal((200, 12)))
    kmeans = KMeansConcepts(6)
    value = seed_stability(kmeans, noise, seeds=(3, 4, 5))
    fits = [KMeansConcepts(6, random_state=s).fit(noise).components_ for s in (3, 4, 5)]
    expected = []
    for a, b in itertools.combinations(fits, 2):
        a = a / np.linalg.norm(a, axis=1, keepdims=True)
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
        rows, cols = linear_sum_assignment(-(a @ b.T))
        expected.append((a @ b.T)[rows, cols].mean())
    assert value == pytest.approx(np.mean(expected), abs=1e-12)
    assert value < 0.999
    with pytest.raises(ValueError, match="seeds"):
        seed_stability(kmeans, noise, seeds=(1,))


def test_extraction_metrics_reports_the_new_metrics():
    A, _ = planted_nmf(n=120, c=20, k=3)
    est = NMF(3, random_state=0).fit(A)
    results = extraction_metrics(est, A, ["dead_codes", "seed_stability"])
    assert results["dead_codes"] == 0.0 and 0.9 < results["seed_stability"] <= 1.0 + 1e-9
