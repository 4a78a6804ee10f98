"""The ``conceptkit`` command: ``demo | explain | report | atlas | train-cbm | extract | bench``.

One module per command (``_demo``, ``_explain``, ``_atlas``, ``_extract``, ``_train_cbm``), the parser and
dispatch in ``_main``, and the image loading they share in ``_images``.
"""

from .._deprecation import module_getattr
from ._main import build_parser, main

__all__ = ["build_parser", "main"]

# plumbing that left the face in 0.2 (still importable from its private module)
__getattr__ = module_getattr(__name__, {
    "load_images": ("conceptkit.cli._images", "load_images"),
})
