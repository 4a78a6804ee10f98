"""Leave the user's model exactly as we found it.

Every public call that runs a user's model goes through :func:`preserved_model_state`, which
records the training flag of every submodule and the ``requires_grad`` flag of every parameter,
and restores both on exit — also when the call raises midway. Hooks that we register are removed
by the code that registers them (in ``finally`` blocks); this guard additionally removes any
hook of conceptkit's own that appeared during the call and is still attached. A hook the
user's code registers during the call (a hook that instruments the model lazily, the first
time it runs) is the user's, and stays.

:func:`capture_output` is the one way conceptkit reads a layer's output: a forward hook records
it and stops the forward pass there, so the rest of the model never runs.
"""

from __future__ import annotations

import contextlib
import functools
import math
import zlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._validation import resolve_device


def _hook_dicts(module: nn.Module):
    return (module._forward_hooks, module._forward_pre_hooks, module._backward_hooks,
            getattr(module, "_backward_pre_hooks", {}))


#: The dicts torch keeps beside a module's hook dicts, keyed by the same hook ids (hooks
#: registered ``with_kwargs`` or ``always_call``); a removed hook leaves them too.
_HOOK_EXTRAS = ("_forward_hooks_with_kwargs", "_forward_hooks_always_called",
                "_forward_pre_hooks_with_kwargs")


def _registered_by_conceptkit(hook: Any) -> bool:
    """Whether ``hook`` (a function, a bound method, a ``functools.partial`` or a callable
    object) was defined in conceptkit: the hooks the guard may remove."""
    while isinstance(hook, functools.partial):
        hook = hook.func
    hook = getattr(hook, "__func__", hook)  # a bound method: its function
    module = getattr(hook, "__module__", None)
    if not isinstance(module, str):
        module = type(hook).__module__
    return module == "conceptkit" or module.startswith("conceptkit.")


def _remove_hook(module: nn.Module, hooks: dict, key: Any) -> None:
    del hooks[key]
    for name in _HOOK_EXTRAS:
        extra = getattr(module, name, None)
        if isinstance(extra, dict):
            extra.pop(key, None)


@contextlib.contextmanager
def preserved_model_state(model: nn.Module, *, eval_mode: bool = True) -> Iterator[nn.Module]:
    """Run a block with ``model`` (optionally) in eval mode; restore all flags afterwards."""
    modules = list(model.modules())
    training = [m.training for m in modules]
    params = list(model.parameters())
    grads = [p.requires_grad for p in params]
    hooks_before = [tuple(len(d) for d in _hook_dicts(m)) for m in modules]
    hook_keys_before = [tuple(tuple(d.keys()) for d in _hook_dicts(m)) for m in modules]
    try:
        if eval_mode:
            model.eval()
        yield model
    finally:
        failed: list[BaseException] = []  # every flag is restored even if one cannot be
        for m, flag in zip(modules, training):
            m.training = flag
        for p, flag in zip(params, grads):
            # a lazy module's parameter the call did not materialise refuses requires_grad_,
            # and its flag cannot have changed
            if isinstance(p, nn.parameter.UninitializedParameter) or p.requires_grad == flag:
                continue
            try:
                p.requires_grad_(flag)
            except RuntimeError as err:  # e.g. a non-leaf tensor registered as a parameter
                failed.append(err)
        for m, before, keys in zip(modules, hooks_before, hook_keys_before):
            for d, n_before, key_before in zip(_hook_dicts(m), before, keys):
                if len(d) != n_before:  # only conceptkit's own: the user's code may add hooks
                    for key in [k for k in d.keys() if k not in key_before
                                and _registered_by_conceptkit(d[k])]:
                        _remove_hook(m, d, key)
        if failed:
            raise failed[0]


