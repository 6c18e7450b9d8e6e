"""Fused Conv2d + bias + ReLU + MaxPool2d: the math and the registered ops.

Forward, for input ``x (N, Cin, H, W)``, weight ``w (Cout, Cin/groups, KH, KW)``, bias ``b``:

    c = conv2d(x, w, b)                               (N, Cout, OH, OW), never saved
    y = max_pool2d(relu(c))                           (N, Cout, PH, PW)

Saved for backward: ``x``, ``w`` and ``offsets`` (N, Cout, PH, PW), one small integer per
pooled output: the row-major position ``kh * PKW + kw`` of the window's max inside its pool
window, or ``RELU_OFF`` (-1) where the ReLU gradient is zero (the max is <= 0, or the window
lies wholly in padding). Without pooling ``offsets`` is 0 (ReLU on) or -1 (off) per output.

Backward: un-pool ``dy`` through the offsets into the conv-output gradient ``dc`` (summing
where overlapping windows pick the same element), then ``dx = conv_transpose(dc, w)``,
``dw = correlate(x, dc)``, ``db = sum(dc)``.

Tangent (``conv_block_jvp``): with the offsets fixed the block is bilinear in ``(x, w)``
plus ``b``, so the output's tangent along ``(tx, tw, tb)`` is the pick at the offsets of
``conv(tx, w) + conv(x, tw) + tb`` (0 where the ReLU is off). It is the forward-mode
derivative and the adjoint of the backward's un-pool: the double backward
(``fusedops/ops/conv_block_autograd.py``) is built from it and the backward itself.

The reference implementation below composes torch ops (it is the oracle and the fallback);
kernel backends compute the same outputs and offsets themselves. The autograd Functions
built on the registered ops are in ``conv_block_autograd.py``.
"""

from __future__ import annotations

import functools
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .._args import conv_output_size, pool_output_size

RELU_OFF = -1


class ConvBlockParams(NamedTuple):
    """Normalised non-tensor arguments of the conv block (all explicit ints).

    ``padding`` is ``(top, bottom, left, right)``; ``pool_kernel_size`` is ``()`` for no
    pooling, else ``(kh, kw)``.
    """

    stride: Tuple[int, int]
    padding: Tuple[int, int, int, int]
    dilation: Tuple[int, int]
    groups: int
    pool_kernel_size: Tuple[int, ...]
    pool_stride: Tuple[int, int]
    pool_padding: Tuple[int, int]
    pool_dilation: Tuple[int, int]
    pool_ceil_mode: bool

    @property
    def has_pool(self) -> bool:
        return len(self.pool_kernel_size) == 2

    def conv_output_hw(self, input_hw: Sequence[int], kernel_hw: Sequence[int]) -> Tuple[int, int]:
        """Spatial size ``(OH, OW)`` of the (never materialised) conv output."""
        top, bottom, left, right = self.padding
        return (
            conv_output_size(input_hw[0], kernel_hw[0], self.stride[0], top + bottom, self.dilation[0]),
            conv_output_size(input_hw[1], kernel_hw[1], self.stride[1], left + right, self.dilation[1]),
        )

    def output_hw(self, input_hw: Sequence[int], kernel_hw: Sequence[int]) -> Tuple[int, int]:
        """Spatial size ``(PH, PW)`` of the block's output."""
        oh, ow = self.conv_output_hw(input_hw, kernel_hw)
        if not self.has_pool:
            return oh, ow
        return tuple(  # type: ignore[return-value]
            pool_output_size(size, k, s, p, d, self.pool_ceil_mode)
            for size, k, s, p, d in zip(
                (oh, ow), self.pool_kernel_size, self.pool_stride, self.pool_padding, self.pool_dilation
            )
        )

    def native_args(self) -> List[int]:
        """The arguments as the flat list ``fusedops::native_conv_block`` takes (one list, which
        the dispatcher converts faster than nine): stride (2), padding (4), dilation (2),
        groups, pooled (0/1), pool kernel, stride, padding, dilation (2 each), ceil mode."""
        pool = self.pool_kernel_size if self.has_pool else (1, 1)
        return [*self.stride, *self.padding, *self.dilation, self.groups, int(self.has_pool), *pool,
                *self.pool_stride, *self.pool_padding, *self.pool_dilation, int(self.pool_ceil_mode)]

    @classmethod
    def from_native_args(cls, args: Sequence[int]) -> ConvBlockParams:
        """Inverse of :meth:`native_args`."""
        a = list(args)
        return cls((a[0], a[1]), tuple(a[2:6]), (a[6], a[7]), a[8], (a[10], a[11]) if a[9] else (),
                   (a[12], a[13]), (a[14], a[15]), (a[16], a[17]), bool(a[18]))

    def offsets_dtype(self) -> torch.dtype:
        """Narrowest integer type holding a window offset and the -1 sentinel."""
        window = self.pool_kernel_size[0] * self.pool_kernel_size[1] if self.has_pool else 1
        if window <= 127:
            return torch.int8
        if window <= 32767:
            return torch.int16
        return torch.int32


