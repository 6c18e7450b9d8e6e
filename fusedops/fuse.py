"""``fuse(model)``: replace Conv2d -> ReLU [-> MaxPool2d] and Linear [-> activation] chains.

The model keeps its class, its other attributes, methods, buffers, hooks and containers:
``fuse()`` rewrites inside the module tree and never wraps or replaces the model. Two
rewriters run, on a copy of the model (or on the model itself with ``inplace=True``):

1. **Sequential**: inside every ``nn.Sequential``, a run of children ``Conv2d, [BatchNorm2d
   (eval)], ReLU, [MaxPool2d]`` becomes one ``FusedConvBlock`` and ``Linear, [ReLU | GELU |
   SiLU]`` one ``FusedLinear``. The container and its other children are kept, under their
   old names; the fused module takes the name of the Conv2d/Linear it replaces.
2. **forward()**: a module whose own ``forward`` holds such a chain of its direct children
   (module calls, ``F.relu``/``torch.relu``/``Tensor.relu``, in-place ReLUs,
   ``F.max_pool2d``, ``F.gelu``/``F.silu``) is traced by torch.fx (its submodules stay
   calls). The Conv2d/Linear attribute becomes the fused module, and that module's
   ``forward`` (that instance's only) is replaced by the traced one with each chain turned
   into one call. Its class, its other methods and the modules the chain used (a shared
   ``nn.ReLU`` or ``nn.MaxPool2d`` stays an attribute) are kept. A forward that reads
   ``self.training`` is traced in both modes and runs the matching one. Other Python
   control flow on non-tensor values is fixed at fuse() time, as torch.fx fixes it. A
   forward fx cannot trace is left as it is, with a warning; its children are still fused.

A chain is fused only when each intermediate value has no other user, its modules carry no
hooks (the hooks would stop firing) and the Conv2d/Linear is not shared with another place
in the model. ``BatchNorm2d`` is folded into the conv only in eval mode (the result is for
inference); in training mode the conv -> BN -> ReLU chain is left alone. A fused module
shares the Parameters of the Conv2d/Linear it replaces, so an optimizer built before
``fuse(model, inplace=True)`` keeps training them.

State-dict keys: a fused module's ``weight``/``bias`` sit under the Conv2d's or Linear's
key (``features.0.weight`` stays ``features.0.weight``). Folding a BatchNorm removes its keys
(its statistics are in the conv's weight and bias; in a custom forward its attribute becomes
``nn.Identity``) and adds ``<conv>.bias`` when the conv had no bias. Every other key is
unchanged.
"""

from __future__ import annotations

import collections
import copy
import functools
import linecache
import types
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .backends import check_backend_available
from .modules import FusedConvBlock, FusedLinear

__all__ = ["fuse"]

_RELU_FUNCTIONS = (F.relu, torch.relu, torch.relu_, F.relu_)
_LINEAR_ACTIVATION_MODULES = (nn.ReLU, nn.GELU, nn.SiLU)
_REWRITTEN = "_fusedops_forward"  # instance attribute holding a rewritten forward's source


@dataclass
class _Report:
    """What was fused (one line per chain) and what was left alone."""

    fused: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A copy of ``conv`` computing ``bn(conv(x))`` with ``bn``'s running statistics.

    ``w' = w * g / sqrt(var + eps)`` per output channel, ``b' = (b - mean) * g / sqrt(var + eps) + beta``.
    """
    folded = copy.deepcopy(conv)
    with torch.no_grad():
        var = bn.running_var.to(torch.float64)
        scale = torch.rsqrt(var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight.to(torch.float64)
        shift = -bn.running_mean.to(torch.float64) * scale
        if bn.bias is not None:
            shift = shift + bn.bias.to(torch.float64)
        weight = conv.weight.to(torch.float64) * scale.view(-1, 1, 1, 1)
        bias = shift if conv.bias is None else conv.bias.to(torch.float64) * scale + shift
        folded.weight = nn.Parameter(weight.to(conv.weight.dtype), conv.weight.requires_grad)
        folded.bias = nn.Parameter(bias.to(conv.weight.dtype), conv.weight.requires_grad)
    return folded


def _foldable(bn: nn.Module, conv: nn.Conv2d) -> bool:
    return (
        type(bn) is nn.BatchNorm2d
        and not bn.training
        and bn.running_mean is not None
        and bn.num_features == conv.out_channels
    )


def _fusable_conv(m: nn.Module) -> bool:
    return type(m) is nn.Conv2d


def _fusable_pool(m: nn.Module) -> bool:
    return type(m) is nn.MaxPool2d and not m.return_indices


def _has_hooks(m: nn.Module) -> bool:
    """Forward/backward hooks registered on ``m`` itself (fusing it would stop them firing)."""
    names = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return any(getattr(m, name, None) for name in names)


def _fused_block(conv: nn.Conv2d, pool: Optional[nn.MaxPool2d], backend) -> FusedConvBlock:
    """A FusedConvBlock holding ``conv``'s own Parameters (shared, not copied)."""
    block = FusedConvBlock.from_modules(conv, None, pool, backend=backend)
    block.weight, block.bias = conv.weight, conv.bias
    return block


