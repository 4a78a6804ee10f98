"""Batched activation extraction at a named layer of any torch model."""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .._deprecation import renamed_arguments
from .._torchutils import (
    capture_output,
    model_device,
    model_dtype,
    on_device,
    preserved_model_state,
    probe_layer,
    watch_channels,
)
from .._validation import check_choice, check_images, check_int, describe, resolve_device
from ._layers import get_layer, unwrap_model
from ._layout import channels_last_error, is_channels_last
from ._sizes import is_size_error, model_patch_grid, size_error

#: How often a layer is called in a forward pass, by model, then by layer module and name:
#: extractors made again and again for the same layer (crops, segments, windows) count once.
_PROBED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def expected_in_channels(model: nn.Module) -> int | None:
    """Input channels of the first registered convolution (or patch embedding) of ``model``;
    None when it has none, or when that convolution is lazy (its channels are not known yet).

    The first registered convolution is not always the first one run (a head defined before
    the stem): :class:`ActivationExtractor` checks the one that runs first instead.
    """
    for module in model.modules():
        if isinstance(module, _CONVS):
            return None if _is_lazy(module) else module.in_channels
    return None


def _is_lazy(module: nn.Module) -> bool:
    return any(isinstance(p, nn.parameter.UninitializedParameter)
               for p in module.parameters(recurse=False))


class _ChannelMismatch(Exception):
    """Raised by :func:`_first_convolution`'s hook: the first convolution run is given the
    images' channels, and they are not the ones it takes."""

    def __init__(self, name: str, wanted: int):
        super().__init__(name, wanted)
        self.name, self.wanted = name, wanted


