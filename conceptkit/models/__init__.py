"""Models by name, each with its preprocessing, class names and a default layer to explain.

``conceptkit.models.load("efficientnet_lite0")`` returns a :class:`ModelBundle`; names are
``reference``, ``efficientnet_lite0``, ``world:NAME[:ARCH]`` (the ground-truth worlds' models),
``torchvision:NAME``, ``timm:NAME`` and ``open_clip:NAME``
(weights from a local file with ``weights=PATH``, or from the library's hub when online).
:class:`~conceptkit.ConceptExplainer` takes the bundle as its model (model, preprocessing, layer,
class names and name in one); :func:`likely_layers` lists the layers worth explaining.
"""

from ._bundle import ModelBundle, Normalize
from ._candidates import likely_layers
from ._load import OfflineWeightsError, load, load_state, load_weights

__all__ = ["ModelBundle", "Normalize", "OfflineWeightsError", "likely_layers", "load", "load_state",
           "load_weights"]
