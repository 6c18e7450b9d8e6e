"""Drop-in modules: ``FusedConvBlock`` (Conv2d + ReLU + MaxPool2d) and ``FusedLinear``.

Parameters, shapes, initialisation and ``state_dict`` keys are those of ``nn.Conv2d`` and
``nn.Linear``, so their state dicts load into these modules and back.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import _args
from .backends import ChoiceMemo, check_backend_available, check_backend_name
from .errors import from_native
from .functional import (
    _typed_conv_block,
    _typed_linear,
    conv_block_params,
    run_conv_block,
    run_conv_block_function,
    run_linear,
    run_linear_function,
)
from .ops.conv_block import strictly_channels_last
from .ops.forward_mode import forward_ad_active
from .ops.linear import ACTIVATIONS

__all__ = ["FusedConvBlock", "FusedLinear"]

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def _reset_like_torch(weight: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
    """The initialisation of ``nn.Conv2d`` and ``nn.Linear`` (same calls, same RNG draws)."""
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    if bias is not None:
        fan_in, _ = nn.init._calculate_fan_in_and_fan_out(weight)
        if fan_in != 0:
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(bias, -bound, bound)


def _weight_and_bias(module: nn.Module):
    """``(module.weight, module.bias)``, read from ``module._parameters`` where they are
    registered there: ``nn.Module.__getattr__`` costs about 1 us per parameter on every call.
    A parametrised or re-assigned attribute (not in ``_parameters``) is read as an attribute."""
    params = module._parameters
    weight = params["weight"] if "weight" in params else module.weight
    bias = params["bias"] if "bias" in params else module.bias
    return weight, bias


def _positive_int(value, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class FusedConvBlock(nn.Module):
    """``nn.Sequential(nn.Conv2d(...), nn.ReLU(), nn.MaxPool2d(...))`` as one fused op.

    Arguments are those of ``nn.Conv2d`` followed by the keyword-only pool arguments of
    :func:`fusedops.conv_relu_maxpool2d` (``pool_kernel_size=None``: no pooling).
    Parameters ``weight (out_channels, in_channels / groups, kH, kW)`` and ``bias
    (out_channels,)`` are initialised as ``nn.Conv2d`` initialises them.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
        *,
        pool_kernel_size=2,
        pool_stride=None,
        pool_padding=0,
        pool_dilation=1,
        pool_ceil_mode: bool = False,
        backend: Optional[str] = None,
    ):
        super().__init__()
        _positive_int(in_channels, "in_channels")
        _positive_int(out_channels, "out_channels")
        _positive_int(groups, "groups")
        if in_channels % groups != 0:
            raise ValueError(f"in_channels ({in_channels}) must be divisible by groups ({groups})")
        if out_channels % groups != 0:
            raise ValueError(f"out_channels ({out_channels}) must be divisible by groups ({groups})")
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {list(PADDING_MODES)}, got {padding_mode!r}")
        # Validates every argument (raises on bad ones).
        params = conv_block_params(
            kernel_size, stride, padding, dilation, groups, pool_kernel_size, pool_stride,
            pool_padding, pool_dilation, pool_ceil_mode,
        )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _args.pair(kernel_size, "kernel_size", minimum=1)
        self.stride = params.stride
        self.padding = padding if isinstance(padding, str) else _args.pair(padding, "padding", minimum=0)
        self.dilation = params.dilation
        self.groups = groups
        self.padding_mode = padding_mode
        self.pool_kernel_size = params.pool_kernel_size or None
        self.pool_stride = params.pool_stride if params.has_pool else None
        self.pool_padding = params.pool_padding
        self.pool_dilation = params.pool_dilation
        self.pool_ceil_mode = params.pool_ceil_mode
        self.backend = check_backend_available(backend) or None
        self._normalise()

        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels // groups, *self.kernel_size, **factory)
        )
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-initialise ``weight`` and ``bias`` as ``nn.Conv2d.reset_parameters`` does."""
        _reset_like_torch(self.weight, self.bias)

    # Attributes the block's normalised arguments are derived from: setting one re-derives them.
    _GEOMETRY = frozenset((
        "kernel_size", "stride", "padding", "dilation", "groups", "padding_mode", "pool_kernel_size",
        "pool_stride", "pool_padding", "pool_dilation", "pool_ceil_mode", "backend",
    ))

    def __setattr__(self, name, value):
        if name == "backend" and "_block_args" in self.__dict__:
            check_backend_available(value)  # a backend set later is checked as at construction
        super().__setattr__(name, value)
        if name in self._GEOMETRY and "_block_args" in self.__dict__:
            self._normalise()

    def _normalise(self) -> None:
        """Derive, once, what every forward needs: the normalised ConvBlockParams and the
        backend's checked name; for padding modes other than 'zeros' the padding is applied by
        F.pad first, as ``nn.Conv2d`` does, with ``_reversed_padding_repeated_twice``."""
        params = conv_block_params(
            self.kernel_size, self.stride, self.padding, self.dilation, self.groups, self.pool_kernel_size,
            self.pool_stride, self.pool_padding, self.pool_dilation, self.pool_ceil_mode,
        )
        top, bottom, left, right = params.padding
        self.__dict__["_reversed_padding_repeated_twice"] = (left, right, top, bottom)
        if self.padding_mode != "zeros":
            params = params._replace(padding=(0, 0, 0, 0))
        self.__dict__["_block_args"] = (params, check_backend_name(self.backend), params.native_args())
        self.__dict__["_choices"] = ChoiceMemo()

    def __setstate__(self, state):
        super().__setstate__(state)
        if "_block_args" not in self.__dict__:  # pickled by an older fusedops
            self._normalise()

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
        params, backend, native_args = self._block_args
        weight, bias = _weight_and_bias(self)
        memo = self._choices
        if (not torch.compiler.is_compiling() and (memo.native_call is not None or memo.python_call is not None)
                and type(input) is torch.Tensor):  # traced calls read no memo state (it would become guards)
            graph = (torch.is_grad_enabled() and (
                input.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad))
            ) or forward_ad_active()  # the facts run_conv_block records (its _needs_graph)
            facts = (strictly_channels_last(input), graph)
            if memo.native_call is not None and memo.native_again(input, weight, bias, facts):
                try:  # straight to the op (see ChoiceMemo.native_again)
                    return _typed_conv_block(input, weight, bias, native_args)
                except (ValueError, TypeError) as exc:
                    raise from_native(exc) from None
            chosen = memo.python_again(input, weight, bias, facts)
            if chosen is not None:  # straight to the Function (see ChoiceMemo.python_again)
                return run_conv_block_function(input, weight, bias, params, chosen.name, chosen, graph)
        return run_conv_block(input, weight, bias, params, backend, check=False, memo=memo, native_args=native_args)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding not in ((0, 0), "valid"):
            s += f", padding={self.padding!r}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        s += ", relu"
        if self.pool_kernel_size is None:
            s += ", no pool"
        else:
            s += f", pool_kernel_size={self.pool_kernel_size}, pool_stride={self.pool_stride}"
            if self.pool_padding != (0, 0):
                s += f", pool_padding={self.pool_padding}"
            if self.pool_dilation != (1, 1):
                s += f", pool_dilation={self.pool_dilation}"
            if self.pool_ceil_mode:
                s += ", pool_ceil_mode=True"
        return s + f", backend={self.backend or 'auto'}"

    @classmethod
    def from_modules(
        cls,
        conv: nn.Conv2d,
        relu: Optional[nn.Module] = None,
        pool: Optional[nn.MaxPool2d] = None,
        *,
        backend: Optional[str] = None,
    ) -> FusedConvBlock:
        """Build a block computing ``pool(relu(conv(x)))`` with a copy of ``conv``'s parameters.

        ``relu`` may be ``None`` or an ``nn.ReLU`` (the block always applies ReLU);
        ``pool=None`` gives a block without pooling.
        """
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
        if relu is not None and not isinstance(relu, nn.ReLU):
            raise TypeError(f"relu must be an nn.ReLU or None, got {type(relu).__name__}")
        if pool is not None:
            if not isinstance(pool, nn.MaxPool2d):
                raise TypeError(f"pool must be an nn.MaxPool2d or None, got {type(pool).__name__}")
            if pool.return_indices:
                raise ValueError("pool must not have return_indices=True: the block returns one tensor")
        pool_args = (
            {"pool_kernel_size": None}
            if pool is None
            else {
                "pool_kernel_size": pool.kernel_size,
                "pool_stride": pool.stride,
                "pool_padding": pool.padding,
                "pool_dilation": pool.dilation,
                "pool_ceil_mode": pool.ceil_mode,
            }
        )
        block = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
            conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode,
            device=conv.weight.device, dtype=conv.weight.dtype, backend=backend, **pool_args,
        )
        with torch.no_grad():
            block.weight.copy_(conv.weight)
            if conv.bias is not None:
                block.bias.copy_(conv.bias)
        block.train(conv.training)
        return block

    def to_modules(self) -> nn.Sequential:
        """``nn.Sequential(Conv2d, ReLU[, MaxPool2d])`` computing the same with copied parameters."""
        p = self.weight
        conv = nn.Conv2d(
            self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
            self.dilation, self.groups, self.bias is not None, self.padding_mode,
            device=p.device, dtype=p.dtype,
        )
        with torch.no_grad():
            conv.weight.copy_(self.weight)
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        layers = [conv, nn.ReLU()]
        if self.pool_kernel_size is not None:
            layers.append(
                nn.MaxPool2d(
                    self.pool_kernel_size, self.pool_stride, self.pool_padding, self.pool_dilation,
                    ceil_mode=self.pool_ceil_mode,
                )
            )
        return nn.Sequential(*layers).train(self.training)


_ACTIVATION_MODULES = {"relu": nn.ReLU, "gelu": nn.GELU, "gelu_tanh": nn.GELU, "silu": nn.SiLU}


def _activation_name(module: Optional[nn.Module]) -> Optional[str]:
    if module is None:
        return None
    if isinstance(module, nn.ReLU):
        return "relu"
    if isinstance(module, nn.GELU):
        return "gelu" if module.approximate == "none" else "gelu_tanh"
    if isinstance(module, nn.SiLU):
        return "silu"
    raise TypeError(f"activation must be an nn.ReLU, nn.GELU, nn.SiLU or None, got {type(module).__name__}")


class FusedLinear(nn.Module):
    """``nn.Linear`` optionally followed by its activation, as one fused op.

    Parameters ``weight (out_features, in_features)`` and ``bias (out_features,)`` are
    initialised as ``nn.Linear`` initialises them; ``activation`` is None, "relu", "gelu",
    "gelu_tanh" or "silu".
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device=None,
        dtype=None,
        *,
        activation: Optional[str] = None,
        backend: Optional[str] = None,
    ):
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")
        self.in_features = in_features
        self.out_features = out_features
        self.activation = _args.check_activation(activation, ACTIVATIONS) or None
        self.backend = check_backend_available(backend) or None
        self._choices = ChoiceMemo()
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-initialise ``weight`` and ``bias`` as ``nn.Linear.reset_parameters`` does."""
        _reset_like_torch(self.weight, self.bias)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        weight, bias = _weight_and_bias(self)
        memo = self._choices
        if not torch.compiler.is_compiling():  # traced calls read no memo state (it would become guards)
            if memo.native_again(input, weight, bias):
                try:  # straight to the op (see ChoiceMemo.native_again)
                    return _typed_linear(input, weight, bias, self.activation or "")
                except (ValueError, TypeError) as exc:
                    raise from_native(exc) from None
            if memo.python_call is not None:
                chosen = memo.python_again(input, weight, bias)
                if chosen is not None:  # straight to the Function (see ChoiceMemo.python_again)
                    return run_linear_function(input, weight, bias, self.activation or "", chosen.name, chosen)
        return run_linear(input, weight, bias, self.activation or "", self.backend or "", check=False, memo=memo)

    def __setattr__(self, name, value):
        if name == "backend" and "_choices" in self.__dict__:
            check_backend_available(value)  # a backend set later is checked as at construction
        super().__setattr__(name, value)
        if name == "backend":
            self.__dict__["_choices"] = ChoiceMemo()

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__dict__.setdefault("_choices", ChoiceMemo())  # pickled by an older fusedops

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, activation={self.activation}, backend={self.backend or 'auto'}"
        )

    @classmethod
    def from_modules(
        cls, linear: nn.Linear, activation: Optional[nn.Module] = None, *, backend: Optional[str] = None
    ) -> FusedLinear:
        """Build a fused layer from ``linear`` (parameters copied) and an optional activation module."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        module = cls(
            linear.in_features, linear.out_features, linear.bias is not None,
            device=linear.weight.device, dtype=linear.weight.dtype,
            activation=_activation_name(activation), backend=backend,
        )
        with torch.no_grad():
            module.weight.copy_(linear.weight)
            if linear.bias is not None:
                module.bias.copy_(linear.bias)
        module.train(linear.training)
        return module

    def to_modules(self) -> nn.Module:
        """``nn.Linear`` (or ``nn.Sequential(Linear, activation)``) with copied parameters."""
        p = self.weight
        lin = nn.Linear(self.in_features, self.out_features, self.bias is not None, device=p.device, dtype=p.dtype)
        with torch.no_grad():
            lin.weight.copy_(self.weight)
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        if self.activation is None:
            return lin.train(self.training)
        act = nn.GELU(approximate="tanh") if self.activation == "gelu_tanh" else _ACTIVATION_MODULES[self.activation]()
        return nn.Sequential(lin, act).train(self.training)
