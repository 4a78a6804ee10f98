"""Models and data shared by several test modules (tests/conftest.py registers this module as
``_shared``)."""

import math
import socket
import subprocess
from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from conceptkit.report import ClassReport, ConceptSummary


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


def small_cnn() -> nn.Sequential:
    """Conv blocks `block1` and `block2` (8 ch each, both pooled) -> GAP -> Linear(8, 3), train
    mode as built."""
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(
        block1=nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
        block2=nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
        pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), fc=nn.Linear(8, 3)))


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
# --- a synthetic class report (report and browser tests) ----------------------------------------

SHAPE_COLOURS = [(0.9, 0.1, 0.1), (0.1, 0.7, 0.1), (0.1, 0.2, 0.9), (0.95, 0.8, 0.1),
                 (0.6, 0.1, 0.8)]
LABELS = ["red square (IoU 0.61)", "green square", "blue <b>square</b> & co", "yellow square",
          "purple square"]


def make_report(class_id: int = 3, class_name: str = "Red squares", *, n_shown: int = 4,
                n_all: int = 60, side: int = 64, seed: int = 0, **changes) -> ClassReport:
    """A :class:`~conceptkit.report.ClassReport` of coloured squares on grey: concept ``c`` is
    the square of colour ``c``; its map is the square's mask averaged to 8 x 8 (a
    feature-map-sized map); its exemplars are crops of the square. Images ``i`` has top concept
    ``i % k``; code column 1 follows column 0."""
    rng = np.random.default_rng(seed)
    k, cell = len(SHAPE_COLOURS), side // 4
    images = 0.5 + 0.04 * rng.standard_normal((n_shown, 3, side, side))
    masks = np.zeros((n_shown, k, side, side))
    crops: list[list[np.ndarray]] = [[] for _ in range(k)]
    sources: list[list[int]] = [[] for _ in range(k)]
    for i in range(n_shown):
        for c in range(k):
            if c != i % k and rng.random() < 0.4:
                continue
            y, x = rng.integers(0, side - cell, size=2)
            images[i, :, y:y + cell, x:x + cell] = np.asarray(SHAPE_COLOURS[c])[:, None, None]
            masks[i, c, y:y + cell, x:x + cell] = 1.0
            crops[c].append(images[i, :, y:y + cell, x:x + cell].copy())
            sources[c].append(100 + i)
    images = np.clip(images, 0, 1).astype(np.float32)
    maps = masks.reshape(n_shown, k, 8, side // 8, 8, side // 8).mean(axis=(3, 5))
    importances = np.array([0.41, 0.252, 0.1534, 0.0987, 0.045678])
    concepts = []
    for c in range(k):
        exemplars = np.stack(crops[c]) if crops[c] else np.zeros((0, 3, cell, cell))
        known = c < k - 1  # the last concept has no confidence interval
        concepts.append(ConceptSummary(
            index=(c * 3) % k, label=LABELS[c], importance=float(importances[c]),
            ci_low=float(importances[c] - 0.031) if known else math.nan,
            ci_high=float(importances[c] + 0.0275) if known else None,
            exemplars=exemplars, exemplar_sources=sources[c],
            extra={"matched_iou": 0.61234 - 0.1 * c, "ground_truth": f"shape {c}"}))
    top = np.arange(n_all) % k
    per_image = 0.1 * rng.random((n_all, k))
    per_image[np.arange(n_all), top] += 1.0
    codes = rng.random((200, k))
    codes[:, 1] = 0.9 * codes[:, 0] + 0.1 * rng.random(200)
    fields = dict(
        class_id=class_id, class_name=class_name, method="craft", importance_method="sobol",
        layer="layer4.1", model_name="resnet18", concepts=concepts, images=images,
        image_ids=[100 + i for i in range(n_shown)], maps=maps, per_image_importance=per_image,
        codes=codes,
        metrics={"extraction": {"relative_l2": {"value": 0.123456, "higher_is_better": False},
                                "hoyer": {"value": 0.56789, "higher_is_better": True}},
                 "importance": {"c_deletion": {"value": None, "higher_is_better": False},
                                "raw_score": 3.14159}},
        notes=["the <watermark> cue looks spurious"],
        timings={"extract": 1.25, "factorize": 0.5, "importance": 2.0625})
    fields.update(changes)
    return ClassReport(**fields)


#: What a rank prints when gloo's C++ threads abort at process exit (std::terminate, exit -6).
TEARDOWN_ABORT = "terminate called without an active exception"


def run_torchrun(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run a ``torch.distributed.run`` command (``capture_output=True, text=True`` expected).

    Retried once, on a fresh ``--master_port``, when a rank died of gloo's rare abort at exit
    (seen in 2 of 5 full test runs on 2 cores, one gloo test each time, never twice in a row;
    not reproduced in 18 direct repeats). Any other failure, or the same abort twice, is
    returned unchanged for the test to report.
    """
    result = subprocess.run(cmd, **kwargs)
    if result.returncode == 0 or TEARDOWN_ABORT not in (result.stderr or ""):
        return result
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    again = [f"--master_port={port}" if arg.startswith("--master_port=") else arg for arg in cmd]
    return subprocess.run(again, **kwargs)


def cli_error(argv: list[str], capsys, seconds: float = 20.0) -> str:
    """Run ``conceptkit argv`` and return its one ``error:`` line: exit status 2, one line on
    stderr, refused within ``seconds`` (before any real work)."""
    import time

    from conceptkit.cli import main

    start = time.perf_counter()
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert time.perf_counter() - start < seconds
    return err


class FakeClip:
    """Text i -> the i-th axis of a fixed rotation; images are their first 16 values."""

    def __init__(self):
        self.P = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(0)))[0]
        self.words = {}

    def encode_image(self, images):
        return images.flatten(1)[:, :16]

    def encode_text(self, texts):
        out = []
        for t in texts:
            self.words.setdefault(t, len(self.words))
            out.append(self.P[self.words[t] % 16])
        return torch.stack(out)


def small_cbm_data(n=120, seed=0):
    """Inputs x (n, 10), concept labels (n, 6) and class labels (n,) of 3 classes: class c has
    concepts 2c and 2c + 1, and x is a noisy linear image of the concepts."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    concepts = np.zeros((n, 6), np.float32)
    concepts[np.arange(n), 2 * labels] = 1
    concepts[np.arange(n), 2 * labels + 1] = 1
    x = concepts @ np.random.default_rng(7).normal(size=(6, 10)).astype(np.float32)
    x += 0.3 * rng.normal(size=x.shape).astype(np.float32)
    return torch.from_numpy(x), torch.from_numpy(concepts), torch.from_numpy(labels)
