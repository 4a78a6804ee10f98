"""Concept attribution maps and their agreement with ground-truth masks."""

import numpy as np
import pytest
import torch
from torch import nn

from conceptkit import ConceptExplainer
from conceptkit.concepts import NMF, ConceptBank, SemiNMF, bank_from_activations
from conceptkit.evaluate import gaussian_blur
from conceptkit.extraction import Provenance, crops
from conceptkit.maps import (
    coefficient_maps,
    gradient_maps,
    mask_iou,
    match_concepts,
    pixel_maps,
    pointing_game,
    provenance_maps,
    relevance_mass,
)


def _bank(n_features=12, k=4, seed=0):
    rng = np.random.default_rng(seed)
    W = rng.uniform(0, 1, (k, n_features))
    U = rng.uniform(0, 1, (300, k)) * (rng.uniform(size=(300, k)) > 0.4)
    A = (U @ W + 0.01 * rng.uniform(size=(300, n_features))).astype(np.float32)
    prov = Provenance("image", np.arange(300), np.zeros((300, 4)), (8, 8))
    return bank_from_activations(NMF(k, random_state=0, max_iter=500), A, prov)


def test_coefficient_maps_encode_every_position():
    bank = _bank()
    acts = torch.rand(2, 12, 3, 4)
    maps = coefficient_maps(acts, bank)
    assert maps.shape == (2, 4, 3, 4)
    # sklearn's cd transform stops on a tolerance summed over the batch, so a row encoded alone
    # agrees with the batch to ~1e-4, not bit for bit
    expected = bank.encode(acts[1, :, 2, 3][None])[0]
    assert torch.allclose(maps[1, :, 2, 3], expected, atol=1e-3)
    up = coefficient_maps(acts, bank, image_size=(12, 16))
    assert up.shape == (2, 4, 12, 16)