def leaves_global_rng(function):
    """Run ``function`` on a copy of torch's global CPU generator: a model's constructor draws
    its initial weights from it, and building (then loading) a model must not move the caller's
    random stream (docs/determinism.md)."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with torch.random.fork_rng(devices=[]):
            return function(*args, **kwargs)
    return wrapper


def weights_state(module: nn.Module | None) -> tuple | None:
    """Where each weight lives, how often it was written in place (``Tensor._version``: an
    optimiser step, ``load_state_dict``) and a checksum of its values (its sum and its L2 norm,
    in float64), which notices the edits made through ``.data``, invisible to the version
    counter (``w.data.mul_(-1)``, a copy of other weights); two passes over the weights, no
    hashing of their bytes."""
    if module is None:
        return None
    return tuple((_pointer(t), t._version, _checksum(t))
                 for t in (*module.parameters(), *module.buffers()))


def _pointer(tensor: torch.Tensor) -> int | None:
    try:
        return tensor.data_ptr()
    except RuntimeError:  # sparse layouts have no single data pointer
        return None


def _checksum(tensor: torch.Tensor) -> tuple:
    """Sum and L2 norm in float64 (complex: of the real and imaginary parts; integers: the sum);
    NaN and infinite values are counted, not summed, so that the checksum equals itself.
    Dtypes torch cannot reduce (quantized, float8) and meta tensors get none."""
    if tensor.device.type == "meta" or tensor.numel() == 0 or tensor.is_quantized:
        return ()
    try:
        with torch.no_grad():
            values = tensor.detach()
            if values.layout == torch.sparse_coo:
                values = values.coalesce().values()
            elif values.layout != torch.strided:  # CSR, CSC, BSR, BSC
                values = values.values()
            if values.is_complex():
                values = torch.view_as_real(values)
            if not values.is_floating_point():
                return (int(values.sum()),)
            values = values.double()
            finite = torch.isfinite(values)
            values = torch.where(finite, values, torch.zeros((), dtype=values.dtype,
                                                             device=values.device))
            return (float(values.sum()), float(torch.linalg.vector_norm(values)),
                    int((~finite).sum()))
    except (RuntimeError, NotImplementedError, TypeError):  # a dtype torch cannot reduce
        return ()


def values_state(value: Any) -> tuple | None:
    """A checksum of a tensor's values (None for anything else), for caches whose key must see
    the in-place edits the version counter misses (``t.numpy()[:] *= 3``, ``t.data.mul_(0.5)``):
    a CRC-32 of the bytes of a contiguous CPU tensor (about 0.1 s for 200 MB, one thread), the
    float64 sum and L2 norm of the values otherwise (on the tensor's device)."""
    if not isinstance(value, torch.Tensor):
        return None
    tensor = value.detach()
    if (tensor.device.type == "cpu" and tensor.layout == torch.strided and tensor.is_contiguous()
            and not tensor.is_quantized and not tensor.is_conj() and not tensor.is_neg()):
        try:
            data = tensor.reshape(-1).view(torch.uint8).numpy()
        except (RuntimeError, TypeError):
            data = None
        if data is not None:
            return ("crc32", tuple(tensor.shape), str(tensor.dtype), zlib.crc32(data))
    return ("sum", tuple(tensor.shape), str(tensor.dtype), _checksum(tensor))


def tensor_state(value: Any) -> tuple:
    """The object itself, and for a tensor its in-place writes (``_version``): what a cache
    keyed on it must compare (with :func:`same_state`), so that ``images.mul_(0.5)`` is not
    served the old result. Holding the object, not its ``id``, keeps the id from being reused
    by a new object while the cache lives."""
    return (value, value._version if isinstance(value, torch.Tensor) else None)


def same_state(a: Any, b: Any) -> bool:
    """Whether two cache keys made of states agree: objects by identity, numbers and strings by
    value, tuples item by item."""
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(same_state(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float, str, bool, type(None))) and type(a) is type(b):
        return a == b
    return a is b


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for parameter-free modules)."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype of the model's first floating parameter (float32 if none)."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


@contextlib.contextmanager
def on_device(model: nn.Module, device: Any = None) -> Iterator[torch.device]:
    """Run a block with ``model`` on ``device`` (None: where it already is) and move it back
    afterwards, also when the block raises; yields the device the block runs on."""
    original = model_device(model)
    target = original if device is None else resolve_device(device)
    moved = target != original
    try:
        if moved:
            model.to(target)
        yield target
    finally:
        if moved:
            model.to(original)


class _StopForward(Exception):
    """Raised by :func:`capture_output`'s hook once the watched module has run."""


def capture_output(model: nn.Module, module: nn.Module, inputs: Any, *,
                   replace: dict[nn.Module, Any] | None = None) -> Any:
    """The output of ``module`` when ``model(inputs)`` runs; the forward pass stops there.

    ``replace`` maps other modules to outputs that stand in for theirs (replaying a model from
    an earlier layer's activations). Returns ``None`` when ``module`` never ran. The hooks are
    removed afterwards, also when the model raises.
    """
    captured: list[Any] = []

    def stop(_module, _inputs, output):
        captured.append(output)
        raise _StopForward

    handles = [module.register_forward_hook(stop)]
    for other, output in (replace or {}).items():
        handles.append(other.register_forward_hook(lambda *_, output=output: output))
    try:
        model(inputs)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return captured[0] if captured else None


