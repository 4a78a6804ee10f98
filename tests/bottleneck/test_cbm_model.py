"""ConceptBottleneckModel: forward pieces, calibration, save/load, data validation."""

import numpy as np
import pytest
import torch
from torch import nn

from conceptkit.bottleneck import CBMOutput, ConceptBottleneckModel, SpatialProbe, train_cbm
from conceptkit.bottleneck._model import pos_weight_from
from conceptkit.io import FormatError


def _model(bottleneck="sigmoid", head="linear", d=6, k=4, n_classes=3, seed=0):
    torch.manual_seed(seed)
    return ConceptBottleneckModel(nn.Linear(d, k), k, n_classes, head=head, bottleneck=bottleneck)


@pytest.mark.parametrize("bottleneck", ["sigmoid", "logits"])
@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_forward_composes_encoder_bottleneck_and_head(bottleneck, head):
    model = _model(bottleneck, head)
    x = torch.randn(5, 6)
    out = model(x)
    assert isinstance(out, CBMOutput)
    logits = model.concept_encoder(x)
    expected_concepts = torch.sigmoid(logits) if bottleneck == "sigmoid" else logits
    torch.testing.assert_close(out.concept_logits, logits)
    torch.testing.assert_close(out.concepts, expected_concepts)
    torch.testing.assert_close(out.class_logits, model.head(expected_concepts))
    assert out.class_logits.shape == (5, 3)


def test_encoder_with_wrong_output_width_is_reported():
    model = ConceptBottleneckModel(nn.Linear(6, 5), 4, 3)
    with pytest.raises(ValueError, match=r"n_concepts=4"):
        model(torch.randn(2, 6))


def test_constructor_checks_arguments():
    with pytest.raises(TypeError, match="concept_encoder"):
        ConceptBottleneckModel(lambda x: x, 4, 3)
    with pytest.raises(ValueError, match="head"):
        ConceptBottleneckModel(nn.Linear(6, 4), 4, 3, head="mpl")
    with pytest.raises(ValueError, match="n_classes"):
        ConceptBottleneckModel(nn.Linear(6, 4), 4, 1)
    with pytest.raises(ValueError, match="concept_names"):
        ConceptBottleneckModel(nn.Linear(6, 4), 4, 3, concept_names=["a", "b"])


def test_calibration_stores_logit_percentiles():
    model = _model("logits")
    x = torch.randn(200, 6)
    model.calibrate_intervention(x)
    logits = model.concept_encoder(x).detach().double().numpy()
    np.testing.assert_allclose(model.intervention_low.numpy(), np.percentile(logits, 5, axis=0), rtol=1e-5)
    np.testing.assert_allclose(model.intervention_high.numpy(), np.percentile(logits, 95, axis=0), rtol=1e-5)
    mapped = model.true_to_bottleneck(torch.tensor([[0.0, 1.0, 0.5, 1.0]]))
    low, high = model.intervention_low, model.intervention_high
    torch.testing.assert_close(mapped[0], torch.stack([low[0], high[1], (low[2] + high[2]) / 2, high[3]]))
    with pytest.raises(ValueError, match="increasing"):
        model.calibrate_intervention(x, percentiles=(95, 5))


def test_sigmoid_bottleneck_uses_true_values_as_is():
    model = _model("sigmoid")
    values = torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    torch.testing.assert_close(model.true_to_bottleneck(values), values)
    assert bool(model.calibrated)


def test_pos_weight_is_n_over_npos_minus_one():
    concepts = torch.tensor([[1, 0, 1, 0], [0, 0, 1, 1], [0, 0, 1, 0], [1, 0, 1, 0]], dtype=torch.float32)
    # concept 0: n=4, n_pos=2 -> 1; concept 1: never present -> 1; concept 2: always -> 1;
    # concept 3: n_pos=1 -> 3
    torch.testing.assert_close(pos_weight_from(concepts), torch.tensor([1.0, 1.0, 1.0, 3.0]))


def test_spatial_probe_max_and_mean_pooling():
    torch.manual_seed(0)
    probe = SpatialProbe(3, 2, pool="max")
    maps = torch.randn(4, 3, 5, 5)
    scores = torch.einsum("nchw,kc->nkhw", maps, probe.conv.weight[:, :, 0, 0]) + probe.conv.bias[None, :, None, None]
    torch.testing.assert_close(probe(maps), scores.amax((2, 3)))
    probe.pool = "mean"
    torch.testing.assert_close(probe(maps), scores.mean((2, 3)))
    torch.testing.assert_close(probe(maps[:, :, 0, 0]), scores[:, :, 0, 0])
    with pytest.raises(ValueError, match="SpatialProbe expects"):
        probe(torch.randn(2, 4, 5, 5))