@contextlib.contextmanager
def _first_convolution(model: nn.Module, channels: int) -> Iterator[None]:
    """Within the block, the first convolution the model runs checks its input: given
    ``channels`` channels (those of the images, after preprocessing) where it takes another
    number, it raises :class:`_ChannelMismatch` (the model would fail there anyway). Lazy
    convolutions, and a first convolution given another number of channels (a stem that
    changes them), are left to the model."""
    done: list[bool] = []

    def check(name: str):
        def hook(module, inputs):
            if done:
                return
            done.append(True)
            x = inputs[0] if inputs else None
            if (_is_lazy(module) or not isinstance(x, torch.Tensor) or x.ndim < 2
                    or x.shape[1] != channels):
                return
            if module.in_channels != channels:
                raise _ChannelMismatch(name, module.in_channels)
        return hook

    handles = [m.register_forward_pre_hook(check(n)) for n, m in model.named_modules()
               if isinstance(m, _CONVS)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def infer_prefix_tokens(model: nn.Module, n_tokens: int,
                        grid: tuple[int, int] | None = None) -> int:
    """Number of CLS/register tokens in front of the patch tokens.

    Where the model has a fixed patch grid (``grid``, default :func:`model_patch_grid` of the
    whole model): the tokens beyond it, when that is none or a count the model declares (a
    layer that runs before the prefix tokens are added, such as timm's ``patch_embed``, has
    none even where removing them would also leave a square). Otherwise read from the model
    when it says (timm ``num_prefix_tokens``, torchvision ``class_token``, open_clip
    ``class_embedding``); otherwise the smallest count that leaves a square grid.
    """
    if grid is None:
        grid = model_patch_grid(model)
    declared = [n for n in (getattr(module, "num_prefix_tokens", None)
                            for module in model.modules()) if isinstance(n, int)]
    if any(getattr(module, attr, None) is not None
           for attr in ("class_token", "class_embedding", "cls_token") for module in model.modules()):
        declared.append(1)
    if grid is not None:
        extra = n_tokens - grid[0] * grid[1]
        if extra == 0 or extra in declared:
            return extra
    for n in declared:
        if _is_square(n_tokens - n):
            return n
    for n in range(0, 9):
        if _is_square(n_tokens - n):
            return n
    raise ValueError(f"cannot arrange {n_tokens} tokens into a square grid after removing up to 8 "
                     f"prefix tokens; pass `prefix_tokens` explicitly.")


def _is_square(n: int) -> bool:
    return n > 0 and math.isqrt(n) ** 2 == n


class TokenLayout:
    """Whether a module hands its transformer tokens on batch-first ``(N, T, C)`` or
    sequence-first ``(T, N, C)`` (older open_clip ViTs), decided once and kept.

    A batch of as many images as tokens reads both ways; its layout then comes from an earlier
    batch, or from ``probe()`` (the module's output for one image), never from a guess.
    """

    def __init__(self, name: str = "layer"):
        self.name = name
        self.layout: str | None = None

    def of(self, tokens: torch.Tensor, n: int, probe: Any = None) -> str:
        first, second = tokens.shape[0] == n, tokens.shape[1] == n
        if first != second:
            seen = "NTC" if first else "TNC"
            if self.layout is not None and seen != self.layout:
                raise ValueError(f"{self.name} returned tokens of shape {tuple(tokens.shape)} for "
                                 f"{n} images, laid out {seen} where earlier batches were "
                                 f"{self.layout}.")
            self.layout = seen
        elif not first:
            raise ValueError(f"{self.name} returned tokens of shape {tuple(tokens.shape)} for a "
                             f"batch of {n} images: neither of its first two axes is the batch.")
        elif self.layout is None:  # (n, n, C): ambiguous; one image settles it
            single = probe() if probe is not None and n > 1 else None
            if (single is None or single.ndim != 3
                    or (single.shape[0] == 1) == (single.shape[1] == 1)):
                raise ValueError(f"{self.name} returned tokens of shape {tuple(tokens.shape)} "
                                 f"for {n} images, which reads batch-first and sequence-first "
                                 f"alike; use a `batch_size` other than {n}.")
            self.layout = "NTC" if single.shape[0] == 1 else "TNC"
        return self.layout

    def batch_first(self, tokens: torch.Tensor, n: int, probe: Any = None) -> torch.Tensor:
        """``tokens`` as ``(N, T, C)``."""
        return tokens.transpose(0, 1) if self.of(tokens, n, probe) == "TNC" else tokens


def tokens_to_maps(tokens: torch.Tensor, prefix_tokens: int,
                   grid: tuple[int, int] | None = None) -> torch.Tensor:
    """``(N, T, C)`` transformer tokens → ``(N, C, h, w)`` maps without the prefix tokens, on
    ``grid`` ``(h, w)`` (a model's non-square patch grid, row-major) when it holds exactly the
    patch tokens, else on a square grid."""
    patches = tokens[:, prefix_tokens:, :]
    if grid is not None and grid[0] * grid[1] == patches.shape[1]:
        rows, cols = grid
    else:
        rows = cols = math.isqrt(patches.shape[1])
        if rows * cols != patches.shape[1]:
            raise ValueError(f"{patches.shape[1]} patch tokens do not form a square grid; "
                             f"check `prefix_tokens` ({prefix_tokens}).")
    return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], rows, cols)


def maps_to_tokens(maps: torch.Tensor, prefix: torch.Tensor | None = None) -> torch.Tensor:
    """Inverse of :func:`tokens_to_maps`: ``(N, C, h, w)`` (+ prefix ``(N, P, C)``) → ``(N, T, C)``."""
    tokens = maps.flatten(2).transpose(1, 2)
    if prefix is not None and prefix.shape[1]:
        tokens = torch.cat([prefix.to(tokens), tokens], dim=1)
    return tokens


class TokenHead(nn.Module):
    """``h`` of a transformer cut, fed token *maps*: ``forward(maps, prefix)`` puts each input's
    CLS/register tokens back in front of its patch tokens and runs ``h`` on the sequence.

    Concept methods decompose only the patch tokens (as maps ``(N, C, h, w)``); the prefix tokens
    of each input are kept as they are, passed as the per-input ``context`` of
    :func:`conceptkit.importance.concept_importance`.
    """

    def __init__(self, h: nn.Module, layout: str = "NTC"):
        super().__init__()
        self.h = h
        self.layout = layout

    def forward(self, maps: torch.Tensor, prefix: torch.Tensor | None = None) -> torch.Tensor:
        tokens = maps_to_tokens(maps, prefix)
        if self.layout == "TNC":
            tokens = tokens.transpose(0, 1)
        return self.h(tokens)


