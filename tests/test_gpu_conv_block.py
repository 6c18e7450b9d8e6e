"""conv_relu_maxpool2d on the GPU backends (``triton``, ``cuda``): the CPU tests' whole
argument grid in float32 (TF32 off and on), bfloat16, float16 and float64, and the input
layouts. Each case is tests/gpu_checks.py's check: outputs poisoned before every kernel call,
offsets valid, output and every gradient within 2x torch's error of the float64 oracle
(float64: equal), the tangent op on the cases marked ``jvp``."""

import pytest

from tests import gpu_cases
from tests.conftest import require_gpu_backend


@pytest.mark.gpu
@pytest.mark.parametrize("backend,precision,case", gpu_cases.job_params(gpu_cases.CONV_GRID))
def test_conv_block(backend, precision, case):
    require_gpu_backend(backend)
    case.check(backend, precision)


@pytest.mark.gpu
@pytest.mark.parametrize("backend,precision,case", gpu_cases.job_params(gpu_cases.CONV_LAYOUTS))
def test_conv_block_input_layouts(backend, precision, case):
    """channels_last, sliced and transposed inputs; poisoned with 0x7F (an impossible window
    offset, a huge finite float) instead of NaN, which is -1 ("ReLU off") in int8 offsets."""
    require_gpu_backend(backend)
    case.check(backend, precision, pattern="big")