class _Planted(nn.Module):
    """Channel j of the feature map is the j-th input colour channel (after a ReLU)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Conv2d(3, 3, 1, bias=False)
        with torch.no_grad():
            self.features.weight.copy_(torch.eye(3)[:, :, None, None])
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(self.flat(self.pool(self.act(self.features(x)))))


def test_gradient_maps_find_the_planted_concept(snapshot):
    model = _Planted().eval()
    W = torch.eye(3)
    prov = Provenance("image", np.arange(3), np.zeros((3, 4)), (8, 8))
    bank = ConceptBank(components=W, codes=torch.eye(3), provenance=prov, layer="act",
                       method="custom", params={}, factorizer=NMF(3).fit(np.eye(3) + 1e-3))
    bank.factorizer.components_ = np.eye(3, dtype=np.float32)
    img = torch.full((1, 3, 8, 8), 0.05)
    img[0, 0, 1, 1] = 1.0  # a red dot top-left
    img[0, 2, 6, 5] = 1.0  # a blue dot bottom-right
    before = snapshot(model)
    maps = gradient_maps(model, img, bank)
    assert snapshot(model) == before
    assert maps.shape == (1, 3, 8, 8)
    assert np.unravel_index(int(maps[0, 0].argmax()), (8, 8)) == (1, 1)
    assert np.unravel_index(int(maps[0, 2].argmax()), (8, 8)) == (6, 5)


def test_provenance_maps_paint_crop_codes():
    images = torch.rand(1, 3, 8, 8)
    cs = crops(images, 4, stride=4)  # 4 disjoint crops
    codes = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0], [0.0, 4.0]])
    bank = ConceptBank(components=torch.eye(2), codes=codes, provenance=cs.provenance, layer="x",
                       method="craft", params={}, factorizer=NMF(2))
    maps = provenance_maps(bank)
    assert maps.shape == (1, 2, 8, 8)
    assert maps[0, 0, 0, 5] == 2.0 and maps[0, 1, 5, 5] == 4.0 and maps[0, 1, 0, 0] == 0.0
    overlap = crops(images, 4, stride=2)  # 9 overlapping crops: the centre is covered 4 times
    bank2 = ConceptBank(components=torch.eye(2), codes=torch.ones(9, 2), provenance=overlap.provenance,
                        layer="x", method="craft", params={}, factorizer=NMF(2))
    assert torch.allclose(provenance_maps(bank2), torch.ones(1, 2, 8, 8))


def test_localisation_metrics_closed_form():
    maps = np.zeros((3, 4, 4))
    masks = np.zeros((3, 4, 4), dtype=bool)
    masks[:, :2, :2] = True
    maps[0, 0, 0] = 1.0          # inside
    maps[1, 3, 3] = 1.0          # outside
    maps[2, 0, 0], maps[2, 3, 3] = 1.0, 3.0
    assert np.allclose(pointing_game(maps, masks), [1, 0, 0])
    assert np.allclose(relevance_mass(maps, masks), [1, 0, 0.25])
    iou = mask_iou(maps, masks, quantile=0.9)
    assert iou[0] == pytest.approx(1 / 4) and iou[1] == 0.0
    with pytest.raises(ValueError, match="same shape"):
        pointing_game(maps, masks[:, :2])
    # a signed map with no positive value (a concept absent from the image) has no pointer,
    # whatever its least negative pixel; a constant map neither
    signed = maps - 5.0
    assert np.isnan(pointing_game(signed, masks)).all()
    assert np.isnan(relevance_mass(signed, masks)).all()
    signed[1, 0, 1] = 0.5        # positive evidence inside the mask: a hit again
    assert np.allclose(pointing_game(signed, masks), [np.nan, 1, np.nan], equal_nan=True)
    assert np.isnan(pointing_game(np.full((1, 4, 4), 2.0), masks[:1]))[0]


def test_match_concepts_picks_the_right_concept():
    rng = np.random.default_rng(0)
    masks = np.zeros((10, 2, 8, 8), dtype=bool)
    maps = rng.uniform(0, 0.1, (10, 3, 8, 8))
    for i in range(10):
        y, x = rng.integers(0, 6, 2)
        masks[i, 0, y:y + 2, x:x + 2] = True
        maps[i, 2, y:y + 2, x:x + 2] += 1.0      # concept 2 localises ground truth 0
        masks[i, 1, 7, :] = True
        maps[i, 0, 7, :] += 1.0                  # concept 0 localises ground truth 1
    matches = match_concepts(maps, masks)
    assert [(m.truth, m.concept) for m in matches] == [(0, 2), (1, 0)]
    assert all(m.score == 1.0 for m in matches)


def test_scale_matched_maps_encode_the_enlarged_image():
    from conceptkit.extraction import ActivationExtractor
    from conceptkit.maps import scale_matched_maps, upsample

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 12, 3, stride=2, padding=1),
                          nn.ReLU()).eval()
    images = torch.rand(2, 3, 16, 16)
    acts = ActivationExtractor(model, "3", progress=False)(torch.rand(20, 3, 16, 16))
    rows = acts.permute(0, 2, 3, 1).reshape(-1, 12).numpy()
    prov = Provenance("image", np.arange(rows.shape[0]), np.zeros((rows.shape[0], 4)), (16, 16))
    bank = bank_from_activations(NMF(3, random_state=0), rows, prov, layer="3")
    maps = scale_matched_maps(model, images, bank, 2.0)
    big = torch.nn.functional.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False)
    expected = upsample(torch.as_tensor(bank.encode(ActivationExtractor(model, "3", progress=False)(big))),
                        (16, 16))
    assert maps.shape == (2, 3, 16, 16)
    assert torch.allclose(maps, expected, atol=1e-6)
    with pytest.raises(ValueError, match="`zoom`"):
        scale_matched_maps(model, images, bank, 0.0)


# --------------------------------------------------------------- pixel maps
# The first-order drop of each concept's image-level code when a pixel is painted out.

def planted_bank():
    """Identity dictionary on the planted model's 3 channels: codes = pooled activations."""
    prov = Provenance("image", np.arange(3), np.zeros((3, 4)), (8, 8))
    bank = ConceptBank(components=torch.eye(3), codes=torch.eye(3), provenance=prov, layer="act",
                       method="custom", params={}, factorizer=NMF(3).fit(np.eye(3) + 1e-3))
    bank.factorizer.components_ = np.eye(3, dtype=np.float32)
    return bank


