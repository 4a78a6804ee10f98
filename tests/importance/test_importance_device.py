"""`concept_importance(device=...)` runs `h` on that device, and leaves it where it was."""

import torch
from torch import nn

from conceptkit.concepts import NMF, bank_from_activations
from conceptkit.extraction import positions
from conceptkit.importance import concept_importance


class RecordingHead(nn.Module):
    """GAP + linear head that records every device it is moved to."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(6, 3)
        self.moves: list[str] = []

    def to(self, *args, **kwargs):
        self.moves.append(str(args[0] if args else kwargs["device"]))
        return super().to(*args, **kwargs)

    def forward(self, x):
        assert x.device == self.fc.weight.device, "h got inputs on another device than its weights"
        return self.fc(x.mean(dim=(2, 3)))


def _problem():
    gen = torch.Generator().manual_seed(0)
    acts = torch.rand(8, 6, 3, 3, generator=gen)
    rows = positions(acts)
    bank = bank_from_activations(NMF(3, random_state=0), rows.rows, rows.provenance, layer="x",
                                 method="ice")
    return acts, bank


def test_h_moves_to_the_requested_device_and_back():
    acts, bank = _problem()
    head = RecordingHead()
    target = torch.device("cpu", 0)  # a device other than the head's (cpu, no index)
    result = concept_importance(head, acts, bank, 1, method="gradient_input", device=target,
                                progress=False)
    assert head.moves == ["cpu:0", "cpu"]
    plain = concept_importance(RecordingHead(), acts, bank, 1, method="gradient_input",
                               progress=False)
    torch.testing.assert_close(torch.as_tensor(result.importances),
                               torch.as_tensor(plain.importances))


def test_importance_metrics_run_h_on_their_device():
    from conceptkit.importance.metrics import CDeletion

    acts, bank = _problem()
    head = RecordingHead()
    per_input = concept_importance(head, acts, bank, 1, method="gradient_input",
                                   progress=False).per_input
    head.moves.clear()
    CDeletion(device=torch.device("cpu", 0), progress=False).evaluate(head, acts, bank, 1, per_input)
    assert head.moves == ["cpu:0", "cpu"]
