"""Every name renamed in 0.2 still works for one version and says what replaces it.

The rest of the test suite uses the new names only; this module is where the old ones are called.
"""

import numpy as np
import pytest
import torch

from conceptkit.concepts import NMF, bank_from_activations
from conceptkit.extraction import Provenance


def _bank(n_features=6, k=3):
    rng = np.random.default_rng(0)
    A = (rng.uniform(size=(40, k)) @ rng.uniform(size=(k, n_features))).astype(np.float32)
    prov = Provenance("image", np.arange(40), np.zeros((40, 4)), (8, 8))
    return bank_from_activations(NMF(k, random_state=0, max_iter=300), A, prov)


def test_maps_differentiable_codes_moved_to_the_bank():
    import conceptkit.maps

    bank = _bank()
    pooled = bank.activations[:4].clone().requires_grad_(True)
    with pytest.warns(DeprecationWarning, match="encode_differentiable"):
        old = conceptkit.maps.differentiable_codes
    torch.testing.assert_close(old(bank, pooled), bank.encode_differentiable(pooled))


def test_bottleneck_concept_bank_is_now_cav_bank():
    import conceptkit.bottleneck as bottleneck

    with pytest.warns(DeprecationWarning, match="CAVBank"):
        old = bottleneck.ConceptBank
    assert old is bottleneck.CAVBank
    with pytest.warns(DeprecationWarning):
        from conceptkit.bottleneck import ConceptBank  # noqa: F401 - the old import keeps working