def seed_everything(seed: int) -> torch.Generator:
    """A torch Generator seeded with ``seed`` (we never touch the global RNG state)."""
    gen = torch.Generator()
    gen.manual_seed(int(seed))
    return gen


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(B, C, H, W)`` images, reflecting at the borders; the kernel
    reaches ``3 sigma`` (at most the image side − 1)."""
    height, width = images.shape[-2:]
    radius = max(1, min(math.ceil(3 * sigma), height - 1, width - 1))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32, device=images.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(images.dtype)
    channels = images.shape[1]
    x = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)


def median_colour(images: torch.Tensor) -> torch.Tensor:
    """Each image's per-channel median colour, ``(B, C, 1, 1)`` (``torch.median``: the lower
    middle value for an even pixel count): the fill of pixel ablation and of pixel maps."""
    return images.flatten(2).median(dim=2).values[..., None, None]


#: Leaf modules that say which axis of their output holds the channels: the channel-first ones
#: (convolutions, batch/group/instance norms) work on axis 1, the channel-last ones (linear
#: layers, layer norms over one axis) on the last axis.
_CHANNEL_FIRST = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                  nn.ConvTranspose3d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
                  nn.GroupNorm, nn.InstanceNorm2d)
_CHANNEL_LAST = (nn.Linear, nn.LayerNorm)


def channel_leaf(module: nn.Module, output: Any) -> tuple[str, int, tuple[int, ...]] | None:
    """What a channel-bearing leaf module says of its ``output``: ``(axis, channels, shape)``
    with ``axis`` ``"first"`` (convolutions, batch/group norms: channels on axis 1) or
    ``"last"`` (linear layers, one-axis layer norms: channels on the last axis); None for any
    other module or output. The channel count is read from the output's own shape, so a layer
    norm that permutes its input (timm's ``LayerNorm2d``, normalising axis 1) is judged by
    where its channels really are."""
    if not isinstance(output, torch.Tensor) or output.ndim < 2:
        return None
    shape = tuple(output.shape)
    if isinstance(module, _CHANNEL_FIRST):
        channels = getattr(module, "out_channels", None) or getattr(module, "num_features", None) \
            or getattr(module, "num_channels", None)
        return ("first", int(channels), shape) if channels == shape[1] else None
    if isinstance(module, nn.Linear):
        return ("last", module.out_features, shape) if shape[-1] == module.out_features else None
    if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) == 1:
        channels = int(module.normalized_shape[0])
        if shape[-1] == channels and shape[1] != channels:
            return ("last", channels, shape)
        if shape[1] == channels:  # a LayerNorm2d: channels on axis 1
            return ("first", channels, shape)
    return None


@contextlib.contextmanager
def watch_channels(model: nn.Module, module: nn.Module) -> Iterator[list]:
    """Within the block, note what the last channel-bearing leaf module run before the first
    output of ``module`` said (:func:`channel_leaf`): the yielded list gets it (or None) once
    ``module`` has run. The hooks are removed afterwards; outputs are not changed. Register
    this before a hook that stops the forward pass at ``module``."""
    last: list[Any] = [None]
    seen: list[Any] = []

    def leaf(mod, _inputs, output):
        said = channel_leaf(mod, output)
        if said is not None:
            last[0] = said

    def note(_module, _inputs, _output):
        if not seen:
            seen.append(last[0])

    handles = [m.register_forward_hook(leaf) for m in model.modules()
               if isinstance(m, _CHANNEL_FIRST + _CHANNEL_LAST)]
    handles.append(module.register_forward_hook(note))
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


class _SecondCall(Exception):
    """Raised by :func:`probe_layer`'s hook when the watched module runs a second time."""


def probe_layer(model: nn.Module, module: nn.Module, inputs: Any) -> tuple[int, Any]:
    """Run ``model(inputs)`` to the end and watch ``module``: how often it is called (0, 1 or
    2 — the pass stops at a second call) and what the last channel-bearing leaf module run
    before its first output said (:func:`channel_leaf`, or None).

    A failure of the model after the first call of ``module`` counts as one call (nothing
    later can be seen); a failure before it as none. Hooks are removed afterwards.
    """
    calls = [0]

    def count(_module, _inputs, _output):
        calls[0] += 1
        if calls[0] > 1:
            raise _SecondCall

    with watch_channels(model, module) as seen:  # registered first: it notes the first call
        handle = module.register_forward_hook(count)
        try:
            model(inputs)
        except _SecondCall:
            pass
        except Exception:  # noqa: BLE001 - the probe only watches; the real pass reports failures
            pass
        finally:
            handle.remove()
    return calls[0], (seen[0] if seen else None)


def check_not_inference_mode(what: str) -> None:
    """Refuse a call made under ``torch.inference_mode()``: the tensors made there can be
    neither differentiated nor tracked for in-place writes, which explanations need (gradients
    through the rest of the model, caches keyed on tensor versions); torch would fail deep
    inside the call, or a gradient method would blame the model."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError(f"{what} was called inside torch.inference_mode(), whose tensors "
                           f"cannot be differentiated or tracked: call it outside "
                           f"torch.inference_mode() (torch.no_grad() is fine).")
