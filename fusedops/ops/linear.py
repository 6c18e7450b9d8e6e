"""Fused Linear + bias + activation: the math and the registered ops.

Forward, for ``x (..., K)``, ``w (N, K)``, ``b (N,)``:  ``z = x @ w.T + b``, ``y = act(z)``.

Saved for backward, besides ``x`` and ``w``: what ``act'`` needs and nothing more:
nothing for no activation, a bool mask ``z > 0`` (NaN counts as on, as in torch) for relu,
the pre-activation ``z`` for gelu, gelu_tanh and silu.

Backward: ``dz = dy * act'(z)``, ``dx = dz @ w``, ``dw = dz.T @ x`` (leading dims
flattened), ``db = sum(dz)``. The derivatives, computed in float32 (float64 for float64):

    relu       1[z > 0]
    gelu       Phi(z) + z * phi(z)                      Phi, phi: standard normal cdf, pdf
    gelu_tanh  0.5 (1 + t) + 0.5 z (1 - t^2) k (1 + 3 c z^2),
               t = tanh(k (z + c z^3)), k = sqrt(2 / pi), c = 0.044715
    silu       s (1 + z (1 - s)),  s = sigmoid(z)

The autograd Functions built on the registered ops are in ``linear_autograd.py``.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

ACTIVATIONS = (None, "relu", "gelu", "gelu_tanh", "silu")

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_GELU_TANH_C = 0.044715


def apply_activation(z: torch.Tensor, activation: str) -> torch.Tensor:
    """``act(z)`` with torch's definitions ('' = identity)."""
    if activation == "relu":
        return F.relu(z)
    if activation == "gelu":
        return F.gelu(z)
    if activation == "gelu_tanh":
        return F.gelu(z, approximate="tanh")
    if activation == "silu":
        return F.silu(z)
    return z


def activation_derivative(z: torch.Tensor, activation: str) -> torch.Tensor:
    """``act'(z)`` for gelu, gelu_tanh, silu, in float32 (float64 for float64 ``z``)."""
    z = z.to(torch.promote_types(z.dtype, torch.float32))
    if activation == "gelu":
        return 0.5 * (1.0 + torch.erf(z * _INV_SQRT_2)) + z * torch.exp(-0.5 * z * z) * _INV_SQRT_2PI
    if activation == "gelu_tanh":
        t = torch.tanh(_SQRT_2_OVER_PI * (z + _GELU_TANH_C * z * z * z))
        return 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * _SQRT_2_OVER_PI * (
            1.0 + 3.0 * _GELU_TANH_C * z * z
        )
    if activation == "silu":
        s = torch.sigmoid(z)
        return s * (1.0 + z * (1.0 - s))
    raise ValueError(f"no derivative for activation {activation!r}")


def activation_second_derivative(z: torch.Tensor, activation: str) -> torch.Tensor:
    """``act''(z)`` for gelu, gelu_tanh, silu, in float32 (float64 for float64 ``z``).

    gelu: ``phi(z) (2 - z^2)``; gelu_tanh: ``(1 - t^2) (u' - z t u'^2 + z u''/2)`` with
    ``u = k (z + c z^3)``, ``t = tanh(u)``; silu: ``s (1 - s) (2 + z (1 - 2 s))``.
    """
    z = z.to(torch.promote_types(z.dtype, torch.float32))
    if activation == "gelu":
        return torch.exp(-0.5 * z * z) * _INV_SQRT_2PI * (2.0 - z * z)
    if activation == "gelu_tanh":
        t = torch.tanh(_SQRT_2_OVER_PI * (z + _GELU_TANH_C * z * z * z))
        du = _SQRT_2_OVER_PI * (1.0 + 3.0 * _GELU_TANH_C * z * z)
        d2u = _SQRT_2_OVER_PI * 6.0 * _GELU_TANH_C * z
        return (1.0 - t * t) * (du - z * t * du * du + 0.5 * z * d2u)
    if activation == "silu":
        s = torch.sigmoid(z)
        return s * (1.0 - s) * (2.0 + z * (1.0 - 2.0 * s))
    raise ValueError(f"no second derivative for activation {activation!r}")


def reference_forward(
    input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], activation: str
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pure-torch forward: returns ``(output, saved)`` (see module docstring)."""
    z = F.linear(input, weight, bias)
    if activation == "":
        return z, input.new_empty(0)
    out = apply_activation(z, activation)
    if activation == "relu":
        return out, ~(z <= 0)
    return out, z


def reference_backward(
    grad_output: torch.Tensor,
    input: torch.Tensor,
    weight: torch.Tensor,
    saved: torch.Tensor,
    activation: str,
    output_mask: Sequence[bool],
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pure-torch backward: ``(grad_input, grad_weight, grad_bias)``, empty where not asked."""
    if activation == "":
        dz = grad_output
    elif activation == "relu":
        dz = torch.where(saved, grad_output, 0)
    else:
        dz = (grad_output * activation_derivative(saved, activation)).to(grad_output.dtype)
    dz2 = dz.reshape(dz.shape[:-1].numel(), weight.shape[0])  # not -1: 0 features would make it ambiguous
    grad_input = (dz @ weight) if output_mask[0] else input.new_empty(0)
    rows = input.reshape(input.shape[:-1].numel(), weight.shape[1])
    grad_weight = (dz2.t() @ rows) if output_mask[1] else input.new_empty(0)
    grad_bias = dz2.sum(0) if output_mask[2] else input.new_empty(0)
    return grad_input, grad_weight, grad_bias


# Graph-level registered ops (implementation registered by fusedops.backends).
FORWARD_SCHEMA = (
    "(Tensor input, Tensor weight, Tensor? bias, str activation, str backend) -> (Tensor, Tensor)"
)
BACKWARD_SCHEMA = (
    "(Tensor grad_output, Tensor input, Tensor weight, Tensor saved, str activation, "
    "bool[3] output_mask, str backend) -> (Tensor, Tensor, Tensor)"
)
torch.library.define("fusedops::linear_forward", FORWARD_SCHEMA)
torch.library.define("fusedops::linear_backward", BACKWARD_SCHEMA)


def fake_forward(input, weight, bias, activation):
    """Shapes and dtypes of ``(output, saved)``."""
    shape = (*input.shape[:-1], weight.shape[0])
    out = input.new_empty(shape)
    if activation == "":
        return out, input.new_empty(0)
    if activation == "relu":
        return out, input.new_empty(shape, dtype=torch.bool)
    return out, input.new_empty(shape)


def fake_native_linear(input, weight, bias, activation):
    """Output of ``fusedops::native_linear``."""
    return fake_forward(input, weight, bias, activation)[0]


def fake_backward(grad_output, input, weight, saved, activation, output_mask):
    """Shapes of ``(grad_input, grad_weight, grad_bias)`` (empty where not asked)."""
    return (
        input.new_empty(input.shape) if output_mask[0] else input.new_empty(0),
        weight.new_empty(weight.shape) if output_mask[1] else input.new_empty(0),
        weight.new_empty(weight.shape[0]) if output_mask[2] else input.new_empty(0),
    )


torch.library.register_fake("fusedops::linear_forward", lambda *a: fake_forward(*a[:-1]))
torch.library.register_fake("fusedops::linear_backward", lambda *a: fake_backward(*a[:-1]))

