"""Cut a model into ``g`` (input → activations at a layer) and ``h`` (activations → output).

Three strategies, tried in order:

1. **Sequential**: every container on the path from the root to ``layer`` is an
   ``nn.Sequential``; ``g`` and ``h`` are ``nn.Sequential`` views sharing the model's modules.
2. **Graph (torch.fx)**: the model is symbolically traced with ``layer`` kept as a leaf; the
   graph is cut after ``layer``'s node. The cut is valid only if nothing computed from the input
   before ``layer`` is used after it — a skip connection crossing the layer makes the cut invalid
   and raises an error that names the crossing value.
3. **Replay (generic fallback)**: for models that cannot be traced, ``g`` runs the model and stops
   at ``layer``; ``h`` replays the model with ``layer``'s output replaced by the given activations.
   This is exact only when nothing but ``layer``'s output flows past it, which is checked
   numerically (two different dummy inputs must give the same ``h``).

``g`` and ``h`` share parameters with ``model``; nothing is copied.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from .._torchutils import capture_output, preserved_model_state
from .._validation import describe
from ._heads import guard_input
from ._layers import get_layer, unwrap_model
from ._sizes import is_size_error, size_error


class CutError(ValueError):
    """The model cannot be split at the requested layer (and why)."""


# ---------------------------------------------------------------------------------------------
# Strategy 1: nn.Sequential chains
# ---------------------------------------------------------------------------------------------

def _sequential_split(model: nn.Module, layer: str) -> tuple[nn.Module, nn.Module] | None:
    parts = layer.split(".")
    container: nn.Module = model
    prefix: list[nn.Module] = []
    suffixes: list[list[nn.Module]] = []
    for part in parts:
        # a subclass that overrides forward (a residual ``x + super().forward(x)``) does not
        # compute its children one after the other: leave it to the graph cut
        if not isinstance(container, nn.Sequential) or type(container).forward is not nn.Sequential.forward:
            return None
        names = list(container._modules.keys())
        if part not in names:
            return None
        idx = names.index(part)
        children = list(container._modules.values())
        prefix.extend(children[:idx])
        suffixes.append(children[idx + 1:])
        container = children[idx]
    # `container` is the layer itself; g runs everything up to and including it.
    g_modules = prefix + [container]
    h_modules: list[nn.Module] = []
    for suffix in reversed(suffixes):
        h_modules.extend(suffix)
    return nn.Sequential(*g_modules), (nn.Sequential(*h_modules) if h_modules else nn.Identity())


# ---------------------------------------------------------------------------------------------
# Strategy 2: torch.fx graph cut
# ---------------------------------------------------------------------------------------------

def _timm_tracer_options() -> tuple[list[type], list[Any]]:
    try:
        from timm.layers import _fx as timm_fx  # timm registers untraceable modules/functions here
    except Exception:  # noqa: BLE001 - timm is optional for this strategy
        return [], []
    return list(timm_fx.get_notrace_modules()), [f for f in timm_fx.get_notrace_functions()
                                                    if callable(f)]


class _CutTracer(fx.Tracer):
    def __init__(self, leaves: tuple[nn.Module, ...], extra_leaves: list[type], autowrap: list[Any]):
        super().__init__(autowrap_functions=tuple(autowrap))
        self._leaves = leaves
        self._extra_leaves = tuple(extra_leaves)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if any(m is leaf for leaf in self._leaves):
            return True
        if self._extra_leaves and isinstance(m, self._extra_leaves):
            return True
        return super().is_leaf_module(m, module_qualified_name)


class NotInGraph(CutError):
    """A module to cut at is not called exactly once in the traced graph."""


def _depends_on_input(node: fx.Node, memo: dict[fx.Node, bool]) -> bool:
    """Whether ``node`` depends on the model input (the first placeholder).

    Further placeholders are optional forward arguments with defaults (timm's ``attn_mask``);
    they are copied into the cut as optional arguments too.
    """
    if node in memo:
        return memo[node]
    if node.op == "placeholder":
        first = next(iter(node.graph.nodes))
        memo[node] = node is first
        return memo[node]
    result = False
    for arg in node.all_input_nodes:
        if _depends_on_input(arg, memo):
            result = True
            break
    memo[node] = result
    return result


def _call_node(graph: fx.Graph, name: str, model: nn.Module) -> fx.Node:
    calls = [n for n in graph.nodes if n.op == "call_module" and n.target == name]
    if not calls:
        raise NotInGraph(f"`layer` {name!r} is never called in {type(model).__name__}.forward, so "
                         f"the model cannot be cut there.")
    if len(calls) > 1:
        raise NotInGraph(f"`layer` {name!r} is called {len(calls)} times in "
                         f"{type(model).__name__}.forward (a shared/reused layer); there is no "
                         f"single point to cut. Choose a layer that is used once.")
    return calls[0]


def count_calls(model: nn.Module, layer: str) -> int | None:
    """How often ``model.forward`` calls ``layer``, read from a torch.fx trace in which only the
    layer's ancestors are traced through (every other module is a leaf, so no module's own
    code runs); None when the model cannot be traced so."""
    ancestors = {""} | {".".join(layer.split(".")[:i]) for i in range(1, layer.count(".") + 1)}

    class _Tracer(fx.Tracer):
        def is_leaf_module(self, m: nn.Module, name: str) -> bool:
            return name not in ancestors

    try:
        graph = _Tracer(autowrap_functions=tuple(_timm_tracer_options()[1])).trace(model)
    except Exception:  # noqa: BLE001 - untraceable: the caller runs the model instead
        return None
    return sum(1 for n in graph.nodes if n.op == "call_module" and n.target == layer)


def graph_cuts(model: nn.Module, cuts: list[tuple[str | None, str | None]]) -> list[fx.GraphModule]:
    """Parts of ``model`` cut from its torch.fx graph: one per ``(start, end)`` pair.

    A part runs from the output of module ``start`` (``None``: the model input) to the output of
    module ``end`` (``None``: the model output); every node between the two in the graph's order
    is kept. The model is traced once, with every named module kept as a leaf. Values computed
    before ``start`` that do not depend on the input (parameters, buffers, values derived from
    them, optional forward arguments) are recomputed in the part.

    Raises
    ------
    NotInGraph
        A named module is not called exactly once in the graph (a :class:`CutError`).
    CutError
        A value computed from the input before ``start`` is used in the part: a skip connection
        crosses ``start``. Exceptions of the tracer itself (untraceable models) propagate.
    """
    names = list(dict.fromkeys(n for pair in cuts for n in pair if n is not None))
    extra, autowrap = _timm_tracer_options()
    leaves = tuple(get_layer(model, name)[1] for name in names)
    graph = _CutTracer(leaves, extra, autowrap).trace(model)
    nodes = list(graph.nodes)
    position = {node: i for i, node in enumerate(nodes)}
    at = {name: _call_node(graph, name, model) for name in names}
    parts = []
    for start, end in cuts:
        begin = position[at[start]] + 1 if start is not None else 0
        stop = position[at[end]] + 1 if end is not None else len(nodes)
        if stop <= begin:
            raise CutError(f"`layer` {start!r} runs after {end!r} in {type(model).__name__}.forward; "
                           f"there is nothing to cut between them.")
        parts.append(_part(model, nodes, nodes[begin:stop], at.get(start), at.get(end), start, end))
    return parts


def _part(model: nn.Module, nodes: list[fx.Node], part: list[fx.Node], start: fx.Node | None,
          end: fx.Node | None, start_name: str | None, end_name: str | None) -> fx.GraphModule:
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    if start is not None:
        env[start] = graph.placeholder("activations")
        before = set(nodes[:nodes.index(start)])
        memo: dict[fx.Node, bool] = {}
        constants: list[fx.Node] = []
        for node in part:
            for arg in node.all_input_nodes:
                if arg not in before:
                    continue
                if _depends_on_input(arg, memo):
                    where = "" if end_name is None else f" on the way to {end_name!r}"
                    after = "h" if end_name is None else repr(end_name)
                    raise CutError(
                        f"`layer` {start_name!r} is not a valid cut of {type(model).__name__}"
                        f"{where}: the value {arg.name!r} (computed before the layer) is used after "
                        f"it by {node.name!r} — a skip connection or other path crosses the layer, "
                        f"so {after} cannot be computed from the layer's activations alone. "
                        f"Cut at the output of the enclosing block instead (e.g. the residual block "
                        f"that contains {start_name!r}).")
                if arg not in constants:
                    constants.append(arg)
        needed: list[fx.Node] = []

        def collect(node: fx.Node) -> None:
            if node in env or node in needed:
                return
            for arg in node.all_input_nodes:
                collect(arg)
            needed.append(node)

        for node in constants:
            collect(node)
        for node in needed:
            env[node] = graph.node_copy(node, lambda n: env[n])
    for node in part:
        env[node] = graph.node_copy(node, lambda n: env[n])
    if end is not None:
        graph.output(env[end])
    role = "G" if start is None else "H" if end is None else "Part"
    return fx.GraphModule(model, graph, class_name=role)


def _fx_split(model: nn.Module, layer: str) -> tuple[nn.Module, nn.Module]:
    g, h = graph_cuts(model, [(None, layer), (layer, None)])
    indices = _indexed_input(h)
    return g, (_WholeOutputHead(h, layer, indices) if indices else h)


def _indexed_input(h: fx.GraphModule) -> list[int]:
    """The int indices ``h`` reads its input at (``activations[0]``) when that is all it does
    with it: the layer returns a tuple or list (a Hugging Face style block, ``(hidden,)``)."""
    placeholder = next((n for n in h.graph.nodes if n.op == "placeholder"), None)
    if placeholder is None or not placeholder.users:
        return []
    indices = []
    for user in placeholder.users:
        if not (user.op == "call_function" and user.target is operator.getitem
                and user.args[0] is placeholder and isinstance(user.args[1], int)):
            return []
        indices.append(user.args[1])
    return sorted(set(indices))


class _WholeOutputHead(nn.Module):
    """``h`` of a layer that returns a tuple: it takes the layer's whole output, as ``g``
    returns it; given one tensor instead, a failure says so rather than torch's IndexError."""

    def __init__(self, h: nn.Module, layer: str, indices: list[int]):
        super().__init__()
        self.h = h
        self.layer = layer
        self.indices = indices

    def forward(self, activations: Any, *rest: Any) -> Any:
        try:
            return self.h(activations, *rest)
        except Exception as err:
            if not isinstance(activations, torch.Tensor):
                raise
            raise CutError(
                f"`layer` {self.layer!r} returns a tuple (h reads its element"
                f"{'s' if len(self.indices) > 1 else ''} {', '.join(map(str, self.indices))}), and "
                f"h takes that whole output as g returns it, not one tensor of shape "
                f"{tuple(activations.shape)}: call h(g(x)), or h((activations,)) for a layer "
                f"that returns a 1-tuple ({type(err).__name__}: {str(err).splitlines()[0]}).") from err


