"""The supervised concept bottleneck model (Koh et al., 2020): x → concepts → class."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .._torchutils import model_device, model_dtype, on_device, preserved_model_state
from .._validation import check_choice, check_float, check_int, describe
from ..io import FormatError, load_file, loading, save_file
from ._data import CBMData, as_inputs, iter_inputs, n_rows

KIND = "concept_bottleneck_model"
FORMAT_VERSION = 1
HEADS = ("linear", "mlp")
BOTTLENECKS = ("sigmoid", "logits")
#: Hidden width of the MLP head when ``hidden`` is not given.
DEFAULT_HIDDEN = 64
#: Koh et al.'s training modes (:func:`train_cbm`); a saved ``trained_mode`` is one of them.
MODES = ("independent", "sequential", "joint", "standard")


class CBMOutput(NamedTuple):
    """What :class:`ConceptBottleneckModel` returns.

    Attributes
    ----------
    concept_logits : torch.Tensor
        ``(N, k)`` raw concept scores from the concept encoder (trained against concept labels
        with a logistic loss, so ``sigmoid(concept_logits)`` is the predicted presence).
    concepts : torch.Tensor
        ``(N, k)`` the bottleneck values the head reads: ``sigmoid(concept_logits)`` for a sigmoid
        bottleneck, ``concept_logits`` unchanged for a logit bottleneck.
    class_logits : torch.Tensor
        ``(N, n_classes)`` task logits.
    """

    concept_logits: torch.Tensor
    concepts: torch.Tensor
    class_logits: torch.Tensor


class SpatialProbe(nn.Module):
    """A linear concept detector applied at every position of a feature map, then pooled.

    ``(N, C, h, w)`` maps → 1×1 convolution to ``n_concepts`` channels → global max (or mean)
    pool → ``(N, n_concepts)`` logits. On frozen convolutional features it asks "does the concept
    appear anywhere?", which a linear probe on average-pooled features cannot express for small
    parts. ``(N, C)`` feature vectors are accepted too (treated as 1×1 maps).
    """

    def __init__(self, in_channels: int, n_concepts: int, pool: str = "max"):
        super().__init__()
        self.in_channels = check_int(in_channels, "in_channels", minimum=1)
        self.n_concepts = check_int(n_concepts, "n_concepts", minimum=1)
        self.pool = check_choice(pool, "pool", ("max", "mean"))
        self.conv = nn.Conv2d(self.in_channels, self.n_concepts, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 2:
            x = x[:, :, None, None]
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"SpatialProbe expects (N, {self.in_channels}, h, w) maps or "
                             f"(N, {self.in_channels}) features; got shape {tuple(x.shape)}.")
        scores = self.conv(x)
        return scores.amax((2, 3)) if self.pool == "max" else scores.mean((2, 3))


def _encoder_spec(encoder: nn.Module) -> dict[str, Any] | None:
    """Architecture of the encoders :meth:`ConceptBottleneckModel.load` can rebuild by itself."""
    if type(encoder) is nn.Linear:
        return {"type": "linear", "in_features": encoder.in_features,
                "out_features": encoder.out_features, "bias": encoder.bias is not None}
    if type(encoder) is SpatialProbe:
        return {"type": "spatial_probe", "in_channels": encoder.in_channels,
                "n_concepts": encoder.n_concepts, "pool": encoder.pool}
    return None


_REBUILT_ENCODERS = ("Linear", "SpatialProbe")  # the classes _encoder_spec describes


def _build_encoder(spec: dict[str, Any]) -> nn.Module:
    """Rebuild an encoder from a file's spec; a spec of the wrong types raises (FormatError at
    load) rather than being coerced (``bias="x"`` is truthy)."""
    if not isinstance(spec, dict) or spec.get("type") not in ("linear", "spatial_probe"):
        raise ValueError(f"encoder spec must be a dict of type 'linear' or 'spatial_probe'; got "
                         f"{describe(spec)}")
    if spec["type"] == "linear":
        if not isinstance(spec["bias"], bool):
            raise TypeError(f"encoder bias must be true or false; got {describe(spec['bias'])}")
        return nn.Linear(check_int(spec["in_features"], "in_features", minimum=1),
                         check_int(spec["out_features"], "out_features", minimum=1),
                         bias=spec["bias"])
    return SpatialProbe(spec["in_channels"], spec["n_concepts"], spec["pool"])


def _names(names: Any, count: int, label: str, arg: str) -> list[str]:
    if names is None:
        return [f"{label}_{i}" for i in range(count)]
    if isinstance(names, str):
        raise TypeError(f"`{arg}` must be a list of names; got {describe(names)}.")
    names = [str(n) for n in names]
    if len(names) != count:
        raise ValueError(f"`{arg}` has {len(names)} names but the model has {count}.")
    warn_repeated(names, arg, label)
    return names


def warn_repeated(names: list[str], arg: str, label: str) -> None:
    """Names may repeat (a naming step gives two concepts one name; files written so load),
    but a user should know: a warning naming the argument and the repeats. ``label`` is the
    singular ("concept", "class")."""
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        plural = label + ("es" if label.endswith(("s", "x", "sh", "ch")) else "s")
        warnings.warn(f"`{arg}` repeats {repeated}: several {plural} share a name (reports "
                      f"tell them apart by their index).", UserWarning, stacklevel=3)


class ConceptBottleneckModel(nn.Module):
    """Concept bottleneck model: ``class_logits = head(bottleneck(concept_encoder(x)))``.

    Parameters
    ----------
    concept_encoder : nn.Module
        Maps an input batch ``(N, ...)`` (images or cached features) to concept logits
        ``(N, n_concepts)``. For cached features from a frozen backbone, ``nn.Linear(d, k)``.
    n_concepts, n_classes : int
        Width of the bottleneck and number of classes.
    head : {"linear", "mlp"}
        The concept → class model: one linear layer (Koh's default) or a one-hidden-layer MLP.
    bottleneck : {"sigmoid", "logits"}
        What the head reads: concept probabilities or the raw concept logits.
    hidden : int, optional
        Hidden width of the MLP head (default 64). A linear head has no hidden layer: giving
        ``hidden`` with ``head="linear"`` is an error, not an argument silently ignored.
    concept_names, class_names : list of str, optional
        Names stored with the model (used by reports); default ``concept_i`` / ``class_i``.

    Notes
    -----
    Interventions replace predicted concept values by true ones. For a sigmoid bottleneck a true
    0/1 is used as is; for a logit bottleneck, 0 and 1 map to the 5th and 95th percentiles of
    that concept's predicted logits on a reference set (Koh et al.), kept in the buffers
    ``intervention_low`` / ``intervention_high``. :func:`train_cbm` sets them from the training
    split; :meth:`calibrate_intervention` recomputes them on any data.
    """

    def __init__(self, concept_encoder: nn.Module, n_concepts: int, n_classes: int, *,
                 head: str = "linear", bottleneck: str = "sigmoid", hidden: int | None = None,
                 concept_names: list[str] | None = None, class_names: list[str] | None = None):
        super().__init__()
        if not isinstance(concept_encoder, nn.Module):
            raise TypeError(f"`concept_encoder` must be a torch.nn.Module mapping inputs to "
                            f"(N, n_concepts) logits; got {describe(concept_encoder)}.")
        self.n_concepts = check_int(n_concepts, "n_concepts", minimum=1)
        self.n_classes = check_int(n_classes, "n_classes", minimum=2)
        self.head_kind = check_choice(head, "head", HEADS)
        self.bottleneck = check_choice(bottleneck, "bottleneck", BOTTLENECKS)
        if self.head_kind == "linear" and hidden is not None:
            raise ValueError(f"`hidden` ({hidden!r}) is the width of the MLP head's hidden layer; "
                             f"a linear head has none. Pass head='mlp' to use it, or leave "
                             f"`hidden` out.")
        self.hidden = (None if self.head_kind == "linear" else
                       check_int(DEFAULT_HIDDEN if hidden is None else hidden, "hidden", minimum=1))
        self.concept_names = _names(concept_names, self.n_concepts, "concept", "concept_names")
        self.class_names = _names(class_names, self.n_classes, "class", "class_names")
        self.concept_encoder = concept_encoder
        if self.head_kind == "linear":
            self.head = nn.Linear(self.n_concepts, self.n_classes)
        else:
            self.head = nn.Sequential(nn.Linear(self.n_concepts, self.hidden), nn.ReLU(),
                                      nn.Linear(self.hidden, self.n_classes))
        self.register_buffer("intervention_low", torch.zeros(self.n_concepts))
        self.register_buffer("intervention_high", torch.ones(self.n_concepts))
        self.register_buffer("calibrated", torch.tensor(self.bottleneck == "sigmoid"))
        self.trained_mode: str | None = None

    # -- forward pieces -------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Concept logits ``(N, k)`` for inputs ``x``."""
        logits = self.concept_encoder(x)
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[1] != self.n_concepts:
            raise ValueError(f"`concept_encoder` must return (N, n_concepts={self.n_concepts}) logits; "
                             f"it returned {describe(logits)}.")
        return logits

    def to_bottleneck(self, concept_logits: torch.Tensor) -> torch.Tensor:
        """Bottleneck values from concept logits (sigmoid, or identity for ``"logits"``)."""
        return torch.sigmoid(concept_logits) if self.bottleneck == "sigmoid" else concept_logits

    def true_to_bottleneck(self, concepts: torch.Tensor) -> torch.Tensor:
        """Express true concept presence in [0, 1] in bottleneck space (see class notes)."""
        concepts = concepts.to(self.intervention_low.dtype)
        if self.bottleneck == "sigmoid":
            return concepts
        # this form gives exactly `low` at 0 and exactly `high` at 1
        return self.intervention_low * (1 - concepts) + self.intervention_high * concepts

    def predict_from_concepts(self, concepts: torch.Tensor) -> torch.Tensor:
        """Class logits ``(N, n_classes)`` from bottleneck values ``(N, k)``."""
        return self.head(concepts)

    def forward(self, x: torch.Tensor) -> CBMOutput:
        concept_logits = self.encode(x)
        concepts = self.to_bottleneck(concept_logits)
        return CBMOutput(concept_logits, concepts, self.head(concepts))

    # -- batched inference ----------------------------------------------------------------------
    @torch.no_grad()
    def predict_all(self, data: Any, *, batch_size: int = 256, device: Any = None,
                    progress: bool = False) -> CBMOutput:
        """Run the model in eval mode over all inputs of ``data``; results on the CPU. With
        ``device`` the model runs there and is moved back afterwards.

        ``data`` is an input tensor ``(N, ...)``, a tuple ``(x, concepts, labels)`` or a Dataset
        yielding ``(x, c, y)``. Floating inputs are cast to the model's dtype (float64 features
        to a float32 model); integer inputs are refused (give images as floats in [0, 1]).
        """
        batch_size = check_int(batch_size, "batch_size", minimum=1)
        data = as_inputs(data, "data")
        # a CBMData keeps the caller's argument name (leakage_score's `test_data`)
        name = data.name if isinstance(data, CBMData) else "data"
        outs: list[CBMOutput] = []
        # on `device` for the call only: the model goes back where it was, also on failure
        with preserved_model_state(self), on_device(self, device) as dev:
            total = -(-n_rows(data) // batch_size)
            dtype = model_dtype(self)  # floating inputs of any precision (float64 features)
            for i, x in enumerate(tqdm(iter_inputs(data, batch_size), total=total,
                                       disable=not progress, desc="CBM inference", leave=False)):
                if i == 0:  # inputs the encoder cannot take: an error naming them, not torch's
                    check_inputs(self, x, name)
                out = self(x.to(dev, dtype))
                outs.append(CBMOutput(*(t.cpu() for t in out)))
        return CBMOutput(*(torch.cat(parts) for parts in zip(*outs)))

    def calibrate_intervention(self, data: Any, *, percentiles: tuple[float, float] = (5.0, 95.0),
                               batch_size: int = 256, device: Any = None,
                               progress: bool = False) -> ConceptBottleneckModel:
        """Set the logit values that stand for "absent" / "present" in interventions.

        Stores the ``percentiles`` (default 5th and 95th) of each concept's predicted logits on
        ``data`` in ``intervention_low`` / ``intervention_high``. Only the inputs of ``data`` are
        used (no labels). Returns ``self``.
        """
        if not isinstance(percentiles, (tuple, list)) or len(percentiles) != 2:
            raise ValueError(f"`percentiles` must be two numbers (low, high) in [0, 100]; got "
                             f"{percentiles!r}.")
        low_q = check_float(percentiles[0], "percentiles[0]", minimum=0, maximum=100)
        high_q = check_float(percentiles[1], "percentiles[1]", minimum=0, maximum=100)
        if low_q >= high_q:
            raise ValueError(f"`percentiles` must be increasing; got {percentiles}.")
        logits = self.predict_all(data, batch_size=batch_size, device=device,
                                  progress=progress).concept_logits.double()
        q = torch.tensor([low_q / 100, high_q / 100], dtype=torch.float64)
        low, high = torch.quantile(logits, q, dim=0)
        self.intervention_low.copy_(low.to(self.intervention_low))
        self.intervention_high.copy_(high.to(self.intervention_high))
        self.calibrated.fill_(True)
        return self

    # -- save / load ----------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {"n_concepts": self.n_concepts, "n_classes": self.n_classes, "head": self.head_kind,
                "bottleneck": self.bottleneck, "hidden": self.hidden,
                "concept_names": self.concept_names, "class_names": self.class_names}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model (state dict + architecture config) to one ``.safetensors`` file.

        The concept encoder's weights are stored; its architecture is stored only for the known
        encoders ``nn.Linear`` and :class:`SpatialProbe`, which :meth:`load` rebuilds by itself.
        Any other encoder is arbitrary user code: :meth:`load` then needs a freshly built encoder
        of the same architecture.
        """
        meta = {"config": self.config(), "encoder": _encoder_spec(self.concept_encoder),
                "encoder_class": type(self.concept_encoder).__name__, "trained_mode": self.trained_mode}
        return save_file(path, dict(self.state_dict()), meta, kind=KIND, version=FORMAT_VERSION)

    @classmethod
    def load(cls, path: str | os.PathLike,
             concept_encoder: nn.Module | None = None) -> ConceptBottleneckModel:
        """Load a model written by :meth:`save`; ``concept_encoder`` must match the saved one.

        The model comes back in eval mode (ready to predict; call ``.train()`` to fine-tune
        it), with each weight in the dtype it was saved in: a float64 (or float16) model loads
        as float64 (float16), a given ``concept_encoder`` included.
        """
        if concept_encoder is not None and not isinstance(concept_encoder, nn.Module):
            raise TypeError(f"`concept_encoder` must be a torch.nn.Module; got "
                            f"{describe(concept_encoder)}.")
        tensors, meta = load_file(path, kind=KIND, version=FORMAT_VERSION)
        broken = [name for name, t in tensors.items()
                  if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        if broken:  # a model whose weights are NaN would predict NaN without a word
            raise FormatError(f"`path` {str(path)!r} holds non-finite values (NaN or Inf) in "
                              f"{broken[:5]}: a damaged or edited file.")
        with loading(path, "ConceptBottleneckModel (model configuration)"):
            config = dict(meta["config"])
            if config.get("head") == "linear":
                config.pop("hidden", None)  # files before 0.2.0 stored an unused 64 (or null)
            spec = meta.get("encoder")
            for key in ("concept_names", "class_names"):  # saved as strings: others are edits
                names = config.get(key)
                if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                    raise TypeError(f"{key} must be a list of strings; got {describe(names)}")
            if not isinstance(meta.get("encoder_class"), str):
                raise TypeError(f"encoder_class must be a string; got "
                                f"{describe(meta.get('encoder_class'))}")
        given = concept_encoder is not None
        if not given and not spec and meta.get("encoder_class") in _REBUILT_ENCODERS:
            raise FormatError(f"`path` {str(path)!r} was saved with a "
                              f"{meta.get('encoder_class')!r} encoder but its architecture, which "
                              f"is always stored for that class, is missing: a damaged or edited "
                              f"file.")
        if not given and not spec:
            raise ValueError(
                f"`concept_encoder` is required: `path` {str(path)!r} was saved with a "
                f"{meta.get('encoder_class')!r} encoder, whose architecture is not stored; pass a "
                f"freshly built encoder of the same architecture.")
        _check_declared(path, config, spec, tensors, given)
        _check_stored_state(path, meta, tensors)
        if not given:
            with loading(path, "ConceptBottleneckModel (encoder spec)"):
                concept_encoder = _build_encoder(spec)
        with loading(path, "ConceptBottleneckModel (model configuration)"):
            model = cls(concept_encoder, config.pop("n_concepts"), config.pop("n_classes"), **config)
            trained_mode = meta.get("trained_mode")
            if trained_mode is not None and not isinstance(trained_mode, str):
                raise TypeError(f"trained_mode {trained_mode!r}")
        # a mismatch is the user's encoder's fault if they gave one, the file's otherwise
        culprit = (f"`concept_encoder` does not match the saved model in `path` {str(path)!r}"
                   if given else f"`path` {str(path)!r} holds weights that do not match its own "
                                 f"architecture (a damaged file)")
        error = ValueError if given else FormatError
        _restore_dtypes(model, tensors)  # a float64 (float16) model comes back as such
        try:
            result = model.load_state_dict(dict(tensors), strict=False)
        except RuntimeError as err:  # shape mismatches
            raise error(f"{culprit}: {str(err).splitlines()[-1].strip()}") from err
        if result.missing_keys or result.unexpected_keys:
            raise error(f"{culprit}: missing {list(result.missing_keys)[:5]}, unexpected "
                        f"{list(result.unexpected_keys)[:5]}.")
        model.trained_mode = trained_mode
        model.eval()  # ready to predict (dropout off, BatchNorm on its running statistics)
        return model


def _restore_dtypes(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Give every floating parameter and buffer of ``model`` the dtype it was saved in, so that
    ``load_state_dict`` copies the values as they are instead of casting them to float32."""
    for prefix, module in model.named_modules():
        prefix = f"{prefix}." if prefix else ""
        for name, param in module.named_parameters(recurse=False):
            stored = tensors.get(prefix + name)
            if (stored is not None and stored.is_floating_point() and param.is_floating_point()
                    and stored.dtype != param.dtype):
                param.data = param.data.to(stored.dtype)
        for name, buffer in module.named_buffers(recurse=False):
            stored = tensors.get(prefix + name)
            if (stored is not None and stored.is_floating_point() and buffer.is_floating_point()
                    and stored.dtype != buffer.dtype):
                setattr(module, name, buffer.to(stored.dtype))


def _check_declared(path: Any, config: dict, spec: Any, tensors: dict[str, torch.Tensor],
                    given: bool) -> None:
    """Compare the architecture a file declares with the tensors it holds, before building it.

    A 1 KB file may declare a 50000 x 40000 encoder: the model is first built on the ``meta``
    device (no memory), after the declared widths are bounded by the number of values stored,
    and its parameter shapes must equal the stored tensors' shapes.
    """
    stored = sum(int(t.numel()) for t in tensors.values())
    widths = ("n_concepts", "n_classes", "hidden") if config.get("head") == "mlp" else (
        "n_concepts", "n_classes")  # a linear head has no hidden layer: its width is unused
    for key in widths:
        value = config.get(key)
        if isinstance(value, int) and value > max(stored, 2):
            raise FormatError(f"`path` {str(path)!r} declares {key}={value} but stores only "
                              f"{stored} values: a damaged or tampered file.")
    try:
        with torch.device("meta"):
            encoder = nn.Identity() if given else _build_encoder(spec)
            rest = {k: v for k, v in config.items() if k not in ("n_concepts", "n_classes")}
            skeleton = ConceptBottleneckModel(encoder, config["n_concepts"], config["n_classes"], **rest)
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as err:
        raise FormatError(f"`path` {str(path)!r} has a corrupted model configuration: "
                          f"{err}") from err

    def shapes(items: Any) -> dict[str, tuple[int, ...]]:
        return {key: tuple(value.shape) for key, value in items
                if not (given and key.startswith("concept_encoder."))}

    expected, found = shapes(skeleton.state_dict().items()), shapes(tensors.items())
    if expected != found:
        wrong = sorted(key for key in set(expected) | set(found) if expected.get(key) != found.get(key))
        details = ", ".join(f"{key}: declared {expected.get(key)}, stored {found.get(key)}"
                            for key in wrong[:4])
        raise FormatError(f"`path` {str(path)!r} declares an architecture that does not match the "
                          f"tensors it holds ({details}): a damaged or tampered file.")
    # a weight stored as integers or booleans would be cast silently by load_state_dict (a
    # float64 model saved as such is fine: its precision is the user's; the `calibrated` flag is
    # checked by _check_stored_state)
    floating = {key for key, value in skeleton.state_dict().items() if value.is_floating_point()}
    odd = sorted(key for key, value in tensors.items()
                 if key in floating and not value.is_floating_point())
    if odd:
        raise FormatError(f"`path` {str(path)!r} stores {odd[0]} as {tensors[odd[0]].dtype}, "
                          f"where the model holds floating-point values"
                          + (f" (and {len(odd) - 1} more such tensors)" if len(odd) > 1 else "")
                          + ": a damaged or tampered file.")


def _check_stored_state(path: Any, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
    """Refuse stored values that :meth:`ConceptBottleneckModel.save` never writes, naming the
    file and the field (shapes are checked by :func:`_check_declared` before)."""
    where = f"`path` {str(path)!r}"
    trained_mode = meta.get("trained_mode")
    if trained_mode is not None and trained_mode not in MODES:
        raise FormatError(f"{where} stores trained_mode={trained_mode!r}, which is none of "
                          f"{list(MODES)} (or null for an untrained model): a damaged or edited "
                          f"file.")
    calibrated = tensors.get("calibrated")
    if calibrated is not None and calibrated.dtype != torch.bool:
        raise FormatError(f"{where} stores calibrated as {calibrated.dtype} "
                          f"{calibrated.tolist()!r}; it is saved as a boolean (true / false): a "
                          f"damaged or edited file.")
    low, high = tensors.get("intervention_low"), tensors.get("intervention_high")
    if low is not None and high is not None and low.shape == high.shape:
        inverted = torch.nonzero(low > high).flatten().tolist()
        if inverted:
            raise FormatError(f"{where} stores intervention_low above intervention_high for "
                              f"concept(s) {inverted[:10]} (the values an intervention sets for "
                              f"absent / present): a damaged or edited file.")


def check_inputs(model: ConceptBottleneckModel, x: torch.Tensor, name: str) -> None:
    """Run the concept encoder on two rows of ``x``; a failure becomes an error naming ``name``."""
    try:
        with preserved_model_state(model), torch.no_grad():
            model.encode(x[:2].to(model_device(model), model_dtype(model)))
    except Exception as err:  # the user's encoder failing on our input: say which input
        raise ValueError(f"`{name}` does not fit the model: its inputs of shape "
                         f"{tuple(x.shape[1:])} (per example) fail in the concept encoder "
                         f"{type(model.concept_encoder).__name__}: {type(err).__name__}: {err}") from err


def check_cbm(model: Any, *, calibrated: bool = False) -> ConceptBottleneckModel:
    """``model`` if it is a ConceptBottleneckModel (with calibrated intervention values if asked)."""
    if not isinstance(model, ConceptBottleneckModel):
        raise TypeError(f"`model` must be a ConceptBottleneckModel; got {describe(model)}.")
    if calibrated and not bool(model.calibrated):
        raise ValueError("`model` has a logit bottleneck whose intervention values are not "
                         "calibrated; train it with train_cbm or call "
                         "model.calibrate_intervention(train_inputs) first.")
    return model


def pos_weight_from(concepts: torch.Tensor) -> torch.Tensor:
    """Per-concept positive weight ``n / n_pos - 1`` (Koh et al.; = n_neg / n_pos).

    A concept that is never (or always) present gets weight 1: there is nothing to rebalance, and
    a weight of 0 would silence its only class of examples.
    """
    concepts = concepts.double()
    n = concepts.shape[0]
    n_pos = concepts.sum(0)
    usable = (n_pos > 0) & (n_pos < n)
    weight = torch.where(usable, n / n_pos.clamp_min(np.finfo(np.float64).tiny) - 1,
                         torch.ones_like(n_pos))
    return weight.float()
