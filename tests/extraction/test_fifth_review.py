"""Fixes of a fifth review of extraction: ``h`` never writes into the activations it is given
(in-place functions, a user's in-place block), a split made again after a submodule is replaced,
the channel check done by the first convolution that runs (after preprocessing), lazy modules,
bfloat16 stores and DataLoaders given to write_store."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import conceptkit
from conceptkit._torchutils import preserved_model_state
from conceptkit.extraction import ActivationExtractor, extract, split_model, write_store
from conceptkit.extraction._heads import has_inplace_ops
from conceptkit.pipeline._handle import ModelAtLayer

warnings.filterwarnings("ignore", message=".*reached max_iter.*")


def _images(n=4, c=3, size=8, seed=0):
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------- 1: h keeps its input intact
class _Shift(nn.Module):  # a user's block working in place, with no `inplace` attribute
    def forward(self, x):
        return x.add_(1.0)


class _Functional(nn.Module):
    def __init__(self, op):
        super().__init__()
        torch.manual_seed(0)
        self.op = op
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.op(self.conv(x)).mean((2, 3)))


def _in_place_models():
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Conv2d(3, 4, 3), _Shift(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 2))
    return [("torch.relu_", _Functional(torch.relu_), "conv"),
            ("F.relu_", _Functional(F.relu_), "conv"),
            ("torch.exp_", _Functional(torch.exp_), "conv"),
            ("torch.sigmoid_", _Functional(torch.sigmoid_), "conv"),
            ("a user's x.add_", seq, "0")]


@pytest.mark.parametrize("case", range(5))
def test_h_never_writes_into_the_activations_it_is_given(case):
    _, model, layer = _in_place_models()[case]
    model.eval()
    x = _images()
    g, h = split_model(model, layer, example_input=x)
    with torch.no_grad():
        a = g(x)
        before = a.clone()
        out = h(a)
        assert torch.equal(a, before)  # was changed by up to 1.0
        assert torch.allclose(out, model(x), atol=1e-6)
        assert torch.equal(h(a), out)  # the same activations give the same logits twice


def test_heads_are_left_unguarded_only_when_proven_free_of_in_place_operations():
    assert not has_inplace_ops(nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                             nn.Linear(4, 2)))
    assert has_inplace_ops(nn.Sequential(nn.ReLU(inplace=True), nn.Linear(4, 2)))
    assert has_inplace_ops(nn.Sequential(_Shift(), nn.Linear(4, 2)))  # its code is unknown
    for _, model, layer in _in_place_models()[:4]:
        assert has_inplace_ops(split_model(model.eval(), layer)[1])
    plain = split_model(_Functional(torch.relu).eval(), "conv")[1]
    assert not has_inplace_ops(plain) and type(plain).__name__ == "H"  # no copy where none is due


def test_fit_factorizes_the_activations_g_gives():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), _Shift(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()
    images = _images(6, size=16)
    result = conceptkit.ConceptExplainer(model, "2", n_concepts=3, seed=0,
                                         progress=False).fit(images, 0)
    # the first 4 images' activations were shifted by 1.0 by the reachability probe
    assert torch.equal(result.activations, extract(model, "2", images, progress=False))


class _Writes(nn.Module):
    """A head that writes into its input (as an unguarded h could)."""

    def forward(self, a):
        return a.mul_(2.0).mean((2, 3))


def test_the_reachability_probe_runs_h_on_a_copy(monkeypatch):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 2)).eval()
    handle = ModelAtLayer(model, "1", progress=False)
    monkeypatch.setattr(ModelAtLayer, "maps_head", property(lambda self: _Writes()))
    acts = torch.rand(6, 4, 6, 6)
    before = acts.clone()
    assert handle.reaches_output(acts, None)
    assert torch.equal(acts, before)


# ------------------------------------------------------------- 2: a replaced submodule
class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.relu(self.conv(x)), 1), 1))


def test_the_split_is_made_again_after_a_submodule_is_replaced():
    model, images = _Net().eval(), _images(6, size=16)
    handle = ModelAtLayer(model, "relu", progress=False)
    handle.prepare(images)
    old = handle.h
    torch.manual_seed(1)
    model.fc = nn.Linear(8, 3)  # a new head
    with torch.no_grad():
        expected = model(images)
        assert torch.allclose(handle.h(handle.activations(images)), expected, atol=1e-6)
    assert handle.h is not old
    same = handle.h
    assert handle.prepare(images) is same  # nothing replaced since: split once


def test_a_reused_explainer_scores_concepts_through_the_new_head():
    model, images = _Net().eval(), _images(6, size=16)
    kw = dict(n_concepts=3, seed=0, progress=False, importance="ablation")
    explainer = conceptkit.ConceptExplainer(model, "relu", **kw)
    first = explainer.fit(images, 0)
    torch.manual_seed(1)
    model.fc = nn.Linear(8, 3)
    with torch.no_grad():
        model.fc.weight.mul_(-5)
    again = explainer.fit(images, 0)
    fresh = conceptkit.ConceptExplainer(model, "relu", **kw).fit(images, 0)
    np.testing.assert_allclose(again.importances, fresh.importances, rtol=1e-6, atol=1e-9)
    assert not np.allclose(again.importances, first.importances)


# ------------------------------------------------------------- 3: the channels the model takes
class _HeadFirst(nn.Module):  # a 1x1 convolution head registered before the stem
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.head = nn.Conv2d(16, 4, 1)
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())

    def forward(self, x):
        return self.head(self.body(self.stem(x))).mean((2, 3))


class _Gray(nn.Module):
    def forward(self, x):
        return x.mean(1, keepdim=True)


def _captured(model, layer, x):
    out = []
    handle = dict(model.named_modules())[layer].register_forward_hook(
        lambda _m, _i, o: out.append(o))
    with torch.no_grad():
        model(x)
    handle.remove()
    return out[0]


def test_images_the_model_takes_are_not_refused():
    images = _images(4, size=16)
    model = _HeadFirst().eval()  # its first registered convolution takes 16 channels
    assert torch.equal(extract(model, "body", images, progress=False),
                       _captured(model, "body", images))
    torch.manual_seed(0)
    gray = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 3)).eval()
    maps = extract(gray, "1", images, progress=False, preprocess=_Gray())
    assert torch.equal(maps, _captured(gray, "1", images.mean(1, keepdim=True)))
    lazy = nn.Sequential(nn.LazyConv2d(8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.LazyLinear(3))
    assert extract(lazy, "1", images, progress=False).shape == (4, 8, 16, 16)  # was "0 channels"


def test_images_of_the_wrong_channels_are_still_refused_by_name():
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    with pytest.raises(ValueError, match=r"^`inputs` must have 3 channels in axis 1 \(N, C, H, "
                                         r"W\); got shape \(4, 1, 8, 8\)\.$"):
        extract(plain, "1", _images(4, c=1), progress=False, batch_size=2)
    with pytest.raises(ValueError, match=r"^`inputs` must have 3 channels .* got shape "
                                         r"\(4, 8, 8, 3\)"):
        extract(plain, "1", _images(4).permute(0, 2, 3, 1), progress=False)
    with pytest.raises(ValueError, match=r"^`images` must have 3 channels"):  # was `inputs`
        ModelAtLayer(_Net().eval(), "relu", progress=False).activations(_images(2, c=1))
    with pytest.raises(ValueError, match=r"^`inputs` have 1 channels after `preprocess` .* "
                                         r"'0', takes 3"):
        extract(plain, "1", _images(2), progress=False, preprocess=_Gray())


# ------------------------------------------------------------- 4: lazy modules
def test_model_state_is_restored_around_a_lazy_module_left_uninitialised():
    model = nn.Sequential(nn.Linear(3, 4), nn.LazyLinear(2))
    model[0].bias.requires_grad_(False)
    model.train()
    with preserved_model_state(model):
        model[0].weight.requires_grad_(False)
        model[0].bias.requires_grad_(True)
        assert not model.training
    assert model.training and model[0].training  # the finally block ran to the end
    assert model[0].weight.requires_grad and not model[0].bias.requires_grad
    assert isinstance(model[1].weight, nn.parameter.UninitializedParameter)


def test_a_lazy_model_is_explained():
    torch.manual_seed(0)
    model = nn.Sequential(nn.LazyConv2d(8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.LazyLinear(3))
    result = conceptkit.ConceptExplainer(model, "1", n_concepts=2, seed=0,
                                         progress=False).fit(_images(6, size=16), 0)
    assert result.importances.shape == (2,) and np.isfinite(result.importances).all()


# ------------------------------------------------------------- 5, 6: stores
def test_a_bfloat16_model_is_stored_as_float32(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()).eval().to(torch.bfloat16)
    images = _images(4)
    extractor = ActivationExtractor(model, "1", progress=False)
    for layout in ("pooled", "maps"):
        store = write_store(extractor, images, tmp_path / layout, chunk_size=2, layout=layout,
                            progress=False)
        rows = np.concatenate([np.load(tmp_path / layout / f"chunk-00000{i}.npy")
                               for i in range(2)])
        assert rows.dtype == np.float32 and store.manifest["dtype"] == "float32"
        acts = extractor(images).float()
        expected = acts.mean((2, 3)) if layout == "pooled" else acts
        np.testing.assert_array_equal(rows, expected.numpy())


def test_write_store_refuses_a_dataloader_by_name(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()).eval()
    loader = DataLoader(TensorDataset(_images(10)), batch_size=4)
    with pytest.raises(TypeError, match=r"^`inputs` .* got a DataLoader\. Pass its Dataset "
                                        r"\(loader\.dataset\)"):
        write_store(ActivationExtractor(model, "1", progress=False), loader, tmp_path / "s",
                    chunk_size=4, progress=False)
    assert not (tmp_path / "s").exists()  # refused before anything is written
    store = write_store(ActivationExtractor(model, "1", progress=False), loader.dataset,
                        tmp_path / "s", chunk_size=4, progress=False)
    assert store.manifest["n_inputs"] == 10


@torch.fx.wrap
def _bump(y):
    return y.add_(1.0)  # a user function in the graph, whose name says nothing


class _CallsBump(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        y = _bump(self.conv(x))
        return self.fc(y.mean((2, 3)))


def test_user_functions_instance_forwards_and_hooks_are_not_proven_free():
    """A function of the user's in an fx graph, a forward set on an instance of a torch.nn
    class, and a forward pre-hook may each write into the input: h gets a copy."""
    torch.manual_seed(0)
    x = torch.rand(2, 3, 8, 8)
    g, h = split_model(_CallsBump().eval(), "conv")
    acts = g(x)
    kept = acts.clone()
    h(acts)
    assert torch.equal(acts, kept)
    relu = nn.ReLU()
    relu.forward = lambda a: a.mul_(-1)  # on the instance: nn.ReLU's class code is not run
    assert has_inplace_ops(nn.Sequential(relu, nn.Flatten()))
    hooked = nn.Identity()
    hooked.register_forward_pre_hook(lambda module, args: args[0].mul_(-1))
    assert has_inplace_ops(nn.Sequential(hooked, nn.Flatten()))
    assert not has_inplace_ops(nn.Sequential(nn.Identity(), nn.Flatten()))
