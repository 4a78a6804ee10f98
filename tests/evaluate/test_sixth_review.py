"""evaluate.reliance on images the model cannot take, and meta-device masks: errors that name
the argument instead of torch's."""
import pytest
import torch

from conceptkit.datasets import make_concept_dataset, reference_model
from conceptkit.evaluate import reliance

DATA = make_concept_dataset(4, seed=0)
IMAGES, MASKS = DATA.images[DATA.labels == 2], DATA.masks[DATA.labels == 2]


def test_grey_images_for_a_colour_model_name_images_and_the_model():
    with pytest.raises(ValueError, match=r"`images` \(a batch of shape \(4, 1, 64, 64\)\) cannot "
                                         r"be run through ReferenceCNN"):
        reliance(reference_model(), IMAGES[:, :1], MASKS, 2, progress=False)


def test_a_preprocess_that_breaks_the_images_is_named():
    with pytest.raises(ValueError, match=r"after `preprocess`\) cannot be run through"):
        reliance(reference_model(), IMAGES, MASKS, 2, preprocess=lambda x: x[:, :1],
                 progress=False)


def test_meta_masks_are_refused_naming_masks():
    with pytest.raises(ValueError, match=r"`masks`.*meta"):
        reliance(reference_model(), IMAGES, MASKS.to("meta"), 2, progress=False)


def test_a_model_that_returns_no_logits_is_told_so_not_blamed_on_images():
    class Dense(torch.nn.Module):  # a segmentation-style output (N, C, H, W)
        def forward(self, x):
            return x.mean(dim=1, keepdim=True).repeat(1, 4, 1, 1)

    with pytest.raises(ValueError, match=r"must return logits of shape \(N, n_classes\)") as err:
        reliance(Dense(), IMAGES, MASKS, 2, progress=False)
    assert "cannot be run through" not in str(err.value)
