import importlib.util
import os
import sys


def _register_shared_helpers(name: str, relative: str) -> None:
    """Test modules in every folder import the helpers of tests/_shared.py as ``_shared`` and
    the file forger of tests/contracts/_forge.py as ``_forge``.

    The modules are registered by path rather than by putting tests/ on ``sys.path``: the test
    folders are named like the package's subpackages, and on the path a folder such as
    tests/bottleneck would shadow real packages of that name (pandas imports ``bottleneck``).
    """
    if name in sys.modules:
        return
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), relative)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


_register_shared_helpers("_shared", "_shared.py")
_register_shared_helpers("_forge", os.path.join("contracts", "_forge.py"))

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
def one_torch_thread():
    """Small sequential kernels: a second torch thread only waits for a busy core. Modules
    that want it say ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def snapshot():
    return model_snapshot


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of headless Chromium for browser tests (mark them ``@pytest.mark.browser``).

    Missing browser: the test skips with the reason in the summary (``-ra``), or fails when
    ``CI`` is set (see :func:`_shared.chromium_decision`).
    """
    from _shared import chromium_decision

    action, detail = chromium_decision(os.environ.get("PATH"), os.environ.get("CI"))
    if action == "fail":
        pytest.fail(detail)
    if action == "skip":
        pytest.skip(detail)
    return detail