def _batches(inputs: Any, batch_size: int,
             name: str = "inputs") -> tuple[Iterator[torch.Tensor], int]:
    """Yield image batches from a tensor, a Dataset, a DataLoader, or a batch source."""
    if hasattr(inputs, "iter_batches") and hasattr(inputs, "__len__"):
        n = len(inputs)
        return inputs.iter_batches(batch_size), math.ceil(n / batch_size)
    if isinstance(inputs, torch.Tensor):
        n = inputs.shape[0]
        return (inputs[i:i + batch_size] for i in range(0, n, batch_size)), math.ceil(n / batch_size)
    if isinstance(inputs, DataLoader):
        return (_first(b) for b in inputs), len(inputs)
    if isinstance(inputs, Dataset):
        loader = DataLoader(inputs, batch_size=batch_size, shuffle=False)
        return (_first(b) for b in loader), len(loader)
    raise TypeError(f"`{name}` must be a tensor (N, C, H, W), a torch Dataset or a DataLoader; "
                    f"got {describe(inputs)}.")


def _first(batch: Any) -> torch.Tensor:
    if isinstance(batch, (tuple, list)):
        return batch[0]
    if isinstance(batch, dict):
        for key in ("image", "images", "pixel_values", "x"):
            if key in batch:
                return batch[key]
        raise ValueError(f"cannot find images in a batch dict with keys {list(batch)}.")
    return batch


