import importlib.util
import os
import sys


def _register(name: str) -> None:
    """The tests of this folder import their planted world as ``_evaluate_planted``; with
    ``--import-mode=importlib`` no test folder is on ``sys.path``, so it is registered by path
    (as tests/conftest.py registers ``_shared``)."""
    if name in sys.modules:
        return
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


_register("_evaluate_planted")
