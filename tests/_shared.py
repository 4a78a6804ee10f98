"""Models and data shared by several test modules (pytest puts this folder on ``sys.path``)."""

import numpy as np
import torch
from torch import nn


def two_block_cnn() -> nn.Sequential:
    """Conv blocks `block1` (16 ch, pooled) and `block2` (24 ch) -> GAP -> Linear(24, 4), eval mode."""
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("block1", nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)))
    model.add_module("block2", nn.Sequential(nn.Conv2d(16, 24, 3, padding=1), nn.ReLU()))
    model.add_module("pool", nn.AdaptiveAvgPool2d(1))
    model.add_module("flatten", nn.Flatten())
    model.add_module("fc", nn.Linear(24, 4))
    return model.eval()


def planted_nmf(n: int = 400, c: int = 60, k: int = 5, noise: float = 0.1, seed: int = 0):
    """Non-negative rank-k rows plus non-negative noise; returns (A float32, the planted parts)."""
    rng = np.random.default_rng(seed)
    parts = rng.exponential(1.0, (k, c)) * (rng.random((k, c)) < 0.4)
    codes = rng.exponential(1.0, (n, k)) * (rng.random((n, k)) < 0.6)
    A = codes @ parts
    A = A + noise * A.std() * np.abs(rng.standard_normal(A.shape))
    return A.astype(np.float32), parts


BROWSER_NAMES = ("chromium", "chromium-browser")
_FALSE = {"", "0", "false", "no", "off"}


def chromium_decision(path: str | None, ci: str | None) -> tuple[str, str]:
    """What the browser tests do: ``("run", executable)``, ``("skip", reason)`` or
    ``("fail", reason)``.

    ``path`` is the ``PATH`` to search and ``ci`` the value of the ``CI`` environment variable.
    Without Chromium the tests skip with a reason shown in the pytest summary, except in CI
    (``CI`` set to anything but empty/0/false/no/off), where a missing browser fails them so that
    a CI without a browser is noticed.
    """
    import shutil

    for name in BROWSER_NAMES:
        found = shutil.which(name, path=path)
        if found:
            return "run", found
    where = f"CI (CI={ci})" if ci is not None and ci.strip().lower() not in _FALSE else None
    reason = ("headless Chromium is not installed (no `chromium` or `chromium-browser` on PATH); "
              "install it with `apt-get install -y chromium` (`make test` does so when run as root "
              "on Debian/Ubuntu)")
    if where:
        return "fail", f"{reason}. The browser tests must run in {where}."
    return "skip", f"{reason}, or deselect these tests with `-m 'not browser'`."
