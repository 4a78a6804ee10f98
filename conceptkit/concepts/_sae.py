"""Top-k sparse autoencoder (Makhzani & Frey, 2013; Gao et al., 2024) as a concept factorizer."""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from .._validation import check_choice, check_float, check_int, make_rng
from ._base import Factorizer
from ._distributed import all_reduce_grads, distributed_world
from ._progress import iteration

_BLOCK = 8192  # rows encoded at once outside training
_ACTIVATIONS = ("topk", "batchtopk")
AUTO_BATCH = 64      # batch_size="auto": rows per minibatch up to AUTO_BATCH * AUTO_BATCHES rows,
AUTO_BATCHES = 30    # then at most AUTO_BATCHES minibatches per epoch


def _topk_codes(pre: torch.Tensor, top_k: int) -> torch.Tensor:
    """Keep the ``top_k`` largest ReLU activations of each row, zero the rest."""
    values, index = torch.topk(pre, top_k, dim=1)
    return torch.zeros_like(pre).scatter_(1, index, values.clamp(min=0))


def _batch_topk_codes(pre: torch.Tensor, top_k: int) -> torch.Tensor:
    """Keep the ``top_k * rows`` largest ReLU activations of the whole batch (BatchTopK)."""
    flat = pre.clamp(min=0).flatten()
    values, index = torch.topk(flat, min(top_k * pre.shape[0], flat.numel()))
    return torch.zeros_like(flat).scatter_(0, index, values).view_as(pre)


