"""Torch kernels for NMF: NNDSVD initialisation, HALS, multiplicative updates and NNLS encoding.

Conventions: the data ``A`` is ``(n, C)``; codes are kept transposed as ``Ut (k, n)`` so that every
coordinate block (one concept) is a contiguous row, and the dictionary is ``W (k, C)``. The
objective and the regularisation follow scikit-learn's ``NMF`` (Frobenius loss)::

    0.5 ||A - U W||² + l1_U |U|_1 + 0.5 l2_U ||U||² + l1_W |W|_1 + 0.5 l2_W ||W||²

HALS is exact block coordinate descent on one concept row at a time, the same update that
scikit-learn's ``cd`` solver applies element by element; it uses the same stopping rule (the sum of
absolute projected gradients relative to its first value, here measured at the start of each block
update rather than during the sweep). Each outer iteration runs several cheap
inner sweeps on the precomputed Gram and cross products before paying for the next large matrix
product (Gillis & Glineur, 2012, "Accelerated multiplicative updates and hierarchical ALS
algorithms for nonnegative matrix factorization").

Random draws come from a seeded numpy Generator and are moved to the compute device, so the same
seed gives the same initialisation on every device.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
from tqdm.auto import tqdm

from ._progress import iteration

EPSILON = float(np.finfo(np.float32).eps)


def regularization(n_samples: int, n_features: int, alpha_W: float, alpha_H: float,
                   l1_ratio: float) -> tuple[float, float, float, float]:
    """``(l1_U, l2_U, l1_W, l2_W)`` scaled as scikit-learn does (codes by C, dictionary by n)."""
    l1_U = n_features * alpha_W * l1_ratio
    l2_U = n_features * alpha_W * (1.0 - l1_ratio)
    l1_W = n_samples * alpha_H * l1_ratio
    l2_W = n_samples * alpha_H * (1.0 - l1_ratio)
    return l1_U, l2_U, l1_W, l2_W


def _draw(rng: np.random.Generator, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(rng.standard_normal(shape)).to(device=like.device, dtype=like.dtype)


def randomized_svd(A: torch.Tensor, k: int, rng: np.random.Generator, *, n_oversamples: int = 10,
                   n_iter: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-``k`` singular triplets of ``A (n, C)``: ``(U (n, k), S (k,), Vt (k, C))``.

    Randomized range finder with QR-normalised power iterations (Halko et al., 2011); the number
    of power iterations follows scikit-learn's rule (7 for small ``k``, else 4).
    """
    n, c = A.shape
    width = min(k + n_oversamples, n, c)
    if n_iter is None:
        n_iter = 7 if k < 0.1 * min(n, c) else 4
    Q = torch.linalg.qr(A @ _draw(rng, (c, width), A)).Q
    for _ in range(n_iter):
        Q = torch.linalg.qr(A.T @ Q).Q
        Q = torch.linalg.qr(A @ Q).Q
    U_small, S, Vt = torch.linalg.svd(Q.T @ A, full_matrices=False)
    return (Q @ U_small)[:, :k], S[:k], Vt[:k]