def strictly_channels_last(t: torch.Tensor) -> bool:
    """Whether ``t`` is a 4-D channels_last tensor that is not also NCHW-contiguous (a tensor
    with one channel, or 1x1 planes, is both)."""
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def output_memory_format(t: torch.Tensor) -> torch.memory_format:
    """channels_last when ``t`` is channels_last-contiguous but not NCHW-contiguous."""
    return torch.channels_last if strictly_channels_last(t) else torch.contiguous_format


def _pad_for_conv(x: torch.Tensor, padding: Sequence[int]) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """Return ``(x', conv_padding)``: symmetric padding goes to conv, asymmetric is applied."""
    top, bottom, left, right = padding
    if top == bottom and left == right:
        return x, (top, left)
    return F.pad(x, (left, right, top, bottom)), (0, 0)


class _PoolTables(NamedTuple):
    """Index tables between max_pool2d's flat indices and the int window offsets, for one
    geometry (see :func:`_pool_tables`)."""

    rows: torch.Tensor  # (PH, 1) long: conv-output row of each window's top-left tap
    cols: torch.Tensor  # (1, PW) long: its column
    origins: torch.Tensor  # (PH, PW) long: its flat conv-plane index, rows * conv_w + cols
    offset_of_delta: Optional[torch.Tensor]  # (D,) offsets dtype: the offset of the tap ``delta``
    # past the origin; None where two taps share a delta (see _pool_tables)
    delta_of_offset: torch.Tensor  # (PKH * PKW + 1,) long: ``delta`` of an offset; [-1] (off) is 0


def _build_pool_tables(out_hw: Tuple[int, int], conv_w: int, p: ConvBlockParams, device) -> _PoolTables:
    (pkh, pkw), (sh, sw), (pt, pl), (dh, dw) = p.pool_kernel_size, p.pool_stride, p.pool_padding, p.pool_dilation
    rows = (torch.arange(out_hw[0], device=device) * sh - pt).view(-1, 1)
    cols = (torch.arange(out_hw[1], device=device) * sw - pl).view(1, -1)
    kh = torch.arange(pkh, device=device).view(-1, 1)
    kw = torch.arange(pkw, device=device).view(1, -1)
    deltas = (kh * (dh * conv_w) + kw * dw).flatten()
    offset_of_delta = None
    if (pkw - 1) * dw < dh * conv_w:  # a window row fits in a plane row: every tap has its own delta
        offset_of_delta = torch.zeros(int((pkh - 1) * dh * conv_w + (pkw - 1) * dw + 1), device=device,
                                      dtype=p.offsets_dtype())
        offset_of_delta[deltas] = torch.arange(pkh * pkw, device=device, dtype=p.offsets_dtype())
    return _PoolTables(rows, cols, rows * conv_w + cols, offset_of_delta, torch.cat([deltas, deltas.new_zeros(1)]))


_cached_pool_tables = functools.lru_cache(maxsize=64)(_build_pool_tables)


def _pool_tables(out_hw: Tuple[int, int], conv_w: int, p: ConvBlockParams, device: torch.device) -> _PoolTables:
    """The tables of one geometry, built once per device and kept (a few small tensors for each
    of up to 64 geometries). A tap ``(kh, kw)`` of the window at ``(ph, pw)`` is the conv-plane
    element ``origins[ph, pw] + delta`` with ``delta = kh * DH * conv_w + kw * DW``; its offset
    is ``kh * PKW + kw``. With them the reference turns indices into offsets and back in one or
    two tensor ops instead of a dozen (host time per call). ``delta`` names one tap only while
    a window row fits in a plane row (``(PKW - 1) * DW < DH * conv_w``); on narrower planes
    ``offset_of_delta`` is None and the forward computes rows and columns apart.

    Inside a CUDA-graph capture the tables are built fresh and not cached: the capture only
    records the ops that fill them, so a cached copy would hold memory no op has written yet."""
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return _build_pool_tables(out_hw, conv_w, p, device)
    return _cached_pool_tables(out_hw, conv_w, p, device)


