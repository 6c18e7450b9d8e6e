"""The verdicts of `make cuda-build-check` (tools/) on known inputs: the check fails where it should."""

import pytest
import torch

from tools import check_cuda_kernels

# --- make cuda-build-check ----------------------------------------------------------------------


def test_cuda_kernel_check_fails_on_a_build_without_cuda_kernels():
    from fusedops import _native

    if not _native.loaded():
        pytest.skip(f"fusedops._C is not built here: {_native.LOAD_ERROR}")
    ops = check_cuda_kernels.native_ops(torch)
    assert len(ops) >= 4
    missing = check_cuda_kernels.missing_kernels(torch, ops)
    if _native.WITH_CUDA:
        assert missing == []
    else:  # this CPU build: every op lacks its CUDA kernel, and the check says so
        assert missing == [f"{op} (CUDA)" for op in ops]