def nndsvd_init(A: torch.Tensor, k: int, variant: str,
                rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """NNDSVD initialisation (Boutsidis & Gallopoulos, 2008): ``(Ut (k, n), W (k, C))``.

    ``variant`` is ``"nndsvd"`` (zeros kept), ``"nndsvda"`` (zeros filled with the data mean) or
    ``"nndsvdar"`` (zeros filled with small random values).
    """
    U, S, Vt = randomized_svd(A, k, rng)
    x, y = U.T, Vt
    xp, xn = x.clamp(min=0), (-x).clamp(min=0)
    yp, yn = y.clamp(min=0), (-y).clamp(min=0)
    xpn, xnn = xp.norm(dim=1), xn.norm(dim=1)
    ypn, ynn = yp.norm(dim=1), yn.norm(dim=1)
    m_pos, m_neg = xpn * ypn, xnn * ynn
    use_pos = (m_pos > m_neg)[:, None]
    tiny = torch.finfo(A.dtype).tiny
    u = torch.where(use_pos, xp / xpn.clamp(min=tiny)[:, None], xn / xnn.clamp(min=tiny)[:, None])
    v = torch.where(use_pos, yp / ypn.clamp(min=tiny)[:, None], yn / ynn.clamp(min=tiny)[:, None])
    scale = torch.sqrt(S * torch.where(use_pos[:, 0], m_pos, m_neg))[:, None]
    Ut, W = scale * u, scale * v
    # The leading singular pair of a non-negative matrix has one sign: take absolute values.
    Ut[0] = torch.sqrt(S[0]) * x[0].abs()
    W[0] = torch.sqrt(S[0]) * y[0].abs()
    Ut[Ut < 1e-6] = 0
    W[W < 1e-6] = 0
    if variant == "nndsvda":
        avg = A.mean()
        Ut[Ut == 0] = avg
        W[W == 0] = avg
    elif variant == "nndsvdar":
        avg = float(A.mean())
        for M in (Ut, W):
            zeros = M == 0
            fill = np.abs(avg * rng.standard_normal(int(zeros.sum())) / 100)
            M[zeros] = torch.from_numpy(fill).to(device=M.device, dtype=M.dtype)
    return Ut, W


def random_init(A: torch.Tensor, k: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled absolute Gaussian initialisation (scikit-learn's ``init="random"``)."""
    avg = math.sqrt(float(A.mean()) / k)
    return avg * _draw(rng, (k, A.shape[0]), A).abs(), avg * _draw(rng, (k, A.shape[1]), A).abs()


def initialize(A: torch.Tensor, k: int, init: str,
               rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Starting ``(Ut (k, n), W (k, C))`` for ``init`` in {"random", "nndsvd", "nndsvda",
    "nndsvdar"}, both C-contiguous so that each concept's block is one contiguous row."""
    Ut, W = random_init(A, k, rng) if init == "random" else nndsvd_init(A, k, init, rng)
    return Ut.contiguous(), W.contiguous()


def violation(X: torch.Tensor, G: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """Sum of absolute projected gradients of ``0.5 tr(Xᵀ G X) - tr(Rᵀ X)`` over ``X >= 0``.

    The stationarity measure of scikit-learn's ``cd`` solver, here taken at the start of a block
    update; a 0-d tensor (no device synchronisation).
    """
    grad = torch.addmm(R, G, X, beta=-1)
    return torch.where(X > 0, grad, grad.clamp(max=0)).abs().sum()


def hals_sweeps(X: torch.Tensor, G: torch.Tensor, R: torch.Tensor, max_sweeps: int,
                delta: float = 0.1) -> None:
    """Up to ``max_sweeps`` HALS sweeps on ``min_{X>=0} 0.5 tr(Xᵀ G X) - tr(Rᵀ X)``, in place.

    ``X (k, m)`` holds one block per row, ``G (k, k)`` is the Gram matrix and ``R (k, m)`` the
    cross product (regularisation already folded in). Row ``j`` becomes
    ``max(0, x_j - (G_j X - R_j) / G_jj)``, written as ``max(0, R_j/G_jj - (G_j/G_jj - e_j) X)``
    so that each row costs one matrix-vector product and one clamp. Sweeps stop early once a
    sweep moves ``X`` by less than ``delta`` times the first sweep's move. Rows with
    ``G_jj = 0`` (a concept whose other factor is all zero) are left unchanged, as in
    scikit-learn, so that the concept can come back at the next update of the other factor.
    """
    diag = G.diagonal()
    step = torch.where(diag > 0, 1.0 / diag.clamp(min=torch.finfo(G.dtype).tiny), 0.0)[:, None]
    scaled_R = (R * step).unbind(0)
    coupling = G * step
    # Zero diagonal; -1 on a dead row's diagonal so that row is copied unchanged.
    coupling.diagonal().copy_(-(diag <= 0).to(G.dtype))
    coupling = coupling.unbind(0)
    rows = X.unbind(0)
    buffer = torch.empty_like(rows[0])
    first_move = None
    for _ in range(max_sweeps):
        before = X.clone() if max_sweeps > 1 else None
        for j, x in enumerate(rows):
            torch.addmv(scaled_R[j], X.T, coupling[j], alpha=-1, out=buffer)
            torch.clamp(buffer, min=0, out=x)
        if before is None:
            break
        move = float(torch.linalg.vector_norm(X - before))
        if first_move is None:
            first_move = move
        elif move <= delta * first_move:
            break


def _inner_budget(k: int, other: int, cap: int, alpha: float = 0.5) -> int:
    """Inner sweeps worth one large matrix product: ``1 + alpha * rho`` (Gillis & Glineur),
    capped because on real hardware a sweep over ``k`` rows costs ``k`` kernel launches."""
    rho = 1.0 + other / (k + 1.0)
    return max(1, min(cap, int(1 + alpha * rho)))


INNER_CAP = 3


def fit_hals(A: torch.Tensor, Ut: torch.Tensor, W: torch.Tensor, *, max_iter: int, tol: float,
             reg: tuple[float, float, float, float], progress: bool = False):
    """Alternate HALS blocks on ``Ut`` and ``W`` in place; return the number of iterations.
    ``progress`` shows a bar over iterations with the relative violation."""
    l1_U, l2_U, l1_W, l2_W = reg
    k, n = Ut.shape
    c = W.shape[1]
    sweeps_U, sweeps_W = _inner_budget(k, c, INNER_CAP), _inner_budget(k, n, INNER_CAP)
    eye = torch.eye(k, dtype=A.dtype, device=A.device)
    violation_init = None
    n_iter = 0
    bar = tqdm(total=max_iter, disable=not progress, desc="NMF torch_hals", leave=False)
    while n_iter < max_iter:
        n_iter += 1
        bar.update(1)
        iteration(n_iter)
        G = W @ W.T + l2_U * eye
        R = W @ A.T - l1_U
        total = violation(Ut, G, R)
        hals_sweeps(Ut, G, R, sweeps_U)
        G = Ut @ Ut.T + l2_W * eye
        R = Ut @ A - l1_W
        total = total + violation(W, G, R)
        hals_sweeps(W, G, R, sweeps_W)
        value = float(total)
        if violation_init is None:
            violation_init = value
        if progress:
            bar.set_postfix(violation=f"{value / max(violation_init, 1e-300):.3e}")
        if violation_init == 0 or value / violation_init <= tol:
            break
    bar.close()
    return n_iter


def residual_norm(A: torch.Tensor, Ut: torch.Tensor, W: torch.Tensor, block: int = 4096) -> float:
    """``||A - U W||_F`` from the residual itself, in row blocks (the trace expansion loses the
    small residual to cancellation in float32)."""
    total = 0.0
    for start in range(0, A.shape[0], block):
        residual = A[start:start + block] - Ut[:, start:start + block].T @ W
        total += float(torch.linalg.vector_norm(residual) ** 2)
    return math.sqrt(total)


def _flush_enabled() -> bool:
    """Whether this thread already flushes subnormal floats to zero (probed, not tracked)."""
    return float(torch.tensor([1e-39], dtype=torch.float32) * 1.0) == 0.0


@contextlib.contextmanager
def flushed_denormals(device: torch.device):
    """Flush subnormal floats to zero on the CPU while the block runs, then restore the state.

    Multiplicative updates drive vanishing codes through the subnormal range (below 1.2e-38 in
    float32), where x86 arithmetic is 10-100x slower per operation; flushing them to zero removes
    the 3-8x slowdown of a whole fit and changes nothing that is not already below any tolerance.
    """
    if torch.device(device).type != "cpu" or _flush_enabled():
        yield
        return
    changed = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if changed:
            torch.set_flush_denormal(False)


def fit_mu(A: torch.Tensor, Ut: torch.Tensor, W: torch.Tensor, *, max_iter: int, tol: float,
           reg: tuple[float, float, float, float], progress: bool = False,
           flush_denormals: bool = True):
    """Lee & Seung multiplicative updates (Frobenius), scikit-learn's rule and stopping test.
    ``progress`` shows a bar over iterations with the reconstruction error. Subnormal values are
    flushed to zero during the fit (see :func:`flushed_denormals`) unless
    ``flush_denormals=False``."""
    context = flushed_denormals(A.device) if flush_denormals else contextlib.nullcontext()
    with context:
        return _mu_loop(A, Ut, W, max_iter=max_iter, tol=tol, reg=reg, progress=progress)


def _nonzero(denominator: torch.Tensor) -> torch.Tensor:
    """``denominator`` with its exact zeros replaced by ``EPSILON``, in place: scikit-learn's rule
    (``denominator[denominator == 0] = EPSILON``). Clamping every value below ``EPSILON`` instead
    would shrink each update of small-valued data (whose denominators are far below 1.2e-7) and
    drive the factors to zero."""
    return denominator.masked_fill_(denominator == 0, EPSILON)


def _mu_loop(A: torch.Tensor, Ut: torch.Tensor, W: torch.Tensor, *, max_iter: int, tol: float,
             reg: tuple[float, float, float, float], progress: bool) -> int:
    l1_U, l2_U, l1_W, l2_W = reg
    error_init = previous = residual_norm(A, Ut, W)
    n_iter = 0
    bar = tqdm(total=max_iter, disable=not progress, desc="NMF torch_mu", leave=False)
    for n_iter in range(1, max_iter + 1):
        bar.update(1)
        numerator = W @ A.T
        denominator = (W @ W.T) @ Ut
        if l1_U > 0:
            denominator += l1_U
        if l2_U > 0:
            denominator += l2_U * Ut
        Ut.mul_(numerator.div_(_nonzero(denominator)))
        numerator = Ut @ A
        denominator = (Ut @ Ut.T) @ W
        if l1_W > 0:
            denominator += l1_W
        if l2_W > 0:
            denominator += l2_W * W
        W.mul_(numerator.div_(_nonzero(denominator)))
        iteration(n_iter)
        if tol > 0 and n_iter % 10 == 0:
            error = residual_norm(A, Ut, W)
            if progress:
                bar.set_postfix(error=f"{error:.6g}")
            if error_init == 0 or (previous - error) / error_init < tol:
                break
            previous = error
    bar.close()
    return n_iter


def nnls_hals(A: torch.Tensor, W: torch.Tensor, *, max_iter: int, tol: float, l1: float = 0.0,
              l2: float = 0.0) -> tuple[torch.Tensor, int]:
    """Deterministic NNLS codes ``Ut (k, n)`` for fixed ``W (k, C)``: HALS sweeps.

    Starts from the clipped unconstrained least-squares solution and stops when the projected
    gradient violation falls below ``tol`` times its value at ``U = 0`` (the scale-free reference
    that scikit-learn's ``cd`` transform uses), or after ``max_iter`` sweeps.
    """
    k = W.shape[0]
    G = W @ W.T + l2 * torch.eye(k, dtype=W.dtype, device=W.device)
    R = W @ A.T - l1
    reference = float(R.clamp(min=0).sum())
    try:
        Ut = torch.linalg.solve(G, R).clamp_(min=0)
    except RuntimeError:  # singular dictionary
        Ut = None
    if Ut is None or not bool(torch.isfinite(Ut).all()):
        Ut = torch.zeros_like(R)
    sweeps = 0
    while sweeps < max_iter:
        if reference == 0 or float(violation(Ut, G, R)) / reference <= tol:
            break
        hals_sweeps(Ut, G, R, 1)
        sweeps += 1
    return Ut, sweeps