# ---------------------------------------------------------------------------------------------
# Strategy 3: replay with hooks (generic fallback)
# ---------------------------------------------------------------------------------------------

class ReplayG(nn.Module):
    """Run ``model`` until ``layer`` and return its output (the rest of the forward is skipped)."""

    def __init__(self, model: nn.Module, layer: str, layer_module: nn.Module):
        super().__init__()
        self.model = model
        self.layer = layer
        self._layer_module = [layer_module]  # a list keeps it out of the module tree
        self.input_shape: tuple[int, ...] | None = None

    def forward(self, x: torch.Tensor) -> Any:
        output = capture_output(self.model, self._layer_module[0], x)
        if output is None:
            raise CutError(f"`layer` {self.layer!r} was not called during the forward pass.")
        self.input_shape = tuple(x.shape[1:])
        return output


class ReplayH(nn.Module):
    """Run ``model`` on a dummy input with ``layer``'s output replaced by the activations."""

    def __init__(self, model: nn.Module, layer: str, layer_module: nn.Module, g: ReplayG,
                 input_shape: tuple[int, ...] | None):
        super().__init__()
        self.model = model
        self.layer = layer
        self._layer_module = [layer_module]
        self._g = [g]
        self.input_shape = input_shape
        self.verified = False

    def _run(self, activations: torch.Tensor, dummy: torch.Tensor) -> Any:
        def hook(_module, _inputs, _output):
            return activations

        handle = self._layer_module[0].register_forward_hook(hook)
        try:
            return self.model(dummy)
        finally:
            handle.remove()

    def forward(self, activations: torch.Tensor) -> Any:
        shape = self.input_shape or self._g[0].input_shape
        if shape is None:
            raise CutError("the generic (replay) split needs the model's input shape: call g once "
                           "first, or pass `example_input` to split_model.")
        ref = activations[0] if isinstance(activations, (tuple, list)) else activations
        n = ref.shape[0]
        dummy = torch.zeros((n, *shape), dtype=ref.dtype, device=ref.device)
        out = self._run(activations, dummy)
        if not self.verified:
            other = self._run(activations, torch.randn(dummy.shape, generator=torch.Generator().manual_seed(0)).to(dummy))
            if not _close(out, other):
                raise CutError(f"`layer` {self.layer!r} is not a valid cut: the model's output depends "
                               f"on values computed before the layer (a skip connection or another "
                               f"path crosses it).")
            self.verified = True
        return out


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-5)
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return False
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if _is_mapping(a) and _is_mapping(b):  # dict outputs ({"logits": ...}): key by key
        return list(a.keys()) == list(b.keys()) and all(_close(a[k], b[k]) for k in a.keys())
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - objects that do not compare: not known to be equal
        return False


