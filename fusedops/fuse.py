"""``fuse(model)``: replace Conv2d -> ReLU [-> MaxPool2d] and Linear [-> activation] chains.

Two rewriters, applied in this order to a copy of the model (or to the model itself with
``inplace=True``):

1. **Sequential**: inside every ``nn.Sequential``, a run of children ``Conv2d, [BatchNorm2d
   (eval)], ReLU, [MaxPool2d]`` becomes one ``FusedConvBlock`` and ``Linear, [ReLU | GELU |
   SiLU]`` one ``FusedLinear``. The container and its other children are kept, under their
   old names; the fused module takes the name of the Conv2d/Linear it replaces.
2. **torch.fx**: a module whose own ``forward`` still holds such a chain (module calls,
   ``F.relu``/``torch.relu``/``Tensor.relu``, in-place ReLUs, ``F.max_pool2d``,
   ``F.gelu``/``F.silu``) is symbolically traced and its graph rewritten; the module becomes
   a ``torch.fx.GraphModule`` whose fused modules take the Conv2d's/Linear's qualified
   name. A module fx cannot trace is left as it is, with a warning, and its children are
   tried one by one.

A chain is fused only when each intermediate value has no other user. ``BatchNorm2d`` is
folded into the conv only in eval mode; in training mode the conv -> BN -> ReLU chain is
left alone.

State-dict keys: a fused module's ``weight``/``bias`` sit under the Conv2d's or Linear's
key (``features.0.weight`` stays ``features.0.weight``); the keys of a folded BatchNorm
disappear (its statistics are in the conv weight and bias); every other key is unchanged.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import List, Optional

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .backends import check_backend_name
from .modules import FusedConvBlock, FusedLinear

__all__ = ["fuse"]

_RELU_FUNCTIONS = (F.relu, torch.relu, torch.relu_, F.relu_)
_LINEAR_ACTIVATION_MODULES = (nn.ReLU, nn.GELU, nn.SiLU)


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


# ---- 1. nn.Sequential ----------------------------------------------------------------


def _fuse_sequential(seq: nn.Sequential, prefix: str, backend, report: _Report) -> None:
    """Rewrite fusable runs of ``seq``'s children in place, keeping the other children's names."""
    items = list(seq._modules.items())
    out = []
    i = 0
    while i < len(items):
        name, m = items[i]
        nxt = [mod for _, mod in items[i + 1 : i + 4]]
        if _fusable_conv(m):
            conv, j = m, 0
            if nxt and type(nxt[0]) is nn.BatchNorm2d:
                if not _foldable(nxt[0], m):
                    out.append((name, m))
                    i += 1
                    continue
                conv, j = fold_batchnorm(m, nxt[0]), 1
            if len(nxt) > j and type(nxt[j]) is nn.ReLU:
                pool = nxt[j + 1] if len(nxt) > j + 1 and _fusable_pool(nxt[j + 1]) else None
                block = FusedConvBlock.from_modules(conv, nxt[j], pool, backend=backend)
                used = 2 + j + (pool is not None)
                report.fused.append(
                    f"{prefix}{name}: " + " + ".join(type(x).__name__ for _, x in items[i : i + used])
                    + " -> FusedConvBlock"
                )
                out.append((name, block))
                i += used
                continue
        if type(m) is nn.Linear:
            act = nxt[0] if nxt and isinstance(nxt[0], _LINEAR_ACTIVATION_MODULES) else None
            out.append((name, FusedLinear.from_modules(m, act, backend=backend)))
            used = 1 + (act is not None)
            report.fused.append(
                f"{prefix}{name}: " + " + ".join(type(x).__name__ for _, x in items[i : i + used]) + " -> FusedLinear"
            )
            i += used
            continue
        out.append((name, m))
        i += 1
    seq._modules.clear()
    seq._modules.update(out)


def _fuse_all_sequentials(module: nn.Module, prefix: str, backend, report: _Report) -> None:
    for name, child in module.named_children():
        _fuse_all_sequentials(child, f"{prefix}{name}.", backend, report)
    if type(module) is nn.Sequential:
        _fuse_sequential(module, prefix, backend, report)


# ---- 2. torch.fx --------------------------------------------------------------------


class _Tracer(fx.Tracer):
    """Traces one module's own forward: every submodule call but nn.Sequential's stays one node.

    Children are fused before their parent (bottom-up), so a chain is rewritten in the
    smallest module whose forward holds it, and modules without chains keep their class.
    """

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return type(m) is not nn.Sequential


def _module(gm: fx.GraphModule, node: fx.Node) -> Optional[nn.Module]:
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def _sole_user(node: fx.Node) -> Optional[fx.Node]:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _is_relu(gm, node: fx.Node) -> bool:
    if node.op == "call_module":
        return type(_module(gm, node)) is nn.ReLU
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS
    return node.op == "call_method" and node.target in ("relu", "relu_")


def _constant(value) -> bool:
    if isinstance(value, (tuple, list)):
        return all(_constant(v) for v in value)
    return not isinstance(value, fx.Node)


def _pool_module(gm, node: fx.Node) -> Optional[nn.MaxPool2d]:
    """The MaxPool2d that ``node`` applies (a module call or ``F.max_pool2d``), else None."""
    if node.op == "call_module":
        m = _module(gm, node)
        return m if _fusable_pool(m) else None
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


def _linear_activation(gm, node: fx.Node) -> Optional[nn.Module]:
    """The activation ``node`` applies, as a module (ReLU, GELU, SiLU), else None."""
    if _is_relu(gm, node):
        return nn.ReLU()
    if node.op == "call_module":
        m = _module(gm, node)
        return m if isinstance(m, _LINEAR_ACTIVATION_MODULES) else None
    if node.op != "call_function" or len(node.args) != 1:
        return None
    if node.target is F.gelu:
        approximate = node.kwargs.get("approximate", "none")
        return nn.GELU(approximate=approximate) if approximate in ("none", "tanh") else None
    if node.target in (F.silu, torch.nn.functional.silu):
        return nn.SiLU()
    return None


def _single_call(gm: fx.GraphModule, target: str) -> bool:
    return sum(1 for n in gm.graph.nodes if n.op == "call_module" and n.target == target) == 1


def _replace_chain(gm: fx.GraphModule, chain: List[fx.Node], target: str, module: nn.Module) -> None:
    """Swap the module at ``target`` for ``module`` and the chain's nodes for one call of it."""
    first, last = chain[0], chain[-1]
    gm.add_submodule(target, module)
    with gm.graph.inserting_after(last):
        new = gm.graph.call_module(target, (first.args[0],))
    last.replace_all_uses_with(new)
    for node in reversed(chain):
        gm.graph.erase_node(node)


