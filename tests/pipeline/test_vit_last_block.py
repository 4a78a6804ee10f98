"""A CLS-pooled transformer explained at its last block: a clear error, never silent zeros.

timm's ``VisionTransformer(global_pool="token")`` reads only the CLS token after the last block,
so the patch tokens of that block (the rows the concepts describe) cannot change the output: every
importance would be exactly 0. The explainer must refuse the layer on its probe batch and name the
nearest block that works; with average pooling the last block's patch tokens do reach the output.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conceptkit import ConceptExplainer
from conceptkit.concepts import SemiNMF
from conceptkit.importance import concept_importance

timm = pytest.importorskip("timm")


def tiny_vit(global_pool: str = "token"):
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2,
                             num_classes=3, global_pool=global_pool).eval()


def explainer(model, layer):
    return ConceptExplainer(model, layer, n_concepts=3, method="ice", importance="sobol",
                            factorizer=SemiNMF(3, random_state=0), seed=0, progress=False)


@pytest.fixture(scope="module")
def images():
    return torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_last_block_of_a_cls_pooled_vit_is_refused_naming_the_layer_that_works(images):
    model = tiny_vit().train()
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.raises(ValueError, match=r"'blocks\.2'.*CLS token.*layer='blocks\.1'"):
        explainer(model, "blocks.2").fit(images, 0)
    assert model.training and [p.requires_grad for p in model.parameters()] == flags


def test_the_named_layer_gives_a_non_empty_explanation(images):
    result = explainer(tiny_vit(), "blocks.1").fit(images, 0)
    assert np.all(np.isfinite(result.importances))
    assert result.importances.max() > 1e-3


def test_average_pooled_vit_explains_its_last_block(images):
    result = explainer(tiny_vit("avg"), "blocks.2").fit(images, 1)
    assert result.importances.max() > 1e-3


def test_the_importance_engine_refuses_tokens_that_never_reach_the_output(images):
    """The same guard one level down, for users calling concept_importance themselves."""
    model = tiny_vit()
    handle = explainer(model, "blocks.2").model_at_layer
    acts, context = handle.activations(images, with_context=True)
    bank = SemiNMF(3, random_state=0).fit(acts.permute(0, 2, 3, 1).reshape(-1, 32).numpy())

    class Bank:
        components = torch.as_tensor(bank.components_)

        def encode(self, a):
            rows = torch.as_tensor(a).permute(0, 2, 3, 1).reshape(-1, 32).numpy()
            codes = torch.as_tensor(bank.transform(rows))
            return codes.reshape(a.shape[0], a.shape[2], a.shape[3], -1).permute(0, 3, 1, 2)

    with pytest.raises(ValueError, match="do not reach the output"):
        concept_importance(handle.maps_head, acts, Bank(), 0, context=context, progress=False)
