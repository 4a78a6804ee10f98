import os
import sys

# Test modules in every folder import the helpers of tests/_shared.py by name.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def model_snapshot(model: torch.nn.Module) -> dict:
    """Everything a public call must leave unchanged on a user's model."""
    return {
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "hooks": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                     for m in model.modules()),
        "devices": {str(p.device) for p in model.parameters()},
        "dtypes": {str(p.dtype) for p in model.parameters()},
    }


@pytest.fixture
def snapshot():
    return model_snapshot
