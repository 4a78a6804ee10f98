"""Sequence-first transformers (tokens ``(T, N, C)``, as older open_clip ViTs): the layout is
decided once, and a batch whose size equals the number of tokens is not guessed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conceptkit.extraction import ActivationExtractor


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 8)

    def forward(self, tokens):
        return self.linear(tokens)


class _TinyViT(nn.Module):
    """16 patch tokens and a CLS token (17 tokens); ``sequence_first`` hands them on as
    ``(T, N, C)``."""

    def __init__(self, sequence_first: bool):
        super().__init__()
        self.sequence_first = sequence_first
        self.embed = nn.Conv2d(3, 8, 4, 4)
        self.class_embedding = nn.Parameter(torch.randn(8))
        self.block = _Block()
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.class_embedding.expand(len(tokens), 1, 8), tokens], 1)
        if self.sequence_first:
            return self.head(self.block(tokens.transpose(0, 1))[0])
        return self.head(self.block(tokens)[:, 0])


@pytest.mark.parametrize("sequence_first", [True, False])
def test_a_batch_as_large_as_the_token_count_gives_the_same_activations(sequence_first):
    torch.manual_seed(0)
    model = _TinyViT(sequence_first)
    if sequence_first:  # the same weights, batch-first: the reference
        reference_model = _TinyViT(False)
        reference_model.load_state_dict(model.state_dict())
    else:
        reference_model = model
    images = torch.rand(17, 3, 16, 16)
    reference = ActivationExtractor(reference_model, "block", batch_size=5, progress=False)(images)
    for batch_size in (5, 17, 64):  # 17 images in one batch of 17 tokens: (17, 17, 8)
        extractor = ActivationExtractor(model, "block", batch_size=batch_size, progress=False)
        got = extractor(images)
        torch.testing.assert_close(got, reference)
        assert extractor.token_layout_ == ("TNC" if sequence_first else "NTC")


def test_mean_over_raw_tokens_is_refused_rather_than_averaging_channels():
    model = _TinyViT(False)
    images = torch.rand(3, 3, 16, 16)
    with pytest.raises(ValueError, match="tokens='auto'"):
        ActivationExtractor(model, "block", tokens="raw", reduce="mean", progress=False)(images)
    pooled = ActivationExtractor(model, "block", reduce="mean", progress=False)(images)
    maps = ActivationExtractor(model, "block", progress=False)(images)
    torch.testing.assert_close(pooled, maps.mean(dim=(2, 3)))


class _TupleLayer(nn.Module):
    def forward(self, x):
        return x, x * 2


class _TupleModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.pair = _TupleLayer()
        self.unused = nn.Identity()

    def forward(self, x):
        return self.pair(self.conv(x))[1].mean((2, 3))


@pytest.mark.parametrize("index,match", [(5, "returns a tuple of 2 elements"),
                                         ("a", "`output`"), (True, "`output`"),
                                         (-1, "`output`")])
def test_output_is_checked(index, match):
    images = torch.rand(2, 3, 8, 8)
    with pytest.raises((ValueError, TypeError), match=match):
        ActivationExtractor(_TupleModel(), "pair", output=index, progress=False)(images)
    second = ActivationExtractor(_TupleModel(), "pair", output=1, progress=False)
    assert second(images).shape == (2, 4, 6, 6)


def test_a_layer_the_forward_pass_never_calls_is_a_value_error():
    with pytest.raises(ValueError, match="was not called"):
        ActivationExtractor(_TupleModel(), "unused", progress=False)(torch.rand(2, 3, 8, 8))


def test_pixel_and_gradient_maps_of_a_sequence_first_model_at_an_ambiguous_batch_size():
    """The maps guessed the layout per batch as the extractor did: with 17 images of 17 tokens
    in one batch, a sequence-first model's maps were wrong (while its activations were right)."""
    from conceptkit.concepts import ICE
    from conceptkit.maps import gradient_maps, pixel_maps

    torch.manual_seed(0)
    sequence_first = _TinyViT(True)
    batch_first = _TinyViT(False)
    batch_first.load_state_dict(sequence_first.state_dict())
    images = torch.rand(17, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    maps = ActivationExtractor(batch_first, "block", progress=False)(images)
    bank = ICE(3, seed=0, progress=False, factorizer=_semi_nmf()).fit_activations(maps, "block")
    for make in (pixel_maps, gradient_maps):
        reference = make(batch_first, images, bank, batch_size=5)
        for batch_size in (5, 17):
            torch.testing.assert_close(make(sequence_first, images, bank, batch_size=batch_size),
                                       reference)


def _semi_nmf():
    from conceptkit.concepts import SemiNMF

    return SemiNMF(3, random_state=0)