def _conv_plane_indices(offsets: torch.Tensor, conv_hw: Sequence[int], p: ConvBlockParams) -> torch.Tensor:
    """Flat conv-plane index ``(N, C, PH * PW)`` long of the tap each pooled output's offset
    names; where the ReLU is off (offset -1) some index inside the plane."""
    n, c, ph, pw = offsets.shape
    tables = _pool_tables((ph, pw), conv_hw[1], p, offsets.device)
    # An offset of -1 indexes the table's last entry (0): the window's origin, clamped into the plane.
    flat = tables.delta_of_offset[offsets.long()] + tables.origins
    return flat.clamp_(0, conv_hw[0] * conv_hw[1] - 1).reshape(n, c, ph * pw)


def reference_forward(
    input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], p: ConvBlockParams
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pure-torch forward on 4-D input: returns ``(output, offsets)`` (see module docstring)."""
    x, conv_pad = _pad_for_conv(input, p.padding)
    conv = F.conv2d(x, weight, bias, p.stride, conv_pad, p.dilation, p.groups)
    fmt = output_memory_format(input)
    if not p.has_pool:
        # The ReLU runs in place on the conv output, which nothing else holds (one buffer the
        # size of the output, not two). RELU_OFF (-1) where its output is 0, 0 where it is not
        # (positive or NaN): the output converted to bool (``!= 0``), minus 1 in its int8 view.
        # On CPU that conversion is one vectorised pass; a comparison written into int8 or bool
        # runs a scalar loop and takes twice as long.
        out = conv.relu_()
        offsets = out.to(torch.bool).view(torch.int8).sub_(1)
        return out.contiguous(memory_format=fmt), offsets.contiguous(memory_format=fmt)
    out, indices = F.max_pool2d(
        conv.relu_(), p.pool_kernel_size, p.pool_stride, p.pool_padding, p.pool_dilation,
        p.pool_ceil_mode, return_indices=True,
    )
    conv_w = conv.shape[-1]
    tables = _pool_tables(tuple(out.shape[-2:]), conv_w, p, input.device)
    if tables.offset_of_delta is not None:
        # Where a window lies wholly in padding torch's index points outside it (and its max is
        # -inf, ReLU off below): clamped into the table, any offset does.
        delta = (indices - tables.origins).clamp_(0, tables.offset_of_delta.numel() - 1)
        offsets = tables.offset_of_delta[delta]
    else:  # a plane narrower than a window row: its row and column apart
        kh = (indices // conv_w - tables.rows) // p.pool_dilation[0]
        kw = (indices % conv_w - tables.cols) // p.pool_dilation[1]
        offsets = (kh * p.pool_kernel_size[1] + kw).to(p.offsets_dtype())
    # `out <= 0` covers a max of 0 (ReLU off), negative values and the -inf of windows that
    # lie wholly in padding; a NaN max is on.
    offsets.masked_fill_(out <= 0, RELU_OFF)
    return out.contiguous(memory_format=fmt), offsets.contiguous(memory_format=fmt)


def reference_output(
    input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], p: ConvBlockParams
) -> torch.Tensor:
    """The block's output alone (no offsets: nothing will be differentiated), as torch computes it
    (the ReLU in place on the conv output, which nothing else holds)."""
    x, conv_pad = _pad_for_conv(input, p.padding)
    out = F.conv2d(x, weight, bias, p.stride, conv_pad, p.dilation, p.groups).relu_()
    if p.has_pool:
        out = F.max_pool2d(out, p.pool_kernel_size, p.pool_stride, p.pool_padding, p.pool_dilation, p.pool_ceil_mode)
    return out.contiguous(memory_format=output_memory_format(input))


def unpool_gradient(
    grad_output: torch.Tensor, offsets: torch.Tensor, conv_hw: Sequence[int], p: ConvBlockParams
) -> torch.Tensor:
    """Scatter ``dy`` through ``offsets`` into the conv-output gradient ``(N, Cout, OH, OW)``.

    Elements picked by several overlapping windows receive the sum, as in max_pool2d's
    backward; windows with the ReLU off contribute nothing.
    """
    # dy where the ReLU is on, 0 where off (offsets -1 <= -0.5): ReLU's own backward rule, so a
    # NaN or Inf gradient is zeroed where the ReLU is off, as torch zeroes it.
    # The result overwrites the offsets' float copy: one buffer the size of ``dy``, not two
    # (threshold_backward would take the int8 offsets as they are, but its mixed-dtype path is
    # 10x slower on one CPU thread than this copy and the same-dtype kernel).
    mask = offsets.to(grad_output.dtype)
    grad = torch.ops.aten.threshold_backward.grad_input(grad_output, mask, -0.5, grad_input=mask)
    if not p.has_pool:
        return grad
    n, c, ph, pw = grad_output.shape
    flat = _conv_plane_indices(offsets, conv_hw, p)
    dconv = grad.new_zeros(n, c, conv_hw[0] * conv_hw[1])
    dconv.scatter_add_(2, flat.reshape(n, c, ph * pw), grad.reshape(n, c, ph * pw))
    return dconv.view(n, c, conv_hw[0], conv_hw[1])


def reference_jvp(
    input: torch.Tensor,
    weight: torch.Tensor,
    offsets: torch.Tensor,
    input_tangent: Optional[torch.Tensor],
    weight_tangent: Optional[torch.Tensor],
    bias_tangent: Optional[torch.Tensor],
    p: ConvBlockParams,
) -> torch.Tensor:
    """Pure-torch tangent of the output at fixed offsets (see :func:`conv_block_jvp` below)."""
    x, conv_pad = _pad_for_conv(input, p.padding)
    conv_hw = p.conv_output_hw(input.shape[-2:], weight.shape[-2:])
    dconv = input.new_zeros(input.shape[0], weight.shape[0], *conv_hw)
    if input_tangent is not None:
        tx, _ = _pad_for_conv(input_tangent, p.padding)
        dconv = dconv + F.conv2d(tx, weight, None, p.stride, conv_pad, p.dilation, p.groups)
    if weight_tangent is not None:
        dconv = dconv + F.conv2d(x, weight_tangent, None, p.stride, conv_pad, p.dilation, p.groups)
    if bias_tangent is not None:
        dconv = dconv + bias_tangent.view(1, -1, 1, 1)
    active = offsets >= 0
    if p.has_pool:
        n, c, ph, pw = offsets.shape
        flat = _conv_plane_indices(offsets, conv_hw, p)
        dconv = dconv.reshape(n, c, -1).gather(2, flat).view(n, c, ph, pw)
    out = torch.where(active, dconv, 0)
    return out.contiguous(memory_format=output_memory_format(input))


def reference_backward(
    grad_output: torch.Tensor,
    input: torch.Tensor,
    weight: torch.Tensor,
    offsets: torch.Tensor,
    p: ConvBlockParams,
    output_mask: Sequence[bool],
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pure-torch backward: ``(grad_input, grad_weight, grad_bias)``, empty where not asked."""
    conv_hw = p.conv_output_hw(input.shape[-2:], weight.shape[-2:])
    dconv = unpool_gradient(grad_output, offsets, conv_hw, p)
    x, conv_pad = _pad_for_conv(input, p.padding)
    # The bias gradient comes from the same call (oneDNN sums it inside its weight-gradient
    # pass on CPU) rather than from a separate reduction over ``dconv``.
    grad_input, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
        dconv, x, weight, weight.shape[:1], p.stride, conv_pad, p.dilation, False, (0, 0), p.groups,
        (output_mask[0], output_mask[1], output_mask[2]),
    )
    if output_mask[0]:
        if x is not input:  # asymmetric padding was applied: drop the padding's gradient
            top, left = p.padding[0], p.padding[2]
            grad_input = grad_input[..., top : top + input.shape[-2], left : left + input.shape[-1]]
        grad_input = grad_input.contiguous(memory_format=output_memory_format(input))
    else:
        grad_input = input.new_empty(0)
    grad_weight = grad_weight.contiguous() if output_mask[1] else input.new_empty(0)
    grad_bias = grad_bias if output_mask[2] else input.new_empty(0)
    return grad_input, grad_weight, grad_bias