def test_closed_form_on_the_planted_model(snapshot):
    # act = ReLU(x) = x for x > 0, and with an identity dictionary u_j = mean_p x_j(p), so
    # du_j / dx_c(p) = [j = c] / (H W) and map_j = blur(ReLU(x_j - median_j)) / (H W)
    model = _Planted().train()
    images = 0.05 + 0.9 * torch.rand(2, 3, 16, 12, generator=torch.Generator().manual_seed(0))
    before = snapshot(model)
    maps = pixel_maps(model, images, planted_bank(), sigma=1.5)
    assert snapshot(model) == before and model.training
    median = images.flatten(2).median(dim=2).values[..., None, None]
    expected = gaussian_blur(torch.relu(images - median) / (16 * 12), 1.5)
    assert maps.shape == (2, 3, 16, 12)
    torch.testing.assert_close(maps, expected, atol=1e-7, rtol=1e-4)
    # the default sigma is the image side / 32; image_size resizes
    default = pixel_maps(model, images, planted_bank())
    torch.testing.assert_close(default, gaussian_blur(torch.relu(images - median) / 192, 0.5),
                               atol=1e-7, rtol=1e-4)
    assert pixel_maps(model, images, planted_bank(), image_size=8).shape == (2, 3, 8, 8)
    # batches are independent
    torch.testing.assert_close(pixel_maps(model, images, planted_bank(), sigma=1.5, batch_size=1),
                               maps)


def test_a_planted_dot_is_found_at_its_pixel():
    model = _Planted().eval()
    image = torch.full((1, 3, 16, 16), 0.05)
    image[0, 0, 3, 4] = 1.0   # a red dot
    image[0, 2, 12, 9] = 1.0  # a blue dot
    maps = pixel_maps(model, image, planted_bank())
    assert np.unravel_index(int(maps[0, 0].argmax()), (16, 16)) == (3, 4)
    assert np.unravel_index(int(maps[0, 2].argmax()), (16, 16)) == (12, 9)
    assert float(maps[0, 1].max()) == 0.0   # green is nowhere above its median


@pytest.mark.parametrize("sigma", [0, -1.0, "2", True])
def test_bad_sigma(sigma):
    with pytest.raises((ValueError, TypeError), match="sigma"):
        pixel_maps(_Planted(), torch.rand(1, 3, 8, 8), planted_bank(), sigma=sigma)


def test_explanation_maps_of_kind_pixel_on_a_cnn_and_a_vit():
    from conceptkit.datasets import make_concept_dataset, reference_model

    data = make_concept_dataset(4, seed=0)
    rows = np.flatnonzero(data.labels.numpy() == 1)
    cc = ConceptExplainer(reference_model(), "block4", n_concepts=3, method="ice", seed=0,
                          importance="sobol", progress=False).fit(data.images[rows], 1)
    maps = cc.concept_maps(kind="pixel")
    assert maps.shape == (len(rows), 3, 64, 64) and maps.min() >= 0 and maps.max() > 0
    torch.testing.assert_close(cc.concept_maps(data.images[rows[:2]], kind="pixel"), maps[:2])

    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, num_classes=3).eval()
    images = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    token = ConceptExplainer(vit, "blocks.1", n_concepts=3, method="ice", importance="sobol",
                             factorizer=SemiNMF(3, random_state=0), seed=0,
                             progress=False).fit(images, 0)
    vit_maps = token.concept_maps(kind="pixel")
    assert vit_maps.shape == (6, 3, 32, 32) and torch.isfinite(vit_maps).all()
    assert vit_maps.max() > 0


def test_dominant_maps_keep_the_strongest_concept_at_each_position_by_hand():
    """Each concept's code is divided by its 99th percentile over the bank's fitted codes; at
    each position only the concept with the largest ratio keeps its code. Checked element by
    element against the coefficient maps, with the scales computed by numpy."""
    from conceptkit.maps import concept_scales, dominant_maps

    bank = _bank()
    acts = torch.rand(3, 12, 4, 5, generator=torch.Generator().manual_seed(2))
    codes = coefficient_maps(acts, bank).numpy()
    scales = np.percentile(bank.codes.numpy(), 99, axis=0)
    np.testing.assert_allclose(concept_scales(bank.codes).numpy(), scales, rtol=1e-5)
    maps = dominant_maps(acts, bank).numpy()
    winner = (codes / scales[None, :, None, None]).argmax(axis=1)
    for n in range(3):
        for y in range(4):
            for x in range(5):
                expected = np.zeros(codes.shape[1])
                expected[winner[n, y, x]] = codes[n, winner[n, y, x], y, x]
                np.testing.assert_allclose(maps[n, :, y, x], expected, rtol=1e-5, atol=1e-7)
    # given scales are used as they are; a concept's own maximum is a scale too
    flat = dominant_maps(acts, bank, scales=np.ones(codes.shape[1])).numpy()
    np.testing.assert_array_equal(flat.argmax(axis=1), codes.argmax(axis=1))
    assert dominant_maps(acts, bank, image_size=(8, 10)).shape == (3, codes.shape[1], 8, 10)
    with pytest.raises(ValueError, match="`scales` must hold 4 positive values"):
        dominant_maps(acts, bank, scales=[1.0, 0.0, 1.0, 1.0])


