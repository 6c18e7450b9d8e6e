"""linear on the GPU backends (``triton``, ``cuda``): the CPU tests' grid (shapes x
activations x bias) in float32 (TF32 off and on), bfloat16, float16 and float64, and
non-contiguous inputs, each through tests/gpu_checks.py's check (poisoned outputs, relu mask
or pre-activation saved, output and every gradient within 2x torch's error of the float64
oracle)."""

import pytest

from tests import gpu_cases
from tests.conftest import require_gpu_backend


@pytest.mark.gpu
@pytest.mark.parametrize("backend,precision,case", gpu_cases.job_params(gpu_cases.LINEAR_GRID))
def test_linear(backend, precision, case):
    require_gpu_backend(backend)
    case.check(backend, precision)


@pytest.mark.gpu
@pytest.mark.parametrize("backend,precision,case", gpu_cases.job_params(gpu_cases.LINEAR_LAYOUTS))
def test_linear_input_layouts(backend, precision, case):
    require_gpu_backend(backend)
    case.check(backend, precision, pattern="big")
