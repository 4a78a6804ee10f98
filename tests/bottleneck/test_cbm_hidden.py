"""`hidden` is the MLP head's width: refused with a linear head (it was silently ignored), and
files written before 0.2.0 (a linear head stored with an unused hidden=64) still load."""
import pytest
import torch
from torch import nn

from conceptkit.bottleneck import ConceptBottleneckModel


def test_hidden_with_a_linear_head_is_refused():
    with pytest.raises(ValueError, match=r"`hidden` \(8\).*head='mlp'"):
        ConceptBottleneckModel(nn.Linear(5, 4), 4, 3, hidden=8)


def test_hidden_defaults_to_64_for_the_mlp_head_and_none_for_a_linear_one():
    mlp = ConceptBottleneckModel(nn.Linear(5, 4), 4, 3, head="mlp")
    assert mlp.hidden == 64 and mlp.head[0].out_features == 64
    assert ConceptBottleneckModel(nn.Linear(5, 4), 4, 3).hidden is None


def test_a_linear_model_saved_with_the_old_unused_hidden_loads(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = ConceptBottleneckModel(nn.Linear(5, 4), 4, 3)
    old_config = ConceptBottleneckModel.config
    monkeypatch.setattr(ConceptBottleneckModel, "config",
                        lambda self: {**old_config(self), "hidden": 64})  # as 0.1.0 wrote it
    path = model.save(tmp_path / "old.safetensors")
    monkeypatch.undo()
    again = ConceptBottleneckModel.load(path)
    x = torch.randn(6, 5)
    assert again.hidden is None and again.head_kind == "linear"
    torch.testing.assert_close(again(x).class_logits, model(x).class_logits, rtol=0, atol=0)
