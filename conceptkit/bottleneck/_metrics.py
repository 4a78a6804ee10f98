"""How good a concept bottleneck model is: task and concept metrics, and leakage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from .._reprs import dataclass_repr
from .._validation import check_float
from ._data import as_cbm_data
from ._model import ConceptBottleneckModel, check_cbm


@dataclass(frozen=True)
class CBMEvaluation:
    """Task and concept quality on one data split (higher is better for every number).

    Attributes
    ----------
    task_accuracy : float
        Top-1 accuracy of the class prediction.
    concept_accuracy : float
        Fraction of (example, concept) entries predicted right, with presence = ``sigmoid(logit)
        >= 0.5`` and true presence thresholded at 0.5 (Koh's concept accuracy).
    per_concept_accuracy, per_concept_f1, per_concept_auc : np.ndarray
        ``(k,)`` per concept; the AUC ranks ``sigmoid(logit)`` and is NaN for a concept that is
        always present or always absent in this split.
    n_examples : int
    """

    task_accuracy: float
    concept_accuracy: float
    per_concept_accuracy: np.ndarray
    per_concept_f1: np.ndarray
    per_concept_auc: np.ndarray
    n_examples: int


def evaluate_cbm(model: ConceptBottleneckModel, data: Any, *, batch_size: int = 256,
                 device: Any = None, progress: bool = False) -> CBMEvaluation:
    """Task accuracy and per-concept accuracy / F1 / AUC of ``model`` on ``data``.

    ``data`` is a tuple ``(x, concepts, labels)`` or a Dataset yielding ``(x, c, y)``.
    """
    model = check_cbm(model)
    data = as_cbm_data(data, "data", n_concepts=model.n_concepts, n_classes=model.n_classes)
    out = model.predict_all(data, batch_size=batch_size, device=device, progress=progress)
    concepts, labels = data.columns()
    probs = torch.sigmoid(out.concept_logits).double().numpy()
    predicted = probs >= 0.5
    truth = concepts.numpy() >= 0.5
    task = float((out.class_logits.argmax(1) == labels).double().mean())
    per_acc = (predicted == truth).mean(0)
    per_f1 = np.array([f1_score(truth[:, j], predicted[:, j], zero_division=0.0)
                       for j in range(model.n_concepts)])
    per_auc = np.array([roc_auc_score(truth[:, j], probs[:, j]) if 0 < truth[:, j].sum() < len(truth)
                        else np.nan for j in range(model.n_concepts)])
    return CBMEvaluation(task_accuracy=task, concept_accuracy=float((predicted == truth).mean()),
                         per_concept_accuracy=per_acc, per_concept_f1=per_f1,
                         per_concept_auc=per_auc, n_examples=len(labels))


@dataclass(frozen=True)
class LeakageReport:
    """Task information in the soft bottleneck beyond the predicted concept presence.

    Three probes (multinomial logistic regression on standardised inputs) are fitted on the
    training split and scored on the evaluation split:

    - ``soft_accuracy``: probe on the model's soft bottleneck values (``concepts`` output);
    - ``hard_accuracy``: probe on the hard predicted concepts ``sigmoid(logit) >= 0.5``;
    - ``true_accuracy``: probe on the true concepts (what the concepts alone allow).

    ``leakage = soft_accuracy − hard_accuracy``. Near 0: the head can use little beyond which
    concepts are predicted present. Clearly positive: the bottleneck's magnitudes encode task
    information that is not concept presence (Mahinpei et al. 2021; Havasi et al. 2022), so
    interventions and concept-based explanations of the head are less trustworthy.
    ``soft_accuracy − true_accuracy`` > 0 flags information the true concepts do not carry.
    """

    soft_accuracy: float
    hard_accuracy: float
    true_accuracy: float
    leakage: float


def _probe_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                    test_y: np.ndarray, C: float) -> float:
    if len(np.unique(train_y)) < 2:
        raise ValueError("`train_data` holds a single class; the leakage probes need at least two.")
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000))
    probe.fit(train_x, train_y)
    return float((probe.predict(test_x) == test_y).mean())


def leakage_score(model: ConceptBottleneckModel, train_data: Any, test_data: Any, *,
                  C: float = 10.0, batch_size: int = 256, device: Any = None) -> LeakageReport:
    """Measure concept leakage of ``model`` (see :class:`LeakageReport` for the definition).

    Parameters
    ----------
    train_data, test_data : tuple (x, concepts, labels) or Dataset yielding (x, c, y)
        Probes are fitted on ``train_data`` and scored on ``test_data``.
    C : float
        Inverse L2 strength of the logistic probes (weak regularisation by default, so that
        the probes measure information content rather than a prior).
    """
    model = check_cbm(model)
    C = check_float(C, "C", minimum=0.0, strict_minimum=True)
    parts = []
    for name, data in (("train_data", train_data), ("test_data", test_data)):
        wrapped = as_cbm_data(data, name, n_concepts=model.n_concepts, n_classes=model.n_classes)
        out = model.predict_all(wrapped, batch_size=batch_size, device=device)
        concepts, labels = wrapped.columns()
        parts.append({"soft": out.concepts.double().numpy(),
                      "hard": (out.concept_logits >= 0).double().numpy(),
                      "true": concepts.double().numpy(), "y": labels.numpy()})
    train, test = parts
    acc = {key: _probe_accuracy(train[key], train["y"], test[key], test["y"], C)
           for key in ("soft", "hard", "true")}
    return LeakageReport(soft_accuracy=acc["soft"], hard_accuracy=acc["hard"],
                         true_accuracy=acc["true"], leakage=acc["soft"] - acc["hard"])


# Short reprs: shapes of arrays, not their values (print(result) stays readable).
CBMEvaluation.__repr__ = dataclass_repr  # type: ignore[method-assign]
LeakageReport.__repr__ = dataclass_repr  # type: ignore[method-assign]