def _fused_linear(linear: nn.Linear, activation: Optional[nn.Module], backend) -> FusedLinear:
    """A FusedLinear holding ``linear``'s own Parameters (shared, not copied)."""
    fused = FusedLinear.from_modules(linear, activation, backend=backend)
    fused.weight, fused.bias = linear.weight, linear.bias
    return fused


# ---- 1. nn.Sequential ----------------------------------------------------------------


def _fuse_sequential(seq: nn.Sequential, prefix: str, backend, report: _Report, shared) -> None:
    """Rewrite fusable runs of ``seq``'s children in place, keeping the other children's names."""
    items = list(seq._modules.items())
    out = []
    i = 0
    while i < len(items):
        name, m = items[i]
        nxt = [mod for _, mod in items[i + 1 : i + 4]]
        if _fusable_conv(m) and not shared(m):
            conv, j = m, 0
            if nxt and type(nxt[0]) is nn.BatchNorm2d:
                if not _foldable(nxt[0], m):
                    out.append((name, m))
                    i += 1
                    continue
                conv, j = fold_batchnorm(m, nxt[0]), 1
            if len(nxt) > j and type(nxt[j]) is nn.ReLU:
                pool = nxt[j + 1] if len(nxt) > j + 1 and _fusable_pool(nxt[j + 1]) else None
                used = 2 + j + (pool is not None)
                if not any(_has_hooks(x) for _, x in items[i : i + used]):
                    report.fused.append(
                        f"{prefix}{name}: " + " + ".join(type(x).__name__ for _, x in items[i : i + used])
                        + " -> FusedConvBlock"
                    )
                    out.append((name, _fused_block(conv, pool, backend)))
                    i += used
                    continue
                report.skipped.append(f"{prefix}{name}: a module of its chain has hooks")
        if type(m) is nn.Linear and not shared(m):
            act = nxt[0] if nxt and isinstance(nxt[0], _LINEAR_ACTIVATION_MODULES) and not _has_hooks(nxt[0]) else None
            if not _has_hooks(m):
                out.append((name, _fused_linear(m, act, backend)))
                used = 1 + (act is not None)
                report.fused.append(
                    f"{prefix}{name}: " + " + ".join(type(x).__name__ for _, x in items[i : i + used])
                    + " -> FusedLinear"
                )
                i += used
                continue
            report.skipped.append(f"{prefix}{name}: Linear has hooks")
        out.append((name, m))
        i += 1
    seq._modules.clear()
    seq._modules.update(out)


def _fuse_all_sequentials(module: nn.Module, prefix: str, backend, report: _Report, shared) -> None:
    for name, child in module.named_children():
        _fuse_all_sequentials(child, f"{prefix}{name}.", backend, report, shared)
    if type(module) is nn.Sequential:
        _fuse_sequential(module, prefix, backend, report, shared)


# ---- 2. a module's own forward() -------------------------------------------------------


class _Tracer(fx.Tracer):
    """Traces one module's own forward: every submodule call stays one node.

    Children are fused before their parent (bottom-up), so a chain is rewritten in the
    module whose forward holds it, and modules without chains keep their forward.
    """

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return True


def _called_module(root: nn.Module, node: fx.Node) -> Optional[nn.Module]:
    """The direct child of ``root`` that ``node`` calls, else None."""
    if node.op != "call_module" or "." in node.target:
        return None
    return root.get_submodule(node.target)


def _sole_user(node: fx.Node) -> Optional[fx.Node]:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _is_relu(root, node: fx.Node) -> bool:
    if node.op == "call_module":
        return type(_called_module(root, node)) is nn.ReLU
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS
    return node.op == "call_method" and node.target in ("relu", "relu_")