def _fuse_graph(gm: fx.GraphModule, prefix: str, backend, report: _Report) -> int:
    """Rewrite the chains of ``gm``'s graph; returns how many were fused."""
    count = 0
    for node in list(gm.graph.nodes):
        if node.graph is not gm.graph or node.op != "call_module":
            continue  # erased already, or not a module call
        m = _module(gm, node)
        if not (_fusable_conv(m) or type(m) is nn.Linear) or not _single_call(gm, node.target):
            continue
        if len(node.args) != 1 or node.kwargs:
            continue
        chain = [node]
        nxt = _sole_user(node)
        if type(m) is nn.Linear:
            act = _linear_activation(gm, nxt) if nxt is not None else None
            if act is not None:
                chain.append(nxt)
            fused = FusedLinear.from_modules(m, act, backend=backend)
        else:
            conv = m
            if nxt is not None and type(_module(gm, nxt)) is nn.BatchNorm2d:
                if not _foldable(_module(gm, nxt), m):
                    continue
                conv = fold_batchnorm(m, _module(gm, nxt))
                chain.append(nxt)
                nxt = _sole_user(nxt)
            if nxt is None or not _is_relu(gm, nxt):
                continue
            chain.append(nxt)
            after = _sole_user(nxt)
            pool = _pool_module(gm, after) if after is not None else None
            if pool is not None:
                chain.append(after)
            fused = FusedConvBlock.from_modules(conv, None, pool, backend=backend)
        _replace_chain(gm, chain, node.target, fused)
        report.fused.append(f"{prefix}{node.target}: {len(chain)} ops -> {type(fused).__name__} (fx)")
        count += 1
    if count:
        gm.graph.lint()
        gm.delete_all_unused_submodules()
        gm.recompile()
    return count


def _leaf_like(m: nn.Module) -> bool:
    """Modules whose forward holds no chain of interest (torch.nn layers, fused modules)."""
    if isinstance(m, (FusedConvBlock, FusedLinear)):
        return True
    return m.__module__.startswith("torch.nn") and type(m) is not nn.Sequential


def _fuse_traced(module: nn.Module, prefix: str, backend, report: _Report) -> nn.Module:
    """Fuse the chains in ``module``'s children, then in its own forward via fx.

    Returns ``module`` itself when its own forward held nothing to fuse (or fx cannot trace
    it: then with a warning), else a GraphModule of it.
    """
    for name, child in module.named_children():
        new = _fuse_traced(child, f"{prefix}{name}.", backend, report)
        if new is not child:
            setattr(module, name, new)
    if _leaf_like(module) or type(module) is nn.Sequential:
        return module
    try:
        graph = _Tracer().trace(module)
    except Exception as exc:  # fx raises many types for untraceable code
        where = prefix.rstrip(".") or "the model"
        report.skipped.append(f"{where} ({type(module).__name__}): not traceable by torch.fx ({exc})")
        warnings.warn(
            f"fusedops.fuse: left the forward() of {where} ({type(module).__name__}) as it is: "
            f"torch.fx cannot trace it ({type(exc).__name__}: {exc}); only its submodules were fused",
            stacklevel=3,
        )
        return module
    gm = fx.GraphModule(module, graph, class_name=type(module).__name__)
    if _fuse_graph(gm, prefix, backend, report) == 0:
        return module  # nothing to fuse at this level: keep the user's class
    gm.train(module.training)
    return gm


def fuse(model: nn.Module, *, inplace: bool = False, backend: Optional[str] = None, verbose: bool = False) -> nn.Module:
    """Return ``model`` with its Conv2d -> ReLU [-> MaxPool2d] and Linear [-> act] chains fused.

    The result computes the same function. Parameters that are not fused are kept (shared
    with the input when ``inplace=True``, copied otherwise); the input model is not modified
    unless ``inplace=True``. In eval mode a BatchNorm2d between conv and ReLU is folded into
    the conv. ``verbose=True`` prints one line per fused chain and per module left alone.
    See the module docstring for how state-dict keys map.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(inplace, bool):
        raise TypeError(f"inplace must be a bool, got {inplace!r}")
    backend = check_backend_name(backend) or None
    target = model if inplace else copy.deepcopy(model)
    report = _Report()
    _fuse_all_sequentials(target, "", backend, report)
    result = _fuse_traced(target, "", backend, report)
    if verbose:
        for line in report.fused:
            print(f"fused   {line}")
        for line in report.skipped:
            print(f"skipped {line}")
        if not report.fused:
            print("fused   nothing: no Conv2d -> ReLU or Linear chain found")
    return result