# ---------------------------------------------------------------------------------------
# Registered ops. ``conv_block_forward``/``conv_block_backward`` are the graph-level ops
# (what torch.compile and torch.export record); their implementation, registered by
# fusedops.backends, runs the named backend ("" = automatic). ``native_*`` are the
# compiled kernels' ops defined in csrc/fusedops.cpp.
# ---------------------------------------------------------------------------------------

_PARAM_SCHEMA = (
    "int[2] stride, int[4] padding, int[2] dilation, int groups, int[] pool_kernel_size, "
    "int[2] pool_stride, int[2] pool_padding, int[2] pool_dilation"
)
FORWARD_SCHEMA = (
    f"(Tensor input, Tensor weight, Tensor? bias, {_PARAM_SCHEMA}, bool pool_ceil_mode, "
    "str backend) -> (Tensor, Tensor)"
)
BACKWARD_SCHEMA = (
    f"(Tensor grad_output, Tensor input, Tensor weight, Tensor offsets, {_PARAM_SCHEMA}, "
    "bool[3] output_mask, str backend) -> (Tensor, Tensor, Tensor)"
)

# The tangent of the output at fixed offsets: the linearisation of the block around the
# forward's max choices. It is the forward-mode derivative and, as the adjoint of the
# backward, the gradient of the backward with respect to ``grad_output`` (double backward).
JVP_SCHEMA = (
    "(Tensor input, Tensor weight, Tensor offsets, Tensor? input_tangent, Tensor? weight_tangent, "
    f"Tensor? bias_tangent, {_PARAM_SCHEMA}, str backend) -> Tensor"
)

