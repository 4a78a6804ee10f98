"""Model hygiene: after every public call that runs a user's model, the model is exactly as it was.

"Exactly" means: the same forward/backward hooks (the user's own hook included), the training
flag of every submodule, the ``requires_grad`` flag of every parameter, the device and dtype,
and bit-identical parameters and buffers (batch-norm statistics are not updated, so the model
really ran in eval mode). Each entry point is checked twice: once when the call succeeds, and
once when it fails midway, by a tripwire module inside the model that raises on its n-th
forward call (or by a later pipeline stage that raises).

The model starts in train mode, with mixed flags (one submodule in eval mode, one block
frozen), a user forward hook and float64 weights, so that a call that switches the model to
eval and "restores" it to all-train, drops hooks, unfreezes parameters or casts the model to
float32 is caught.

``train_cbm`` trains by design: it changes the CBM's weights and leaves it in eval mode on the
training device. What it must leave alone is a frozen backbone inside the concept encoder (its
``requires_grad`` flags and hooks), and on a failure midway it restores every training flag.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import conceptkit
from conceptkit import bottleneck, concepts, extraction, importance, maps
from conceptkit.importance.metrics import CDeletion

FUSES_OFF = None


class TripwireError(RuntimeError):
    """Raised by :class:`Tripwire`: the failure injected in the middle of a call."""


class Tripwire(nn.Module):
    """Identity that raises :class:`TripwireError` on its ``fuse``-th forward call."""

    def __init__(self):
        super().__init__()
        self.fuse: int | None = None
        self.calls = 0

    def arm(self, fuse: int | None) -> Tripwire:
        self.fuse, self.calls = fuse, 0
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.fuse is not None and self.calls >= self.fuse:
            raise TripwireError(f"tripwire after {self.calls} calls")
        return x


def cnn(dtype: torch.dtype = torch.float64) -> nn.Sequential:
    """A small CNN in a deliberately awkward state (see the module notes)."""
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(
        block1=nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
        trip_g=Tripwire(),
        block2=nn.Sequential(nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.ReLU()),
        trip_h=Tripwire(),
        drop=nn.Dropout(0.5),
        pool=nn.AdaptiveAvgPool2d(1),
        flatten=nn.Flatten(),
        fc=nn.Linear(12, 3),
    )).to(dtype)
    model.train()
    model.fc.eval()                                   # mixed training flags
    for p in model.block1.parameters():               # a frozen block
        p.requires_grad_(False)
    model.block2.register_forward_hook(lambda module, inputs, output: None)  # the user's hook
    return model


def state(model: nn.Module) -> dict[str, Any]:
    """Everything a call must leave unchanged, tensors included."""
    return {
        "training": [(name, m.training) for name, m in model.named_modules()],
        "requires_grad": [(name, p.requires_grad) for name, p in model.named_parameters()],
        "hooks": [(name, tuple(tuple(d.keys()) for d in (m._forward_hooks, m._forward_pre_hooks,
                                                           m._backward_hooks)))
                  for name, m in model.named_modules()],
        "devices": sorted({str(t.device) for t in model.state_dict().values()}),
        "dtypes": [(name, t.dtype) for name, t in model.state_dict().items()],
        "tensors": {name: t.detach().clone() for name, t in model.state_dict().items()},
    }


def assert_same(before: dict[str, Any], after: dict[str, Any]) -> None:
    for key in ("training", "requires_grad", "hooks", "devices", "dtypes"):
        assert before[key] == after[key], f"the call changed the model's {key}"
    for name, tensor in before["tensors"].items():
        assert torch.equal(tensor, after["tensors"][name]), f"the call changed {name!r}"


def images(n: int = 6, size: int = 32) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def run(model: nn.Module, call: Callable[[], Any], *, fails: bool) -> Any:
    """Run ``call``; when it should fail, check that the injected failure is what ended it."""
    before = state(model)
    try:
        if not fails:
            return call()
        with pytest.raises(Exception) as info:
            call()
        chain, error = [], info.value
        while error is not None:
            chain.append(error)
            error = error.__cause__ or error.__context__
        assert any(isinstance(e, TripwireError) for e in chain), f"failed for another reason: {info.value!r}"
    finally:
        assert_same(before, state(model))


def fail_later(monkeypatch, target: str) -> None:
    """Make a later stage of a pipeline raise (after the model has run)."""
    def boom(*args, **kwargs):
        raise TripwireError(f"{target} failed")
    monkeypatch.setattr(target, boom)


@pytest.fixture(scope="module")
def bank():
    model = cnn()
    return concepts.CRAFT(3, patch_size=16, seed=0, progress=False).fit(model, "block2", images())


@pytest.fixture(scope="module")
def acts():
    return extraction.ActivationExtractor(cnn(), "block2", progress=False)(images())


# ---------------------------------------------------------------------------------------------
# extraction
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fuse", [FUSES_OFF, 2])
def test_activation_extractor(fuse):
    model = cnn()
    model.trip_g.arm(fuse)
    run(model, lambda: extraction.ActivationExtractor(model, "block2", batch_size=2,
                                                       progress=False)(images()), fails=bool(fuse))


def test_train_mode_model_gives_eval_mode_results():
    model = cnn()
    got = extraction.ActivationExtractor(model, "block2", progress=False)(images())
    reference = cnn().eval()
    expected = extraction.ActivationExtractor(reference, "block2", progress=False)(images())
    assert torch.equal(got, expected)
    assert model.training and not model.fc.training  # the user's flags are back


@pytest.mark.parametrize("fuse", [FUSES_OFF, 1])
def test_split_model_with_check(fuse):
    model = cnn()
    model.trip_g.arm(fuse)
    example = images(2).double()  # an example input is the model's own input: its dtype too
    run(model, lambda: extraction.split_model(model, "block2", example_input=example), fails=bool(fuse))


@pytest.mark.parametrize("fuse", [FUSES_OFF, 2])
def test_check_split_and_h(fuse):
    model = cnn()
    g, h = extraction.split_model(model, "block2")
    model.trip_h.arm(fuse)
    run(model, lambda: extraction.check_split(model, g, h, images(2).double()), fails=bool(fuse))


# ---------------------------------------------------------------------------------------------
# concept discovery
# ---------------------------------------------------------------------------------------------

METHODS = {
    "craft": lambda: concepts.CRAFT(3, patch_size=16, batch_size=8, seed=0, progress=False),
    "ice": lambda: concepts.ICE(3, batch_size=2, seed=0, progress=False),
    "ace": lambda: concepts.ACE(3, n_segments=(4, 8), min_cluster_size=0, batch_size=8, seed=0,
                                progress=False),
}


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("fuse", [FUSES_OFF, 2])
def test_discovery_methods(method, fuse):
    model = cnn()
    model.trip_g.arm(fuse)
    run(model, lambda: METHODS[method]().fit(model, "block2", images()), fails=bool(fuse))


def test_discovery_fails_after_extraction(monkeypatch):
    fail_later(monkeypatch, "conceptkit.concepts._methods.bank_from_activations")
    model = cnn()
    run(model, lambda: METHODS["craft"]().fit(model, "block2", images()), fails=True)


# ---------------------------------------------------------------------------------------------
# importance
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["sobol", "gradient_input", "occlusion"])
@pytest.mark.parametrize("fuse", [FUSES_OFF, 2])
def test_concept_importance_with_module_head(method, fuse, bank, acts):
    model = cnn()
    _, h = extraction.split_model(model, "block2")
    model.trip_h.arm(fuse)
    designs = {"n_designs": 8} if method == "sobol" else {}  # another method refuses it
    run(model, lambda: importance.concept_importance(h, acts, bank, 1, method=method, seed=0,
                                                     progress=False, **designs), fails=bool(fuse))


@pytest.mark.parametrize("fuse", [FUSES_OFF, 2])
def test_importance_metric(fuse, bank, acts):
    model = cnn()
    _, h = extraction.split_model(model, "block2")
    model.trip_h.arm(fuse)
    run(model, lambda: CDeletion()(h, acts, bank, 1, np.arange(3.0)), fails=bool(fuse))


@pytest.mark.parametrize("fuse", [FUSES_OFF, 1])
def test_tcav(fuse, acts):
    model = cnn()
    _, h = extraction.split_model(model, "block2")
    model.trip_h.arm(fuse)
    gen = torch.Generator().manual_seed(3)
    concept_sets = {"a": acts[:4] + 0.5, "b": acts[2:6] * 2}
    randoms = torch.rand(24, 12, 16, 16, generator=gen, dtype=torch.float64)
    run(model, lambda: importance.tcav(h, acts, concept_sets, randoms, 1, n_runs=10, seed=0,
                                       progress=False), fails=bool(fuse))


@pytest.mark.parametrize("fuse", [FUSES_OFF, 3])
def test_tcav_images(fuse):
    model = cnn()
    model.trip_g.arm(fuse)
    pictures = images(12)
    run(model, lambda: importance.tcav_images(model, "block2", pictures[:4], {"a": pictures[4:8], "b": pictures[8:12]},
                                              pictures[4:], 1, n_runs=10, seed=0, progress=False),
        fails=bool(fuse))


# ---------------------------------------------------------------------------------------------
# maps, pipeline, recursion
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fuse", [FUSES_OFF, 2])
def test_gradient_maps(fuse, bank):
    model = cnn()
    model.trip_g.arm(fuse)
    run(model, lambda: maps.gradient_maps(model, images(), bank, map_layer="block1", batch_size=2),
        fails=bool(fuse))


@pytest.mark.parametrize("fuse", [FUSES_OFF, 2])
def test_pixel_maps(fuse, bank):
    model = cnn()
    model.trip_g.arm(fuse)
    run(model, lambda: maps.pixel_maps(model, images(), bank, batch_size=2), fails=bool(fuse))


@pytest.mark.parametrize("fuse", [FUSES_OFF, 2])
def test_concept_explainer(fuse):
    model = cnn()
    model.trip_h.arm(fuse)  # fails while h scores the concepts, after g has run
    explainer = conceptkit.ConceptExplainer(model, "block2", n_concepts=3, method="ice", seed=0,
                                            progress=False)
    run(model, lambda: explainer.fit(images(), 1), fails=bool(fuse))


@pytest.mark.parametrize("method, target", [
    ("sobol", "conceptkit.pipeline._explainer.concept_importance"),
    ("pixel_ablation", "conceptkit.pipeline._pixel.median_colour"),  # inside the whole-model run
])
def test_concept_explainer_fails_in_importance(monkeypatch, method, target):
    fail_later(monkeypatch, target)
    model = cnn()
    explainer = conceptkit.ConceptExplainer(model, "block2", n_concepts=3, seed=0,
                                            importance=method, progress=False)
    run(model, lambda: explainer.fit(images(), 1), fails=True)


def test_train_mode_model_gives_eval_mode_explanation():
    explain = lambda model: conceptkit.ConceptExplainer(  # noqa: E731
        model, "block2", n_concepts=3, method="ice", seed=0, progress=False
    ).fit(images(), 1)
    trained, reference = explain(cnn()), explain(cnn().eval())
    assert torch.equal(trained.components, reference.components)
    assert np.array_equal(trained.importances, reference.importances)


@pytest.mark.parametrize("fuse", [FUSES_OFF, 2])
def test_concept_manager(fuse):
    model = cnn()
    model.trip_g.arm(fuse)  # the second class fails
    manager = conceptkit.ConceptManager(model, "block2", n_concepts=2, method="ice", seed=0,
                                        progress=False)
    run(model, lambda: manager.fit(images(), np.array([0, 0, 0, 1, 1, 1])), fails=bool(fuse))


@pytest.mark.parametrize("kind", ["coefficient", "gradient"])
def test_class_concepts_maps_of_new_images(kind):
    model = cnn()
    explanation = conceptkit.ConceptExplainer(model, "block2", n_concepts=3, method="ice", seed=0,
                                              progress=False).fit(images(), 1)
    run(model, lambda: explanation.concept_maps(images(2), kind=kind), fails=False)
    model.trip_g.arm(1)
    run(model, lambda: explanation.concept_maps(images(2), kind=kind), fails=True)


@pytest.mark.parametrize("fail", [False, True])
def test_decompose_concept(fail, monkeypatch, bank):
    if fail:
        fail_later(monkeypatch, "conceptkit.pipeline._recursion.concept_importance")
    model = cnn()
    run(model, lambda: conceptkit.decompose_concept(model, bank, images(), 0, "block1", n_concepts=2,
                                                    n_inputs=4, n_designs=8, seed=0,
                                                    progress=False), fails=fail)


# ---------------------------------------------------------------------------------------------
# bottleneck
# ---------------------------------------------------------------------------------------------

def backbone() -> nn.Sequential:
    """A frozen feature extractor in eval mode with a user hook, images -> (N, 6)."""
    torch.manual_seed(1)
    net = nn.Sequential(OrderedDict(
        conv=nn.Conv2d(3, 6, 3, padding=1), norm=nn.BatchNorm2d(6), relu=nn.ReLU(),
        trip=Tripwire(), pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten()))
    for p in net.parameters():
        p.requires_grad_(False)
    net.conv.register_forward_hook(lambda module, inputs, output: None)
    return net.eval()


def cbm_data(n: int = 24):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, 16, 16, generator=gen)
    c = (torch.rand(n, 4, generator=gen) > 0.5).float()
    return x, c, torch.arange(n) % 3


@pytest.mark.parametrize("fuse", [FUSES_OFF, 4])
def test_train_cbm_keeps_a_frozen_backbone(fuse):
    frozen = backbone()
    model = bottleneck.ConceptBottleneckModel(nn.Sequential(frozen, nn.Linear(6, 4)), 4, 3)
    model.train()
    frozen.eval()
    frozen.trip.arm(fuse)
    flags = [m.training for m in model.modules()]
    before = state(frozen)
    call = lambda: bottleneck.train_cbm(model, cbm_data(), epochs=2, batch_size=8,  # noqa: E731
                                        progress=False)
    if fuse:
        with pytest.raises(TripwireError):
            call()
        # a failure midway leaves every training flag as the user set it
        assert [m.training for m in model.modules()] == flags
    else:
        call()
        assert not model.training  # documented: a trained CBM is left in eval mode
    after = state(frozen)
    for key in ("requires_grad", "hooks", "devices", "dtypes"):
        assert before[key] == after[key]
    # the frozen weights are untouched (its batch-norm statistics are not: train_cbm trains the
    # whole CBM in train mode, as Koh et al.; freeze them by keeping the backbone out of it)
    for name, tensor in before["tensors"].items():
        if "running" not in name and "num_batches" not in name:
            assert torch.equal(tensor, after["tensors"][name]), name


@pytest.fixture(scope="module")
def trained_cbm():
    model = bottleneck.ConceptBottleneckModel(nn.Linear(12, 4), 4, 3)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(30, 12, generator=gen)
    data = (x, (x[:, :4] > 0).float(), torch.arange(30) % 3)
    bottleneck.train_cbm(model, data, epochs=2, progress=False)
    return model, data


class TrippedEncoder(nn.Module):
    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.trip = Tripwire()
        self.linear = linear

    def forward(self, x):
        return self.linear(self.trip(x))


@pytest.mark.parametrize("fuse", [FUSES_OFF, 2])
def test_interventions(fuse, trained_cbm):
    model, data = trained_cbm
    wrapped = bottleneck.ConceptBottleneckModel(TrippedEncoder(model.concept_encoder), 4, 3)
    wrapped.load_state_dict(model.state_dict(), strict=False)
    wrapped.head.load_state_dict(model.head.state_dict())
    wrapped.train()
    x, c, _ = data
    wrapped.concept_encoder.trip.arm(fuse)
    run(wrapped, lambda: bottleneck.intervene(wrapped, x[:4], c[:4], torch.ones(4, dtype=torch.bool)),
        fails=bool(fuse))
    wrapped.concept_encoder.trip.arm(fuse)
    run(wrapped, lambda: bottleneck.intervention_curve(wrapped, data, batch_size=8, n_trials=2),
        fails=bool(fuse))


class FakeClip:
    """CLIP stand-in: image embeddings from pixel statistics, one-hot text embeddings."""

    def encode_image(self, pictures):
        return torch.cat([pictures.mean((2, 3)), pictures.std((2, 3))], 1)

    def encode_text(self, texts):
        return torch.eye(6)[[hash(t) % 6 for t in texts]]


@pytest.mark.parametrize("fuse", [FUSES_OFF, 2])
def test_label_free_backbone(fuse):
    net = backbone()
    net.trip.arm(fuse)
    lf = bottleneck.LabelFreeCBM(net, FakeClip(), ["red", "round"], ["a", "b", "c"], batch_size=4,
                                 progress=False)
    x, _, y = cbm_data()
    call = (lambda: lf.fit(x, y)) if fuse else (lambda: lf.features(x))
    run(net, call, fails=bool(fuse))


@pytest.mark.parametrize("fuse", [FUSES_OFF, 2])
def test_posthoc_backbone(fuse):
    net = backbone()
    net.trip.arm(fuse)
    bank = bottleneck.CAVBank(np.eye(6)[:3], np.zeros(3), ["a", "b", "c"])
    pcbm = bottleneck.PosthocCBM(bank, net, batch_size=4, max_iter=50, progress=False)
    x, _, y = cbm_data(80)  # embeddings are computed 64 images at a time: two batches
    run(net, lambda: pcbm.fit(x, y), fails=bool(fuse))
