"""Helpers of the contract suites, registered by path (``--import-mode=importlib`` puts no test
folder on ``sys.path``): ``_forge`` (forged saved files) and ``_errors_reliability`` (rows of
the bad-input matrix)."""

import importlib.util
import os
import sys


def _register(name: str) -> None:
    if name in sys.modules:
        return
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


_register("_forge")
_register("_errors_reliability")
