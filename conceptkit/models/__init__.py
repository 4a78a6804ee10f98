"""Models by name, each with its preprocessing, class names and a default layer to explain.

``conceptkit.models.load("efficientnet_lite0")`` returns a :class:`ModelBundle`; names are
``reference``, ``efficientnet_lite0``, ``torchvision:NAME``, ``timm:NAME`` and ``open_clip:NAME``
(weights from a local file with ``weights=PATH``, or from the library's hub when online).
"""

from ._load import ModelBundle, Normalize, OfflineWeightsError, load, load_state, load_weights

__all__ = ["ModelBundle", "Normalize", "OfflineWeightsError", "load", "load_state",
           "load_weights"]