torch.library.define("fusedops::conv_block_forward", FORWARD_SCHEMA)
torch.library.define("fusedops::conv_block_backward", BACKWARD_SCHEMA)
torch.library.define("fusedops::conv_block_jvp", JVP_SCHEMA)


def params_from_op_args(stride, padding, dilation, groups, pool_kernel_size, pool_stride,
                        pool_padding, pool_dilation, pool_ceil_mode=False) -> ConvBlockParams:
    """Rebuild :class:`ConvBlockParams` from the flat arguments of the registered ops."""
    return ConvBlockParams(
        tuple(stride), tuple(padding), tuple(dilation), groups, tuple(pool_kernel_size),
        tuple(pool_stride), tuple(pool_padding), tuple(pool_dilation), pool_ceil_mode,
    )


def fake_forward(input, weight, bias, *args):
    """Shapes, dtypes and layouts of ``(output, offsets)`` without computing them."""
    p = params_from_op_args(*args[:9])
    out_hw = p.output_hw(input.shape[-2:], weight.shape[-2:])
    shape = (input.shape[0], weight.shape[0], *out_hw)
    fmt = output_memory_format(input)
    out = input.new_empty(shape).contiguous(memory_format=fmt)
    offsets = input.new_empty(shape, dtype=p.offsets_dtype()).contiguous(memory_format=fmt)
    return out, offsets


def fake_backward(grad_output, input, weight, offsets, *args):
    """Shapes of ``(grad_input, grad_weight, grad_bias)`` (empty where not asked)."""
    output_mask = args[8]
    grad_input = (
        torch.empty_like(input, memory_format=output_memory_format(input)) if output_mask[0] else input.new_empty(0)
    )
    grad_weight = (
        torch.empty_like(weight, memory_format=torch.contiguous_format) if output_mask[1] else input.new_empty(0)
    )
    grad_bias = input.new_empty(weight.shape[0]) if output_mask[2] else input.new_empty(0)
    return grad_input, grad_weight, grad_bias


def fake_native_conv_block(input, weight, bias, native_args):
    """Output of ``fusedops::native_conv_block`` (also for unbatched ``(C, H, W)`` input)."""
    params = ConvBlockParams.from_native_args(native_args)
    if input.dim() == 3:
        return fake_forward(input.unsqueeze(0), weight, bias, *params)[0].squeeze(0)
    return fake_forward(input, weight, bias, *params)[0]


def fake_jvp(input, weight, offsets, *args):
    """Shape of the output tangent: the offsets' shape, the input's dtype and layout."""
    return torch.empty_like(offsets, dtype=input.dtype, memory_format=output_memory_format(input))


torch.library.register_fake("fusedops::conv_block_forward", lambda *a: fake_forward(*a[:-1]))
torch.library.register_fake("fusedops::conv_block_backward", lambda *a: fake_backward(*a[:-1]))
torch.library.register_fake("fusedops::conv_block_jvp", lambda *a: fake_jvp(*a[:-1]))