def _is_mapping(value: Any) -> bool:
    return isinstance(value, dict) or (hasattr(value, "keys") and callable(value.keys)
                                       and hasattr(value, "__getitem__"))


def _tensor_leaves(value: Any, path: str = "") -> list[tuple[str, Any]]:
    """``(path, leaf)`` for every leaf of a model output (tensors, tuples, lists, dicts)."""
    if isinstance(value, torch.Tensor):
        return [(path, value)]
    if isinstance(value, (tuple, list)):
        return [leaf for i, item in enumerate(value) for leaf in _tensor_leaves(item, f"{path}[{i}]")]
    if _is_mapping(value):
        return [leaf for key in value.keys() for leaf in _tensor_leaves(value[key], f"{path}[{key!r}]")]
    return [(path, value)]


# ---------------------------------------------------------------------------------------------
# Public face
# ---------------------------------------------------------------------------------------------

def split_model(model: nn.Module, layer: str | nn.Module, *, example_input: torch.Tensor | None = None,
                strategy: str = "auto", input_name: str = "example_input") -> tuple[nn.Module, nn.Module]:
    """Split ``model`` at ``layer`` into ``g`` and ``h`` with ``h(g(x)) == model(x)``.

    Parameters
    ----------
    model
        Any ``torch.nn.Module``.
    layer
        Dotted name of the submodule whose output is the cut (``"layer4"``, ``"blocks.3"``), or
        the submodule itself. An unknown name raises an error that lists close names.
    example_input
        Optional input batch used to check the cut numerically (``h(g(x)) == model(x)``) and to
        tell the generic fallback the input shape.
    strategy
        ``"auto"`` (default: sequential, then torch.fx graph cut, then replay), or one of
        ``"sequential"``, ``"fx"``, ``"replay"``.
    input_name
        How errors about ``example_input`` name it (the pipeline passes ``"images"``).

    Returns
    -------
    (g, h)
        Modules sharing the model's parameters. ``g(x)`` returns the layer's output (for a
        transformer block, tokens ``(N, T, C)``); ``h(a)`` maps it to the model's output.

    Raises
    ------
    CutError
        When the cut is not valid: a skip connection crosses the layer, or the layer is used twice.
    """
    if strategy not in ("auto", "sequential", "fx", "replay"):
        raise ValueError(f"`strategy` must be 'auto', 'sequential', 'fx' or 'replay'; got {strategy!r}.")
    layer_name, layer_module = get_layer(model, layer)
    model = unwrap_model(model)[0]  # DataParallel / DDP / torch.compile compute what they wrap
    if example_input is not None and not isinstance(example_input, torch.Tensor):
        raise TypeError("`example_input` must be a torch.Tensor batch of model inputs.")

    # eval mode while splitting: torch.fx bakes `self.training` into the graph (dropout,
    # stochastic depth, torchvision Swin's attention), and h must be the model in eval mode,
    # deterministic, whatever mode the model is in now; the user's mode is restored afterwards
    with preserved_model_state(model, eval_mode=True):
        result = None
        if strategy in ("auto", "sequential"):
            result = _sequential_split(model, layer_name)
            if result is None and strategy == "sequential":
                raise CutError(f"`layer` {layer_name!r}: the path to it is not made of nn.Sequential "
                               f"containers; use strategy='auto'.")
        if result is None and strategy in ("auto", "fx"):
            try:
                result = _fx_split(model, layer_name)
            except CutError:
                raise
            except Exception as err:  # noqa: BLE001 - untraceable models fall back to replay
                if strategy == "fx":
                    raise CutError(f"torch.fx could not trace {type(model).__name__}: {err}") from err
                result = None
        if result is None:
            g = ReplayG(model, layer_name, layer_module)
            shape = tuple(example_input.shape[1:]) if example_input is not None else None
            result = (g, ReplayH(model, layer_name, layer_module, g, shape))

    g, h = result
    # h must never write into the activations it is given (an in-place ReLU right after the
    # cut would clip them); the replay runs the whole model, whose functional calls are unseen
    h = guard_input(h, always=isinstance(h, ReplayH))
    g.split_layer = layer_name  # type: ignore[attr-defined]
    h.split_layer = layer_name  # type: ignore[attr-defined]
    if example_input is not None:
        check_split(model, g, h, example_input, name=input_name)
    return g, h


