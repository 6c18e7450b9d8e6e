"""Index arithmetic past 2^31 elements in the cpp kernels, computed (not only planned).

One float32 input of 1 x 1 x 46342 x 46342 = 2,147,580,964 elements (> 2^31; 8.6 GB), conv
3x3 stride 2 into 2 channels, ReLU, MaxPool2d(2): its last rows lie past element 2^31, so
every input (and input-gradient) index there needs 64 bits. Through the native ops, against
the reference: the output and the input gradient on the last rows and columns (a crop the
reference computes alone), the weight and bias gradients over the whole input (the reference
summed over strips, along the same pool offsets). Measured on 2 cores: both tests 93 s, 19.6 GB
at most (the input and the input gradient, 8.6 GB each); the first needs ~10 GB. Each test is
skipped, saying so, where less memory is available.
"""

import pytest
import torch

import fusedops
from fusedops import _native
from fusedops.functional import conv_block_params

SIDE = 46342  # SIDE**2 > 2**31
PH = ((SIDE - 3) // 2 + 1) // 2  # pooled rows and columns: 11585
CROP = 8  # pooled rows and columns checked at the end


def _available_gb() -> float:
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) / 2**20
    except (OSError, KeyError, ValueError):
        return 0.0


def _needs(gb: float):
    return pytest.mark.skipif(_available_gb() < gb, reason=f"needs {gb} GB of available memory, "
                                                          f"{_available_gb():.1f} GB here")


pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not _native.loaded(), reason=f"fusedops._C not built: {_native.LOAD_ERROR}")]
P = conv_block_params((3, 3), stride=2)


@pytest.fixture(scope="module")
def problem():
    gen = torch.Generator().manual_seed(0)
    x = torch.empty(1, 1, SIDE, SIDE)
    for r in range(0, SIDE, 4096):
        x[0, 0, r:r + 4096] = torch.randn(min(4096, SIDE - r), SIDE, generator=gen)
    w, b = torch.randn(2, 1, 3, 3, generator=gen), torch.randn(2, generator=gen)
    out, offsets = torch.ops.fusedops.native_conv_block_forward(x, w, b, *P)
    g = torch.randn(out.shape, generator=gen)
    yield x, w, b, out, offsets, g


def _reference(x, w, b):
    """The reference op's forward (its own pool offsets)."""
    return fusedops.conv_relu_maxpool2d(x, w, b, stride=2, backend="reference")


@_needs(12)
def test_cpp_forward_and_weight_gradient_past_2_to_the_31_input_elements(problem):
    assert SIDE * SIDE > 2**31
    x, w, b, out, offsets, g = problem
    assert out.shape == (1, 2, PH, PH)
    start = 4 * (PH - CROP)  # the input rows and columns the last CROP pooled ones read
    want = _reference(x[:, :, start:, start:], w, b)
    torch.testing.assert_close(out[:, :, -CROP:, -CROP:], want[:, :, :CROP, :CROP])

    _, grad_weight, grad_bias = torch.ops.fusedops.native_conv_block_backward(g, x, w, offsets, *P[:8],
                                                                              [False, True, True])
    # The reference backward along the same offsets (pool windows whose taps tie within
    # rounding, thousands among 1.3e8, may route their gradient to either tap), over strips
    # of pooled rows: strip [a, e) reads input rows [4a, 4e + 1), so no conv row is in two.
    want_w, want_b = torch.zeros_like(w, dtype=torch.float64), torch.zeros_like(b, dtype=torch.float64)
    for a in range(0, PH, 1024):
        e = min(a + 1024, PH)
        _, gw, gb = torch.ops.fusedops.conv_block_backward(g[:, :, a:e], x[:, :, 4 * a:4 * e + 1], w,
                                                           offsets[:, :, a:e], *P[:8], [False, True, True], "reference")
        want_w += gw
        want_b += gb
    # float32 sums of 1.3e8 terms in different orders: a few 1e-6 of the largest value
    torch.testing.assert_close(grad_weight.double(), want_w, rtol=0, atol=2e-5 * want_w.abs().max().item())
    torch.testing.assert_close(grad_bias.double(), want_b, rtol=0, atol=2e-5 * want_b.abs().max().item())


@_needs(20)
def test_cpp_input_gradient_past_2_to_the_31_elements(problem):
    x, w, b, out, offsets, g = problem
    if _available_gb() < 10:  # the 8.6 GB input gradient, beside the 8.6 GB input held by the fixture
        pytest.skip(f"needs 10 GB of available memory beside the input, {_available_gb():.1f} GB here")
    grad_input, _, _ = torch.ops.fusedops.native_conv_block_backward(g, x, w, offsets, *P[:8], [True, False, False])
    assert grad_input.shape == x.shape
    start = 4 * (PH - CROP)
    want, _, _ = torch.ops.fusedops.conv_block_backward(g[:, :, -CROP:, -CROP:], x[:, :, start:, start:], w,
                                                        offsets[:, :, -CROP:, -CROP:], *P[:8], [True, False, False],
                                                        "reference")
    # rows and columns from the crop's third on get every contribution inside the crop
    torch.testing.assert_close(grad_input[0, 0, start + 2:, start + 2:], want[0, 0, 2:, 2:])
    assert not grad_input[0, 0, -1].any() and not grad_input[0, 0, :, -1].any()  # never read by the conv