class ActivationExtractor:
    """Collect the activations of ``model`` at ``layer`` for a set of images.

    Parameters
    ----------
    model
        Any ``torch.nn.Module``; left exactly as found (hooks removed, training flags, grad flags
        and device restored), even when a call raises.
    layer
        Dotted submodule name (``"layer4"``, ``"blocks.6"``) or the submodule itself.
    batch_size
        Images per forward pass.
    device
        Where to run. ``None`` runs on the model's device; another device moves the model there
        for the call and back afterwards.
    progress
        Show a tqdm progress bar.
    tokens
        What to do with transformer tokens ``(N, T, C)``: ``"maps"`` (default when ``"auto"``)
        returns ``(N, C, h, w)`` with the CLS/register tokens removed; ``"raw"`` returns tokens.
    prefix_tokens
        Number of CLS/register tokens to drop; inferred when ``None``.
    output
        For a layer that returns a tuple, which element of the layer's output to read (an
        index); ``output_index`` before 0.2, deprecated. (``ConceptExplainer(output=)`` and the
        other entry points that run the whole model name the same idea for the model's output:
        which element holds the class logits.)
    grad
        Run with autograd enabled (default: no-grad).
    output_device
        Device of the returned activations (default CPU).
    reduce
        ``"mean"`` averages each output over its spatial axes, batch by batch, so that only
        ``(N, C)`` is ever kept (CRAFT crops, ACE segments); ``None`` keeps the full maps.
    preprocess
        Optional callable applied to every batch before the model (e.g. normalisation), so that
        crops and segments can be cut from raw [0, 1] images.
    desc
        Label of the progress bar (default ``"activations @ <layer>"``).
    """

    @renamed_arguments(output_index="output")
    def __init__(self, model: nn.Module, layer: str | nn.Module, batch_size: int = 64,
                 device: Any = None, progress: bool = True, tokens: str = "auto",
                 prefix_tokens: int | None = None, output: int | None = None,
                 grad: bool = False, output_device: Any = "cpu", reduce: str | None = None,
                 preprocess: Any = None, desc: str | None = None):
        self.layer, self._module = get_layer(model, layer)
        self.desc = desc
        self.model = model
        self._inner = unwrap_model(model)[0]  # DataParallel / torch.compile: run what they wrap
        self.batch_size = check_int(batch_size, "batch_size", minimum=1)
        self.device = None if device is None else resolve_device(device)
        self.progress = bool(progress)
        self.tokens = check_choice(tokens, "tokens", ["auto", "maps", "raw"])
        self.prefix_tokens = None if prefix_tokens is None else check_int(prefix_tokens, "prefix_tokens", minimum=0)
        self.output = None if output is None else check_int(output, "output", minimum=0)
        self.grad = bool(grad)
        self.output_device = resolve_device(output_device, "output_device")
        if reduce not in (None, "mean"):
            raise ValueError(f"`reduce` must be None or 'mean'; got {reduce!r}.")
        self.reduce = reduce
        if preprocess is not None and not callable(preprocess):
            raise TypeError(f"`preprocess` must be callable (batch -> batch); got {describe(preprocess)}.")
        self.preprocess = preprocess
        self.token_layout_: str | None = None
        self._layout = TokenLayout(f"`layer` {self.layer!r}")
        self.prefix_: torch.Tensor | None = None
        self._prefix_batches: list[torch.Tensor] = []
        self._probed: Any = None  # how often one forward pass calls the layer
        self._channels_checked = False  # the layer's channel axis, checked on its first output
        self._grid: Any = False  # the model's fixed patch grid (None: none), read on first tokens

    @property
    def output_index(self) -> int | None:
        """``output`` under its name before 0.2 (store fingerprints read it under this name,
        so that stores written before the rename keep their digests)."""
        return self.output

    def _probe(self, run_full: Any, batch: torch.Tensor, output: Any, evidence: Any) -> None:
        """Once per extractor: refuse a layer called more than once in a forward pass (its
        first call is not *the* layer's output; counted on the torch.fx graph, or by running
        one image to the end of the model when it cannot be traced) and channels-last maps
        (N, H, W, C), which would be read as (N, C, H, W) (``evidence``: what the last
        channel-bearing module run before the layer said of its output)."""
        if self._probed is None:
            known = _PROBED.get(self._inner, {})
            key = (id(self._module), type(self._module), self.layer)
            if key not in known:  # once per model and layer, not per extractor
                from ._split import count_calls

                calls = count_calls(self._inner, self.layer)
                if calls is None:
                    with torch.no_grad():
                        calls = run_full(batch[:1])[0]
                known[key] = calls
                try:
                    _PROBED[self._inner] = known
                except TypeError:  # a model that cannot be weakly referenced: not kept
                    pass
            self._probed = known[key]
        if self._probed > 1:
            raise ValueError(
                f"`layer` {self.layer!r} is called more than once in one forward pass of "
                f"{type(self._inner).__name__} (a shared or reused module): its activations "
                f"are not one point of the model, and reading its first call would explain only "
                f"part of it. Choose a layer that is used once (e.g. the block or container "
                f"that calls it).")
        if self._channels_checked:
            return
        if (self.tokens != "raw" and isinstance(output, torch.Tensor) and output.ndim == 4
                and is_channels_last(tuple(output.shape), evidence)):
            raise channels_last_error(self._inner, self.layer, tuple(output.shape))
        self._channels_checked = True  # the layer's layout does not change between batches

    def _select(self, output: Any) -> torch.Tensor:
        if isinstance(output, (tuple, list)):
            if self.output is None:
                shapes = [tuple(o.shape) if isinstance(o, torch.Tensor) else type(o).__name__
                          for o in output]
                raise ValueError(
                    f"`layer` {self.layer!r} returns a {type(output).__name__} of "
                    f"{len(output)} elements with shapes {shapes}: ActivationExtractor and "
                    f"extract take `output` to say which element to read (e.g. "
                    f"output=0); ConceptExplainer and the concept methods need a layer "
                    f"that returns one tensor: explain at a submodule of {self.layer!r} whose "
                    f"output is that element, or at the next layer after it.")
            if self.output >= len(output):
                raise ValueError(f"`output` is {self.output}, but `layer` "
                                 f"{self.layer!r} returns a {type(output).__name__} of "
                                 f"{len(output)} elements (indices 0 to {len(output) - 1}).")
            output = output[self.output]
        elif self.output is not None and self.output != 0:
            raise ValueError(f"`output` was given but `layer` {self.layer!r} returns a single tensor.")
        if not isinstance(output, torch.Tensor):
            raise ValueError(f"`layer` {self.layer!r} returns {type(output).__name__}, not a tensor.")
        return output

    def _to_layout(self, act: torch.Tensor, n: int, size: tuple | None = None,
                   probe: Any = None) -> torch.Tensor:
        if act.ndim != 3 or self.tokens == "raw":
            return act
        act = self._layout.batch_first(act, n, probe)  # sequence-first transformers (T, N, C)
        self.token_layout_ = self._layout.layout
        if self._grid is False:  # the model's own patch grid, read once
            self._grid = model_patch_grid(self.model, self.layer)
        grid = self._grid
        square = size is None or len(size) != 2 or size[0] == size[1]
        if not square and grid is None:
            raise self._non_square_error(size)
        prefix = self.prefix_tokens
        if prefix is None:
            prefix = infer_prefix_tokens(self.model, act.shape[1], grid)
            self.prefix_tokens_ = prefix
        if grid is not None and grid[0] * grid[1] != act.shape[1] - prefix:
            if not square:
                raise self._non_square_error(size)
            grid = None  # not the model's grid (a layer at another resolution): a square one
        self._prefix_batches.append(act[:, :prefix].detach().to(self.output_device))
        return tokens_to_maps(act, prefix, grid)

    def _non_square_error(self, size: tuple) -> ValueError:
        """Non-square images whose tokens the model's own grid does not lay out: token maps
        are then square grids, and the tokens of a non-square image (a transformer that takes
        any size) would be laid out on the wrong grid, silently."""
        grid = self._grid
        if grid is not None and grid[0] != grid[1]:  # square crops would not fit this model
            fix = (f"explain at a layer whose tokens are the model's {grid[0]} x {grid[1]} "
                   f"patch grid (e.g. a block)")
        else:
            fix = (f"crop or resize the images to a square (e.g. {min(size)} x {min(size)} "
                   f"pixels) before explaining them")
        return ValueError(f"images of {size[0]} x {size[1]} pixels reach `layer` "
                          f"{self.layer!r} as transformer tokens, which conceptkit lays out on "
                          f"the model's own patch grid where it has a fixed one, else on a "
                          f"square grid: {fix}.")

    def __call__(self, inputs: Any, *, name: str = "inputs") -> torch.Tensor:
        """Activations for ``inputs``: ``(N, C, h, w)`` for conv layers and token maps, else as is.

        ``name`` is what errors about the inputs call them (a caller's own argument name)."""
        # the channels are checked by the first convolution run, on the first batch after
        # preprocessing: the model says what it takes (a head registered before the stem, a
        # grey model whose preprocessing turns colour images grey, lazy convolutions)
        if isinstance(inputs, (torch.Tensor, np.ndarray)):
            inputs = check_images(inputs, name)
        shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else None
        # Batches already known finite (slices of a checked tensor, crops or segments of finite
        # images) get only the cheap structural checks, not a NaN scan of every batch.
        finite = isinstance(inputs, torch.Tensor) or (
            callable(getattr(inputs, "all_finite", None)) and bool(inputs.all_finite()))
        batches, total = _batches(inputs, self.batch_size, name)
        original = model_device(self.model)
        device = self.device or original
        if "meta" in (original.type, device.type):
            culprit = "model" if original.type == "meta" else "device"
            raise ValueError(f"`{culprit}` is on the 'meta' device, which holds shapes but no data: "
                             f"activations cannot be computed there. Materialise the model's "
                             f"weights first (model.to_empty(device='cpu') and load_state_dict).")
        dtype = model_dtype(self.model)
        outputs: list[torch.Tensor] = []
        self._prefix_batches = []
        self.prefix_ = None
        with preserved_model_state(self.model), on_device(self.model, device):
            context = torch.enable_grad() if self.grad else torch.no_grad()
            with context:
                for batch in tqdm(batches, total=total, disable=not self.progress,
                                  desc=self.desc or f"activations @ {self.layer}", leave=False):
                    batch = self._check_batch(batch, None, finite, name)
                    given = batch
                    if self.preprocess is not None:
                        batch = self.preprocess(batch)

                    def run(x: torch.Tensor) -> Any:
                        return capture_output(self._inner, self._module,
                                              x.to(device=device, dtype=dtype))

                    # the hooks on every channel-bearing module are needed for the first
                    # output only, not on the hot path of every batch
                    watch = (contextlib.nullcontext([]) if self._channels_checked
                             else watch_channels(self._inner, self._module))
                    first = (contextlib.nullcontext() if outputs or not isinstance(batch, torch.Tensor)
                             or batch.ndim < 2 else _first_convolution(self._inner, batch.shape[1]))
                    try:
                        with first, watch as evidence:
                            output = run(batch)
                    except _ChannelMismatch as err:
                        raise self._channels_error(err, name, shape or tuple(given.shape),
                                                   given, batch) from None
                    except Exception as err:
                        if is_size_error(err):
                            what = (f"{type(self._inner).__name__} up to `layer` "
                                    f"{self.layer!r}")
                            raise size_error(err, run, batch, name, what,
                                             self._inner) from err
                        raise
                    if output is None:
                        raise ValueError(f"`layer` {self.layer!r} was not called during the "
                                           f"forward pass of {type(self.model).__name__}.")
                    selected = self._select(output)
                    self._probe(lambda x: probe_layer(self._inner, self._module,
                                                      x.to(device=device, dtype=dtype)),
                                batch, selected, evidence[0] if evidence else None)
                    act = self._to_layout(selected, batch.shape[0],
                                          tuple(batch.shape[2:]) if batch.ndim == 4 else None,
                                          probe=lambda b=batch: self._select(run(b[:1])))
                    if self.reduce == "mean" and act.ndim == 3 and self.tokens == "raw":
                        raise ValueError(
                            f"`reduce='mean'` averages over spatial axes, and `layer` "
                            f"{self.layer!r} returns raw tokens {tuple(act.shape)} "
                            f"(`tokens='raw'`), whose last axis is the channels: use "
                            f"`tokens='auto'` (token maps, averaged over positions) or "
                            f"`reduce=None`.")
                    if self.reduce == "mean" and act.ndim > 2:
                        act = act.mean(dim=tuple(range(2, act.ndim)))
                    outputs.append(act if self.grad else act.detach().to(self.output_device))
        if not outputs:
            raise ValueError(f"`{name}` is empty: no images to extract activations from.")
        if self._prefix_batches:  # the CLS/register tokens dropped from token maps, (N, P, C)
            self.prefix_ = torch.cat(self._prefix_batches)
            self._prefix_batches = []
        return torch.cat(outputs)

    def _channels_error(self, err: _ChannelMismatch, name: str, shape: tuple,
                        given: torch.Tensor, batch: torch.Tensor) -> ValueError:
        """The images' channels, refused by the first convolution the model runs."""
        if given.ndim >= 2 and given.shape[1] == batch.shape[1]:
            return ValueError(f"`{name}` must have {err.wanted} channels in axis 1 (N, C, H, W); "
                              f"got shape {shape}.")
        return ValueError(f"`{name}` have {batch.shape[1]} channels after `preprocess` (shape "
                          f"{tuple(given.shape)} became {tuple(batch.shape)}), and the first "
                          f"convolution of {type(self._inner).__name__} that runs, "
                          f"{err.name!r}, takes {err.wanted}: give images, or a `preprocess`, "
                          f"that make {err.wanted} channels.")

    @staticmethod
    def _check_batch(batch: Any, channels: int | None, finite: bool,
                     name: str = "inputs") -> torch.Tensor:
        if not isinstance(batch, torch.Tensor):
            raise TypeError(f"batches must be image tensors (B, C, H, W); got {describe(batch)}.")
        if (finite and batch.ndim == 4 and batch.shape[0] > 0 and batch.is_floating_point()
                and (channels is None or batch.shape[1] == channels)):
            return batch
        return check_images(batch, name, channels=channels)


def extract(model: nn.Module, layer: str | nn.Module, inputs: Any, **kwargs: Any) -> torch.Tensor:
    """One-shot :class:`ActivationExtractor` call."""
    return ActivationExtractor(model, layer, **kwargs)(inputs)