@pytest.mark.parametrize("encoder", ["linear", "probe"])
def test_save_load_round_trip_rebuilds_known_encoders(tmp_path, encoder):
    torch.manual_seed(1)
    enc = nn.Linear(6, 4) if encoder == "linear" else SpatialProbe(6, 4)
    model = ConceptBottleneckModel(enc, 4, 3, bottleneck="logits", head="mlp", hidden=7,
                                   concept_names=list("abcd"), class_names=["x", "y", "z"])
    x = torch.randn(30, 6) if encoder == "linear" else torch.randn(30, 6, 3, 3)
    model.calibrate_intervention(x)
    model.trained_mode = "joint"
    path = model.save(tmp_path / "cbm.safetensors")
    loaded = ConceptBottleneckModel.load(path)
    assert type(loaded.concept_encoder) is type(enc)
    assert loaded.concept_names == list("abcd") and loaded.class_names == ["x", "y", "z"]
    assert loaded.trained_mode == "joint" and loaded.hidden == 7
    for a, b in zip(model.eval()(x), loaded.eval()(x)):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(loaded.intervention_high, model.intervention_high)


def test_custom_encoder_must_be_supplied_at_load(tmp_path):
    torch.manual_seed(2)
    enc = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
    model = ConceptBottleneckModel(enc, 4, 3)
    path = model.save(tmp_path / "cbm.safetensors")
    with pytest.raises(ValueError, match="concept_encoder` is required"):
        ConceptBottleneckModel.load(path)
    loaded = ConceptBottleneckModel.load(path, nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4)))
    x = torch.randn(3, 6)
    torch.testing.assert_close(loaded(x).class_logits, model(x).class_logits)
    with pytest.raises(ValueError, match="does not match"):
        ConceptBottleneckModel.load(path, nn.Sequential(nn.Linear(6, 9), nn.ReLU(), nn.Linear(9, 4)))
    with pytest.raises(ValueError, match="does not match"):
        ConceptBottleneckModel.load(path, nn.Linear(6, 4))


def test_load_refuses_other_kinds(tmp_path):
    from conceptkit.io import save_file

    path = save_file(tmp_path / "other.safetensors", {"a": torch.zeros(1)}, {}, kind="something", version=1)
    with pytest.raises(FormatError, match="not a 'concept_bottleneck_model'"):
        ConceptBottleneckModel.load(path)


def test_training_data_is_validated_with_clear_messages():
    model = _model()
    x, c, y = torch.randn(10, 6), torch.randint(0, 2, (10, 4)).float(), torch.randint(0, 3, (10,))
    with pytest.raises(ValueError, match="same number of rows"):
        train_cbm(model, (x, c[:9], y))
    with pytest.raises(ValueError, match="4 concept columns|n_concepts=4"):
        train_cbm(model, (x, c[:, :3], y))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        train_cbm(model, (x, c * 2, y))
    with pytest.raises(ValueError, match="n_classes=3"):
        train_cbm(model, (x, c, y + 3))
    with pytest.raises(TypeError, match="tuple"):
        train_cbm(model, {"x": x})
    with pytest.raises(ValueError, match="mode"):
        train_cbm(model, (x, c, y), mode="jiont")
    with pytest.raises(ValueError, match="NaN"):
        train_cbm(model, (x * float("nan"), c, y))
    with pytest.raises(TypeError, match="ConceptBottleneckModel"):
        train_cbm(nn.Linear(6, 3), (x, c, y))


def test_a_file_with_non_finite_weights_is_refused(tmp_path):
    model = _model()
    with torch.no_grad():
        model.head.weight[0, 0] = float("nan")   # what an edited file would hold
    path = model.save(tmp_path / "nan.safetensors")
    with pytest.raises(FormatError, match="non-finite values"):
        ConceptBottleneckModel.load(path)


def test_predict_all_on_a_device_moves_the_model_back_even_on_failure():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # the meta device holds no values: moving the model there lost its weights; refused first
    with pytest.raises(ValueError, match="`device` is 'meta'"):
        model.predict_all(torch.randn(5, 6), device="meta")

    def fails(*args, **kwargs):
        raise RuntimeError("out of memory")

    original = model.forward
    model.forward = fails  # a failure after the move, on the device asked for
    with pytest.raises(RuntimeError, match="out of memory"):
        model.predict_all(torch.randn(5, 6), device="cpu")
    model.forward = original
    after = model.state_dict()
    assert all(v.device.type == "cpu" and torch.equal(v, before[k]) for k, v in after.items())


def test_calibration_percentiles_and_a_seed_numpy_cannot_take_are_refused_by_name():
    model = _model(bottleneck="logits")
    with pytest.raises(ValueError, match="`percentiles` must be two numbers"):  # IndexError before
        model.calibrate_intervention(torch.randn(5, 6), percentiles=(5,))
    x = torch.randn(20, 6)
    data = (x, torch.rand(20, 4).round(), torch.arange(20) % 3)
    with pytest.raises(ValueError, match="`seed` must be <= 4294967295"):  # an overflow before
        train_cbm(_model(), data, data, epochs=1, seed=2**70, progress=False)
