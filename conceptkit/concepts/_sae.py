"""Top-k sparse autoencoder (Makhzani & Frey, 2013; Gao et al., 2024) as a concept factorizer."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from .._validation import check_float, check_int, make_rng
from ._base import Factorizer

_BLOCK = 8192  # rows encoded at once outside training


def _topk_codes(pre: torch.Tensor, top_k: int) -> torch.Tensor:
    """Keep the ``top_k`` largest ReLU activations of each row, zero the rest."""
    values, index = torch.topk(pre, top_k, dim=1)
    return torch.zeros_like(pre).scatter_(1, index, values.clamp(min=0))


class TopKSAE(Factorizer):
    """Sparse autoencoder with a top-k activation, trained by minibatch Adam.

    ``U = topk(relu((A - bias_) encoder_weight_ᵀ + encoder_bias_))`` and
    ``A_hat = U components_ + bias_``. ``components_ (k, C)`` is the decoder dictionary, whose
    rows are renormalised to unit norm after every optimiser step, so a code value is the length
    of its concept's contribution. ``bias_ (C,)`` is the learned pre-bias (initialised to the data
    mean); components are directions around it. The encoder starts tied to the decoder (its
    transpose). Training minimises the mean squared reconstruction error. Computation and
    outputs are float32.

    Parameters
    ----------
    n_concepts : int
        Dictionary size ``k`` (may exceed ``C``).
    top_k : int or None
        Active concepts per row; ``None`` → ``max(n_concepts // 10, 1)``.
    epochs, batch_size, lr : int, int, float
        Passes over the data, minibatch size, Adam learning rate.
    random_state : int or None
        Seed of the initial dictionary and of the minibatch order: the same seed gives the same
        model on the CPU.
    device : str, torch.device or None
        Training/encoding device; ``None`` computes where the input tensor lives (CPU for numpy).
    progress : bool
        Show a progress bar over epochs.

    Attributes
    ----------
    components_ : ndarray of shape (k, C)
    encoder_weight_ : ndarray of shape (k, C)
    encoder_bias_ : ndarray of shape (k,)
    bias_ : ndarray of shape (C,)
    reconstruction_err_ : float
        ``||A - A_hat||`` on the training data.
    n_iter_ : int
        Optimiser steps taken.
    """

    nonnegative_codes = True
    signed_components = True
    overcomplete = True
    _state_arrays: ClassVar[tuple[str, ...]] = ("components_", "encoder_weight_", "encoder_bias_",
                                                "bias_")
    _concept_arrays: ClassVar[tuple[str, ...]] = ("components_", "encoder_weight_", "encoder_bias_")

    def __init__(self, n_concepts: int = 64, top_k: int | None = None, epochs: int = 20,
                 batch_size: int = 256, lr: float = 1e-3, random_state: int | None = None,
                 device: str | torch.device | None = None, progress: bool = False) -> None:
        self.n_concepts = n_concepts
        self.top_k = top_k
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.random_state = random_state
        self.device = device
        self.progress = progress

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
        check_int(self.batch_size, "batch_size", minimum=1)
        check_float(self.lr, "lr", minimum=0.0, strict_minimum=True)
        if self.random_state is not None:
            check_int(self.random_state, "random_state", minimum=0)

    def _fit(self, X: torch.Tensor) -> torch.Tensor:
        rng = make_rng(self.random_state)
        n, c = X.shape
        k, top_k = self.n_concepts, self._k_active
        start = rng.standard_normal((k, c))
        start /= np.linalg.norm(start, axis=1, keepdims=True)
        as_param = lambda a: torch.nn.Parameter(  # noqa: E731
            torch.as_tensor(a).to(device=X.device, dtype=X.dtype).clone())
        decoder = as_param(start)
        encoder = as_param(start)
        encoder_bias = as_param(np.zeros(k))
        bias = as_param(X.mean(dim=0).detach().cpu().numpy())
        params = [decoder, encoder, encoder_bias, bias]
        optimizer = torch.optim.Adam(params, lr=self.lr)
        order_gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        steps = 0
        with torch.enable_grad():
            for _ in tqdm(range(self.epochs), desc="TopKSAE", disable=not self.progress):
                for idx in torch.randperm(n, generator=order_gen).split(self.batch_size):
                    batch = X[idx.to(X.device)]
                    codes = _topk_codes((batch - bias) @ encoder.T + encoder_bias, top_k)
                    loss = ((codes @ decoder + bias - batch) ** 2).sum(dim=1).mean()
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    with torch.no_grad():
                        decoder.div_(decoder.norm(dim=1, keepdim=True).clamp(min=1e-12))
                    steps += 1
        for name, param in zip(("components_", "encoder_weight_", "encoder_bias_", "bias_"), params):
            setattr(self, name, param.detach().cpu().numpy().copy())
        self.n_iter_ = steps
        U = self._transform(X)
        self.reconstruction_err_ = self._frobenius_error(X, U)
        return U

    def _array(self, name: str, like: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(getattr(self, name)).to(device=like.device, dtype=like.dtype)

    @torch.no_grad()
    def _transform(self, X: torch.Tensor) -> torch.Tensor:
        encoder, encoder_bias = self._array("encoder_weight_", X), self._array("encoder_bias_", X)
        bias = self._array("bias_", X)
        top_k = min(self._k_active, encoder.shape[0])
        blocks = [_topk_codes((X[s:s + _BLOCK] - bias) @ encoder.T + encoder_bias, top_k)
                  for s in range(0, X.shape[0], _BLOCK)]
        return torch.cat(blocks)

    @torch.no_grad()
    def _inverse_transform(self, U: torch.Tensor) -> torch.Tensor:
        return U @ self._array("components_", U) + self._array("bias_", U)
