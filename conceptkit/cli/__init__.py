"""The ``conceptkit`` command: ``demo | explain | report | train-cbm | extract | bench``.

One module per command (``_demo``, ``_explain``, ``_extract``, ``_train_cbm``), the parser and
dispatch in ``_main``, and the image loading they share in ``_images``.
"""

from ._images import load_images
from ._main import build_parser, main

__all__ = ["build_parser", "load_images", "main"]
