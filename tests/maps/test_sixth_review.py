"""Found by the sixth review (fuzzing the public API): pixel and Grad-CAM maps of images the
model cannot take say so naming `images` and the model; meta-device activations and a string
bank are refused by name; provenance maps refuse more images than the bank was fitted on.

Tiny models throughout, CPU only.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _shared import small_cnn

from conceptkit.concepts import ACE, CRAFT, NMF, ConceptBank
from conceptkit.extraction import Provenance
from conceptkit.maps import coefficient_maps, gradient_maps, pixel_maps, provenance_maps

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


# ---------------------------------------------------------------------------------------------
# Finding 3: images of the wrong channel count (before: torch's conv error from deep inside)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("maps", [pixel_maps, gradient_maps])
def test_gray_images_for_a_colour_model_are_refused_naming_images_and_the_model(cnn, maps):
    model, images, bank = cnn
    with pytest.raises(ValueError, match=r"^`images` \(an example of shape \(1, 1, 16, 16\)\) "
                                         r"cannot be run through Sequential: RuntimeError: .*"
                                         r"3 channels.* The images have one channel; for a model "
                                         r"of colour images pass images.expand\(-1, 3, -1, -1\)"
                                         r"\.$") as caught:
        maps(model, images[:, :1], bank)
    assert isinstance(caught.value.__cause__, RuntimeError)  # torch's error kept as the cause


def test_a_preprocess_that_breaks_the_images_is_named(cnn):
    model, images, bank = cnn
    with pytest.raises(ValueError, match=r"^`images` \(an example of shape \(1, 3, 16, 16\)\) "
                                         r"cannot be run through `preprocess` and Sequential: "):
        pixel_maps(model, images, bank, preprocess=lambda x: x[:, :2])


def test_channels_last_images_get_the_permute_hint(cnn):
    model, images, bank = cnn
    with pytest.raises(ValueError, match=r"look channels-last \(N, H, W, C\) = \(1, 16, 16, 3\); "
                                         r"conceptkit takes \(N, C, H, W\): pass "
                                         r"images.permute\(0, 3, 1, 2\)\.$"):
        gradient_maps(model, images.permute(0, 2, 3, 1), bank)


def test_the_maps_of_images_that_fit_are_unchanged(cnn):
    model, images, bank = cnn
    maps = pixel_maps(model, images, bank)
    assert maps.shape == (4, 3, 16, 16) and bool((maps >= 0).all()) and float(maps.max()) > 0


# ---------------------------------------------------------------------------------------------
# Finding 6: meta-device activations (before: NotImplementedError "Cannot copy out of meta")
# ---------------------------------------------------------------------------------------------

def test_coefficient_maps_refuse_meta_activations(cnn):
    model, images, bank = cnn
    acts = torch.empty(2, 8, 4, 4, device="meta")
    with pytest.raises(ValueError, match=r"^`activations` is on the 'meta' device, which holds "
                                         r"shapes but no data"):
        coefficient_maps(acts, bank)


# ---------------------------------------------------------------------------------------------
# Finding 7: provenance_maps of something that is no bank (before: AttributeError)
# ---------------------------------------------------------------------------------------------

def test_provenance_maps_refuse_what_is_no_bank(cnn):
    _, _, bank = cnn
    with pytest.raises(TypeError, match=r"^`bank` must be a ConceptBank, as returned by "
                                        r"discovery; got str 'bank'\.$"):
        provenance_maps("bank")

    class Explanation:  # what holds a bank: the hint says to pass it
        pass

    holder = Explanation()
    holder.bank = bank
    with pytest.raises(TypeError, match=r"\(an explanation\? pass its `\.bank`\)\.$"):
        provenance_maps(holder)


# ---------------------------------------------------------------------------------------------
# Finding 8: n_images above the fitted images (before: all-zero maps, or a 45 GiB MemoryError)
# ---------------------------------------------------------------------------------------------

def test_provenance_maps_refuse_more_images_than_the_bank_was_fitted_on(cnn):
    model, images, bank = cnn                                   # ICE: every image gives cells
    assert provenance_maps(bank).shape == (4, 3, 16, 16)
    assert torch.equal(provenance_maps(bank, n_images=4), provenance_maps(bank))
    for n in (5, 10**6):
        with pytest.raises(ValueError, match=rf"^`n_images` must be at most 4, the number of "
                                             rf"images this bank was fitted on; got {n}\. No "
                                             rf"fitted row covers"):
            provenance_maps(bank, n_images=n)
    craft = CRAFT(2, patch_size=8, seed=0, progress=False).fit(model, "block2", images)
    assert provenance_maps(craft, n_images=4).shape == (4, 2, 16, 16)
    with pytest.raises(ValueError, match=r"`n_images` must be at most 4"):
        provenance_maps(craft, n_images=5)


def test_provenance_maps_of_segments_count_the_label_maps():
    model = small_cnn().eval()
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    bank = ACE(2, n_segments=(4,), min_cluster_size=1, seed=0,
               progress=False).fit(model, "block2", images)
    assert bank.provenance.label_maps.shape[0] == 3
    assert provenance_maps(bank, n_images=3).shape[0] == 3
    with pytest.raises(ValueError, match=r"`n_images` must be at most 3"):  # was an IndexError
        provenance_maps(bank, n_images=4)


def test_a_hand_built_bank_still_takes_images_without_rows():
    # a custom provenance says nothing of images after its last row: they stay allowed
    prov = Provenance("image", np.arange(3), np.tile([0, 0, 8, 8], (3, 1)), (8, 8))
    bank = ConceptBank(components=torch.eye(2), codes=torch.ones(3, 2), provenance=prov,
                       layer="x", method="custom", params={}, factorizer=NMF(2))
    maps = provenance_maps(bank, n_images=5)
    assert maps.shape == (5, 2, 8, 8)
    assert bool((maps[:3] == 1).all()) and bool((maps[3:] == 0).all())