def _selecting_bank():
    """A top-1 autoencoder with the identity as encoder and dictionary on the planted model's
    3 channels: each position keeps its strongest channel."""
    from conceptkit.concepts import TopKSAE

    sae = TopKSAE(3, top_k=1, epochs=1, random_state=0).fit(np.eye(3, dtype=np.float32) + 0.1)
    for name in ("components_", "encoder_weight_"):
        setattr(sae, name, np.eye(3, dtype=np.float32))
    sae.encoder_bias_ = np.zeros(3, dtype=np.float32)
    sae.bias_ = np.zeros(3, dtype=np.float32)
    prov = Provenance("image", np.arange(3), np.zeros((3, 4)), (8, 8))
    return ConceptBank(components=torch.eye(3), codes=torch.eye(3), provenance=prov, layer="act",
                       method="custom", params={}, factorizer=sae)


def test_maps_of_a_selecting_factorizer_differentiate_the_mean_of_position_codes():
    """A top-k code of the image's mean activation keeps only the image's strongest concept, so
    a small blue dot on a reddish image would get an all-zero map. Image codes are the mean of
    the positions' codes instead (``_image_codes``), and the dot is found at its pixel."""
    from conceptkit.maps._maps import _image_codes as image_codes

    bank = _selecting_bank()
    acts = torch.zeros(1, 3, 4, 4)
    acts[0, 0] = 0.5          # red everywhere
    acts[0, 2, 1, 2] = 2.0    # a blue cell: its strongest channel
    codes = image_codes(bank, acts)
    position_codes = bank.encode(acts)  # (1, 3, 4, 4), one concept per position
    torch.testing.assert_close(codes, position_codes.mean(dim=(2, 3)))
    assert codes[0, 2] == pytest.approx(2.0 / 16) and codes[0, 0] == pytest.approx(0.5 * 15 / 16)
    pooled = torch.as_tensor(bank.encode(acts.mean(dim=(2, 3))))
    assert pooled[0, 2] == 0  # what the mean activation's code would have said

    model = _Planted().eval()
    image = torch.full((1, 3, 16, 16), 0.05)
    image[0, 0] = 0.5         # a red image
    image[0, 2, 12, 9] = 1.0  # with a blue dot, the strongest channel at its pixel only
    for maps in (pixel_maps(model, image, bank), gradient_maps(model, image, bank)):
        assert float(maps[0, 2].max()) > 0
        assert np.unravel_index(int(maps[0, 2].argmax()), (16, 16)) == (12, 9)


def test_maps_of_hard_k_means_concepts_read_each_position():
    """Hard k-means (ACE's factorizer) assigns a row to one centroid, so the image's mean
    activation would keep one concept and every other map would be all zero (92 % of ACE's
    gradient maps on a shapes class were). Its image codes are the mean of its positions' codes
    too: the blue dot's concept is found at its pixel."""
    from conceptkit.concepts import KMeansConcepts

    assert KMeansConcepts(3).selects_codes and not KMeansConcepts(3, codes="soft").selects_codes
    centroids = np.array([[0.5, 0, 0], [0, 0.5, 0], [0, 0, 1.0]], dtype=np.float32)
    km = KMeansConcepts(3, n_init=1, random_state=0).fit(np.repeat(centroids, 4, axis=0))
    km.components_ = centroids
    prov = Provenance("image", np.arange(3), np.zeros((3, 4)), (8, 8))
    bank = ConceptBank(components=torch.from_numpy(centroids), codes=torch.eye(3),
                       provenance=prov, layer="act", method="custom", params={}, factorizer=km)
    model = _Planted().eval()
    image = torch.zeros(1, 3, 16, 16)
    image[0, 0] = 0.5          # a red image: every position nearest the red centroid
    image[0, 2, 12, 9] = 1.0   # but this one, nearest the blue centroid
    pooled = torch.as_tensor(bank.encode(image.mean(dim=(2, 3))))
    assert pooled[0].tolist() == [1.0, 0.0, 0.0]  # the mean activation: red only
    for maps in (pixel_maps(model, image, bank), gradient_maps(model, image, bank)):
        assert float(maps[0, 2].max()) > 0
        assert np.unravel_index(int(maps[0, 2].argmax()), (16, 16)) == (12, 9)
