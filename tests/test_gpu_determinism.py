"""Determinism and devices on the GPU backends.

Determinism: two runs of the same case, the first on memory poisoned with NaN and the second
with 0x7F (so that neither can pass by finding the other's results in memory the caching
allocator hands back), are bitwise equal (output, every gradient, the saved state, the
tangent), and right: the case passes its check against the float64 oracle. The cases
include the CUDA backend's split-K weight gradients (partial sums added in a fixed order).

Devices: inputs on ``cuda:1`` while ``cuda:0`` is current run on ``cuda:1`` (the launches
enter the inputs' device) and give the right results there.
"""

import pytest
import torch

from tests import gpu_cases
from tests.conftest import require_gpu_backend

_BY_NAME = {c.name: c for c in gpu_cases.ALL_CASES}
DETERMINISM_CASES = [_BY_NAME[name] for name in (
    "pool3_stride2_overlap", "empty split-K slices 3->16 99x171 b8", "deep 500->96 6x6", "deep 512->32 6x6",
    "wide 24->24 58x58 b5",
    "empty split-K slices 135432x48->40 relu", "1000x40->300 relu")]
DEVICE_CASES = [_BY_NAME[name] for name in ("basic_2x2_pool", "odd_sizes_pad1", "1000x40->300 relu")]


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view(-1).view(torch.uint8)


@pytest.mark.gpu
@pytest.mark.parametrize("backend,precision,case", gpu_cases.job_params(DETERMINISM_CASES, ("bf16", "fp32")))
def test_two_runs_are_bitwise_equal_and_right(backend, precision, case):
    require_gpu_backend(backend)
    inputs = case.inputs()
    runs = []
    for pattern in ("nan", "big"):
        torch.manual_seed(1)  # the same output gradient and tangents
        runs.append(case.run(backend, precision, pattern, inputs=inputs)[1])
    first, second = (r.tensors() for r in runs)
    assert len(first) == len(second)
    for i, (a, b) in enumerate(zip(first, second)):
        assert a.shape == b.shape and torch.equal(_bytes(a), _bytes(b)), f"tensor {i} of the run differs between runs"
    case.check(backend, precision)


@pytest.mark.gpu
@pytest.mark.parametrize("backend,precision,case", gpu_cases.job_params(DEVICE_CASES, ("bf16", "fp32")))
def test_inputs_on_the_second_gpu_while_the_first_is_current(backend, precision, case):
    require_gpu_backend(backend)
    if torch.cuda.device_count() < 2:
        pytest.skip(f"{torch.cuda.device_count()} CUDA device: the test needs two (inputs on cuda:1, cuda:0 current)")
    with torch.cuda.device(0):
        case.check(backend, precision, device="cuda:1")  # fails unless every output lies on cuda:1 and is right
        assert torch.cuda.current_device() == 0
