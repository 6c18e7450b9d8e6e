"""Autograd of the fused linear: its Function, and a backward that can be differentiated.

First order: :class:`LinearFunction` saves ``input``, ``weight``, ``bias`` and what the
activation's derivative needs; its backward calls ``fusedops::linear_backward``.

Higher orders (``create_graph=True``). The backward is ``dz = dy * act'(z)``,
``gi = dz @ w``, ``gw = dz^T x``, ``gb = sum(dz)``. For incoming ``(ggi, ggw, ggb)``, with
``t = ggi @ w^T + x @ ggw^T + ggb`` (the fused linear without activation):

    d/d dy = t * act'(z)
    d/d z  = t * dy * act''(z)     gelu, gelu_tanh, silu: z depends on (x, w, b)
    d/d x  = dz @ ggw              = linear_backward(dy, x, ggw)[grad_input]
    d/d w  = dz^T ggi              = linear_backward(dy, ggi, w)[grad_weight]

The forward saves ``z`` outside the graph; when the backward is recorded,
:class:`_PreactivationOf` re-attaches it (no compute) so the ``d/d z`` term reaches
``(x, w, b)``. The backward op then runs through :class:`LinearBackward`; without a recorded
backward it is called directly, so the first-order path costs one grad-mode check.

Forward mode (inside a ``torch.autograd.forward_ad`` dual level): :class:`LinearDualFunction`
adds a ``jvp``, ``act'(z) * t`` with the same ``t`` built from the tangents.
"""

from __future__ import annotations

import torch

from .forward_mode import check_no_tangents
from .linear import activation_derivative, activation_second_derivative

_ops = torch.ops.fusedops

SMOOTH_ACTIVATIONS = ("gelu", "gelu_tanh", "silu")  # those whose saved state is z itself


def _asked(grads, mask):
    """The gradients that were asked for (None for the others)."""
    return [g if m else None for g, m in zip(grads, mask)]


def backward_op(grad_output, input, weight, saved, activation: str, output_mask, backend: str, kernels=None):
    """``fusedops::linear_backward``, recorded as a differentiable node when grad mode is on;
    else, given the backend's object (``kernels``, in eager mode), its kernels directly."""
    if torch.is_grad_enabled():
        return LinearBackward.apply(grad_output, input, weight, saved, activation, list(output_mask), backend)
    if kernels is not None:
        return kernels.linear_backward(grad_output, input, weight, saved, activation, list(output_mask))
    return _ops.linear_backward(grad_output, input, weight, saved, activation, list(output_mask), backend)


class LinearFunction(torch.autograd.Function):
    """Autograd node of the fused linear: saves ``input``, ``weight`` and the activation state.

    ``forward(input, weight, bias, activation: str, backend: str, kernels=None) -> output``;
    ``kernels`` as for ``ConvReluMaxPool2dFunction``.
    """

    @staticmethod
    def forward(ctx, input, weight, bias, activation: str, backend: str, kernels=None):
        return _forward(ctx, input, weight, bias, activation, backend, kernels)[0]

    @staticmethod
    def backward(ctx, grad_output):
        input, weight, saved, bias = ctx.saved_tensors
        check_no_tangents("FusedLinearBackward", grad_output, input, weight)
        needs = ctx.needs_input_grad
        mask = [needs[0], needs[1], ctx.has_bias and needs[2]]
        if torch.is_grad_enabled() and ctx.activation in SMOOTH_ACTIVATIONS:  # a recorded backward
            saved = _PreactivationOf.apply(saved, input, weight, bias, ctx.backend)
        grads = backward_op(grad_output, input, weight, saved, ctx.activation, mask, ctx.backend, ctx.kernels)
        return (*_asked(grads, mask), None, None, None)


class LinearDualFunction(LinearFunction):
    """:class:`LinearFunction` with forward-mode AD, for calls inside a dual level (as
    ``ConvReluMaxPool2dDualFunction``: torch.compile cannot trace a Function with a ``jvp``)."""

    @staticmethod
    def forward(ctx, input, weight, bias, activation: str, backend: str, kernels=None):
        out, saved = _forward(ctx, input, weight, bias, activation, backend, kernels)
        ctx.save_for_forward(input, weight, saved, bias)
        return out

    @staticmethod
    def jvp(ctx, input_tangent, weight_tangent, bias_tangent, *_):
        """The output's tangent ``act'(z) * (tx @ w^T + x @ tw^T + tb)``."""
        input, weight, saved, bias = ctx.saved_tensors
        act = ctx.activation
        if torch.is_grad_enabled() and act in SMOOTH_ACTIVATIONS:  # a backward through the tangent
            saved = _PreactivationOf.apply(saved, input, weight, bias, ctx.backend)
        shape = (*input.shape[:-1], weight.shape[0])
        t = _preactivation_tangent(shape, input, weight, input_tangent, weight_tangent, bias_tangent, ctx.backend)
        return _activation_tangent(t, saved, act, input.dtype)


