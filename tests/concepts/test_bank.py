"""ConceptBank: encoding with gradients."""

import numpy as np
import torch

from conceptkit.concepts import NMF, bank_from_activations
from conceptkit.extraction import Provenance


def _bank(n_features=12, k=4, seed=0):
    rng = np.random.default_rng(seed)
    W = rng.uniform(0, 1, (k, n_features))
    U = rng.uniform(0, 1, (300, k)) * (rng.uniform(size=(300, k)) > 0.4)
    A = (U @ W + 0.01 * rng.uniform(size=(300, n_features))).astype(np.float32)
    prov = Provenance("image", np.arange(300), np.zeros((300, 4)), (8, 8))
    return bank_from_activations(NMF(k, random_state=0, max_iter=500), A, prov)


def test_encode_differentiable_equals_encode_and_has_the_implicit_gradient():
    bank = _bank()
    A = bank.activations[:3].double().numpy()
    a = torch.tensor(A, requires_grad=True)
    u = bank.encode_differentiable(a)
    assert np.allclose(u.detach().numpy(), bank.encode(A), atol=1e-3)
    grad = torch.autograd.grad(u[0, 1], a)[0][0].numpy()
    eps = 1e-4
    finite = []
    for c in range(A.shape[1]):
        plus, minus = A[:1].copy(), A[:1].copy()
        plus[0, c] += eps
        minus[0, c] = max(minus[0, c] - eps, 0.0)
        finite.append((bank.encode(plus)[0, 1] - bank.encode(minus)[0, 1]) / (plus[0, c] - minus[0, c]))
    assert np.allclose(grad, finite, atol=2e-3 * np.abs(grad).max())