def _constant(value) -> bool:
    if isinstance(value, (tuple, list)):
        return all(_constant(v) for v in value)
    return not isinstance(value, fx.Node)


def _pool_module(root, node: fx.Node) -> Optional[nn.MaxPool2d]:
    """The MaxPool2d that ``node`` applies (a module call or ``F.max_pool2d``), else None."""
    if node.op == "call_module":
        m = _called_module(root, node)
        return m if m is not None and _fusable_pool(m) else None
    if node.op != "call_function" or node.target is not F.max_pool2d:
        return None
    names = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
    bound = dict(zip(names, node.args))
    bound.update(node.kwargs)
    if bound.get("return_indices", False) or not all(_constant(v) for k, v in bound.items() if k != "input"):
        return None
    return nn.MaxPool2d(
        bound["kernel_size"], bound.get("stride"), bound.get("padding", 0), bound.get("dilation", 1),
        ceil_mode=bound.get("ceil_mode", False),
    )


def _linear_activation(root, node: fx.Node) -> Optional[nn.Module]:
    """The activation ``node`` applies, as a module (ReLU, GELU, SiLU), else None."""
    if _is_relu(root, node):
        return nn.ReLU()
    if node.op == "call_module":
        m = _called_module(root, node)
        return m if isinstance(m, _LINEAR_ACTIVATION_MODULES) else None
    if node.op != "call_function" or len(node.args) != 1:
        return None
    if node.target is F.gelu:
        approximate = node.kwargs.get("approximate", "none")
        return nn.GELU(approximate=approximate) if approximate in ("none", "tanh") else None
    if node.target is F.silu:
        return nn.SiLU()
    return None


@dataclass
class _Chain:
    """Nodes of one fusable chain (first: the Conv2d/Linear call) and what replaces them."""

    nodes: List[fx.Node]
    target: str  # attribute of the Conv2d/Linear, which the fused module takes over
    build: Callable[[], nn.Module]
    folded_bn: Optional[str] = None  # attribute of a BatchNorm2d folded into the conv

    def signature(self) -> Tuple:
        return tuple((n.op, str(n.target)) for n in self.nodes)


def _find_chains(root: nn.Module, graph: fx.Graph, backend, shared) -> Tuple[List[_Chain], List[str]]:
    """The fusable chains of ``graph`` (a trace of ``root``'s forward) and why others were not."""
    calls = collections.Counter(n.target for n in graph.nodes if n.op == "call_module")
    chains, skipped = [], []
    for node in graph.nodes:
        m = _called_module(root, node)
        if m is None or not (_fusable_conv(m) or type(m) is nn.Linear):
            continue
        if calls[node.target] != 1 or shared(m):
            skipped.append(f"{node.target}: {type(m).__name__} used in more than one place")
            continue
        if len(node.args) != 1 or node.kwargs:
            continue
        chain = _linear_chain(root, node, backend) if type(m) is nn.Linear else _conv_chain(root, node, calls, backend)
        if chain is None:
            continue
        if any(_has_hooks(x) for x in (_called_module(root, n) for n in chain.nodes) if x is not None):
            skipped.append(f"{chain.target}: a module of its chain has hooks")
            continue
        chains.append(chain)
    return chains, skipped


def _linear_chain(root, node: fx.Node, backend) -> _Chain:
    """``Linear [-> activation]`` starting at ``node``."""
    nxt = _sole_user(node)
    act = _linear_activation(root, nxt) if nxt is not None else None
    nodes = [node] + ([nxt] if act is not None else [])
    return _Chain(nodes, node.target, functools.partial(_fused_linear, _called_module(root, node), act, backend))


def _conv_chain(root, node: fx.Node, calls, backend) -> Optional[_Chain]:
    """``Conv2d [-> BatchNorm2d (eval)] -> ReLU [-> MaxPool2d]`` starting at ``node``, or None."""
    conv, nodes, bn = _called_module(root, node), [node], None
    nxt = _sole_user(node)
    candidate = _called_module(root, nxt) if nxt is not None else None
    if type(candidate) is nn.BatchNorm2d:
        if not _foldable(candidate, conv) or calls[nxt.target] != 1:
            return None
        bn = candidate
        nodes.append(nxt)
        nxt = _sole_user(nxt)
    if nxt is None or not _is_relu(root, nxt):
        return None
    nodes.append(nxt)
    after = _sole_user(nxt)
    pool = _pool_module(root, after) if after is not None else None
    if pool is not None:
        nodes.append(after)

    def build():
        return _fused_block(conv if bn is None else fold_batchnorm(conv, bn), pool, backend)

    return _Chain(nodes, node.target, build, nodes[1].target if bn is not None else None)


