"""The saved window offsets on the GPU backends, compared exactly, and the tie rule.

The rule (both GPU backends, every dtype): the pool takes its max over the conv values as
the kernel accumulates them (float32; float64 for float64 inputs), *before* the output is
rounded to the input's dtype; among taps with equal accumulated values the first in
row-major window order wins (torch's rule), and a NaN wins over everything.

- Exact ties: with small integer inputs every product and sum is exact in every dtype (TF32
  included), so the offsets must equal the float64 reference's bit for bit, in windows full of
  ties, and ties go to the first tap.
- Ties made by rounding (float16, bfloat16): two taps whose accumulated values differ but round
  to the same 16-bit output are told apart: the offset names the larger (the true max, which
  receives the gradient), where torch, pooling the rounded conv output, names the first. The
  output value is the same either way.
"""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

import fusedops
from tests import gpu_cases, gpu_checks
from tests.conftest import require_gpu_backend


@dataclasses.dataclass(frozen=True)
class IntegerConvCase(gpu_cases.ConvCase):
    """A conv case with small integer inputs (exact in every dtype): ties everywhere.
    ``torch_backward``: whether torch's own max_pool2d backward can run it (it writes out of
    bounds for pool windows wholly in padding), which the full check needs."""

    torch_backward: bool = True

    def inputs(self, device="cuda"):
        kwargs = dict(self.kwargs)
        bias = kwargs.pop("bias", True)
        kh, kw = gpu_cases._pair(self.kernel)
        cg = self.input[-3] // kwargs.get("groups", 1)
        ints = lambda lo, hi, *shape: torch.randint(lo, hi, shape, device=device).double()  # noqa: E731
        x = ints(-2, 3, *self.input)
        w = ints(-1, 2, self.out_channels, cg, kh, kw)
        b = ints(-1, 2, self.out_channels) if bias else None
        return x, w, b, kwargs


def _int_case(name, input, out_channels, kernel, torch_backward=True, **kwargs):
    return IntegerConvCase(name, input, out_channels, kernel, tuple(sorted(kwargs.items())),
                           torch_backward=torch_backward)


TIE_CASES = [
    _int_case("pool2", (2, 3, 8, 9), 4, 3, padding=1),
    _int_case("overlap_padded", (2, 3, 11, 10), 4, 3, pool_kernel_size=3, pool_stride=2, pool_padding=1),
    _int_case("ceil_dilated", (1, 2, 13, 12), 3, 2, pool_kernel_size=2, pool_dilation=2, pool_stride=1,
              pool_ceil_mode=True),
    _int_case("rect_strided", (2, 2, 12, 15), 3, (3, 2), stride=(1, 2), pool_kernel_size=(2, 3), pool_stride=(1, 2)),
    _int_case("no_pool", (2, 3, 7, 9), 4, 3, pool_kernel_size=None),
    _int_case("int16_window", (1, 2, 14, 14), 3, 1, pool_kernel_size=12, pool_stride=2),
    _int_case("gemm_groups_overlap", (2, 16, 9, 8), 16, 3, groups=2, padding=1, pool_kernel_size=3, pool_stride=2),
    _int_case("windows_in_padding", (2, 3, 4, 4), 4, 3, torch_backward=False, pool_kernel_size=2, pool_stride=1,
              pool_padding=1, pool_dilation=3),
]


@pytest.mark.gpu
@pytest.mark.parametrize("backend,precision,case", gpu_cases.job_params(TIE_CASES))
def test_offsets_equal_the_float64_reference_exactly(backend, precision, case):
    require_gpu_backend(backend)
    check_offsets_exactly(backend, precision, case, "cuda")


def check_offsets_exactly(backend, precision, case, device):
    """Offsets and outputs of ``backend`` on integer inputs equal the float64 reference's
    (rounded once to the dtype), then the whole check of tests/gpu_checks.py."""
    x64, w64, b64, kwargs = case.inputs(device)
    prec = gpu_checks.PRECISIONS[precision]
    x, w, b = (None if t is None else t.to(prec.dtype) for t in (x64, w64, b64))
    p = case.params()
    with gpu_checks.tf32_flags(prec.tf32):
        want_out, want = torch.ops.fusedops.conv_block_forward(x64, w64, b64, *p, "reference")
        gpu_checks._poison("big", x.device, want_out.to(prec.dtype), want)
        out, offsets = torch.ops.fusedops.conv_block_forward(x, w, b, *p, backend)
    assert offsets.dtype == want.dtype
    wrong = offsets != want
    assert not wrong.any(), (f"{int(wrong.sum())} of {wrong.numel()} offsets differ from the reference; first at "
                             f"{[int(i) for i in wrong.nonzero()[0]]}: {int(offsets[wrong][0])} != "
                             f"{int(want[wrong][0])}")
    # The outputs are the exact values rounded once to the dtype.
    assert torch.equal(out, want_out.to(prec.dtype)), "outputs differ from the exact values rounded to the dtype"
    if case.torch_backward:
        case.check(backend, precision, pattern="big", device=device)  # gradients along these offsets, the rest


# NaN and infinite inputs among the integer ones, in the first layers' direct kernels (CUDA's
# patch kernel: pool2, no_pool; its general one: overlap_padded) and an implicit GEMM.
NAN_CASES = [c for c in TIE_CASES if c.name in ("pool2", "no_pool", "overlap_padded", "gemm_groups_overlap")]


@pytest.mark.gpu
@pytest.mark.parametrize("backend,precision,case", [(b, p, c) for b in gpu_cases.GPU_BACKENDS for p in ("fp32", "bf16")
                                                    for c in NAN_CASES], ids=lambda v: getattr(v, "id", v))
