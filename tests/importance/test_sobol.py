"""Generic Sobol indices: analytic values, SALib/SciPy oracles, invariances, designs, errors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from scipy.stats import qmc

from conceptkit.importance import (
    FIRST_ORDER_ESTIMATORS,
    SAMPLERS,
    TOTAL_ORDER_ESTIMATORS,
    SobolResult,
    estimate_sobol,
    replicated_design,
    sobol_indices,
    sobol_indices_with_ci,
)
from conceptkit.importance._design import sample_ab, to_salib_layout

ISHIGAMI_A, ISHIGAMI_B = 7.0, 0.1


def ishigami(x: np.ndarray) -> np.ndarray:
    x = -np.pi + 2 * np.pi * x
    return (np.sin(x[:, 0]) + ISHIGAMI_A * np.sin(x[:, 1]) ** 2
            + ISHIGAMI_B * x[:, 2] ** 4 * np.sin(x[:, 0]))


def ishigami_analytic() -> tuple[np.ndarray, np.ndarray]:
    """(S1, ST) from the variance decomposition of the Ishigami function."""
    a, b, pi = ISHIGAMI_A, ISHIGAMI_B, np.pi
    v1 = 0.5 * (1 + b * pi ** 4 / 5) ** 2
    v2 = a ** 2 / 8
    v13 = 8 * b ** 2 * pi ** 8 / 225
    v = 0.5 + a ** 2 / 8 + b * pi ** 4 / 5 + b ** 2 * pi ** 8 / 18
    first = np.array([v1, v2, 0.0]) / v
    total = np.array([v1 + v13, v2, v13]) / v
    return first, total


def full_design_outputs(func, n_vars, n_designs=1024, seed=0):
    a, b = sample_ab(n_designs, n_vars, "sobol", np.random.default_rng(seed))
    return a, b, func(replicated_design(a, b, include_b=True))


def test_analytic_ishigami_values_match_the_published_ones():
    first, total = ishigami_analytic()
    np.testing.assert_allclose(total, [0.5576, 0.4424, 0.2437], atol=1e-4)
    np.testing.assert_allclose(first, [0.3139, 0.4424, 0.0], atol=1e-4)


def test_ishigami_total_and_first_order_within_tolerance():
    first, total = ishigami_analytic()
    st = sobol_indices(ishigami, 3, n_designs=1024, seed=0)
    s1 = sobol_indices(ishigami, 3, n_designs=1024, order="first", estimator="saltelli", seed=0)
    assert st.shape == (3,) and s1.shape == (3,)
    assert np.abs(st - total).max() < 0.03
    assert np.abs(s1 - first).max() < 0.03


def test_ishigami_converges_at_larger_designs():
    _, total = ishigami_analytic()
    st = sobol_indices(ishigami, 3, n_designs=8192, seed=1)
    assert np.abs(st - total).max() < 0.005


def test_exact_agreement_with_salib_on_identical_outputs():
    salib = pytest.importorskip("SALib.analyze.sobol")
    _, _, y = full_design_outputs(ishigami, 3)
    problem = {"num_vars": 3, "names": ["x1", "x2", "x3"], "bounds": [[0, 1]] * 3}
    reference = salib.analyze(problem, to_salib_layout(y, 3), calc_second_order=False,
                              num_resamples=10, seed=1)
    total = estimate_sobol(y, 3, order="total", estimator="jansen", include_b=True)
    first = estimate_sobol(y, 3, order="first", estimator="saltelli", include_b=True)
    assert np.abs(total - reference["ST"]).max() <= 1e-10
    assert np.abs(first - reference["S1"]).max() <= 1e-10


def test_total_order_agrees_with_scipy_sobol_indices():
    a, b, _ = full_design_outputs(ishigami, 3)
    f_a, f_b = ishigami(a), ishigami(b)
    f_ab = np.stack([ishigami(np.where(np.arange(3) == i, b, a)) for i in range(3)])
    reference = stats.sobol_indices(func={"f_A": f_a[None], "f_B": f_b[None],
                                          "f_AB": f_ab[:, None]}, n=1024)
    y = ishigami(replicated_design(a, b))
    assert np.abs(estimate_sobol(y, 3) - reference.total_order).max() <= 1e-10


def test_salib_layout_interleaves_rows():
    a, b = sample_ab(8, 3, "sobol", np.random.default_rng(0))
    design = replicated_design(a, b)
    interleaved = to_salib_layout(design, 3)
    step = 3 + 2
    np.testing.assert_array_equal(interleaved[0::step], a)
    np.testing.assert_array_equal(interleaved[step - 1::step], b)
    for i in range(3):
        expected = a.copy()
        expected[:, i] = b[:, i]
        np.testing.assert_array_equal(interleaved[i + 1::step], expected)


@pytest.mark.parametrize("estimator", sorted(TOTAL_ORDER_ESTIMATORS))
def test_additive_model_matches_closed_form_and_sums_to_one(estimator):
    coef = np.array([1.0, -2.0, 3.0, 0.5])
    exact = coef ** 2 / np.sum(coef ** 2)
    st = sobol_indices(lambda x: x @ coef, 4, n_designs=1024, estimator=estimator, seed=3)
    assert np.abs(st - exact).max() < 0.03
    assert abs(st.sum() - 1.0) < 0.05


def test_additive_model_first_order_equals_total_order():
    coef = np.array([1.0, 2.0, 3.0])
    for estimator in FIRST_ORDER_ESTIMATORS:
        s1 = sobol_indices(lambda x: x @ coef, 3, n_designs=2048, order="first",
                           estimator=estimator, seed=0)
        np.testing.assert_allclose(s1, coef ** 2 / 14, atol=0.02)


@pytest.mark.parametrize("order,estimators", [("total", TOTAL_ORDER_ESTIMATORS),
                                              ("first", FIRST_ORDER_ESTIMATORS)])
def test_constant_function_gives_zero(order, estimators):
    for estimator in estimators:
        for value in (0.0, 0.1, -3e5):
            # zero, and said: a constant function is more often a bug than an answer
            with pytest.warns(RuntimeWarning, match="constant on all 384|constant on all 448"):
                st = sobol_indices(lambda x, v=value: np.full(len(x), v), 5, n_designs=64,
                                   estimator=estimator, order=order, seed=0)
            np.testing.assert_array_equal(st, np.zeros(5))
    with pytest.warns(RuntimeWarning, match="every index is returned as 0"):
        sobol_indices_with_ci(lambda x: np.zeros(len(x)), 2, n_designs=64, seed=0, n_bootstrap=5)


def test_ignored_variable_gets_zero_total_index():
    st = sobol_indices(lambda x: np.sin(6 * x[:, 0]) * x[:, 2], 3, n_designs=256, seed=0)
    assert st[1] == 0.0
    assert st[0] > 0.3 and st[2] > 0.1


@pytest.mark.parametrize("order,estimator", [("total", e) for e in TOTAL_ORDER_ESTIMATORS]
                         + [("first", e) for e in FIRST_ORDER_ESTIMATORS])
def test_shift_and_scale_invariance(order, estimator):
    base = sobol_indices(ishigami, 3, n_designs=256, order=order, estimator=estimator, seed=5)
    moved = sobol_indices(lambda x: 250.0 + 3.5 * ishigami(x), 3, n_designs=256, order=order,
                          estimator=estimator, seed=5)
    np.testing.assert_allclose(moved, base, atol=1e-9)


def test_seed_reproducibility():
    first = sobol_indices(ishigami, 3, n_designs=128, seed=11)
    again = sobol_indices(ishigami, 3, n_designs=128, seed=11)
    other = sobol_indices(ishigami, 3, n_designs=128, seed=12)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    generator = sobol_indices(ishigami, 3, n_designs=128, seed=np.random.default_rng(11))
    np.testing.assert_array_equal(generator, first)


def test_batched_evaluation_gives_the_same_result():
    whole = sobol_indices(ishigami, 3, n_designs=128, seed=2)
    batched = sobol_indices(ishigami, 3, n_designs=128, seed=2, batch_size=100)
    np.testing.assert_array_equal(whole, batched)


def test_total_order_never_evaluates_b():
    seen = []

    def func(x):
        seen.append(len(x))
        return x.sum(axis=1)

    sobol_indices(func, 4, n_designs=32, seed=0)
    assert sum(seen) == 32 * (4 + 1)
    seen.clear()
    sobol_indices(func, 4, n_designs=32, seed=0, order="first", estimator="saltelli")
    assert sum(seen) == 32 * (4 + 2)


def test_confidence_interval_brackets_estimate_and_truth():
    _, total = ishigami_analytic()
    result = sobol_indices_with_ci(ishigami, 3, n_designs=1024, seed=0, confidence=0.95)
    assert isinstance(result, SobolResult)
    np.testing.assert_array_equal(np.asarray(result),
                                  sobol_indices(ishigami, 3, n_designs=1024, seed=0))
    assert np.all(result.ci_low <= result.indices) and np.all(result.indices <= result.ci_high)
    assert np.all(result.ci_low <= total) and np.all(total <= result.ci_high)
    assert np.all(result.ci_high - result.ci_low < 0.3)
    again = sobol_indices_with_ci(ishigami, 3, n_designs=1024, seed=0, confidence=0.95)
    np.testing.assert_array_equal(again.ci_low, result.ci_low)


def test_estimators_are_vectorised_over_leading_axes():
    rng = np.random.default_rng(0)
    a, b = sample_ab(64, 4, "sobol", rng)
    design = replicated_design(a, b, include_b=False)
    coefs = rng.normal(size=(2, 3, 4))
    y = np.einsum("md,ijd->ijm", design, coefs) + np.sin(design[:, 0])
    batched = estimate_sobol(y, 4, include_b=False)
    assert batched.shape == (2, 3, 4)
    for i in range(2):
        for j in range(3):
            np.testing.assert_allclose(batched[i, j], estimate_sobol(y[i, j], 4, include_b=False),
                                       rtol=0, atol=1e-14)


def test_replicated_design_blocks_and_batch_axes():
    rng = np.random.default_rng(0)
    a, b = rng.random((2, 5, 16, 3))
    full = replicated_design(a, b)
    assert full.shape == (5, 16 * 5, 3)
    no_b = replicated_design(a, b, include_b=False)
    assert no_b.shape == (5, 16 * 4, 3)
    np.testing.assert_array_equal(full[:, :16], a)
    np.testing.assert_array_equal(full[:, 16:32], b)
    for i in range(3):
        block = full[:, 32 + 16 * i: 48 + 16 * i]
        np.testing.assert_array_equal(block[..., i], b[..., i])
        others = [j for j in range(3) if j != i]
        np.testing.assert_array_equal(block[..., others], a[..., others])
    np.testing.assert_array_equal(no_b[:, 16:], full[:, 32:])


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_samplers_draw_points_in_the_unit_cube(name):
    entry = SAMPLERS[name]
    points = entry.draw(32, 6, np.random.default_rng(0))
    assert points.shape == (32, 6)
    assert points.min() >= 0.0 and points.max() < 1.0
    again = entry.draw(32, 6, np.random.default_rng(0))
    other = entry.draw(32, 6, np.random.default_rng(1))
    np.testing.assert_array_equal(points, again)
    assert np.array_equal(points, other) != entry.randomized
    # Every 1-D projection is evenly spread: one point per 1/32 stratum for the (0, m, 1)-net
    # Sobol' designs and Latin hypercube; for Halton, dimension j (prime base p_j) puts
    # floor(32 / p_j) or ceil(32 / p_j) points in each 1/p_j stratum (the unscrambled points sit
    # on stratum edges such as 5/7, hence the 1e-9).
    if name.startswith("sobol") or name == "lhs":
        for j in range(6):
            assert np.all(np.bincount((points[:, j] * 32).astype(int), minlength=32) == 1)
    elif name.startswith("halton"):
        for j, base in enumerate([2, 3, 5, 7, 11, 13]):
            counts = np.bincount((points[:, j] * base + 1e-9).astype(int), minlength=base)
            assert set(counts) <= {32 // base, -(-32 // base)}


def test_craft_design_is_unscrambled_halton_starting_at_zero():
    a, b = sample_ab(32, 4, "halton_unscrambled")
    np.testing.assert_array_equal(a[0], np.zeros(4))
    np.testing.assert_allclose(a[1], [1 / 2, 1 / 3, 1 / 5, 1 / 7])
    np.testing.assert_allclose(b[1], [1 / 11, 1 / 13, 1 / 17, 1 / 19])


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="power of two"):
        sobol_indices(ishigami, 3, n_designs=1000)
    sobol_indices(ishigami, 3, n_designs=1000, sampler="halton", seed=0)   # fine for Halton
    with pytest.raises(ValueError, match="estimator.*'jansen'"):
        sobol_indices(ishigami, 3, estimator="jensen")
    with pytest.raises(ValueError, match="estimator"):
        sobol_indices(ishigami, 3, order="first", estimator="homma")
    with pytest.raises(ValueError, match="order"):
        sobol_indices(ishigami, 3, order="second")
    with pytest.raises(ValueError, match="sampler"):
        sobol_indices(ishigami, 3, sampler="sobolev")
    with pytest.raises(TypeError, match="func"):
        sobol_indices("ishigami", 3)
    with pytest.raises(ValueError, match="shape"):
        sobol_indices(lambda x: x, 3, n_designs=32)
    with pytest.raises(ValueError, match="NaN"):
        sobol_indices(lambda x: np.full(len(x), np.nan), 3, n_designs=32)
    with pytest.raises(ValueError, match="n_vars"):
        sobol_indices(ishigami, 0)
    with pytest.raises(ValueError, match="confidence"):
        sobol_indices_with_ci(ishigami, 3, confidence=1.5)
    with pytest.raises(ValueError, match="include_b"):
        estimate_sobol(np.zeros(32 * 4), 3, order="first", include_b=False)
    with pytest.raises(ValueError, match="N \\* 5"):
        to_salib_layout(np.zeros(17), 3)


def test_vectorised_scrambled_sobol_keeps_net_properties():
    from conceptkit.importance._design import _scrambled_sobol_many

    rngs = [np.random.default_rng(seed) for seed in range(20)]
    designs = SAMPLERS["sobol"].draw_batch(32, 8, rngs)
    assert designs.shape == (20, 32, 8)
    np.testing.assert_array_equal(designs, _scrambled_sobol_many(
        32, 8, [np.random.default_rng(seed) for seed in range(20)]))
    for design in designs:
        for j in range(8):      # each coordinate: one point per 1/32 stratum
            assert np.all(np.bincount((design[:, j] * 32).astype(int), minlength=32) == 1)
        for low in range(6):    # dimensions 0 and 1 form a (0, 5, 2)-net
            cells = ((design[:, 0] * 2 ** low).astype(int) * 2 ** (5 - low)
                     + (design[:, 1] * 2 ** (5 - low)).astype(int))
            assert np.all(np.bincount(cells, minlength=32) == 1)
    assert len({design.tobytes() for design in designs}) == 20


def test_vectorised_scramble_is_uniform_and_matches_scipy_accuracy():
    rngs = [np.random.default_rng(seed) for seed in range(400)]
    designs = SAMPLERS["sobol"].draw_batch(16, 4, rngs)
    # Each point of a scrambled design is uniform on [0, 1): mean 1/2, variance 1/12.
    np.testing.assert_allclose(designs.mean(axis=(0, 1)), 0.5, atol=0.01)
    np.testing.assert_allclose(designs.var(axis=(0, 1)), 1 / 12, atol=0.003)
    # Ishigami over 100 independent designs of 256 points: unbiased, as accurate as SciPy's
    # scramble, and clearly better than plain random points.
    _, total = ishigami_analytic()
    errors = {}
    for name in ("ours", "scipy", "random"):
        rngs = [np.random.default_rng(seed) for seed in range(100)]
        if name == "ours":
            points = SAMPLERS["sobol"].draw_batch(256, 6, rngs)
        else:
            points = np.stack([SAMPLERS["sobol" if name == "scipy" else "random"].draw(256, 6, rng)
                               for rng in rngs])
        y = ishigami(replicated_design(points[..., :3], points[..., 3:]).reshape(-1, 3))
        estimates = estimate_sobol(y.reshape(100, -1), 3)
        errors[name] = np.abs(estimates - total).mean()
        assert np.all(np.abs(estimates.mean(0) - total) < 4 * estimates.std(0) / np.sqrt(100))
    assert errors["ours"] < 1.3 * errors["scipy"] and errors["scipy"] < 1.3 * errors["ours"]
    assert errors["ours"] < 0.75 * errors["random"]


def test_direction_numbers_rebuild_the_unscrambled_sequence():
    from conceptkit.importance._design import _BITS, _sobol_direction_numbers

    directions = _sobol_direction_numbers(6, 5)                      # (dim, m)
    index_bits = (np.arange(32)[:, None] >> np.arange(5)) & 1       # (N, m)
    rebuilt = np.zeros((32, 6), dtype=np.int64)
    for b in range(5):
        rebuilt ^= index_bits[:, b:b + 1] * directions[:, b]
    reference = qmc.Sobol(6, scramble=False).random_base2(5)
    as_rows = {tuple(row) for row in rebuilt * 0.5 ** _BITS}
    assert as_rows == {tuple(row) for row in reference}
