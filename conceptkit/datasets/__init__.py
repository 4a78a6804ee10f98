"""Ground-truth worlds and the models trained on them, and offline real-image helpers.

- :func:`load_world` gives one of the :data:`WORLDS` (``shapes``, ``textures``, ``scales``,
  ``context``): ``world.sample(...)`` draws images with labels and per-part masks,
  ``world.model()`` loads its trained model (a CNN, a ResNet or a ViT), ``world.train_command``
  reproduces the weights (``python -m conceptkit.datasets.train_world --world NAME``).
- :func:`make_concept_dataset` draws images whose concepts, class rules and concept masks are
  known exactly (:class:`ConceptDataset`); :func:`add_concept` draws one more part in.
- :func:`reference_model` is the small CNN shipped with weights trained on that dataset
  (``python -m conceptkit.datasets.train_reference`` reproduces them).
- :func:`efficientnet_lite0`, :func:`sample_photos` and :func:`photo_views` give a real ImageNet
  model and real photos, all offline.
"""

from ._architectures import SmallResNet, small_vit
from ._cue import add_concept
from ._dataset import ConceptDataset
from ._generate import CLASS_NAMES, make_concept_dataset
from ._parts import CONCEPT_NAMES
from ._photos import PHOTO_NAMES, photo_views, sample_photos
from ._pretrained import PretrainedModel, efficientnet_lite0
from ._reference import ReferenceCNN, reference_accuracy, reference_info, reference_model
from ._training import evaluate_accuracy, spurious_cue_effect, train_reference_cnn
from ._world import WORLDS, World, load_world
from ._world_training import train_world_model

__all__ = [
    "CLASS_NAMES",
    "CONCEPT_NAMES",
    "PHOTO_NAMES",
    "ConceptDataset",
    "PretrainedModel",
    "ReferenceCNN",
    "SmallResNet",
    "WORLDS",
    "World",
    "add_concept",
    "efficientnet_lite0",
    "evaluate_accuracy",
    "load_world",
    "make_concept_dataset",
    "photo_views",
    "reference_accuracy",
    "reference_info",
    "reference_model",
    "sample_photos",
    "small_vit",
    "spurious_cue_effect",
    "train_reference_cnn",
    "train_world_model",
]
