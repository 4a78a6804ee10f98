"""Helpers shared by the benchmark scripts (imported from the scripts' own folder)."""

from __future__ import annotations


def status_kb(field: str) -> int:
    """A ``/proc/self/status`` memory field in kB (``VmRSS``, ``VmHWM``); 0 where there is none."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:  # not Linux
        pass
    return 0
