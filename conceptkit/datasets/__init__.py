"""Ground-truth concept dataset, the reference CNN trained on it, and offline real-image helpers.

- :func:`make_concept_dataset` draws images whose concepts, class rules and concept masks are
  known exactly (:class:`ConceptDataset`); :func:`add_concept` draws one more part in.
- :func:`reference_model` is the small CNN shipped with weights trained on that dataset
  (``python -m conceptkit.datasets.train_reference`` reproduces them).
- :func:`efficientnet_lite0`, :func:`sample_photos` and :func:`photo_views` give a real ImageNet
  model and real photos, all offline.
"""

from ._cue import add_concept
from ._dataset import ConceptDataset
from ._generate import CLASS_NAMES, make_concept_dataset
from ._parts import CONCEPT_NAMES
from ._photos import PHOTO_NAMES, photo_views, sample_photos
from ._pretrained import PretrainedModel, efficientnet_lite0
from ._reference import ReferenceCNN, reference_accuracy, reference_info, reference_model
from ._training import evaluate_accuracy, spurious_cue_effect, train_reference_cnn

__all__ = [
    "CLASS_NAMES",
    "CONCEPT_NAMES",
    "PHOTO_NAMES",
    "ConceptDataset",
    "PretrainedModel",
    "ReferenceCNN",
    "add_concept",
    "efficientnet_lite0",
    "evaluate_accuracy",
    "make_concept_dataset",
    "photo_views",
    "reference_accuracy",
    "reference_info",
    "reference_model",
    "sample_photos",
    "spurious_cue_effect",
    "train_reference_cnn",
]
