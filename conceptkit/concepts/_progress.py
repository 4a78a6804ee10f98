"""A progress bar for one factorizer fit, honest about what it can see.

The torch NMF solvers and SemiNMF report each outer iteration (:func:`iteration`), so their bar
counts iterations up to ``max_iter``, and TopKSAE its epochs up to ``epochs`` (a fit that
converges stops before the end, and the bar says so).
scikit-learn's solvers (NMF ``cd``/``mu``, k-means, PCA, ...) take no callback: their bar is a
timer that shows the elapsed seconds of the fit and nothing else.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Callable, Iterator
from typing import Any

from tqdm.auto import tqdm

_REPORT: contextvars.ContextVar[Callable[[int], None] | None] = contextvars.ContextVar(
    "conceptkit_fit_iteration", default=None)

#: Seconds between two refreshes of a timer bar.
TIMER_REFRESH = 0.5


def iteration(n_iter: int) -> None:
    """Called by iterative solvers after outer iteration ``n_iter`` (1-based); cheap when no bar
    listens."""
    report = _REPORT.get()
    if report is not None:
        report(n_iter)


def _counts_iterations(factorizer: Any) -> bool:
    """The factorizer calls :func:`iteration` (the torch NMF solvers, SemiNMF; TopKSAE after
    each epoch)."""
    return (bool(getattr(factorizer, "_reports_iterations", False))
            or str(getattr(factorizer, "solver", "")).startswith("torch_"))


@contextlib.contextmanager
def fit_progress(factorizer: Any, shape: tuple[int, ...], enabled: bool) -> Iterator[None]:
    """Show a bar while ``factorizer`` is fitted on rows of ``shape`` (when ``enabled``)."""
    if not enabled or getattr(factorizer, "progress", False) is True:
        yield  # off, or the factorizer shows its own bar (NMF(progress=True))
        return
    name = type(factorizer).__name__
    size = " x ".join(str(int(s)) for s in shape)
    k = getattr(factorizer, "n_concepts", "?")
    if _counts_iterations(factorizer):
        epochs = getattr(factorizer, "max_iter", None) is None  # TopKSAE counts epochs
        total = int(factorizer.epochs if epochs else factorizer.max_iter)
        unit = "epoch" if epochs else "it"
        solver = getattr(factorizer, "solver", None) or "torch Adam"
        bar = tqdm(total=total, leave=False, unit=unit,
                   desc=f"{name} fit ({solver}, k={k}, {size}): "
                        f"{'epochs' if epochs else 'iterations'}, stops early once converged")

        def report(n_iter: int) -> None:
            bar.update(n_iter - bar.n)

        token = _REPORT.set(report)
        try:
            yield
        finally:
            _REPORT.reset(token)
            bar.refresh()  # the last count, whatever the refresh interval skipped
            bar.close()
        return
    solver = getattr(factorizer, "solver", None)
    what = f"{name} fit ({'scikit-learn ' + solver if solver else 'scikit-learn'}, k={k}, {size})"
    bar = tqdm(total=None, leave=False, desc=f"{what}: no per-iteration progress, time elapsed",
               bar_format="{desc}: {elapsed}")
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(TIMER_REFRESH):
            bar.refresh()

    ticker = threading.Thread(target=tick, daemon=True, name="conceptkit-fit-timer")
    ticker.start()
    try:
        yield
    finally:
        stop.set()
        ticker.join()
        bar.refresh()
        bar.close()
