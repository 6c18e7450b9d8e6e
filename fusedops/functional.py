"""Functional ops of fusedops: validate and normalise arguments, then run the autograd Function.

``run_conv_block`` and ``run_linear`` (also called by the modules, whose arguments are
normalised once) resolve the backend (a cached choice) and run the block: as one compiled op
with its autograd in C++ for the native backends, else through the autograd Function.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch

from . import _args, _native
from .backends import Backend, ChoiceMemo, _any_autocast, check_backend_name, conv_facts, select
from .errors import InputTypeError, InputValueError, from_native
from .ops.conv_block import ConvBlockParams, strictly_channels_last
from .ops.conv_block_autograd import ConvReluMaxPool2dDualFunction, ConvReluMaxPool2dFunction
from .ops.forward_mode import forward_ad_active
from .ops.linear import ACTIVATIONS
from .ops.linear_autograd import LinearDualFunction, LinearFunction

__all__ = ["conv_relu_maxpool2d", "linear", "conv_block_params", "run_conv_block", "run_linear"]


def conv_block_params(
    kernel_size,
    stride=1,
    padding: Union[str, int, Sequence[int]] = 0,
    dilation=1,
    groups: int = 1,
    pool_kernel_size=2,
    pool_stride=None,
    pool_padding=0,
    pool_dilation=1,
    pool_ceil_mode: bool = False,
) -> ConvBlockParams:
    """Validate the non-tensor arguments of the conv block and return them normalised.

    Raises ``TypeError``/``ValueError`` naming the argument, with torch's own rules: positive
    stride, dilation, groups and pool sizes; non-negative padding; 'same' only with stride 1;
    pool padding at most half the pool kernel.
    """
    kernel = _args.pair(kernel_size, "kernel_size", minimum=1)
    stride = _args.pair(stride, "stride", minimum=1)
    dilation = _args.pair(dilation, "dilation", minimum=1)
    padding4 = _args.conv_padding(padding, kernel, stride, dilation)
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise InputValueError(f"groups must be a positive int, got {groups!r}")
    if not isinstance(pool_ceil_mode, bool):
        raise InputTypeError(f"pool_ceil_mode must be a bool, got {pool_ceil_mode!r}")
    if pool_kernel_size is None:
        return ConvBlockParams(stride, padding4, dilation, groups, (), (1, 1), (0, 0), (1, 1), False)
    pool_kernel = _args.pair(pool_kernel_size, "pool_kernel_size", minimum=1)
    pool_stride = pool_kernel if pool_stride is None else _args.pair(pool_stride, "pool_stride", minimum=1)
    pool_padding = _args.pair(pool_padding, "pool_padding", minimum=0)
    pool_dilation = _args.pair(pool_dilation, "pool_dilation", minimum=1)
    for pad, k in zip(pool_padding, pool_kernel):
        if pad > k // 2:
            raise InputValueError(
                f"pool_padding must be at most half of pool_kernel_size, got "
                f"pool_padding={pool_padding} and pool_kernel_size={pool_kernel}"
            )
    return ConvBlockParams(
        stride, padding4, dilation, groups, pool_kernel, pool_stride, pool_padding, pool_dilation,
        pool_ceil_mode,
    )




def _autocast(input, *tensors):
    """Cast eligible tensors to the autocast dtype, as autocast does for conv2d and linear."""
    tensors = (input, *tensors)
    if not _any_autocast() or not isinstance(input, torch.Tensor) or not torch.is_autocast_enabled(
        input.device.type
    ):
        return tensors
    dtype = torch.get_autocast_dtype(input.device.type)
    return tuple(
        t.to(dtype) if isinstance(t, torch.Tensor) and t.dtype in (torch.float16, torch.bfloat16, torch.float32)
        else t
        for t in tensors
    )


def _native_entry(name: str):
    """The C++ entry of the one-call op ``fusedops::<name>`` (its default overload's bound
    function: what ``torch.ops.fusedops.<name>(...)`` calls, without two Python frames)."""
    overload = getattr(torch.ops.fusedops, name).default
    return getattr(overload, "_op", overload)


_native_conv_block = _native_entry("native_conv_block") if _native.loaded() else None
_native_linear = _native_entry("native_linear") if _native.loaded() else None
# The same ops' typed entries (csrc/python_module.cpp), for the calls ChoiceMemo.native_again
# admits (no __torch_function__ override to honour).
_typed_conv_block = _native._C.native_conv_block if _native.loaded() else None
_typed_linear = _native._C.native_linear if _native.loaded() else None


def _needs_graph(*tensors) -> bool:
    """Whether a call records derivatives: a backward graph (grad mode on and a tensor that
    requires grad) or tangents (inside a forward-mode AD dual level, where an input may carry
    one): then the ops run through their autograd Functions."""
    return (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)) or forward_ad_active()


def conv_relu_maxpool2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride=1,
    padding: Union[str, int, Sequence[int]] = 0,
    dilation=1,
    groups: int = 1,
    *,
    pool_kernel_size=2,
    pool_stride=None,
    pool_padding=0,
    pool_dilation=1,
    pool_ceil_mode: bool = False,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """``max_pool2d(relu(conv2d(input, weight, bias, ...)), pool_...)`` in one fused op.

    Shapes: ``input (N, Cin, H, W)`` or unbatched ``(Cin, H, W)``; ``weight (Cout, Cin /
    groups, KH, KW)``; ``bias (Cout,)``. Returns ``(N, Cout, PH, PW)`` (or ``(Cout, PH, PW)``)
    where ``(PH, PW)`` is the pool output of the conv output; ``pool_kernel_size=None``
    skips pooling. Arguments take the values ``F.conv2d`` and ``F.max_pool2d`` take.
    Differentiable in ``input``, ``weight`` and ``bias`` through a hand-written backward that
    saves only ``input``, ``weight`` and one small integer per output.
    """
    if not isinstance(weight, torch.Tensor):
        raise InputTypeError(f"conv_relu_maxpool2d: weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() != 4:
        raise InputValueError(
            f"conv_relu_maxpool2d: expected weight of shape (out_channels, in_channels / groups, "
            f"kH, kW), got a {weight.dim()}-D tensor of shape {tuple(weight.shape)}"
        )
    params = conv_block_params(
        tuple(weight.shape[-2:]), stride, padding, dilation, groups, pool_kernel_size, pool_stride,
        pool_padding, pool_dilation, pool_ceil_mode,
    )
    return run_conv_block(input, weight, bias, params, check_backend_name(backend))


def _check_once(memo: Optional[ChoiceMemo], check, input, weight, bias, *args) -> None:
    """``check(input, weight, bias, *args)``, unless the module's ``memo`` saw the same tensor
    signature pass it on its last call (a module's arguments, ``args``, are fixed). Traced
    calls always check: the memo is state that torch.compile would have to guard on."""
    if memo is None or torch.compiler.is_compiling():
        check(input, weight, bias, *args)
        return
    signature = ChoiceMemo.tensor_signature(input, weight, bias)
    if not memo.checked_before(signature):
        check(input, weight, bias, *args)
        memo.record_checked(signature)


def check_conv_block_tensors(input, weight, bias, params: ConvBlockParams) -> None:
    """Raise ``TypeError``/``ValueError`` naming the argument unless the tensors fit ``params``."""
    for name, t in (("input", input), ("weight", weight)):
        if not isinstance(t, torch.Tensor):
            raise InputTypeError(f"conv_relu_maxpool2d: {name} must be a torch.Tensor, got {type(t).__name__}")
    if bias is not None and not isinstance(bias, torch.Tensor):
        raise InputTypeError(f"conv_relu_maxpool2d: bias must be a torch.Tensor or None, got {type(bias).__name__}")
    _args.check_float_tensor(input, "input")
    _args.check_float_tensor(weight, "weight", ref=input)
    if bias is not None:
        _args.check_float_tensor(bias, "bias", ref=input)
    if input.dim() not in (3, 4):
        raise InputValueError(
            f"conv_relu_maxpool2d: expected input of shape (N, C, H, W) or (C, H, W), "
            f"got a {input.dim()}-D tensor of shape {tuple(input.shape)}"
        )
    if weight.dim() != 4:
        raise InputValueError(
            f"conv_relu_maxpool2d: expected weight of shape (out_channels, in_channels / groups, "
            f"kH, kW), got a {weight.dim()}-D tensor of shape {tuple(weight.shape)}"
        )
    groups = params.groups
    out_channels, in_per_group = weight.shape[0], weight.shape[1]
    channels = input.shape[-3]
    if out_channels == 0 or in_per_group == 0:  # torch's conv / max_pool2d reject these too
        raise InputValueError(
            f"conv_relu_maxpool2d: weight must have at least one output and one input channel, got weight of "
            f"shape {tuple(weight.shape)}"
        )
    if out_channels % groups != 0:
        raise InputValueError(
            f"conv_relu_maxpool2d: weight has {out_channels} output channels, which groups={groups} does not divide"
        )
    if channels != in_per_group * groups:
        raise InputValueError(
            f"conv_relu_maxpool2d: input has {channels} channels but weight expects "
            f"{in_per_group * groups} (groups={groups})"
        )
    if bias is not None and tuple(bias.shape) != (out_channels,):
        raise InputValueError(
            f"conv_relu_maxpool2d: bias must have shape ({out_channels},), got {tuple(bias.shape)}"
        )
    top, bottom, left, right = params.padding
    padded = (input.shape[-2] + top + bottom, input.shape[-1] + left + right)
    kernel = tuple((k - 1) * d + 1 for k, d in zip(weight.shape[-2:], params.dilation))
    if padded[0] < kernel[0] or padded[1] < kernel[1]:
        raise InputValueError(
            f"conv_relu_maxpool2d: padded input size ({padded[0]} x {padded[1]}) is smaller "
            f"than the dilated kernel size ({kernel[0]} x {kernel[1]})"
        )
    if params.has_pool:
        conv_hw = params.conv_output_hw(input.shape[-2:], weight.shape[-2:])
        out_hw = params.output_hw(input.shape[-2:], weight.shape[-2:])
        if out_hw[0] < 1 or out_hw[1] < 1:
            raise InputValueError(
                f"conv_relu_maxpool2d: the conv output ({conv_hw[0]} x {conv_hw[1]}) is too small "
                f"for pool_kernel_size={params.pool_kernel_size} with pool_padding="
                f"{params.pool_padding} and pool_dilation={params.pool_dilation}: pool output "
                f"size would be ({out_hw[0]} x {out_hw[1]})"
            )


def run_conv_block(input, weight, bias, params: ConvBlockParams, backend: str, *, check: bool = True,
                   memo: Optional[ChoiceMemo] = None, native_args: Optional[List[int]] = None):
    """The block on normalised ``params`` (what ``conv_relu_maxpool2d`` and ``FusedConvBlock``
    call; ``backend`` is a checked name, '' for automatic).

    Autocast casts the tensors as it casts ``conv2d``'s. When the backend resolves to a
    compiled one, the block is one call of ``fusedops::native_conv_block``, which runs forward
    and backward in C++ (and checks the tensors itself, with the same messages: with
    ``check=False``, as the module passes, they are checked here only for the other
    backends). Otherwise the autograd Function runs the backend's kernels. Under
    torch.compile and torch.export the Function and the graph-level ops are traced, and the
    backend is resolved when the graph runs. A module passes its ``memo`` of choices and its
    ``native_args`` (``params.native_args()``), both kept between calls.
    """
    if _any_autocast():
        input, weight, bias = _autocast(input, weight, bias)
    if check or not isinstance(input, torch.Tensor):
        check_conv_block_tensors(input, weight, bias, params)
    graph = _needs_graph(input, weight, bias)
    if not torch.compiler.is_compiling():
        stamp = ChoiceMemo.stamp()
        channels_last = strictly_channels_last(input)
        facts = (channels_last, graph)
        chosen = memo.get(ChoiceMemo.key(input, weight, backend, facts)) if memo is not None else None
        if chosen is None:
            chosen = select_conv_block_backend(backend, input, weight, bias, params, graph, channels_last)
            if memo is not None:
                memo.put(ChoiceMemo.key(input, weight, backend, facts), chosen)
        if chosen.native:
            args = params.native_args() if native_args is None else native_args
            if memo is not None:
                memo.record_native(input, weight, facts, stamp)
            try:
                return _native_conv_block(input, weight, bias, args)
            except (ValueError, TypeError) as exc:  # its checks: also RuntimeErrors, as torch's (errors.py)
                raise from_native(exc) from None
        backend = chosen.name
    else:
        chosen = stamp = None  # traced: the graph-level ops resolve the backend when the graph runs
    if not check:
        _check_once(memo, check_conv_block_tensors, input, weight, bias, params)
    if memo is not None and chosen is not None:
        memo.record_python(ChoiceMemo.tensor_signature(input, weight, bias), facts, chosen, stamp)
    return run_conv_block_function(input, weight, bias, params, backend, chosen, graph)


def run_conv_block_function(input, weight, bias, params: ConvBlockParams, backend: str, chosen: Optional[Backend],
                            graph: bool):
    """The block on checked tensors through the autograd Function when the call records a
    graph (``graph``, see ``_needs_graph``), else its output alone; 3-D input is one unbatched
    image. In eager mode ``chosen`` is the backend object (not a native op) named ``backend``,
    whose kernels run directly; traced, it is None and the graph-level ops run, resolving
    ``backend`` when the graph runs."""
    unbatched = input.dim() == 3
    x = input.unsqueeze(0) if unbatched else input
    if graph:
        function = ConvReluMaxPool2dDualFunction if forward_ad_active() else ConvReluMaxPool2dFunction
        out = function.apply(x, weight, bias, params, backend, chosen)
    elif chosen is not None:
        out = chosen.conv_block_output(x, weight, bias, params)
    else:
        out, _ = torch.ops.fusedops.conv_block_forward(x, weight, bias, *params, backend)
    return out.squeeze(0) if unbatched else out


def select_conv_block_backend(backend: str, input, weight, bias, params: ConvBlockParams, graph: bool = True,
                              channels_last: Optional[bool] = None):
    """The backend that runs the block on these tensors (a cached choice, see backends.select:
    the weight's shape, ``params``, the input's layout (``channels_last``, derived from
    ``input`` when not given) and ``graph``, whether the call records a graph for backward,
    identify the problem)."""
    tensors = (input, weight) if bias is None else (input, weight, bias)
    if channels_last is None:
        channels_last = strictly_channels_last(input)
    return select(backend, tensors, "conv_relu_maxpool2d", lambda: conv_facts(weight, params, input, graph),
                  (weight.shape, params, channels_last, graph))


def linear(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    *,
    activation: Optional[str] = None,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """``act(input @ weight.T + bias)`` in one fused op.

    Shapes: ``input (..., in_features)`` (any number of leading dims, also none), ``weight
    (out_features, in_features)``, ``bias (out_features,)``; returns ``(..., out_features)``.
    ``activation`` is one of None, "relu", "gelu" (exact), "gelu_tanh", "silu".
    Differentiable in every tensor through a hand-written backward.
    """
    act = _args.check_activation(activation, ACTIVATIONS)
    return run_linear(input, weight, bias, act, check_backend_name(backend))


def check_linear_tensors(input, weight, bias) -> None:
    """Raise ``TypeError``/``ValueError`` naming the argument unless the tensors fit a linear."""
    for name, t in (("input", input), ("weight", weight)):
        if not isinstance(t, torch.Tensor):
            raise InputTypeError(f"linear: {name} must be a torch.Tensor, got {type(t).__name__}")
    if bias is not None and not isinstance(bias, torch.Tensor):
        raise InputTypeError(f"linear: bias must be a torch.Tensor or None, got {type(bias).__name__}")
    _args.check_float_tensor(input, "input")
    _args.check_float_tensor(weight, "weight", ref=input)
    if bias is not None:
        _args.check_float_tensor(bias, "bias", ref=input)
    if input.dim() < 1:
        raise InputValueError("linear: input must have at least 1 dimension (..., in_features), got a 0-D tensor")
    if weight.dim() != 2:
        raise InputValueError(
            f"linear: expected weight of shape (out_features, in_features), got a {weight.dim()}-D "
            f"tensor of shape {tuple(weight.shape)}"
        )
    if input.shape[-1] != weight.shape[1]:
        raise InputValueError(
            f"linear: input has {input.shape[-1]} features (last dim) but weight expects {weight.shape[1]}"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise InputValueError(f"linear: bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")


def run_linear(input, weight, bias, activation: str, backend: str, *, check: bool = True,
               memo: Optional[ChoiceMemo] = None) -> torch.Tensor:
    """The fused linear with a checked activation name ('' for none) and backend name ('' for
    automatic): one call of ``fusedops::native_linear`` when the backend resolves to a
    compiled one, else the autograd Function (see ``run_conv_block``, also for ``check`` and
    ``memo``)."""
    if _any_autocast():
        input, weight, bias = _autocast(input, weight, bias)
    if check or not isinstance(input, torch.Tensor):
        check_linear_tensors(input, weight, bias)
    if not torch.compiler.is_compiling():
        stamp = ChoiceMemo.stamp()
        chosen = memo.get(ChoiceMemo.key(input, weight, backend)) if memo is not None else None
        if chosen is None:
            chosen = select(backend, (input, weight) if bias is None else (input, weight, bias), "linear")
            if memo is not None:
                memo.put(ChoiceMemo.key(input, weight, backend), chosen)
        if chosen.native:
            if memo is not None:
                memo.record_native(input, weight, (), stamp)
            try:
                return _native_linear(input, weight, bias, activation)
            except (ValueError, TypeError) as exc:  # its checks: also RuntimeErrors, as torch's (errors.py)
                raise from_native(exc) from None
        backend = chosen.name
    else:
        chosen = stamp = None  # traced: the graph-level ops resolve the backend when the graph runs
    if not check:
        _check_once(memo, check_linear_tensors, input, weight, bias)
    if memo is not None and chosen is not None:
        memo.record_python(ChoiceMemo.tensor_signature(input, weight, bias), (), chosen, stamp)
    return run_linear_function(input, weight, bias, activation, backend, chosen)


def run_linear_function(input, weight, bias, activation: str, backend: str, chosen: Optional[Backend]):
    """The fused linear on checked tensors through the autograd Function when the call
    records a graph, else its output alone; ``backend`` and ``chosen`` as in
    :func:`run_conv_block_function` (chosen None: traced, the graph-level ops run)."""
    if _needs_graph(input, weight, bias):
        function = LinearDualFunction if forward_ad_active() else LinearFunction
        return function.apply(input, weight, bias, activation, backend, chosen)
    if chosen is not None:
        return chosen.linear_forward(input, weight, bias, activation)[0]
    out, _ = torch.ops.fusedops.linear_forward(input, weight, bias, activation, backend)
    return out
