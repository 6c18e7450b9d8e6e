"""The cpp linear's float32 activations (csrc/cpu/vector_math.h: branch-free exp and erf that
vectorise; gelu_tanh through sigmoid(2u)), over the whole float range: each activation and its derivative within twice
torch's own float32 error of the float64 result, band by band of the input, and the same
infinities and NaNs as the float64 formula.

The kernel computes y = act(z) with z = x @ w^T: an input column x and a weight of 1 make z
exactly x, and a gradient of ones with that weight makes the input gradient exactly act'(x)."""

import math

import pytest
import torch
import torch.nn.functional as F

import fusedops
from fusedops import backends

ACTS = ["gelu", "gelu_tanh", "silu"]
# Bands of the input: where erf and exp are near their limits (saturation, underflow of
# exp(-x^2), overflow of exp(-x) for silu), in their curved middle, and near 0.
BANDS = [(-math.inf, -20.0), (-20.0, -5.0), (-5.0, -1.0), (-1.0, 1.0), (1.0, 5.0), (5.0, 20.0), (20.0, math.inf)]
SPECIAL = [0.0, -0.0, 1e-30, -1e-30, 1e-40, -1e-40, 1e-45, 44.0, -44.0, 87.0, -87.0, 88.7, -88.7, 89.5, -89.5,
           104.0, -104.0, 1e6, -1e6, math.inf, -math.inf, math.nan]


@pytest.fixture(autouse=True)
def _needs_cpp():
    if "cpp" not in fusedops.available_backends():
        pytest.fail(f"the cpp backend must be built here: {backends._REGISTRY['cpp'].unavailable_reason()}")


def _inputs():
    gen = torch.Generator().manual_seed(0)
    return torch.cat([
        torch.linspace(-30, 30, 300001),
        torch.randn(100000, generator=gen) * 0.01,
        torch.randn(100000, generator=gen) * 5,
        torch.exp(torch.empty(50000).uniform_(-80, 5, generator=gen)),  # tiny to large magnitudes
        -torch.exp(torch.empty(50000).uniform_(-80, 5, generator=gen)),
        torch.tensor(SPECIAL),
    ])


def _float64_formula(activation, x):
    """The activation and its derivative in float64, by the formulas of fusedops/ops/linear.py."""
    if activation == "gelu":
        y = 0.5 * x * (1 + torch.erf(x * math.sqrt(0.5)))
        d = 0.5 * (1 + torch.erf(x * math.sqrt(0.5))) + x * torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    elif activation == "gelu_tanh":
        k, c = math.sqrt(2 / math.pi), 0.044715
        t = torch.tanh(k * (x + c * x ** 3))
        y = 0.5 * x * (1 + t)
        d = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * k * (1 + 3 * c * x * x)
    else:
        s = 1 / (1 + torch.exp(-x))
        y = x * s
        d = s * (1 + x * (1 - s))
    return y, d


def _torch_float32(activation, x):
    """torch's own float32 activation and its derivative (autograd)."""
    xl = x.clone().requires_grad_(True)
    fn = {"gelu": F.gelu, "gelu_tanh": lambda v: F.gelu(v, approximate="tanh"), "silu": F.silu}[activation]
    y = fn(xl)
    (d,) = torch.autograd.grad(y, xl, torch.ones_like(y))
    return y.detach(), d


@pytest.mark.parametrize("activation", ACTS)
def test_float32_activations_within_twice_torchs_error(activation):
    x = _inputs()
    w = torch.ones(1, 1)
    y, saved = torch.ops.fusedops.native_linear_forward(x.view(-1, 1), w, None, activation)
    (d,) = torch.ops.fusedops.native_linear_backward(torch.ones_like(y), x.view(-1, 1), w, saved, activation,
                                                     [True, False, False])[:1]
    exact = _float64_formula(activation, x.double())
    theirs = _torch_float32(activation, x)
    for what, got, want, torch_got in zip(("activation", "derivative"), (y.view(-1), d.view(-1)), exact, theirs):
        finite = torch.isfinite(want)
        # Infinities and NaNs where the float64 formula has them, and nowhere else.
        assert torch.equal(torch.isnan(got), torch.isnan(want)), f"{activation} {what}: NaN at other inputs"
        assert torch.equal(got[torch.isinf(want)].double(), want[torch.isinf(want)]), f"{activation} {what}: inf"
        assert torch.isfinite(got[finite]).all(), f"{activation} {what}: non-finite where float64 is finite"
        for lo, hi in BANDS:
            band = finite & (x >= lo) & (x < hi)
            ours = (got[band].double() - want[band]).abs().max().item()
            torchs = (torch_got[band].double() - want[band]).abs().max().item()
            # Twice torch's error, and at least half an ulp of the band's largest value (a band
            # where torch happens to round every value correctly).
            bound = 2 * torchs + 2.0 ** -24 * want[band].abs().max().item()
            assert ours <= bound, f"{activation} {what} on [{lo}, {hi}): error {ours:.3g}, torch's {torchs:.3g}"