class TopKSAE(Factorizer):
    """Sparse autoencoder with a top-k activation, trained by minibatch Adam.

    ``U = topk(relu((A - bias_) encoder_weight_ᵀ + encoder_bias_))`` and
    ``A_hat = U components_ + bias_``. ``components_ (k, C)`` is the decoder dictionary, whose
    rows are renormalised to unit norm after every optimiser step, so a code value is the length
    of its concept's contribution. ``bias_ (C,)`` is the learned pre-encoder bias (initialised to
    the data mean); components are directions around it. The encoder starts as the dictionary
    itself (tied at initialisation, trained freely after). Computation and outputs are float32.

    Training minimises the squared reconstruction error divided by the data's total variance
    (so ``1 - loss`` is the batch R²). Dead codes are tracked: a code that has not fired on any of
    the last ``dead_rows`` training rows is dead, and the auxiliary loss of Gao et al. (AuxK)
    asks the ``aux_k`` most active dead codes of each row to reconstruct the residual
    ``A - A_hat``, weighted by ``aux_coef`` (normalised by the residual's variance). That pulls
    dead codes back towards the data. ``aux_coef=0`` turns it off.

    ``activation="batchtopk"`` (Bussmann et al., 2024) keeps the ``top_k * rows`` largest
    activations of each training batch instead of ``top_k`` per row (rows share a budget);
    encoding then keeps every activation above ``threshold_``, the running mean of the smallest
    activation kept in training, so rows average ``top_k`` active codes.

    Training stops early when ``n_iter_no_change`` epochs in a row each fail to bring the mean
    epoch loss below the best so far by ``tol`` times the best (``converged_`` is then True);
    otherwise it runs ``epochs`` epochs and ``converged_`` is False. One epoch whose loss rises
    (minibatch Adam's noise) does not stop it. ``loss_curve_`` holds each epoch's mean loss.

    With ``normalize=True`` (the default) training runs on the data divided by one number, the
    root mean square of its centred features, and the fitted arrays are scaled back: the same
    data at another scale gives the same concepts and codes in proportion, so that ``lr`` and
    the learned biases mean the same at any scale of activations (Adam's steps do not shrink
    with the data; on raw activations of scale 1e-3 most codes die).

    With :mod:`torch.distributed` initialised and ``distributed=True`` (the default), every rank
    must hold the same rows; each rank computes the gradients of its share of every minibatch
    and the gradients are all-reduced (summed in float64), so all ranks train the same model as
    one process would, within rounding.

    Parameters
    ----------
    n_concepts : int
        Dictionary size ``k`` (may exceed both ``C`` and the number of rows).
    top_k : int or None
        Active concepts per row; ``None`` → ``max(n_concepts // 10, 1)``.
    epochs, lr : int, float
        Most passes over the data, Adam learning rate.
    batch_size : int or "auto"
        Minibatch size. ``"auto"``: ``max(64, ceil(rows / 30))``, 64 rows up to 1,920 rows and
        at most 30 minibatches an epoch beyond, so a fit on many rows (an atlas's thousands of
        images) takes no more steps than one class's.
    activation : {"topk", "batchtopk"}
    aux_k : int or None
        Dead codes used per row by the auxiliary loss; ``None`` → ``2 * top_k``.
    aux_coef : float
        Weight of the auxiliary loss (Gao et al. use 1/32).
    dead_rows : int or None
        Rows without firing after which a code counts as dead; ``None`` → half an epoch,
        at most 100,000 rows.
    tol : float
        Relative decrease of the best epoch loss below which an epoch counts as no progress
        (0: run every epoch).
    n_iter_no_change : int
        Epochs in a row without progress after which training stops (as scikit-learn's MLP).
    normalize : bool
        Train on the activations divided by the root mean square of their centred features
        (scaled back after training); ``False`` trains on them as they are.
    decay : float
        Fraction of the planned steps (``epochs`` epochs) over which the learning rate decays
        linearly to 0 at the end of training (0: constant learning rate).
    random_state : int or None
        Seed of the initial dictionary and of the minibatch order: the same seed gives the same
        model on the CPU.
    device : str, torch.device or None
        Training/encoding device; ``None`` computes where the input tensor lives (CPU for numpy).
    distributed : bool
        Average gradients over the ranks of an initialised :mod:`torch.distributed` group.
    progress : bool
        Show a progress bar over epochs.

    Attributes
    ----------
    components_ : ndarray of shape (k, C)
    encoder_weight_ : ndarray of shape (k, C)
    encoder_bias_ : ndarray of shape (k,)
    bias_ : ndarray of shape (C,)
    threshold_ : float
        BatchTopK encoding threshold (0 for ``"topk"``).
    reconstruction_err_ : float
        ``||A - A_hat||`` on the training data.
    dead_codes_ : int
        Codes that are zero on every training row after training.
    n_iter_, n_epochs_ : int
        Optimiser steps and epochs taken.
    loss_curve_ : list of float
    converged_ : bool
    """

    nonnegative_codes = True
    signed_components = True
    overcomplete = True
    selects_codes = True  # top-k: the rest of each row is exactly 0
    _reports_iterations = True  # a progress bar counts fit's epochs (_progress.iteration)
    _state_arrays: ClassVar[tuple[str, ...]] = ("components_", "encoder_weight_", "encoder_bias_",
                                                "bias_")
    _concept_arrays: ClassVar[tuple[str, ...]] = ("components_", "encoder_weight_", "encoder_bias_")
    _state_info: ClassVar[tuple[str, ...]] = Factorizer._state_info + (
        "threshold_", "dead_codes_", "n_epochs_", "converged_", "loss_curve_")
    _positive_info: ClassVar[tuple[str, ...]] = ("threshold_",)

    def __init__(self, n_concepts: int = 64, top_k: int | None = None, epochs: int = 20,
                 batch_size: int | str = 256, lr: float = 1e-3, activation: str = "topk",
                 aux_k: int | None = None, aux_coef: float = 1 / 32, dead_rows: int | None = None,
                 tol: float = 1e-4, decay: float = 0.0, random_state: int | None = None,
                 device: str | torch.device | None = None, distributed: bool = True,
                 progress: bool = False, n_iter_no_change: int = 10,
                 normalize: bool = True) -> None:
        self.n_concepts = n_concepts
        self.top_k = top_k
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.activation = activation
        self.aux_k = aux_k
        self.aux_coef = aux_coef
        self.dead_rows = dead_rows
        self.tol = tol
        self.decay = decay
        self.random_state = random_state
        self.device = device
        self.distributed = distributed
        self.progress = progress
        self.n_iter_no_change = n_iter_no_change
        self.normalize = normalize

    @property
    def _backend(self) -> str:
        return "torch"

    @property
    def _k_active(self) -> int:
        return max(self.n_concepts // 10, 1) if self.top_k is None else int(self.top_k)

    def _validate_params(self) -> None:
        super()._validate_params()
        if self.top_k is not None:
            check_int(self.top_k, "top_k", minimum=1, maximum=self.n_concepts)
        check_int(self.epochs, "epochs", minimum=1)
        if isinstance(self.batch_size, str):
            if self.batch_size != "auto":
                raise ValueError(f"`batch_size` must be a positive int or 'auto'; got "
                                 f"{self.batch_size!r}.")
        else:
            check_int(self.batch_size, "batch_size", minimum=1)
        check_float(self.lr, "lr", minimum=0.0, strict_minimum=True)
        check_choice(self.activation, "activation", _ACTIVATIONS)
        if self.aux_k is not None:
            check_int(self.aux_k, "aux_k", minimum=1)
        check_float(self.aux_coef, "aux_coef", minimum=0.0)
        if self.dead_rows is not None:
            check_int(self.dead_rows, "dead_rows", minimum=1)
        check_float(self.tol, "tol", minimum=0.0)
        check_int(self.n_iter_no_change, "n_iter_no_change", minimum=1)
        if not isinstance(self.normalize, (bool, np.bool_)):
            raise TypeError(f"`normalize` must be a bool; got {self.normalize!r}.")
        check_float(self.decay, "decay", minimum=0.0, maximum=1.0)
        if self.random_state is not None:
            check_int(self.random_state, "random_state", minimum=0)

    def _check_n_concepts(self, X) -> None:
        """An autoencoder's dictionary may be larger than the number of rows and features."""

    def _rows_per_batch(self, n: int) -> int:
        """The minibatch size for ``n`` training rows (``batch_size``, resolved)."""
        if self.batch_size == "auto":
            return max(AUTO_BATCH, math.ceil(n / AUTO_BATCHES))
        return int(self.batch_size)

    def _fit(self, X: torch.Tensor) -> torch.Tensor:
        rng = make_rng(self.random_state)
        n, c = X.shape
        k, top_k = self.n_concepts, self._k_active
        aux_k = min(k, 2 * top_k if self.aux_k is None else int(self.aux_k))
        dead_rows = (min(max(n // 2, 1), 100_000) if self.dead_rows is None
                     else int(self.dead_rows))
        start = rng.standard_normal((k, c))
        start /= np.linalg.norm(start, axis=1, keepdims=True)
        as_param = lambda a: torch.nn.Parameter(  # noqa: E731
            torch.as_tensor(a).to(device=X.device, dtype=X.dtype).clone())
        mean = X.double().mean(dim=0)
        variance = float(((X.double() - mean) ** 2).sum(dim=1).mean())
        # train on X / scale (centred features of unit root mean square), scale back at the end
        scale = (math.sqrt(variance / c) if self.normalize and variance > 0
                 and math.isfinite(variance) else 1.0)
        variance = variance / scale ** 2 if variance > 0 else 1.0
        decoder, encoder = as_param(start), as_param(start)
        encoder_bias = as_param(np.zeros(k))
        bias = as_param((mean / scale).cpu().numpy())
        params = [decoder, encoder, encoder_bias, bias]
        optimizer = torch.optim.Adam(params, lr=self.lr)
        batch_size = self._rows_per_batch(n)
        planned = self.epochs * math.ceil(n / batch_size)
        decay_from = planned * (1.0 - self.decay)
        order_gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        rank, world = distributed_world() if self.distributed else (0, 1)
        since_fired = torch.zeros(k, dtype=torch.long, device=X.device)
        threshold, curve, steps, converged = 0.0, [], 0, False
        best, stale = math.inf, 0
        batch_topk = self.activation == "batchtopk"
        with torch.enable_grad():
            for _ in tqdm(range(self.epochs), desc="TopKSAE", disable=not self.progress):
                total = 0.0
                for idx in torch.randperm(n, generator=order_gen).split(batch_size):
                    rows = idx[rank::world]  # this rank's share of the global minibatch
                    batch = X[rows.to(X.device)] / scale
                    pre = (batch - bias) @ encoder.T + encoder_bias
                    codes = _batch_topk_codes(pre, top_k) if batch_topk else _topk_codes(pre, top_k)
                    residual = batch - (codes @ decoder + bias)
                    loss = (residual ** 2).sum() / (len(idx) * variance)
                    fired = (codes > 0).any(dim=0)
                    dead = since_fired >= dead_rows
                    if self.aux_coef > 0 and bool(dead.any()):
                        loss = loss + self.aux_coef * _aux_loss(pre, dead, aux_k, residual,
                                                                decoder, world)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if world > 1:
                        fired = all_reduce_grads(params, fired)
                    if steps >= decay_from:  # linear decay to 0 over the last `decay` of steps
                        for group in optimizer.param_groups:
                            group["lr"] = self.lr * max(planned - steps, 1) / max(
                                planned - decay_from, 1)
                    optimizer.step()
                    with torch.no_grad():
                        decoder.div_(decoder.norm(dim=1, keepdim=True).clamp(min=1e-12))
                    since_fired += len(idx)
                    since_fired[fired] = 0
                    if batch_topk and bool((codes > 0).any()):
                        smallest = float(codes.detach()[codes > 0].min())
                        threshold = smallest if steps == 0 else 0.99 * threshold + 0.01 * smallest
                    total += float(loss.detach())  # this rank's share of the batch loss
                    steps += 1
                curve.append(_reduce_scalar(total, world) / math.ceil(n / batch_size))
                iteration(len(curve))
                if not math.isfinite(curve[-1]):
                    raise ValueError(f"TopKSAE diverged: the mean loss of epoch {len(curve)} is "
                                     f"{curve[-1]} (lr={self.lr:g}). Lower `lr`, or check the "
                                     f"activations for extreme values.")
                if self.tol > 0:
                    stale = stale + 1 if curve[-1] > best - self.tol * abs(best) else 0
                    best = min(best, curve[-1])
                    if stale >= self.n_iter_no_change:
                        converged = True
                        break
        unit = dict(zip(("components_", "encoder_weight_", "encoder_bias_", "bias_"),
                        (1.0, 1.0, scale, scale)))
        for (name, factor), param in zip(unit.items(), params):
            setattr(self, name, (param.detach().double() * factor).to(X.dtype).cpu().numpy())
        self.threshold_ = float(threshold) * scale if batch_topk else 0.0
        self.n_iter_, self.n_epochs_ = steps, len(curve)
        self.loss_curve_, self.converged_ = [float(v) for v in curve], converged
        U = self._transform(X)
        self.dead_codes_ = int((U.amax(dim=0) <= 0).sum())
        self.reconstruction_err_ = self._frobenius_error(X, U)
        return U

    def _array(self, name: str, like: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(getattr(self, name)).to(device=like.device, dtype=like.dtype)

    @torch.no_grad()
    def _transform(self, X: torch.Tensor) -> torch.Tensor:
        top_k = min(self._k_active, self.encoder_weight_.shape[0])
        threshold = float(getattr(self, "threshold_", 0.0) or 0.0)
        blocks = []
        for s in range(0, X.shape[0], _BLOCK):
            pre = self._preactivation(X[s:s + _BLOCK])
            if self.activation == "batchtopk":
                blocks.append(torch.where(pre > threshold, pre, torch.zeros_like(pre)).clamp(min=0))
            else:
                blocks.append(_topk_codes(pre, top_k))
        return torch.cat(blocks)

    def _preactivation(self, X: torch.Tensor) -> torch.Tensor:
        """``(X - bias_) encoder_weight_ᵀ + encoder_bias_``, with gradient."""
        encoder, encoder_bias = self._array("encoder_weight_", X), self._array("encoder_bias_", X)
        return (X - self._array("bias_", X)) @ encoder.T + encoder_bias

    def _differentiable_transform(self, X: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Codes equal to ``codes`` (this model's codes of ``X``, computed without gradient)
        whose gradient is the encoder's: the pre-activation where a code is positive, 0
        elsewhere (the top-k selection is piecewise constant)."""
        pre = self._preactivation(X)
        return torch.where(codes > 0, pre, torch.zeros_like(pre))

    @torch.no_grad()
    def _inverse_transform(self, U: torch.Tensor) -> torch.Tensor:
        return U @ self._array("components_", U) + self._array("bias_", U)


def _aux_loss(pre: torch.Tensor, dead: torch.Tensor, aux_k: int, residual: torch.Tensor,
              decoder: torch.Tensor, world: int) -> torch.Tensor:
    """AuxK: the ``aux_k`` largest dead pre-activations of each row reconstruct the residual.

    Normalised by the squared norm of the whole minibatch's residual (summed over ranks), so the
    weight does not depend on how well the live codes already reconstruct.
    """
    masked = pre.masked_fill(~dead, float("-inf"))
    codes = _topk_codes(masked, min(aux_k, int(dead.sum())))
    target = residual.detach()
    scale = _reduce_scalar(float((target.double() ** 2).sum()), world) or 1.0
    return ((codes @ decoder - target) ** 2).sum() / scale


def _reduce_scalar(value: float, world: int) -> float:
    if world == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    torch.distributed.all_reduce(tensor)
    return float(tensor)
