"""The small cases ``make gpu-report`` runs under compute-sanitizer (memcheck, racecheck,
initcheck, synccheck), for both GPU backends: every kernel path once (direct, gemm and
channel-run forward, overlapping pools with padding, groups without pool, int16 offsets, every
gradient, a first layer's gradients without the input's, the tangent, linear with one and
several tiles), on tiny shapes because the sanitizer slows every kernel by 10-100x.

The sanitizer's verdict is the point; the results are also checked, against the reference
computed on the CPU in float64, so that torch's own GPU kernels (cuDNN, cuBLAS) neither run
under the sanitizer nor can be blamed for its findings.
"""

import pytest
import torch

import fusedops
from fusedops import backends
from tests import gpu_cases, gpu_checks, oracle
from tests.conftest import require_gpu_backend

CONV = [
    gpu_cases._conv("direct pool2", (2, 3, 8, 9), 4, 3, padding=1, jvp=True),
    gpu_cases._conv("gemm overlap padded", (2, 8, 9, 10), 12, 3, pool_kernel_size=3, pool_stride=2, pool_padding=1,
                    jvp=True),
    gpu_cases._conv("gemm groups no pool stride 2", (2, 16, 7, 9), 8, 3, groups=2, stride=2, pool_kernel_size=None),
    gpu_cases._conv("int16 window", (1, 2, 14, 14), 3, 1, pool_kernel_size=12, pool_stride=2, jvp=True),
    gpu_cases._conv("first layer no input grad", (2, 3, 9, 8), 6, 3, padding=1, pool_kernel_size=3, pool_stride=2,
                    pool_padding=1, input_grad=False),
    # bf16: the cuda forward over channel runs (cp.async), two column tiles
    gpu_cases._conv("runs channels_last", (2, 16, 12, 12), 24, 3, padding=1, layout="channels_last"),
]
LINEAR = [
    gpu_cases.LinearCase("5x7->9 relu", (5, 7), 9, "relu"),
    gpu_cases.LinearCase("3x4x7->9 gelu no bias", (3, 4, 7), 9, "gelu", bias=False),
    gpu_cases.LinearCase("70x40->65 silu", (70, 40), 65, "silu"),
]
# float32 and bfloat16: the FMA and the tensor-core paths.
TOLERANCE = {"fp32": 1e-4, "bf16": 3e-2}


def _close(name, got, want, rtol):
    scale = oracle.scale_of(want)
    err = oracle.max_error(got.cpu(), want)
    assert err <= rtol * scale, f"{name}: error {err:.3g} > {rtol} x {scale:.3g}"


@pytest.mark.gpu
@pytest.mark.sanitize
@pytest.mark.parametrize("backend,precision,case", gpu_cases.job_params(CONV + LINEAR, TOLERANCE))
def test_small_case_against_the_cpu_reference(backend, precision, case):
    require_gpu_backend(backend)
    check_small_case(backend, precision, case, "cuda")


def check_small_case(backend, precision, case, device):
    """The fused op on ``device`` against the float64 reference on the CPU (output, every
    gradient, the tangent when ``case.jvp``), within ``TOLERANCE`` of the largest value."""
    dtype, rtol = gpu_checks.PRECISIONS[precision].dtype, TOLERANCE[precision]
    inputs = case.inputs("cpu")
    tensors = inputs[:3]
    rounded = [None if t is None else t.to(dtype).double() for t in tensors]  # exactly what the device gets
    wants = (getattr(case, "input_grad", True), True, True)  # a first layer's input needs no gradient
    on_device = [None if t is None else t.to(device, dtype) for t in tensors]
    on_device[0] = gpu_checks.LAYOUTS[case.layout](on_device[0])
    on_device = [None if t is None else t.requires_grad_(want) for t, want in zip(on_device, wants)]
    with gpu_checks.tf32_flags(False):
        if isinstance(case, gpu_cases.ConvCase):
            _check_conv(backend, case, on_device, rounded, inputs[3], rtol)
        else:
            _check_linear(backend, case, on_device, rounded, rtol)


def _check_conv(backend, case, on_device, rounded, kwargs, rtol):
    x, w, b = on_device
    out = fusedops.conv_relu_maxpool2d(x, w, b, backend=backend, **kwargs)
    g64 = torch.randn(out.shape, dtype=torch.float64)
    grads = oracle.grads(out, [x, w, b], g64.to(x.device, out.dtype))
    p = case.params()
    kernels = backends._REGISTRY[backend]
    with torch.no_grad():
        _, offsets = kernels.conv_block_forward(x.unsqueeze(0) if x.dim() == 3 else x, w, b, p)
    _close("output", out, oracle.conv_block(*rounded, **kwargs), rtol)
    exact = gpu_checks._exact_conv_grads(*rounded, g64, p, offsets.cpu(), case.input_grad)
    for name, got, want in zip(gpu_checks.NAMES, grads, exact):
        assert (got is None) == (want is None), name
        if want is not None:
            _close(name, got, want, rtol)
    if case.jvp:
        tangents = [None if t is None else torch.randn(t.shape, dtype=torch.float64).to(x.dtype) for t in rounded]
        with torch.no_grad():
            ours = kernels.conv_block_jvp(x.detach(), w.detach(), offsets,
                                          *[None if t is None else t.to(x.device) for t in tangents], p)
        want = torch.ops.fusedops.conv_block_jvp(rounded[0], rounded[1], offsets.cpu(),
                                                 *[None if t is None else t.double() for t in tangents], *p[:8],
                                                 "reference")
        _close("tangent", ours, want, rtol)


def _check_linear(backend, case, on_device, rounded, rtol):
    x, w, b = on_device
    out = fusedops.linear(x, w, b, activation=case.activation, backend=backend)
    g64 = torch.randn(out.shape, dtype=torch.float64)
    grads = oracle.grads(out, [x, w, b], g64.to(x.device, out.dtype))
    leaves = [None if t is None else t.clone().requires_grad_() for t in rounded]
    want = oracle.linear(*leaves, activation=case.activation)
    _close("output", out, want, rtol)
    for name, got, exp in zip(gpu_checks.NAMES, grads, oracle.grads(want, leaves, g64)):
        if exp is not None:
            _close(name, got, exp, rtol)