def run_example(model: nn.Module, x: torch.Tensor, name: str) -> Any:
    """``model(x)`` (the caller sets eval mode and no_grad), with a failure turned into an error
    naming ``name``: images too small (an :class:`ImageSizeError` with the smallest size that
    runs), channels-last images, or whatever else the model refuses."""
    try:
        return model(x)
    except Exception as err:  # a user's model failing on the example: say which input
        if is_size_error(err):
            raise size_error(err, model, x, name, type(model).__name__, model) from err
        hint = ""
        if x.ndim == 4 and x.shape[1] not in (1, 3, 4) and x.shape[-1] in (1, 3, 4):
            hint = (f" The images look channels-last (N, H, W, C) = {tuple(x.shape)}; "
                    f"conceptkit takes (N, C, H, W): pass {name}.permute(0, 3, 1, 2).")
        elif x.ndim == 4 and x.shape[1] == 1 and "channel" in str(err):
            hint = (f" The images have one channel; for a model of colour images pass "
                    f"{name}.expand(-1, 3, -1, -1).")
        raise ValueError(f"`{name}` (an example of shape {tuple(x.shape)}) cannot be run "
                         f"through {type(model).__name__}: {type(err).__name__}: "
                         f"{str(err).rstrip('.')}.{hint}") from err