def _rewrite_graph(graph: fx.Graph, chains: List[_Chain]) -> None:
    """Replace each chain's nodes by one call of the module at the chain's target."""
    for chain in chains:
        first, last = chain.nodes[0], chain.nodes[-1]
        with graph.inserting_after(last):
            new = graph.call_module(chain.target, (first.args[0],))
        last.replace_all_uses_with(new)
        for node in reversed(chain.nodes):
            graph.erase_node(node)
    graph.lint()


class _RewrittenForward:
    """The source of a forward() rewritten by fuse(), compiled into a function of ``self``.

    Picklable and deep-copyable (it is immutable): the source and the names it uses are
    kept, modules among those by name.
    """

    def __init__(self, sources: Dict[bool, Tuple[str, dict]]):
        self.sources = sources  # {training: (source, globals)}; one entry when both modes agree
        self.functions = {mode: _compile(src, glb) for mode, (src, glb) in sources.items()}
        if len(self.functions) == 1:
            self.function = next(iter(self.functions.values()))
        else:
            train, evaluate = self.functions[True], self.functions[False]

            def forward(self, *args, **kwargs):
                return (train if self.training else evaluate)(self, *args, **kwargs)

            self.function = forward

    def __reduce__(self):
        def by_name(value):
            return _ModuleByName(value.__name__) if isinstance(value, types.ModuleType) else value

        portable = {mode: (src, {k: by_name(v) for k, v in glb.items()}) for mode, (src, glb) in self.sources.items()}
        return (_RewrittenForward._load, (portable,))

    @staticmethod
    def _load(portable):
        return _RewrittenForward({
            mode: (src, {k: v.load() if isinstance(v, _ModuleByName) else v for k, v in glb.items()})
            for mode, (src, glb) in portable.items()
        })

    def __deepcopy__(self, memo):
        return self


@dataclass(frozen=True)
class _ModuleByName:
    """A Python module in a pickled forward's names, imported again when loaded."""

    name: str

    def load(self):
        import importlib

        return importlib.import_module(self.name)


def _compile(src: str, globals_: dict):
    """Exec fx-generated source; the lines are registered so tracebacks show them."""
    filename = f"<fusedops.fuse forward {abs(hash(src)):x}>"
    linecache.cache[filename] = (len(src), None, src.splitlines(True), filename)
    namespace = dict(globals_)
    exec(compile(src, filename, "exec"), namespace)
    return namespace["forward"]


def _install_forward(module: nn.Module, rewritten: _RewrittenForward) -> None:
    """Make ``rewritten`` this instance's forward (its class and other methods unchanged).

    The instance also gets a ``__reduce_ex__`` so that pickling, ``torch.save`` and
    ``copy.deepcopy`` rebuild it with the rewritten forward bound to the new object.
    """
    object.__setattr__(module, _REWRITTEN, rewritten)
    object.__setattr__(module, "forward", types.MethodType(rewritten.function, module))
    object.__setattr__(module, "__reduce_ex__", types.MethodType(_reduce_rewritten_module, module))


def _reduce_rewritten_module(module: nn.Module, protocol):
    state = module.__getstate__()
    for key in (_REWRITTEN, "forward", "__reduce_ex__"):
        state.pop(key, None)
    return (_rebuild_rewritten_module, (type(module), module.__dict__[_REWRITTEN]), state)


def _rebuild_rewritten_module(cls, rewritten: _RewrittenForward) -> nn.Module:
    """The object pickling restores: a bare ``cls`` instance with the rewritten forward (its
    state is set afterwards, as for any pickled module)."""
    module = cls.__new__(cls)
    _install_forward(module, rewritten)
    return module


def _trace(module: nn.Module, training: bool) -> fx.Graph:
    """Trace ``module``'s forward with ``module.training`` set to ``training`` (it alone)."""
    before = module.training
    module.training = training
    try:
        return _Tracer().trace(module)
    finally:
        module.training = before


