"""The linear kernels' float32 activations over the whole float range: each activation and
its derivative within twice torch's own float32 error of the float64 result, band by band of
the input, and the same infinities and NaNs as the float64 formula. The cpp kernels compute
them with csrc/cpu/vector_math.h (branch-free exp and erf that vectorise), the Triton kernels
with Triton's (here under the interpreter); both take gelu_tanh through sigmoid(2u).

The kernels compute y = act(z) with z = x @ w^T + b. Two layouts give z exactly the test's
values: one row (x and w zero, b the values), whose long runs go through the vector loops,
and one column (x the values, w 1), whose runs of one element go through the clones' scalar
tails. A gradient of ones then makes the bias gradient (rows) or the input gradient (columns)
exactly act'(z)."""

import math
import platform
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import fusedops
from fusedops import backends
from fusedops.ops import linear as linear_ops
from tests import oracle

ACTS = ["gelu", "gelu_tanh", "silu"]
# Bands of the input: where erf and exp are near their limits (saturation, underflow of
# exp(-x^2), overflow of exp(-x) for silu), in their curved middle, and near 0.
BANDS = [(-math.inf, -20.0), (-20.0, -5.0), (-5.0, -1.0), (-1.0, 1.0), (1.0, 5.0), (5.0, 20.0), (20.0, math.inf)]
SPECIAL = [0.0, -0.0, 1e-30, -1e-30, 1e-40, -1e-40, 1e-45, 44.0, -44.0, 87.0, -87.0, 88.7, -88.7, 89.5, -89.5,
           104.0, -104.0, 1e6, -1e6, math.inf, -math.inf, math.nan]


def _needs(backend):
    if backend not in fusedops.available_backends():
        pytest.fail(f"the {backend} backend must run here: {backends._REGISTRY[backend].unavailable_reason()}")


def _inputs(scale=1):
    """About 600k inputs (scale 1), or 600k / scale of the same kinds."""
    gen = torch.Generator().manual_seed(0)
    return torch.cat([
        torch.linspace(-30, 30, 300001 // scale),
        torch.randn(100000 // scale, generator=gen) * 0.01,
        torch.randn(100000 // scale, generator=gen) * 5,
        torch.exp(torch.empty(50000 // scale).uniform_(-80, 5, generator=gen)),  # tiny to large magnitudes
        -torch.exp(torch.empty(50000 // scale).uniform_(-80, 5, generator=gen)),
        torch.tensor(SPECIAL),
    ])


def _cpp_row(v, activation):
    x, w = torch.zeros(1, 1), torch.zeros(v.numel(), 1)
    y, saved = torch.ops.fusedops.native_linear_forward(x, w, v, activation)
    db = torch.ops.fusedops.native_linear_backward(torch.ones_like(y), x, w, saved, activation,
                                                   [False, False, True])[2]
    return y.view(-1), db


def _cpp_column(v, activation):
    w = torch.ones(1, 1)
    y, saved = torch.ops.fusedops.native_linear_forward(v.view(-1, 1), w, None, activation)
    dx = torch.ops.fusedops.native_linear_backward(torch.ones_like(y), v.view(-1, 1), w, saved, activation,
                                                   [True, False, False])[0]
    return y.view(-1), dx.view(-1)


def _triton_row(v, activation):
    b = v.clone().requires_grad_(True)
    y = fusedops.linear(torch.zeros(1, 1), torch.zeros(v.numel(), 1), b, activation=activation, backend="triton")
    (db,) = torch.autograd.grad(y, b, torch.ones_like(y))
    return y.detach().view(-1), db


def _float64_formula(activation, x):
    """The activation (the oracle's) and its derivative (the reference backend's) in float64."""
    return oracle.ACTIVATIONS[activation](x), linear_ops.activation_derivative(x, activation)


def _torch_float32(activation, x):
    """torch's own float32 activation and its derivative (autograd)."""
    xl = x.clone().requires_grad_(True)
    fn = {"gelu": F.gelu, "gelu_tanh": lambda v: F.gelu(v, approximate="tanh"), "silu": F.silu}[activation]
    y = fn(xl)
    (d,) = torch.autograd.grad(y, xl, torch.ones_like(y))
    return y.detach(), d


# The interpreter runs a program at a time: a 40th of the inputs.
BACKENDS = [pytest.param("cpp", 1, _cpp_row, id="cpp-row"),
            pytest.param("cpp", 1, _cpp_column, id="cpp-column"),
            pytest.param("triton", 40, _triton_row, id="triton", marks=pytest.mark.triton_cpu)]


@pytest.mark.parametrize("backend,scale,compute", BACKENDS)
@pytest.mark.parametrize("activation", ACTS)
def test_float32_activations_within_twice_torchs_error(backend, scale, compute, activation):
    _needs(backend)
    x = _inputs(scale)
    exact = _float64_formula(activation, x.double())
    theirs = _torch_float32(activation, x)
    for what, got, want, torch_got in zip(("activation", "derivative"), compute(x, activation), exact, theirs):
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
            assert ours <= bound, f"{backend} {activation} {what} on [{lo}, {hi}): error {ours:.3g}, " \
                                  f"torch's {torchs:.3g}"


def _clone_instructions(so_path):
    """{(function, clone): disassembly lines} of the float32 activation passes' clones in the
    compiled extension, from nm's symbol sizes and objdump."""
    nm = subprocess.run(["nm", "-S", "-C", so_path], capture_output=True, text=True, check=True).stdout
    found = {}
    for line in nm.splitlines():
        match = re.match(r"([0-9a-f]+) ([0-9a-f]+) t .*(smooth_\w+_row_f32<[^>]*>).*\[clone \.(arch_x86_64_v[34])\]$",
                         line)
        if not match:
            continue
        start, size = int(match.group(1), 16), int(match.group(2), 16)
        dis = subprocess.run(["objdump", "-d", "--no-show-raw-insn", f"--start-address={start}",
                              f"--stop-address={start + size}", so_path], capture_output=True, text=True,
                             check=True).stdout
        found[(match.group(3), match.group(4))] = dis.splitlines()
    return found


@pytest.mark.skipif(platform.machine() != "x86_64" or sys.platform != "linux",
                    reason="the vector clones are built for x86-64 Linux (csrc/cpu/vectorize.h)")
def test_float32_activation_passes_run_on_vectors_in_the_avx_clones():
    # A float ?: in these loops once made GCC branch and leave the AVX2 clones scalar, which no
    # value test sees on an AVX-512 machine (it runs the AVX-512 clone).
    _needs("cpp")
    import fusedops._C as compiled

    clones = _clone_instructions(compiled.__file__)
    functions = {f"smooth_{kind}_row_f32<(fusedops::Act){code}>" for kind in ("forward", "grad") for code in (2, 3, 4)}
    assert {name for name, _ in clones} == functions, "the float32 activation passes must be built as vector clones"
    for (name, clone), lines in clones.items():
        register = "%ymm" if clone == "arch_x86_64_v3" else "%zmm"
        vector_ops = sum(register in line for line in lines)
        assert vector_ops >= 32, f"{name} {clone}: {vector_ops} instructions on {register}: not vectorised"
