"""Two Triton tests on CPU tensors, collected only when named on the command line (the file
is not ``test_*.py``): tests/test_harness.py runs them on a simulated CUDA machine, where the
marked one must be skipped with the harness's reason and the unmarked one must fail as it
would on a GPU machine, proving that the simulation can fail."""

import pytest
import torch

import fusedops


def _conv_on_cpu_tensors():
    x, w = torch.randn(1, 1, 4, 4, dtype=torch.float64), torch.randn(2, 1, 3, 3, dtype=torch.float64)
    return fusedops.conv_relu_maxpool2d(x, w, backend="triton")


@pytest.mark.triton_cpu
def test_marked_triton_test_on_cpu_tensors():
    _conv_on_cpu_tensors()


def test_unmarked_triton_test_on_cpu_tensors():
    _conv_on_cpu_tensors()
