"""The verdicts of `make cuda-build-check` and `make triton-check` (tools/) on known inputs:
each check fails where it should."""

import pytest
import torch

from tools import check_cuda_kernels, triton_check, triton_compile

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
    else:  # this CPU build: every kernel op lacks its CUDA kernel, and the check says so
        kernel_ops = [op for op in ops if not check_cuda_kernels.one_call_op(torch, op)]
        assert {"fusedops::native_conv_block", "fusedops::native_linear"} == set(ops) - set(kernel_ops)
        assert missing == [f"{op} (CUDA)" for op in kernel_ops]


# --- make triton-check --------------------------------------------------------------------------


def test_res_usage_and_tensor_core_counts_are_parsed():
    text = ("Resource usage:\n Function conv_block_fwd_kernel:\n  REG:255 STACK:1120 SHARED:1024 LOCAL:0 "
            "CONSTANT[0]:672 TEXTURE:0 SURFACE:0 SAMPLER:0\n")
    assert triton_compile.parse_res_usage(text) == {"REG": 255, "STACK": 1120, "SHARED": 1024, "LOCAL": 0}
    ptx = "\twgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {...};\n\tmma.sync.aligned.m16n8k8 {...};\n"
    assert triton_compile.count_tensor_core_ops(ptx) == (1, 1)


def _launch(arch, kernel="conv_block_dx_kernel", grid=(1, 1, 1)):
    return triton_compile.Launch("fusedops.triton.conv_block", kernel, arch, "case", "fp32", grid,
                                 {"BLOCK_M": "constexpr"}, {(0,): 64}, {}, {"num_warps": 4})


def test_a_300_kb_tile_fails_the_triton_check():
    sm90, sm80 = _launch(90), _launch(80)
    fits = {sm90.key(): triton_compile.Compiled(2.0, shared=200 * 1024), sm80.key(): triton_compile.Compiled(2.0)}
    assert triton_check.resource_errors([sm90, sm80], fits, 30) == []
    too_big = {sm90.key(): triton_compile.Compiled(2.0, shared=300 * 1024), sm80.key(): fits[sm80.key()]}
    errors = triton_check.resource_errors([sm90, sm80], too_big, 30)
    assert len(errors) == 1 and "307200 B of shared memory" in errors[0] and "sm_90" in errors[0]
    # 200 KB fits an H100 block but not an A100's (163 KB).
    sm80_200kb = {sm90.key(): fits[sm90.key()], sm80.key(): triton_compile.Compiled(2.0, shared=200 * 1024)}
    assert "sm_80" in triton_check.resource_errors([sm90, sm80], sm80_200kb, 30)[0]


def test_slow_compiles_errors_and_bad_grids_fail_the_triton_check():
    ln = _launch(90)
    assert "over 30 s" in triton_check.resource_errors([ln], {ln.key(): triton_compile.Compiled(31.0)}, 30)[0]
    failed = {ln.key(): triton_compile.Compiled(1.0, error="CompilationError: boom")}
    assert "boom" in triton_check.resource_errors([ln], failed, 30)[0]
    assert triton_check.grid_errors([_launch(90, grid=(1, 65536, 1))])
    assert not triton_check.grid_errors([_launch(90, grid=(2**31 - 1, 65535, 65535))])


def test_every_config_the_launchers_pick_is_known_to_the_triton_check():
    from fusedops.triton import conv_block, linear

    for dtype in (torch.bfloat16, torch.float32, torch.float64):
        configs = triton_check.reachable_configs(conv_block.conv_block_configs, dtype)
        assert configs and all(len(c) == 4 for c in configs)
        assert triton_check.reachable_configs(linear.linear_configs, dtype)
    assert len(triton_check.reachable_configs(conv_block.conv_block_configs, torch.float32)) == 6
