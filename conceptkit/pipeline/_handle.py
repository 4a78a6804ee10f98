"""A model seen at one layer: what an explanation needs to run the model again.

:class:`ModelAtLayer` holds the model, the layer, the preprocessing and the batching settings,
splits the model into ``g``/``h`` once, and remembers whether the layer outputs transformer tokens
(so that ``h`` can be fed feature maps). The explainer builds one and hands it to the results it
returns; a loaded explanation gets one from :meth:`~conceptkit.ClassConcepts.attach`.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .._torchutils import model_device, model_dtype, on_device, preserved_model_state
from .._validation import describe
from ..extraction import ActivationExtractor, select_output, split_model
from ..extraction._extractor import TokenHead
from ..extraction._heads import describe_output, pick_output
from ..extraction._layers import get_layer, unwrap_model
from ..extraction._split import run_example

#: The parts of the model (:meth:`ModelAtLayer._parts`) each split ``h`` was made from.
_SPLIT_OF: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class ModelAtLayer:
    """``model`` cut at ``layer``, with the settings used to run it.

    Parameters
    ----------
    model, layer
        The classifier and the dotted name of the layer explained.
    preprocess
        Callable applied to image batches (in [0, 1]) before the model.
    batch_size, device, progress
        Batching of ``g``, where to run (None: the model's device), progress bars.
    output
        For models returning a tuple, list or dict: the index or key of the class logits.
    tokens, window
        What :meth:`activations` reads at a transformer layer: ``"patches"`` (the patch tokens)
        or ``"cls"`` (the CLS token of each window of side ``window`` shown alone,
        :func:`conceptkit.extraction.cls_windows`).
    """

    def __init__(self, model: nn.Module, layer: str, *, preprocess: Callable | None = None,
                 batch_size: int = 64, device: Any = None, progress: bool = True,
                 output: int | str | None = None, tokens: str = "patches",
                 window: int | None = None):
        self.model = model
        self.tokens = tokens
        self.window = window
        self.layer, _ = get_layer(model, layer)
        self.output = output
        self.preprocess = preprocess
        self.batch_size = batch_size
        self.device = device
        self.progress = progress
        self.token_layout: str | None = None  # "NTC"/"TNC" once the layer gave transformer tokens
        self._h: nn.Module | None = None
        self._checked_shape: tuple | None = None  # the image shape the model was seen to take
        self._example_images: torch.Tensor | None = None  # the example h was checked on
        self._ran = False  # the layer has given activations (token_layout is then known)
        self.gives_tokens: bool | None = None  # the layer's output is 3-D, seen by prepare()
        self.n_prefix: int | None = None  # CLS/register tokens before the patch tokens, once run

    @property
    def has_run(self) -> bool:
        """Whether the layer has given activations, so that ``token_layout`` is known (splitting
        the model alone does not tell)."""
        return self._ran

    @property
    def h(self) -> nn.Module:
        """The part of the model after the layer (activations → logits), split once, and again
        when a submodule, parameter or buffer of the model was replaced since (a new head)."""
        if self._h is not None and self._stale():
            if self._example_images is not None:
                self._h = None
                self.prepare(self._example_images)
            else:
                self._h = self._built(split_model(self.model, self.layer)[1])
        if self._h is None:
            self._h = self._built(split_model(self.model, self.layer)[1])
        return self._h

    def _parts(self) -> tuple:
        """What the split holds on to: every named submodule, parameter and buffer of the
        model, as objects (the split shares them; one replaced, ``model.fc = nn.Linear(...)``,
        leaves the split with the old one)."""
        return (tuple(self.model.named_modules(remove_duplicate=False)),
                tuple(self.model.named_parameters(remove_duplicate=False)),
                tuple(self.model.named_buffers(remove_duplicate=False)))

    def _built(self, h: nn.Module) -> nn.Module:
        """``h`` with the output selected; the parts it was split from are noted by ``h``
        itself, so that a handle given the ``h`` of another handle checks it too."""
        h = self._selected(h)
        _SPLIT_OF[h] = self._parts()
        return h

    def _stale(self) -> bool:
        """Whether the model's parts were replaced since ``h`` was split (or are unknown)."""
        built = _SPLIT_OF.get(self._h)
        if built is None:
            return True
        now = self._parts()
        return len(built) != len(now) or any(
            len(a) != len(b) or any(x[0] != y[0] or x[1] is not y[1] for x, y in zip(a, b))
            for a, b in zip(built, now))

    def _selected(self, h: nn.Module) -> nn.Module:
        return h if self.output is None else select_output(h, self.output)

    def prepare(self, images: torch.Tensor) -> nn.Module:
        """Split the model with two of ``images`` as example input and return ``h``.

        The example checks ``h(g(x)) == model(x)``, tells the generic (replay) split the input
        shape, and turns images too small for the model into an error naming the smallest size.
        """
        shape = tuple(images.shape[1:])
        if self._h is not None and self._stale():  # a submodule replaced: split again
            self._h = None
        if self._h is None:
            example = self._example(images[:2])
            _, h = split_model(self.model, self.layer, example_input=example, input_name="images")
            self._check_output(example[:1])
            self._h = self._built(h)
            self._example_images = images[:2].detach().clone()
        elif shape != self._checked_shape:  # split on other images: these must run too
            with preserved_model_state(self.model), torch.no_grad():
                run_example(self.model, self._example(images[:1]), "images")
        self._checked_shape = shape
        return self._h

    def _example(self, images: torch.Tensor) -> torch.Tensor:
        if self.preprocess is not None:
            images = self.preprocess(images)
        return images.to(device=model_device(self.model), dtype=model_dtype(self.model))

    def _check_output(self, example: torch.Tensor) -> None:
        """Fail before any heavy work when the model's output is not the logits tensor (and
        ``output`` does not say where the logits are); note on the way whether the layer gives
        transformer tokens (``gives_tokens``)."""
        seen: list[bool] = []

        def note_kind(_module, _inputs, output):
            first = output[0] if isinstance(output, (tuple, list)) and output else output
            seen.append(isinstance(first, torch.Tensor) and first.ndim == 3)

        _, module = get_layer(self.model, self.layer)
        hook = module.register_forward_hook(note_kind)
        try:
            with preserved_model_state(self.model), torch.no_grad():
                out = unwrap_model(self.model)[0](example)  # never compile a torch.compile model
        finally:
            hook.remove()
        if seen:  # the layer's kind, for the default factorizer, without another pass of g
            self.gives_tokens = seen[0]
        if self.output is not None:
            out = pick_output(out, self.output)
        if not isinstance(out, torch.Tensor) or out.ndim != 2:
            what = describe_output(out) if self.output is None else describe(out)
            raise ValueError(f"`output`: the model must give class logits (N, n_classes) to be "
                             f"explained, but it returns {what}"
                             f"{'' if self.output is None else f' at output={self.output!r}'}.")

    def layer_gives_tokens(self, images: torch.Tensor) -> bool:
        """Whether the layer outputs transformer tokens: known once it has run or the model was
        prepared, else found by running the first of ``images``."""
        if self.has_run:
            return self.token_layout is not None
        if self.gives_tokens is None:
            self._patch_activations(images[:1], progress=False)
            return self.token_layout is not None
        return self.gives_tokens

    @property
    def maps_head(self) -> nn.Module:
        """``h`` taking feature maps: for transformer layers a :class:`TokenHead` that puts each
        input's CLS/register tokens (its ``context``) back in front of the patch tokens."""
        if self.tokens == "cls":
            raise ValueError("no part of the model reads the CLS feature maps of tokens='cls' "
                             "(the rest of the model takes patch tokens): importances and "
                             "metrics through `h` do not apply; pixel ablation does. For them, "
                             "explain with tokens='patches'.")
        return TokenHead(self.h, self.token_layout) if self.token_layout else self.h

    def activations(self, images: torch.Tensor, with_context: bool = False, *,
                    progress: bool | None = None, desc: str | None = None) -> Any:
        """Feature maps ``(N, C, h, w)`` of ``images`` at the layer (one pass of ``g``).

        Transformer tokens come back as maps of the patch tokens; with ``with_context=True`` the
        dropped CLS/register tokens ``(N, P, C)`` (or None) are returned too. With
        ``tokens="cls"`` the maps are :func:`~conceptkit.extraction.cls_windows` (one pass of
        ``g`` per window) and the context is None.
        """
        if self.tokens == "cls":
            from ..extraction._windows import cls_windows

            if not self._ran:  # the token layout, from one image's patch tokens
                self._patch_activations(images[:1], progress=False)
            maps = cls_windows(self.model, self.layer, images, window=self.window,
                               batch_size=self.batch_size, device=self.device,
                               preprocess=self.preprocess,
                               progress=self.progress if progress is None else progress)
            return (maps, None) if with_context else maps
        return self._patch_activations(images, with_context, progress=progress, desc=desc)

    def _patch_activations(self, images: torch.Tensor, with_context: bool = False, *,
                           progress: bool | None = None, desc: str | None = None) -> Any:
        extractor = ActivationExtractor(
            self.model, self.layer, batch_size=self.batch_size, device=self.device,
            progress=self.progress if progress is None else progress, preprocess=self.preprocess,
            desc=desc)
        maps = extractor(images, name="images")
        self._ran = True
        self.n_prefix = 0 if extractor.prefix_ is None else int(extractor.prefix_.shape[1])
        if extractor.prefix_ is not None:
            self.token_layout = extractor.token_layout_
        return (maps, extractor.prefix_) if with_context else maps

    @contextlib.contextmanager
    def whole_model(self):
        """Yield ``forward(images) -> logits (B, n_classes)`` running the whole model on image
        batches in [0, 1]: preprocessing, the model's dtype, ``device`` (the model is moved there
        for the block and back), the ``output`` selection; eval mode, no gradients, every flag
        restored afterwards."""
        model = unwrap_model(self.model)[0]  # never compile a torch.compile model

        with preserved_model_state(self.model), on_device(self.model, self.device) as where, \
                torch.no_grad():
            dtype = model_dtype(self.model)

            def forward(images: torch.Tensor) -> torch.Tensor:
                batch = images.to(device=where)
                if self.preprocess is not None:
                    batch = self.preprocess(batch)
                out = model(batch.to(dtype=dtype))
                if self.output is not None:
                    return pick_output(out, self.output)
                return out[0] if isinstance(out, (tuple, list)) else out

            yield forward

    def reaches_output(self, acts: torch.Tensor, context: torch.Tensor | None,
                       n_probe: int = 4) -> bool:
        """Whether the layer's activations (for transformers: the patch tokens, with each
        input's CLS/register tokens held as they are) can change the model's output.

        Checked on the first ``n_probe`` inputs: the output of ``h`` on the activations is
        compared with its output on activations replaced by other values (zeros, then the
        activations reversed in order); unchanged logits on both mean they never reach it.
        """
        head = self.maps_head
        # a copy: the activations are the caller's, and h is run on them three times
        probe = acts[:n_probe].to(next(iter(self.model.parameters()), acts).device, copy=True)
        extra = () if context is None else (context[:n_probe].to(probe.device),)
        return self._moves_output(lambda value: head(value, *extra), probe)

    def output_ignores_input(self, images: torch.Tensor, n_probe: int = 4) -> bool:
        """Whether the model's output is the same whatever its input: the first ``n_probe``
        of ``images``, their negatives (``1 - x``) and a grey image all give exactly the same
        logits (an all-zero head, a model that was never given its weights)."""
        probe = images[:n_probe]
        inputs = torch.cat([probe, 1 - probe[:1], torch.full_like(probe[:1], 0.5)])
        with self.whole_model() as forward:
            out = forward(inputs)
        return bool((out == out[:1]).all())

    def cls_reaches_output(self, images: torch.Tensor, n_probe: int = 4) -> bool | None:
        """Whether the CLS token (the first prefix token) the layer gives for the first
        ``n_probe`` of ``images`` can change the model's output, the patch tokens held as they
        are; None where the layer gives no prefix tokens (nothing to check)."""
        maps, context = self._patch_activations(images[:n_probe], with_context=True,
                                                progress=False)
        if context is None or context.shape[1] == 0 or self.token_layout is None:
            return None
        return self._prefix_changes_output(maps, context)

    def prefix_reaches_output(self, acts: torch.Tensor, context: torch.Tensor | None,
                              n_probe: int = 4) -> bool:
        """:meth:`reaches_output` for the CLS token (the first of each input's prefix tokens in
        ``context``) instead of the patch tokens ``acts``, which are held as they are."""
        if context is None or context.shape[1] == 0 or self.token_layout is None:
            return False
        return self._prefix_changes_output(acts[:n_probe], context[:n_probe])

    def _prefix_changes_output(self, maps: torch.Tensor, context: torch.Tensor) -> bool:
        head = TokenHead(self.h, self.token_layout or "NTC")
        where = next(iter(self.model.parameters()), maps).device
        maps, context = maps.to(where, copy=True), context.to(where, copy=True)
        return self._moves_output(
            lambda cls: head(maps, torch.cat([cls, context[:, 1:]], dim=1)), context[:, :1])

    def _moves_output(self, run: Any, value: torch.Tensor) -> bool:
        """Whether ``run``'s logits change when ``value`` is replaced by zeros or by the values
        reversed in order (plus 1): the probe of :meth:`reaches_output` and its CLS twin."""
        with preserved_model_state(self.model), torch.no_grad():
            base = run(value)
            return any(not torch.equal(run(other), base)
                       for other in (torch.zeros_like(value), value.flip(0) + 1.0))

    def nearest_reaching_layer(self, images: torch.Tensor, max_tries: int = 16) -> str | None:
        """The nearest layer run before this one whose activations reach the output on
        ``images``, or None (at most ``max_tries`` layers are tried).

        The candidates are the modules that finish before the layer in one forward pass, from
        the nearest back, whatever their names (``blocks.2`` → ``blocks.1``; timm's ``norm``
        or torchvision's ``encoder.ln`` → the blocks before them). A module whose output is the
        tensor an earlier module gave (a container handing on its last block's output, an
        identity) stands for that module; the modules inside a layer whose activations do not
        reach are skipped (a whole block is named, not a sublayer of the block that failed).
        """
        candidates = self._modules_run_before(images[:1])
        failed: list[str] = []
        tries = 0
        for name in reversed(candidates):
            if tries >= max_tries:
                break
            if any(name.startswith(done + ".") for done in failed):
                continue
            tries += 1
            try:
                other = ModelAtLayer(self.model, name, preprocess=self.preprocess,
                                     batch_size=self.batch_size, device=self.device,
                                     progress=False, output=self.output)
                acts, context = other.activations(images, with_context=True)
                reaches = other.reaches_output(acts, context)
            except Exception:  # noqa: BLE001 - a module that cannot be cut at or read
                continue
            if reaches:
                return name
            failed.append(name)
        return None

    def _modules_run_before(self, images: torch.Tensor) -> list[str]:
        """Names of the modules (called once) that finish before the layer in a forward pass
        of ``images``, in the order they finish; not the layer's own submodules, and one
        module per output tensor (the one that gave it first)."""
        finished: list[tuple[str, Any]] = []
        calls: dict[str, int] = {}

        def note(name: str) -> Callable:
            def hook(_module, _inputs, output):
                calls[name] = calls.get(name, 0) + 1
                finished.append((name, output))
            return hook

        hooks = [module.register_forward_hook(note(name))
                 for name, module in self.model.named_modules() if name]
        try:
            with self.whole_model() as forward:
                forward(images)
        finally:
            for hook in hooks:
                hook.remove()
        names = [name for name, _ in finished]
        if self.layer not in names:
            return []
        given: set[int] = set()
        candidates = []
        for name, output in finished[:names.index(self.layer)]:
            if calls[name] != 1 or name.startswith(self.layer + "."):
                continue
            if not isinstance(output, torch.Tensor) or id(output) in given:
                continue  # the outputs are kept alive in `finished`: ids are not reused
            given.add(id(output))
            candidates.append(name)
        return candidates

    def __repr__(self) -> str:
        return f"ModelAtLayer(model={type(self.model).__name__}, layer={self.layer!r})"
