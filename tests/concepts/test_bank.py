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


def test_encode_differentiable_of_a_sparse_autoencoder_has_its_encoders_gradient():
    """A top-k autoencoder's codes are its encoder's ReLU pre-activations on the kept concepts:
    the differentiable codes equal ``encode`` and their gradient is the encoder's row on the
    kept concepts, 0 on the others (checked by finite differences away from the top-k
    boundary)."""
    from conceptkit.concepts import TopKSAE

    rng = np.random.default_rng(1)
    A = rng.normal(size=(400, 12)).astype(np.float32)
    sae = TopKSAE(6, top_k=2, epochs=3, random_state=0).fit(A)
    prov = Provenance("image", np.arange(400), np.zeros((400, 4)), (8, 8))
    bank = bank_from_activations(sae, A, prov)
    x = torch.tensor(A[:5], dtype=torch.float64, requires_grad=True)
    u = bank.encode_differentiable(x)
    np.testing.assert_allclose(u.detach().numpy(), bank.encode(A[:5]), atol=1e-5)
    kept = np.flatnonzero(u[0].detach().numpy() > 0)
    assert kept.size == 2
    for j in range(6):
        grad = torch.autograd.grad(u[0, j], x, retain_graph=True)[0][0].numpy()
        if j in kept:
            np.testing.assert_allclose(grad, sae.encoder_weight_[j], rtol=1e-5, atol=1e-6)
            eps = 1e-3
            plus, minus = A[:1].copy(), A[:1].copy()
            plus[0, 3] += eps
            minus[0, 3] -= eps
            finite = (bank.encode(plus)[0, j] - bank.encode(minus)[0, j]) / (2 * eps)
            assert abs(finite - grad[3]) < 1e-2 * max(abs(grad[3]), 1e-3)
        else:
            assert not grad.any()


def test_encode_differentiable_of_k_means_equals_its_codes():
    """Hard k-means codes are one-hot (1 for the nearest centroid) and carry the gradient of that
    centroid's least-squares coefficient; soft codes are the softmax, with its own gradient
    (finite differences)."""
    from conceptkit.concepts import KMeansConcepts

    rng = np.random.default_rng(2)
    A = (rng.normal(size=(200, 5)) + 3 * rng.integers(0, 2, size=(200, 1))).astype(np.float32)
    prov = Provenance("image", np.arange(200), np.zeros((200, 4)), (8, 8))
    for codes in ("hard", "soft"):
        bank = bank_from_activations(KMeansConcepts(3, codes=codes, n_init=2, random_state=0),
                                     A, prov)
        x = torch.tensor(A[:4], dtype=torch.float64, requires_grad=True)
        u = bank.encode_differentiable(x)
        np.testing.assert_allclose(u.detach().numpy(), bank.encode(A[:4]), atol=1e-5)
        j = int(np.argmax(bank.encode(A[:1])[0]))
        grad = torch.autograd.grad(u[0, j], x)[0][0].numpy()
        centroid = bank.factorizer.components_[j].astype(np.float64)
        if codes == "hard":
            np.testing.assert_allclose(grad, centroid / (centroid @ centroid), rtol=1e-5)
        else:
            eps = 1e-3
            finite = []
            for c in range(5):
                plus, minus = A[:1].astype(np.float64).copy(), A[:1].astype(np.float64).copy()
                plus[0, c] += eps
                minus[0, c] -= eps
                finite.append((bank.encode(plus)[0, j] - bank.encode(minus)[0, j]) / (2 * eps))
            np.testing.assert_allclose(grad, finite, atol=1e-3 + 1e-2 * np.abs(grad).max())
