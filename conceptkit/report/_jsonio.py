"""Strict JSON for reports (the helpers live in :mod:`conceptkit._json`, shared with the CBM report)."""

from __future__ import annotations

from .._json import json_ready, write_json

__all__ = ["json_ready", "write_json"]