def _forward(ctx, input, weight, bias, activation: str, backend: str, kernels):
    """The forward kernel and what the backward needs saved in ``ctx``: ``(output, saved)``."""
    if kernels is not None:
        out, saved = kernels.linear_forward(input, weight, bias, activation)
    else:
        out, saved = _ops.linear_forward(input, weight, bias, activation, backend)
    ctx.save_for_backward(input, weight, saved, bias)
    ctx.activation = activation
    ctx.backend = backend
    ctx.kernels = kernels
    ctx.has_bias = bias is not None
    return out, saved


class _PreactivationOf(torch.autograd.Function):
    """``z`` (the saved pre-activation) as a differentiable function of ``(input, weight, bias)``.

    Returns ``z`` unchanged (no compute); a gradient ``g`` of it goes back through the adjoint
    of ``z = input @ weight.T + bias``, the linear backward without activation.
    """

    @staticmethod
    def forward(ctx, z, input, weight, bias, backend: str):
        ctx.save_for_backward(input, weight)
        ctx.backend = backend
        ctx.has_bias = bias is not None
        return z.view_as(z)

    @staticmethod
    def backward(ctx, grad):
        input, weight = ctx.saved_tensors
        needs = ctx.needs_input_grad
        mask = [needs[1], needs[2], ctx.has_bias and needs[3]]
        grads = backward_op(grad, input, weight, input.new_empty(0), "", mask, ctx.backend)
        return (None, *_asked(grads, mask), None)


class LinearBackward(torch.autograd.Function):
    """``fusedops::linear_backward`` as a node whose own gradient is the formula above.

    ``forward(grad_output, input, weight, saved, activation, output_mask, backend)
    -> (grad_input, grad_weight, grad_bias)`` (empty where not asked).
    """

    @staticmethod
    def forward(ctx, grad_output, input, weight, saved, activation, output_mask, backend):
        grads = _ops.linear_backward(grad_output, input, weight, saved, activation, output_mask, backend)
        ctx.save_for_backward(grad_output, input, weight, saved)
        ctx.activation, ctx.output_mask, ctx.backend = activation, output_mask, backend
        ctx.mark_non_differentiable(*(g for g, m in zip(grads, output_mask) if not m))
        ctx.set_materialize_grads(False)
        return grads

    @staticmethod
    def backward(ctx, ggi, ggw, ggb):
        dy, x, w, saved = ctx.saved_tensors
        ggi, ggw, ggb = _asked((ggi, ggw, ggb), ctx.output_mask)
        needs, act, backend = ctx.needs_input_grad, ctx.activation, ctx.backend
        g_dy = g_x = g_w = g_saved = None
        if (needs[0] or needs[3]) and (ggi is not None or ggw is not None or ggb is not None):
            t = _preactivation_tangent(dy.shape, x, w, ggi, ggw, ggb, backend)
            g_dy = _activation_tangent(t, saved, act, dy.dtype) if needs[0] else None
            if act in SMOOTH_ACTIVATIONS and needs[3]:
                g_saved = (t * dy * activation_second_derivative(saved, act)).to(saved.dtype)
        if needs[1] and ggw is not None:
            g_x = backward_op(dy, x, ggw, saved, act, [True, False, False], backend)[0]
        if needs[2] and ggi is not None:
            g_w = backward_op(dy, ggi, w, saved, act, [False, True, False], backend)[1]
        return g_dy, g_x, g_w, g_saved, None, None, None


def _preactivation_tangent(shape, x, w, tx, tw, tb, backend):
    """``tx @ w^T + x @ tw^T + tb`` (absent terms are zero; at least one is given), through the
    fused linear; ``shape`` is the output's, which a bias term alone is expanded to."""
    t = None
    if tx is not None:
        t = LinearFunction.apply(tx, w, tb, "", backend)
        tb = None
    if tw is not None:
        term = LinearFunction.apply(x, tw, tb, "", backend)
        t = term if t is None else t + term
    elif t is None:
        t = tb.expand(shape)
    return t


def _activation_tangent(t, saved, activation: str, dtype):
    """``act'(z) * t`` from the saved activation state (the relu mask, or ``z``), in ``dtype``."""
    if activation == "":
        return t
    if activation == "relu":
        return torch.where(saved, t, 0)
    return (t * activation_derivative(saved, activation)).to(dtype)
