"""Fixes of the fourth review of the concept bottleneck models."""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import pytest
import torch
from _forge import forge
from _shared import FakeClip
from _shared import small_cbm_data as _cbm_data
from torch import nn
from torch.utils.data import Dataset

import conceptkit
from conceptkit.bottleneck import (
    ConceptBottleneckModel,
    DiscoveredCBM,
    LabelFreeCBM,
    PosthocCBM,
    intervention_curve,
    train_cbm,
)
from conceptkit.bottleneck._clip import ClipEncoders
from conceptkit.bottleneck._posthoc import CAVBank
from conceptkit.bottleneck._report import concept_class_weights

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def _toy(n=120, d=8, k=4, n_classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    c = (x @ torch.randn(d, k, generator=g) > 0).float()
    y = c[:, :2].sum(1).long().clamp(max=n_classes - 1)
    return x, c, y


class _BNEncoder(nn.Module):
    def __init__(self, fail_at: int | None = None):
        super().__init__()
        self.bn, self.lin = nn.BatchNorm1d(8), nn.Linear(8, 4)
        self.calls, self.fail_at = 0, fail_at

    def forward(self, x):
        self.calls += 1
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise RuntimeError("encoder exploded")
        return self.lin(self.bn(x))


# -- 1. train_cbm keeps a frozen BatchNorm in eval mode ---------------------------------------
def test_train_cbm_leaves_a_frozen_batchnorm_in_eval_mode_and_its_statistics_alone():
    x, c, y = _toy()
    encoder = _BNEncoder()
    encoder.bn.requires_grad_(False)
    model = ConceptBottleneckModel(encoder, 4, 3)
    model.train()
    encoder.bn.eval()                                  # the user's frozen, pretrained BN
    with torch.no_grad():
        encoder.bn.running_mean.fill_(0.25)
    mean, var = encoder.bn.running_mean.clone(), encoder.bn.running_var.clone()
    lin = encoder.lin.weight.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_cbm(model, (x, c, y), epochs=3, progress=False, seed=0)
    assert torch.equal(encoder.bn.running_mean, mean) and torch.equal(encoder.bn.running_var, var)
    assert not torch.equal(encoder.lin.weight, lin)    # the rest did train
    assert not model.training and not encoder.bn.training

    # a BN left in train mode still learns its statistics
    trained = _BNEncoder()
    before = trained.bn.running_mean.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_cbm(ConceptBottleneckModel(trained, 4, 3), (x, c, y), epochs=2, progress=False,
                  seed=0)
    assert not torch.equal(trained.bn.running_mean, before)


def test_train_cbm_on_a_model_in_eval_mode_trains_all_but_its_frozen_layers():
    x, c, y = _toy()
    encoder = _BNEncoder()
    frozen = nn.BatchNorm1d(4)
    frozen.requires_grad_(False)
    seen = []
    model = ConceptBottleneckModel(nn.Sequential(encoder, frozen), 4, 3).eval()
    model.head.register_forward_pre_hook(
        lambda module, args: seen.append((encoder.bn.training, frozen.training)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_cbm(model, (x, c, y), epochs=1, progress=False, seed=0)
    assert (True, False) in seen                      # trainable BN trains, frozen one does not


def test_train_cbm_failing_midway_restores_every_mode():
    x, c, y = _toy()
    encoder = _BNEncoder(fail_at=5)
    model = ConceptBottleneckModel(encoder, 4, 3)
    model.train()
    encoder.bn.eval()
    with pytest.raises(RuntimeError, match="encoder exploded"):
        train_cbm(model, (x, c, y), epochs=3, progress=False, seed=0)
    assert model.training and encoder.training and not encoder.bn.training


# -- 2. a CBM round trip keeps its dtype and comes back in eval mode --------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_cbm_load_restores_the_saved_dtype_in_eval_mode(tmp_path, dtype):
    torch.manual_seed(0)
    model = ConceptBottleneckModel(nn.Linear(8, 4), 4, 3, head="mlp", hidden=6).to(dtype)
    with torch.no_grad():
        model.head[0].weight[0, 0] = 1 / 3
    model.train()
    loaded = ConceptBottleneckModel.load(model.save(tmp_path / "m.safetensors"))
    assert {p.dtype for p in loaded.parameters()} == {dtype}
    assert loaded.head[0].weight[0, 0].item() == model.head[0].weight[0, 0].item()
    assert not loaded.training and not any(m.training for m in loaded.modules())
    if dtype == torch.float64:
        x = torch.rand(3, 8, dtype=dtype)
        assert torch.equal(loaded(x).class_logits, model.eval()(x).class_logits)
    # a given encoder takes the saved dtype as well
    given = ConceptBottleneckModel.load(tmp_path / "m.safetensors", nn.Linear(8, 4))
    assert given.concept_encoder.weight.dtype == dtype
    assert torch.equal(given.concept_encoder.weight, model.concept_encoder.weight)


# -- 3. DiscoveredCBM / LabelFreeCBM / PosthocCBM record the network they were fitted with ----
def _cnn(scale: float = 1.0) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    return model


@pytest.fixture(scope="module")
def discovered():
    model = _cnn()
    images = torch.rand(6, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    explanation = conceptkit.ConceptExplainer(model, "3", n_concepts=3, method="ice", seed=0,
                                              progress=False).fit(images, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cbm = DiscoveredCBM(explanation, nnz_per_class=2, progress=False).fit(
            images, torch.tensor([0, 1, 2, 0, 1, 2]))
    return model, images, cbm


def _halve(x):
    return x * 0.5


def test_discovered_cbm_load_and_attach_compare_the_network_and_preprocessing(discovered,
                                                                              tmp_path):
    model, images, cbm = discovered
    path = cbm.save(tmp_path / "d.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error")                         # the same network: silent
        same = DiscoveredCBM.load(path, _cnn())
        assert torch.equal(same.decision_function(images), cbm.decision_function(images))
        same.attach(_cnn())
    with pytest.warns(UserWarning, match="DiscoveredCBM.load: the model's weights differ"):
        DiscoveredCBM.load(path, _cnn(-3.0))
    with pytest.warns(UserWarning, match="the preprocessing differs"):
        DiscoveredCBM.load(path, _cnn(), preprocess=_halve)
    with pytest.raises(ValueError, match="the model's weights differ"):
        DiscoveredCBM.load(path, _cnn(-3.0), strict=True)
    loaded = DiscoveredCBM.load(path)                          # activations only: no check
    with pytest.warns(UserWarning, match="DiscoveredCBM.attach: the model's structure differs"):
        loaded.attach(nn.Sequential(*list(_cnn())[:4], nn.AdaptiveMaxPool2d(1),
                                    *list(_cnn())[5:]))
    with pytest.raises(ValueError, match="preprocessing differs"):
        loaded.attach(_cnn(), _halve, strict=True)
    with pytest.warns(UserWarning, match="attach"):            # a fresh model compares too
        DiscoveredCBM(cbm.concepts, nnz_per_class=2, progress=False).set_params().fit(
            images, torch.tensor([0, 1, 2, 0, 1, 2])).attach(_cnn(2.0))
    # files written before the record load as before, unchecked
    old = forge(path, tmp_path / "old.safetensors",
                lambda info, tensors: info["meta"].pop("fitted_with"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DiscoveredCBM.load(old, _cnn(-3.0))


class _Backbone(nn.Module):
    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.lin = nn.Linear(48, 5)
        with torch.no_grad():
            self.lin.weight.copy_(torch.linspace(-1, 1, 240).reshape(5, 48) * scale)
            self.lin.bias.zero_()

    def forward(self, x):
        return self.lin(x.flatten(1))


class _TextClip:
    """Texts of known concepts map to fixed axes, others to hashed directions."""

    def __init__(self, names, dim=16):
        self.basis = torch.linalg.qr(torch.randn(dim, dim, generator=torch.Generator().manual_seed(0)))[0]
        self.names, self.dim = names, dim

    def encode_image(self, images):
        return images.flatten(1)[:, :self.dim]

    def encode_text(self, texts):
        rows = []
        for text in texts:
            if text in self.names:
                rows.append(self.basis[:, self.names.index(text)])
            else:
                seed = int(hashlib.sha1(text.encode()).hexdigest()[:8], 16)
                rows.append(self.basis[:, len(self.names):] @ torch.randn(
                    self.dim - len(self.names), generator=torch.Generator().manual_seed(seed)))
        return torch.stack(rows)


def _lf_data(n=200, k=4, d=10, dim=16):
    g = torch.Generator().manual_seed(0)
    c = (torch.rand(n, k, generator=g) < 0.4).float()
    y = (c[:, 0] + 2 * c[:, 1]).long()
    names = [f"concept{i}" for i in range(k)]
    clip = _TextClip(names, dim)
    clip_img = c @ clip.basis[:, :k].T + 0.3 * torch.randn(n, dim, generator=g)
    feats = torch.cat([c, torch.randn(n, d - k, generator=g)], 1) + 0.1 * torch.randn(n, d, generator=g)
    return feats, clip_img, y, names, clip


def test_label_free_cbm_load_compares_the_backbone(tmp_path):
    model = LabelFreeCBM(_Backbone(), None, ["red", "round", "tall"], ["a", "b"], progress=False)
    gen = torch.Generator().manual_seed(0)  # a fitted model, built from its fitted attributes
    model.concepts_, model.removed_ = ["red", "round"], {"tall": "not interpretable"}
    model.projection_ = torch.randn(2, 5, generator=gen)
    model.proj_mean_, model.proj_std_ = torch.zeros(2), torch.ones(2)
    model.concept_similarity_ = torch.tensor([0.6, 0.7])
    model.weight_, model.bias_ = torch.randn(2, 2, generator=gen), torch.zeros(2)
    model.alpha_, model.path_, model.val_accuracy_, model.proj_steps_ = 0.01, [], 0.5, 10
    model.classes_ = ["a", "b"]
    path = model.save(tmp_path / "lf.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LabelFreeCBM.load(path, _Backbone())
    with pytest.warns(UserWarning, match="LabelFreeCBM.load: the model's weights differ"):
        LabelFreeCBM.load(path, _Backbone(-2.0))
    with pytest.raises(ValueError, match="weights differ"):
        LabelFreeCBM.load(path, _Backbone(-2.0), strict=True)
    old = forge(path, tmp_path / "old.safetensors",
                lambda info, tensors: info["meta"].pop("fitted_with"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LabelFreeCBM.load(old, _Backbone(-2.0))


def test_posthoc_cbm_load_compares_the_backbone(tmp_path):
    rng = np.random.default_rng(0)
    bank = CAVBank(rng.normal(size=(3, 5)), np.zeros(3), ["a", "b", "c"])
    images = torch.rand(30, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    labels = np.arange(30) % 2
    model = PosthocCBM(bank, _Backbone(), seed=0, progress=False).fit(images, labels)
    path = model.save(tmp_path / "p.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PosthocCBM.load(path, _Backbone())
        PosthocCBM.load(path)                                  # embeddings only: no check
    with pytest.warns(UserWarning, match="PosthocCBM.load: the model's weights differ"):
        PosthocCBM.load(path, _Backbone(3.0))
    with pytest.raises(ValueError, match="weights differ"):
        PosthocCBM.load(path, _Backbone(3.0), strict=True)


# -- 4. the CLIP text cache tells texts apart ----------------------------------------------------
def test_clip_text_cache_never_returns_another_list_of_texts(tmp_path):
    clip = FakeClip()
    encoders = ClipEncoders(clip.encode_image, clip.encode_text)
    one = encoders.text_embeddings(["red\nround"])
    two = encoders.text_embeddings(["red", "round"])
    assert one.shape == (1, 16) and two.shape == (2, 16)
    fresh = ClipEncoders(clip.encode_image, clip.encode_text)
    assert torch.allclose(two, fresh.text_embeddings(["red", "round"]))
    # a stale in-memory entry under the key of other texts is never returned
    key = next(iter(encoders._text_cache))
    encoders._text_cache[key] = (["something else"], torch.zeros(1, 16))
    assert encoders.text_embeddings(["red\nround"]).shape == (1, 16)


# -- 5. LabelFreeCBM.fit_from_embeddings refuses val_fraction; too few validation rows -----------
def test_label_free_fit_from_embeddings_refuses_val_fraction_and_one_validation_row():
    feats, clip_img, y, names, clip = _lf_data()
    classes = ["c0", "c1", "c2", "c3"]
    with pytest.raises(ValueError, match=r"`val_fraction`=0.3 .* fit_from_embeddings takes its "
                                         r"validation rows"):
        LabelFreeCBM(nn.Identity(), clip, names, classes, progress=False, seed=0,
                     val_fraction=0.3).fit_from_embeddings(
            feats[:150], clip_img[:150], y[:150], feats[150:], clip_img[150:], y[150:])
    with pytest.raises(ValueError, match=r"hold 1 image\(s\): too few"):
        LabelFreeCBM(nn.Identity(), clip, names, classes, progress=False, seed=0).fit_from_embeddings(
            feats[:150], clip_img[:150], y[:150], feats[150:151], clip_img[150:151], y[150:151])


# -- 6. Dataset items ------------------------------------------------------------------------
class _Items(Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_dataset_items_are_checked_like_the_tuple_form():
    x, c, y = _cbm_data(40)
    model = ConceptBottleneckModel(nn.Linear(10, 6), 6, 3)
    booleans = _Items([(x[i], c[i], bool(y[i] > 0)) for i in range(40)])
    with pytest.raises(TypeError, match="`train_data` labels must hold integer class indices.*bool"):
        train_cbm(model, booleans, epochs=1, progress=False, seed=0)
    shapes = _Items([(x[i] if i % 2 else x[i, :9], c[i], int(y[i])) for i in range(40)])
    with pytest.raises(ValueError, match=r"`train_data` yields inputs \(x\) of different shapes"):
        train_cbm(model, shapes, epochs=1, progress=False, seed=0)
    # concepts as Python lists train as their tensor form does
    lists = _Items([(x[i], c[i].tolist(), int(y[i])) for i in range(40)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        a = train_cbm(ConceptBottleneckModel(nn.Linear(10, 6), 6, 3), lists, epochs=2,
                      progress=False, seed=0)
        torch.manual_seed(0)
        b = train_cbm(ConceptBottleneckModel(nn.Linear(10, 6), 6, 3),
                      _Items([(x[i], c[i], int(y[i])) for i in range(40)]), epochs=2,
                      progress=False, seed=0)
    assert a.stages[0].train_loss == b.stages[0].train_loss


# -- 7. DiscoveredCBM's classes and its empty activations ----------------------------------------
def test_discovered_cbm_warns_about_classes_without_examples_and_names_activations(discovered):
    model, images, cbm = discovered
    acts = conceptkit.ConceptExplainer(model, "3", progress=False).activations(images)
    fresh = DiscoveredCBM(cbm.concepts, nnz_per_class=2, progress=False)
    with pytest.warns(UserWarning, match=r"no example of class\(es\) \[1, 2, 3, 4\]"):
        fresh.fit(activations=acts, labels=torch.tensor([0, 5, 0, 5, 0, 5]))
    assert fresh.n_classes_ == 6
    with pytest.raises(ValueError, match="`activations` must hold at least one image"):
        fresh.fit(activations=acts[:0], labels=torch.zeros(0, dtype=torch.long))


# -- 8. errors that name the right thing ---------------------------------------------------------
def test_errors_name_the_argument_and_the_problem():
    bank = CAVBank(np.eye(3, 5), np.zeros(3), ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"`X` have 4 columns, but the concept vectors of "
                                         r"`concept_bank` have 5"):
        PosthocCBM(bank, progress=False).fit(np.ones((10, 4)), np.arange(10) % 2)
    x, c, y = _cbm_data(40)
    with pytest.raises(ValueError, match=r"`val_fraction` must be strictly between 0 and 1"):
        train_cbm(ConceptBottleneckModel(nn.Linear(10, 6), 6, 3), (x, c, y), val_fraction=1.0,
                  progress=False)
    mlp = ConceptBottleneckModel(nn.Linear(10, 6), 6, 3, head="mlp", hidden=4)
    with pytest.raises(ValueError, match=r"`concepts` must be bottleneck values of shape \(N, 6\)"):
        concept_class_weights(mlp, torch.rand(5, 3))
    assert concept_class_weights(mlp, torch.rand(5, 6)).shape == (3, 6)
    mlp.calibrate_intervention(x)
    with pytest.raises(ValueError, match=r"`groups\[0\]` lists concept\(s\) \[0\] more than once"):
        intervention_curve(mlp, (x, c, y), groups=[[0, 0]])
