"""Sampling plans for Sobol indices: samplers, the replicated design, and SALib's layout.

A Sobol design draws one sample of dimension ``2 d`` in ``[0, 1]``: its first ``d`` columns are
the matrix ``A`` and its last ``d`` columns the matrix ``B`` (both ``(N, d)``). The replicated
matrices ``C_i`` are ``A`` with column ``i`` taken from ``B``. Rows are stacked in *block order*
``[A; B; C_1; ...; C_d]`` (the order of CRAFT and xplique); :func:`to_salib_layout` reorders
values to SALib's interleaved order so that its ``analyze`` can read them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import qmc

from .._validation import check_choice, check_int


@dataclass(frozen=True)
class Sampler:
    """One entry of :data:`SAMPLERS`.

    Attributes
    ----------
    draw : callable
        ``draw(n_points, dim, rng) -> (n_points, dim)`` array of points in ``[0, 1]``.
    randomized : bool
        Whether the points depend on ``rng``. Unrandomised designs are the same for every seed,
        so a per-input design brings nothing and one shared design is used instead.
    power_of_two : bool
        Whether ``n_points`` must be a power of two (Sobol' nets lose their balance otherwise).
    draw_many : callable or None
        ``draw_many(n_points, dim, rngs) -> (len(rngs), n_points, dim)``: one independent design
        per generator in a single vectorised pass; None means one ``draw`` per generator.
    """

    draw: Callable[[int, int, np.random.Generator], np.ndarray]
    randomized: bool
    power_of_two: bool
    draw_many: Callable[[int, int, Sequence[np.random.Generator]], np.ndarray] | None = None

    def draw_batch(self, n_points: int, dim: int,
                   rngs: Sequence[np.random.Generator]) -> np.ndarray:
        """One design per generator, ``(len(rngs), n_points, dim)``."""
        if self.draw_many is not None:
            return self.draw_many(n_points, dim, rngs)
        return np.stack([self.draw(n_points, dim, rng) for rng in rngs])


def _sobol(scramble: bool):
    def draw(n_points: int, dim: int, rng: np.random.Generator) -> np.ndarray:
        engine = qmc.Sobol(dim, scramble=scramble, rng=rng if scramble else None)
        return engine.random_base2(int(n_points).bit_length() - 1)
    return draw


_BITS = 30   # digits per coordinate, as SciPy's default


@functools.lru_cache(maxsize=32)
def _sobol_direction_numbers(dim: int, log2_points: int) -> np.ndarray:
    """The first ``log2_points`` direction numbers of each dimension, ``(dim, m)`` integers.

    With a Gray-code construction, point ``2^(b+1) - 1`` of the unscrambled sequence is exactly
    the ``b``-th direction number, so they come from SciPy's public API.
    """
    points = qmc.Sobol(dim, scramble=False, bits=_BITS).random_base2(log2_points)
    integers = np.rint(points * 2.0 ** _BITS).astype(np.int64)
    return integers[(1 << np.arange(1, log2_points + 1)) - 1].T


def _scrambled_sobol_many(n_points: int, dim: int,
                          rngs: Sequence[np.random.Generator]) -> np.ndarray:
    """Independent scrambled Sobol' designs, one per generator, in one vectorised pass.

    Each design is Matousek's linear matrix scramble plus a digital shift (the scrambling of
    SciPy's ``qmc.Sobol``): the digits ``a`` (most significant first) of every coordinate become
    ``L a + e (mod 2)``, with ``L`` a random lower-triangular binary matrix with unit diagonal and
    ``e`` random digits, drawn per design and per dimension from that design's generator. Every
    design keeps the net properties of the Sobol' points; its rows are not in SciPy's order.
    """
    log2_points = int(n_points).bit_length() - 1
    directions = _sobol_direction_numbers(dim, log2_points)                 # (dim, m)
    raw = np.stack([rng.integers(0, 2 ** _BITS, size=(dim, _BITS + 1)) for rng in rngs])
    # Column s of L as an integer: a 1 at digit s, random digits below it (less significant).
    position = _BITS - 1 - np.arange(_BITS)                                 # bit of digit s
    columns = (raw[..., :_BITS] & ((1 << position) - 1)) | (1 << position)  # (R, dim, bits)
    scrambled = np.zeros((len(rngs), dim, log2_points), dtype=np.int64)     # L v, per column v
    for s in range(_BITS):
        scrambled ^= ((directions >> position[s]) & 1) * columns[..., s:s + 1]
    # Point i is the XOR of the direction numbers picked by the bits of i, plus the shift.
    points = raw[..., _BITS:]                                               # (R, dim, 1)
    for b in range(log2_points):
        points = np.concatenate([points, points ^ scrambled[..., b:b + 1]], axis=-1)
    return np.swapaxes(points, -1, -2) * 0.5 ** _BITS                      # (R, N, dim)


def _halton(scramble: bool):
    def draw(n_points: int, dim: int, rng: np.random.Generator) -> np.ndarray:
        return qmc.Halton(dim, scramble=scramble, rng=rng if scramble else None).random(n_points)
    return draw


def _latin_hypercube(n_points: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    return qmc.LatinHypercube(dim, rng=rng).random(n_points)


def _uniform(n_points: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    return rng.random((n_points, dim))


#: Samplers by name. ``"sobol"`` (scrambled Sobol', LMS + digital shift) is the default: one
#: design is ``qmc.Sobol(scramble=True)``; many independent designs (one per input) are scrambled
#: in one vectorised pass. ``"halton_unscrambled"`` is CRAFT's design.
SAMPLERS: dict[str, Sampler] = {
    "sobol": Sampler(_sobol(True), randomized=True, power_of_two=True,
                     draw_many=_scrambled_sobol_many),
    "sobol_unscrambled": Sampler(_sobol(False), randomized=False, power_of_two=True),
    "halton": Sampler(_halton(True), randomized=True, power_of_two=False),
    "halton_unscrambled": Sampler(_halton(False), randomized=False, power_of_two=False),
    "lhs": Sampler(_latin_hypercube, randomized=True, power_of_two=False),
    "random": Sampler(_uniform, randomized=True, power_of_two=False),
}


def check_sampler(sampler: str, n_designs: int) -> Sampler:
    """Look up ``sampler`` and check that ``n_designs`` suits it; return the registry entry."""
    check_choice(sampler, "sampler", SAMPLERS)
    n_designs = check_int(n_designs, "n_designs", minimum=2)
    entry = SAMPLERS[sampler]
    if entry.power_of_two and n_designs & (n_designs - 1):
        low = 1 << (n_designs.bit_length() - 1)
        raise ValueError(
            f"`n_designs` must be a power of two for sampler {sampler!r} (Sobol' points lose their "
            f"balance otherwise); got {n_designs}. Use {low} or {low * 2}."
        )
    return entry


def sample_ab(n_designs: int, n_vars: int, sampler: str = "sobol",
              rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Draw the two base matrices ``A`` and ``B``, each ``(n_designs, n_vars)``, from one sample."""
    entry = check_sampler(sampler, n_designs)
    n_vars = check_int(n_vars, "n_vars", minimum=1)
    try:
        points = entry.draw(n_designs, 2 * n_vars,
                            rng if rng is not None else np.random.default_rng())
    except MemoryError as err:  # numpy's own message names neither the argument nor the fix
        raise MemoryError(
            f"`n_designs`={n_designs} with {n_vars} variables needs a design of "
            f"{n_designs * 2 * n_vars * 8 / 2**30:.3g} GiB (and the replicated design "
            f"{n_vars + 2} times that), more memory than is free; lower `n_designs` (the "
            f"default is 32 per input for concept importance, 1024 for sobol_indices).") from err
    return points[:, :n_vars], points[:, n_vars:]


def replicated_design(a: np.ndarray, b: np.ndarray, include_b: bool = True) -> np.ndarray:
    """Stack the replicated design ``[A; B; C_1; ...; C_d]`` in block order.

    Parameters
    ----------
    a, b : ndarray of shape (..., N, d)
        The base matrices; leading axes (for example one design per input) are kept.
    include_b : bool
        Drop ``B`` when only total-order indices are wanted: no total-order estimator reads
        ``f(B)``, so its ``N`` evaluations would be wasted.

    Returns
    -------
    ndarray of shape (..., N * (d + 2), d), or (..., N * (d + 1), d) without ``B``.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape or a.ndim < 2:
        raise ValueError(f"`a` and `b` must share a shape (..., N, d); got {a.shape} and {b.shape}.")
    n_points, n_vars = a.shape[-2:]
    # C[..., i, :, j] = b[..., :, j] if i == j else a[..., :, j]: one broadcast, no Python loop.
    pick_b = np.eye(n_vars, dtype=bool)[:, None, :]
    replicated = np.where(pick_b, b[..., None, :, :], a[..., None, :, :])
    replicated = replicated.reshape(*a.shape[:-2], n_vars * n_points, n_vars)
    blocks = [a, b, replicated] if include_b else [a, replicated]
    return np.concatenate(blocks, axis=-2)


def to_salib_layout(values: np.ndarray, n_vars: int) -> np.ndarray:
    """Reorder block-ordered rows ``[A; B; C_1..C_d]`` to SALib's interleaved layout.

    SALib (``calc_second_order=False``) stores, for each base row ``j``,
    ``[A_j, C_1j, ..., C_dj, B_j]``. ``values`` may be outputs ``(N (d + 2),)`` or a design
    ``(N (d + 2), d)``; the first axis is reordered.
    """
    values = np.asarray(values)
    n_vars = check_int(n_vars, "n_vars", minimum=1)
    total = values.shape[0]
    if total % (n_vars + 2):
        raise ValueError(f"`values` must have N * (n_vars + 2) = N * {n_vars + 2} rows in block "
                         f"order [A; B; C_1..C_d]; got {total}.")
    n_points = total // (n_vars + 2)
    blocks = values.reshape(n_vars + 2, n_points, *values.shape[1:])
    order = [0, *range(2, n_vars + 2), 1]   # A, C_1..C_d, B
    return np.swapaxes(blocks[order], 0, 1).reshape(values.shape)