def _fuse_forward(module: nn.Module, prefix: str, backend, report: _Report, shared) -> None:
    """Fuse the chains of ``module``'s own forward (see the module docstring, step 2)."""
    where = prefix.rstrip(".") or "the model"
    attributes = set(module.__dict__)
    try:
        graphs = {mode: _trace(module, mode) for mode in (True, False)}
    except Exception as exc:  # fx raises many types for untraceable code
        _drop_new_attributes(module, attributes)
        report.skipped.append(f"{where} ({type(module).__name__}): not traceable by torch.fx ({exc})")
        warnings.warn(
            f"fusedops.fuse: left the forward() of {where} ({type(module).__name__}) as it is: "
            f"torch.fx cannot trace it ({type(exc).__name__}: {exc}); only its submodules were fused",
            stacklevel=4,
        )
        return
    found = {mode: _find_chains(module, g, backend, shared) for mode, g in graphs.items()}
    chains = found[module.training][0]
    report.skipped += [f"{prefix}{line}" for line in found[module.training][1]]
    same_code = graphs[True].python_code("self").src == graphs[False].python_code("self").src
    if chains and not same_code and [c.signature() for c in found[True][0]] != [c.signature() for c in found[False][0]]:
        report.skipped.append(f"{where}: its forward() fuses differently in train and eval mode; left as it is")
        chains = []
    if not chains:
        _drop_new_attributes(module, attributes)
        return
    for chain in chains:
        fused = chain.build()
        setattr(module, chain.target, fused)
        if chain.folded_bn is not None:
            setattr(module, chain.folded_bn, nn.Identity())
        report.fused.append(f"{prefix}{chain.target}: {len(chain.nodes)} ops -> {type(fused).__name__} (forward)")
    modes = (module.training,) if same_code else (True, False)
    sources = {}
    for mode in modes:
        _rewrite_graph(graphs[mode], chains if mode == module.training else found[mode][0])
        code = graphs[mode].python_code("self")
        sources[mode] = (code.src, code.globals)
    _install_forward(module, _RewrittenForward(sources))


def _drop_new_attributes(module: nn.Module, before) -> None:
    """Remove what tracing attached to ``module`` (fx's tensor constants) when no rewritten
    forward will read it."""
    for key in set(module.__dict__) - before:
        del module.__dict__[key]


def _leaf_like(m: nn.Module) -> bool:
    """Modules whose forward holds no chain of interest (torch.nn layers, fused modules)."""
    if isinstance(m, (FusedConvBlock, FusedLinear)):
        return True
    return m.__module__.startswith("torch.nn") and type(m) is not nn.Sequential


def _fuse_forwards(module: nn.Module, prefix: str, backend, report: _Report, shared) -> None:
    """Fuse the chains in the forwards of ``module``'s children, then in its own."""
    for name, child in module.named_children():
        _fuse_forwards(child, f"{prefix}{name}.", backend, report, shared)
    if _leaf_like(module) or type(module) is nn.Sequential:
        return
    if "forward" in module.__dict__:  # rewritten already, or patched by its owner: left as it is
        report.skipped.append(f"{prefix.rstrip('.') or 'the model'}: its instance has its own forward; left as it is")
        return
    _fuse_forward(module, prefix, backend, report, shared)


def fuse(model: nn.Module, *, inplace: bool = False, backend: Optional[str] = None, verbose: bool = False) -> nn.Module:
    """Return ``model`` with its Conv2d -> ReLU [-> MaxPool2d] and Linear [-> act] chains fused.

    The result computes the same function and is the same kind of object: same class,
    methods, attributes, buffers, hooks and containers. Parameters that are not fused are
    kept; fused modules share the Parameters of the layers they replace. The input model is
    not modified unless ``inplace=True``, which rewrites ``model`` itself and returns it. In
    eval mode a BatchNorm2d between conv and ReLU is folded into the conv. ``verbose=True``
    prints one line per fused chain and per chain or module left alone. See the module
    docstring for what is rewritten and how state-dict keys map.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(inplace, bool):
        raise TypeError(f"inplace must be a bool, got {inplace!r}")
    backend = check_backend_available(backend) or None
    target = model if inplace else copy.deepcopy(model)
    places = collections.Counter(id(m) for _, m in target.named_modules(remove_duplicate=False))

    def shared(m: nn.Module) -> bool:  # reachable under more than one name
        return places[id(m)] > 1

    report = _Report()
    _fuse_all_sequentials(target, "", backend, report, shared)
    _fuse_forwards(target, "", backend, report, shared)
    if verbose:
        for line in report.fused:
            print(f"fused   {line}")
        for line in report.skipped:
            print(f"skipped {line}")
        if not report.fused:
            print("fused   nothing: no Conv2d -> ReLU or Linear chain found")
    return target
