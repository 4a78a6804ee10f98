import importlib.util
import os
import sys


def _register(name: str) -> None:
    """The contract suites import their helpers ``_forge`` and ``_errors_reliability`` by module
    name; with ``--import-mode=importlib`` no test folder is on ``sys.path``, so they are
    registered by path (as tests/conftest.py registers ``_shared``)."""
    if name in sys.modules:
        return
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


_register("_forge")                # before _errors_reliability, which imports it
_register("_errors_reliability")