def check_split(model: nn.Module, g: nn.Module, h: nn.Module, x: torch.Tensor,
                atol: float | None = None, rtol: float | None = None, *, name: str = "x") -> float:
    """Check ``h(g(x)) == model(x)``; return the max absolute difference or raise CutError.

    The tolerances default to ``atol=1e-5, rtol=1e-4``, and ``1e-2`` each for float16 and
    bfloat16 outputs.
    """
    training = any(m.training for m in model.modules())
    with preserved_model_state(model), torch.no_grad():
        expected = run_example(model, x, name)
        got = h(g(x))
    want, have = _tensor_leaves(expected), _tensor_leaves(got)
    mode = (" The model is in training mode (compared in eval mode): a g or h built from it "
            "in training mode runs dropout or stochastic depth; call model.eval() before "
            "splitting." if training else "")
    if [p for p, _ in want] != [p for p, _ in have]:
        raise CutError(f"the split does not reproduce the model: h(g(x)) gives {describe(got)}, "
                       f"model(x) {describe(expected)}.{mode}")
    worst = 0.0
    for path, (exp, out) in zip((p for p, _ in want), zip((v for _, v in want), (v for _, v in have))):
        where = f" at output{path}" if path else ""
        if not isinstance(exp, torch.Tensor):
            if not _close(exp, out):
                raise CutError(f"the split does not reproduce the model{where}: h(g(x)) gives "
                               f"{describe(out)}, model(x) {describe(exp)}.{mode}")
            continue
        if not isinstance(out, torch.Tensor) or out.shape != exp.shape:
            raise CutError(f"the split does not reproduce the model{where}: h(g(x)) gives "
                           f"{describe(out)}, model(x) a tensor of shape {tuple(exp.shape)}.{mode}")
        if not exp.is_floating_point() and not exp.is_complex():
            if not torch.equal(exp, out):
                raise CutError(f"the split does not reproduce the model{where}: h(g(x)) and "
                               f"model(x) differ.{mode}")
            continue
        half = exp.dtype in (torch.float16, torch.bfloat16)
        a_tol = (1e-2 if half else 1e-5) if atol is None else atol
        r_tol = (1e-2 if half else 1e-4) if rtol is None else rtol
        diff = float((exp - out.to(exp.dtype)).abs().max()) if exp.numel() else 0.0
        if not torch.allclose(exp, out.to(exp.dtype), atol=a_tol, rtol=r_tol):
            raise CutError(f"the split does not reproduce the model{where}: max |h(g(x)) - "
                           f"model(x)| = {diff:.3g}.{mode}")
        worst = max(worst, diff)
    return worst
