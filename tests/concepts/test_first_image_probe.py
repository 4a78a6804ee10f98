"""A layer with negative activations fails on the first image, before the whole extraction
(seconds, not the minute a ViT takes): the methods and the pipeline check a one-image probe."""

from __future__ import annotations

import pytest
import torch
from _shared import two_block_cnn

import conceptkit
from conceptkit.concepts import CRAFT, ICE, NMF, SemiNMF
from conceptkit.concepts._checks import NegativeActivationsError
from conceptkit.extraction import ActivationExtractor

IMAGES = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(5))
SIGNED = "block2.0"  # the convolution before the ReLU


@pytest.fixture
def extracted(monkeypatch):
    """How many inputs each pass of g saw."""
    sizes: list[int] = []
    original = ActivationExtractor.__call__

    def spy(self, inputs):
        sizes.append(len(inputs))
        return original(self, inputs)

    monkeypatch.setattr(ActivationExtractor, "__call__", spy)
    return sizes


@pytest.mark.parametrize("method, first_image_rows", [(CRAFT(3, patch_size=16, progress=False), 4),
                                                      (ICE(3, progress=False), 1)])
def test_methods_stop_after_the_first_image(method, first_image_rows, extracted):
    with pytest.raises(NegativeActivationsError, match="found on the first image, before "
                                                       "extracting all 6"):
        method.fit(two_block_cnn(), SIGNED, IMAGES)
    assert extracted == [first_image_rows]


def test_pipeline_stops_before_the_class_images_are_extracted(extracted):
    explainer = conceptkit.ConceptExplainer(two_block_cnn(), SIGNED, n_concepts=3, patch_size=16,
                                            method="craft", progress=False)
    with pytest.raises(ValueError, match=r"factorizer=SemiNMF\(k\)") as caught:
        explainer.fit(IMAGES, 0)
    assert isinstance(caught.value, NegativeActivationsError)
    assert extracted == [4]  # one image's crops; never the 6 class images or their 24 crops


@pytest.mark.parametrize("factorizer", [SemiNMF(3), NMF(3, relu=True)])
def test_factorizers_that_take_signed_input_skip_the_probe(factorizer, extracted):
    bank = CRAFT(factorizer=factorizer, patch_size=16, progress=False, seed=0).fit(
        two_block_cnn(), SIGNED, IMAGES)
    assert bank.n_concepts == 3 and extracted == [24]


def test_the_message_has_a_command_line_twin():
    err = NegativeActivationsError("blocks.11", -2.5, "NMF", n_images=40)
    assert "factorizer=SemiNMF(k)" in str(err) and "`layer` 'blocks.11'" in str(err)
    assert "`--factorizer semi_nmf`" in err.command_line()
    assert "`--layer` 'blocks.11'" in err.command_line() and "SemiNMF" not in err.command_line()


def test_the_message_recommends_the_factorizer_signed_tokens_get_by_default(extracted):
    # it recommended SemiNMF alone, the token default before TopKSAE replaced it
    from conceptkit.cli._explain import FACTORIZER_CHOICES
    from conceptkit.pipeline import token_factorizer

    err = NegativeActivationsError("blocks.11", -2.5, "NMF")
    default = type(token_factorizer(3, 0)).__name__
    assert default == "TopKSAE"
    text = str(err)
    assert "factorizer=token_factorizer(k, seed) from conceptkit.pipeline" in text
    assert text.index("token_factorizer") < text.index("SemiNMF(k)")  # the default first
    choice = next(c for c, name in FACTORIZER_CHOICES.items() if name == default)
    assert f"`--factorizer {choice}`" in err.command_line()
    # what it recommends runs at the signed layer
    bank = ICE(factorizer=token_factorizer(3, 0), progress=False).fit(two_block_cnn(), SIGNED,
                                                                     IMAGES)
    assert bank.n_concepts == 3