def test_nan_and_infinite_inputs_give_the_references_offsets(backend, precision, case):
    require_gpu_backend(backend)
    check_nan_offsets(backend, precision, case, "cuda")


def check_nan_offsets(backend, precision, case, device):
    """Integer inputs with about 1 in 60 elements NaN, inf or -inf: conv sums where each is NaN
    or infinite whatever the order of the terms, so the outputs (NaN where NaN) and the offsets
    (a NaN wins its window, a later NaN over an earlier one; an infinite max keeps its ReLU on)
    equal the float64 reference's (computed on the CPU) exactly."""
    x64, w64, b64, kwargs = case.inputs("cpu")
    gen = torch.Generator().manual_seed(7)
    flat = x64.view(-1)
    picks = torch.randperm(flat.numel(), generator=gen)[: max(3, flat.numel() // 60)]
    flat[picks] = torch.tensor([float("nan"), float("inf"), float("-inf")], dtype=torch.float64).repeat(
        len(picks) // 3 + 1)[: len(picks)]
    p = case.params()
    want_out, want = torch.ops.fusedops.conv_block_forward(x64, w64, b64, *p, "reference")
    assert want_out.isnan().any() and want_out.isinf().any(), "the case must reach NaN and infinite outputs"
    prec = gpu_checks.PRECISIONS[precision]
    x, w, b = (None if t is None else t.to(device, prec.dtype) for t in (x64, w64, b64))
    with gpu_checks.tf32_flags(prec.tf32):
        out, offsets = torch.ops.fusedops.conv_block_forward(x, w, b, *p, backend)
    wrong = offsets.cpu() != want
    assert not wrong.any(), (f"{int(wrong.sum())} of {wrong.numel()} offsets differ from the reference; first at "
                             f"{[int(i) for i in wrong.nonzero()[0]]}: {int(offsets.cpu()[wrong][0])} != "
                             f"{int(want[wrong][0])}")
    torch.testing.assert_close(out.cpu(), want_out.to(prec.dtype), rtol=0, atol=0, equal_nan=True)


def _rounded_tie_inputs(dtype, device="cuda"):
    """Windows (2x2 pool of a 1x1 conv over 2 channels) whose four taps are all 1 except one,
    ``1 + 2**-12``: 16-bit floats round it to 1 (a tie), float32 keeps it. Returns
    ``(x, w, larger)`` with ``larger`` the tap index of the larger value per window."""
    n, ph, pw = 2, 4, 5
    larger = torch.randint(0, 4, (n, ph, pw), device=device)
    x = torch.zeros(n, 2, 2 * ph, 2 * pw, dtype=torch.float64, device=device)
    x[:, 0] = 1.0
    rows = 2 * torch.arange(ph, device=device).view(1, ph, 1) + larger // 2
    cols = 2 * torch.arange(pw, device=device).view(1, 1, pw) + larger % 2
    x[torch.arange(n, device=device).view(n, 1, 1), 1, rows, cols] = 1.0
    w = torch.tensor([1.0, 2.0**-12], dtype=torch.float64, device=device).view(1, 2, 1, 1)
    return x.to(dtype), w.to(dtype), larger


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("backend", gpu_cases.GPU_BACKENDS)
def test_ties_made_by_rounding_go_to_the_larger_value(backend, precision):
    require_gpu_backend(backend)
    check_rounded_ties(backend, precision, "cuda")


def check_rounded_ties(backend, precision, device):
    """The tie rule on ties made by rounding (see the module doc), and torch's rule beside it."""
    dtype = gpu_checks.PRECISIONS[precision].dtype
    x, w, larger = _rounded_tie_inputs(dtype, device)
    xs = x.detach().requires_grad_()
    out = fusedops.conv_relu_maxpool2d(xs, w, backend=backend)
    p = gpu_checks.params_of(x.shape, 1, {})
    _, offsets = torch.ops.fusedops.conv_block_forward(x, w, None, *p, backend)
    assert torch.equal(offsets.long().squeeze(1), larger), "the offset must name the larger accumulated value"
    exact = torch.tensor(1.0 + 2.0**-12, dtype=torch.float64).to(dtype).item()
    assert (out == exact).all()
    out.sum().backward()
    hit = torch.zeros(x.shape[0], *x.shape[2:], dtype=torch.bool, device=x.device)
    hit.view(x.shape[0], -1).scatter_(1, _flat_positions(larger, x.shape[-1]), True)
    assert torch.equal(xs.grad[:, 0] != 0, hit), "the gradient must reach the larger value's input"
    # torch pools the rounded conv output: it names the first of the rounded ties.
    _, indices = F.max_pool2d(F.relu(F.conv2d(x, w)), 2, return_indices=True)
    first = torch.zeros_like(larger) if dtype != torch.float32 else larger
    assert torch.equal(_tap_of(indices.squeeze(1), x.shape[-1]), first)


def _flat_positions(taps, width):
    """Flat (row * width + col) input positions of the window taps ``taps`` (N, PH, PW)."""
    n, ph, pw = taps.shape
    rows = 2 * torch.arange(ph, device=taps.device).view(1, ph, 1) + taps // 2
    cols = 2 * torch.arange(pw, device=taps.device).view(1, 1, pw) + taps % 2
    return (rows * width + cols).reshape(n, -1)


def _tap_of(indices, width):
    """Window tap (row-major in a 2x2 window) of torch's flat max_pool2d indices."""
    return (indices // width % 2) * 2 + indices % width % 2
