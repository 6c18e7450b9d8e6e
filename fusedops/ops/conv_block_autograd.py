"""Autograd of the fused conv block: its Function, and a backward that can be differentiated.

First order: :class:`ConvReluMaxPool2dFunction` saves ``input``, ``weight`` and the int
offsets; its backward calls ``fusedops::conv_block_backward`` on the chosen backend.

Higher orders (``create_graph=True``: gradient penalties, Hessian-vector products,
``gradgradcheck``). With the offsets fixed (they are piecewise constant in every input), the
backward is ``dc = unpool(dy)``, ``gi = conv_transpose(dc, w)``, ``gw = correlate(x, dc)``,
``gb = sum(dc)``: linear in ``dy``, bilinear in ``(dy, x)`` and ``(dy, w)``. For incoming
``(ggi, ggw, ggb)``:

    d/d dy = pick at the offsets of  conv(ggi, w) + conv(x, ggw) + ggb   = conv_block_jvp
    d/d x  = conv_transpose(dc, ggw)     = conv_block_backward(dy, x, ggw)[grad_input]
    d/d w  = correlate(ggi, dc)          = conv_block_backward(dy, ggi, w)[grad_weight]

and ``conv_block_jvp`` (bilinear in the same way) differentiates back into the backward op,
so every order is closed over the two ops and runs the same backend's kernels. When the
backward is recorded (grad mode on inside it), the two ops run through the Functions
:class:`ConvBlockBackward` and :class:`ConvBlockJvp`; otherwise they are called directly, so
the first-order path costs one grad-mode check.

Forward mode (inside a ``torch.autograd.forward_ad`` dual level):
:class:`ConvReluMaxPool2dDualFunction` adds a ``jvp``, the tangent op at the forward's
offsets, recorded through :class:`ConvBlockJvp` when grad mode is on (reverse over forward).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from .conv_block import ConvBlockParams
from .forward_mode import check_no_tangents

_ops = torch.ops.fusedops


def _asked(grads, mask):
    """The incoming gradients of the outputs that were computed (None for the others)."""
    return [g if m else None for g, m in zip(grads, mask)]


def backward_op(grad_output, input, weight, offsets, params: Sequence, output_mask, backend: str, kernels=None):
    """``fusedops::conv_block_backward`` (``params``: the first 8 of :class:`ConvBlockParams`),
    recorded as a differentiable node when grad mode is on; else, given the backend's object
    (``kernels``, in eager mode), its kernels are called directly."""
    if torch.is_grad_enabled():
        return ConvBlockBackward.apply(grad_output, input, weight, offsets, tuple(params), list(output_mask), backend)
    if kernels is not None:
        return kernels.conv_block_backward(grad_output, input, weight, offsets, params, list(output_mask))
    return _ops.conv_block_backward(grad_output, input, weight, offsets, *params[:8], list(output_mask), backend)


def jvp_op(input, weight, offsets, input_tangent: Optional[torch.Tensor], weight_tangent: Optional[torch.Tensor],
           bias_tangent: Optional[torch.Tensor], params: Sequence, backend: str):
    """``fusedops::conv_block_jvp``, recorded as a differentiable node when grad mode is on."""
    if torch.is_grad_enabled():
        return ConvBlockJvp.apply(input, weight, offsets, input_tangent, weight_tangent, bias_tangent,
                                  tuple(params), backend)
    return _ops.conv_block_jvp(input, weight, offsets, input_tangent, weight_tangent, bias_tangent, *params[:8],
                               backend)


class ConvReluMaxPool2dFunction(torch.autograd.Function):
    """Autograd node of the fused block: saves ``input``, ``weight`` and the int offsets.

    ``forward(input, weight, bias, params: ConvBlockParams, backend: str, kernels=None) -> output``
    with 4-D ``input``; ``backward`` un-pools through the offsets (see ``conv_block.py``).
    ``kernels`` is the resolved backend object in eager mode: its kernels are called directly.
    Without it (under torch.compile / torch.export) the graph-level ops run, which resolve
    ``backend`` when the graph runs.
    """

    @staticmethod
    def forward(ctx, input, weight, bias, params: ConvBlockParams, backend: str, kernels=None):
        return _forward(ctx, input, weight, bias, params, backend, kernels)[0]

    @staticmethod
    def backward(ctx, grad_output):
        input, weight, offsets = ctx.saved_tensors
        check_no_tangents("FusedConvBlockBackward", grad_output, input, weight)
        needs = ctx.needs_input_grad
        mask = [needs[0], needs[1], ctx.has_bias and needs[2]]
        grads = backward_op(grad_output, input, weight, offsets, ctx.params, mask, ctx.backend, ctx.kernels)
        return (*_asked(grads, mask), None, None, None)


class ConvReluMaxPool2dDualFunction(ConvReluMaxPool2dFunction):
    """:class:`ConvReluMaxPool2dFunction` with forward-mode AD, for calls inside a dual level
    (``torch.autograd.forward_ad``): torch.compile cannot trace a Function that has a ``jvp``,
    so the plain one is used everywhere else."""

    @staticmethod
    def forward(ctx, input, weight, bias, params: ConvBlockParams, backend: str, kernels=None):
        out, offsets = _forward(ctx, input, weight, bias, params, backend, kernels)
        ctx.save_for_forward(input, weight, offsets)
        return out

    @staticmethod
    def jvp(ctx, input_tangent, weight_tangent, bias_tangent, *_):
        """The output's tangent: the tangent op at the forward's offsets (the max positions
        held fixed, as torch's max_pool2d tangent does)."""
        input, weight, offsets = ctx.saved_tensors
        return jvp_op(input, weight, offsets, input_tangent, weight_tangent, bias_tangent, ctx.params, ctx.backend)


def _forward(ctx, input, weight, bias, params: ConvBlockParams, backend: str, kernels):
    """The forward kernel and what the backward needs saved in ``ctx``: ``(output, offsets)``."""
    if kernels is not None:
        out, offsets = kernels.conv_block_forward(input, weight, bias, params)
    else:
        out, offsets = _ops.conv_block_forward(input, weight, bias, *params, backend)
    ctx.save_for_backward(input, weight, offsets)
    ctx.params = params
    ctx.backend = backend
    ctx.kernels = kernels
    ctx.has_bias = bias is not None
    return out, offsets


class ConvBlockBackward(torch.autograd.Function):
    """``fusedops::conv_block_backward`` as a node whose own gradient is the formula above.

    ``forward(grad_output, input, weight, offsets, params, output_mask, backend)
    -> (grad_input, grad_weight, grad_bias)`` (empty where not asked).
    """

    @staticmethod
    def forward(ctx, grad_output, input, weight, offsets, params, output_mask, backend):
        params = tuple(params[:8])
        grads = _ops.conv_block_backward(grad_output, input, weight, offsets, *params, output_mask, backend)
        ctx.save_for_backward(grad_output, input, weight, offsets)
        ctx.params, ctx.output_mask, ctx.backend = params, output_mask, backend
        ctx.mark_non_differentiable(*(g for g, m in zip(grads, output_mask) if not m))
        ctx.set_materialize_grads(False)
        return grads

    @staticmethod
    def backward(ctx, ggi, ggw, ggb):
        dy, x, w, offsets = ctx.saved_tensors
        ggi, ggw, ggb = _asked((ggi, ggw, ggb), ctx.output_mask)
        needs, p, backend = ctx.needs_input_grad, ctx.params, ctx.backend
        g_dy = g_x = g_w = None
        if needs[0] and (ggi is not None or ggw is not None or ggb is not None):
            g_dy = jvp_op(x, w, offsets, ggi, ggw, ggb, p, backend)
        if needs[1] and ggw is not None:
            g_x = backward_op(dy, x, ggw, offsets, p, [True, False, False], backend)[0]
        if needs[2] and ggi is not None:
            g_w = backward_op(dy, ggi, w, offsets, p, [False, True, False], backend)[1]
        return g_dy, g_x, g_w, None, None, None, None


class ConvBlockJvp(torch.autograd.Function):
    """``fusedops::conv_block_jvp`` as a differentiable node: the tangent is linear in
    ``(tx, tw, tb)`` (its gradient there is the block's backward at ``(x, w)``) and bilinear
    in ``(x, tw)`` and ``(tx, w)``.

    ``forward(input, weight, offsets, input_tangent, weight_tangent, bias_tangent, params,
    backend) -> output tangent``.
    """

    @staticmethod
    def forward(ctx, input, weight, offsets, input_tangent, weight_tangent, bias_tangent, params, backend):
        params = tuple(params[:8])
        ctx.save_for_backward(input, weight, offsets, input_tangent, weight_tangent)
        ctx.params, ctx.backend = params, backend
        ctx.set_materialize_grads(False)
        return _ops.conv_block_jvp(input, weight, offsets, input_tangent, weight_tangent, bias_tangent, *params,
                                   backend)

    @staticmethod
    def backward(ctx, grad):
        x, w, offsets, tx, tw = ctx.saved_tensors
        needs, p, backend = ctx.needs_input_grad, ctx.params, ctx.backend
        grads = [None] * 8
        if grad is None:
            return tuple(grads)
        mask = [needs[3], needs[4], needs[5]]
        if any(mask):
            grads[3:6] = _asked(backward_op(grad, x, w, offsets, p, mask, backend), mask)
        if needs[0] and tw is not None:
            grads[0] = backward_op(grad, x, tw, offsets, p, [True, False, False], backend)[0]
        if needs[1] and tx is not None:
            grads[1] = backward_op(grad, tx, w, offsets, p, [False, True, False], backend)[1]
        return tuple(grads)
