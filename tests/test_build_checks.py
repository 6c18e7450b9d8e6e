"""The verdicts of `make cuda-build-check`, `make cuda-kernel-check` and `make triton-check`
(tools/) on known inputs: each check fails where it should."""

import pytest
import torch

from tools import check_cuda_kernels, cuda_kernel_report, triton_check, triton_compile

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


# --- make cuda-kernel-check -------------------------------------------------------------------

# A kernel as nvcc prints it: a division before the loop, a loop whose rarely taken block the
# compiler placed after the loop's back edge, and a division after the loop.
_CUDA_PTX = """\
.visible .entry _Z6kernelv(
	.param .u64 _Z6kernelv_param_0
)
{{
	div.s64 	%rd1, %rd2, %rd3;
$L__BB0_1:
	@%p1 bra 	$L__BB0_3;
$L__BB0_2:
{inner}	wmma.mma.sync.aligned.row.row.m16n16k16.f32.bf16.bf16.f32 {{%f1}}, {{%r1}}, {{%r2}}, {{%f2}};
	bar.sync 	0;
{extra}	@%p2 bra 	$L__BB0_1;
	bra.uni 	$L__BB0_4;
$L__BB0_3:
	rem.u64 	%rd4, %rd5, %rd6;
	bra.uni 	$L__BB0_2;
$L__BB0_4:
	div.u32 	%r3, %r4, %r5;
	ret;

}}
"""


def test_divisions_and_barriers_are_found_in_loops_wherever_the_compiler_placed_their_blocks():
    facts = cuda_kernel_report.ptx_facts(_CUDA_PTX.format(inner="", extra=""))["_Z6kernelv"]
    assert (facts.loop_div64, facts.loop_div32, facts.main_loop_barriers) == (1, 0, 1)
    single_buffered = cuda_kernel_report.ptx_facts(_CUDA_PTX.format(inner="", extra="\tbar.sync \t0;\n"))
    assert single_buffered["_Z6kernelv"].main_loop_barriers == 2
    # An inner loop that multiplies: its barriers count, not the outer loop's.
    inner = "$L__BB0_5:\n\twmma.mma.sync.aligned {%f1};\n\tbar.sync \t0;\n\t@%p3 bra \t$L__BB0_5;\n"
    nested = cuda_kernel_report.ptx_facts(_CUDA_PTX.format(inner=inner, extra="\tbar.sync \t0;\n"))
    assert nested["_Z6kernelv"].main_loop_barriers == 1
    # Two main loops one after the other (a kernel that runs two GEMMs): the single-buffered one
    # is reported, though the double-buffered one is smaller.
    two = cuda_kernel_report.ptx_facts(_TWO_GEMMS_PTX)
    assert two["_Z6kernelv"].main_loop_barriers == 2


_TWO_GEMMS_PTX = """\
.visible .entry _Z6kernelv(
	.param .u64 _Z6kernelv_param_0
)
{
$L__BB0_1:
	wmma.mma.sync.aligned.row.row.m16n16k16.f32.bf16.bf16.f32 {%f1}, {%r1}, {%r2}, {%f2};
	bar.sync 	0;
	@%p1 bra 	$L__BB0_1;
$L__BB0_2:
	fma.rn.f32 	%f3, %f4, %f5, %f3;
	@%p3 bra 	$L__BB0_3;
	add.s32 	%r3, %r3, 1;
$L__BB0_3:
	add.s32 	%r4, %r4, 1;
	bar.sync 	0;
	bar.sync 	0;
	@%p2 bra 	$L__BB0_2;
	ret;

}
"""


_SASS = """
        Function : _Z6kernelv
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   FFMA R2, R3, R4, R2 ;
        /*0020*/                   IMAD R5, R5, 0x4, RZ ;
        /*0030*/                   HMMA.16816.F32.BF16 R8, R12, R16, R8 ;
        /*0040*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0050*/              @P0 BRA 0x20 ;
        /*0060*/                   FFMA R2, R3, R4, R2 ;
        /*0070*/              @P1 BRA 0x10 ;
        /*0080*/                   EXIT ;
"""


def test_the_main_loop_is_the_innermost_sass_loop_that_multiplies_and_synchronises():
    # Two loops: 0x20-0x50 (HMMA and BAR: the main loop, 4 instructions) inside 0x10-0x70.
    assert cuda_kernel_report.sass_main_loops(_SASS) == {"_Z6kernelv": 4}
    # its multiplies: the HMMA (the FFMA at 0x10 is outside it)
    assert cuda_kernel_report.sass_main_loop_multiplies(_SASS) == {"_Z6kernelv": 1}
    assert cuda_kernel_report.sass_main_loops(_SASS.replace("BAR.SYNC.DEFER_BLOCKING 0x0", "NOP")) == {}


def test_the_gemm_kernels_rules():
    def kernel(name, **kw):
        facts = cuda_kernel_report.PtxFacts(main_loop_barriers=kw.pop("barriers", 1), loop_div64=kw.pop("div64", 0))
        return cuda_kernel_report.Kernel(name, ptx=facts, **kw)

    gemm = "void fusedops::cuda::(anonymous namespace)::conv_pool_gemm_kernel<__nv_bfloat16, int>(fusedops::Geometry)"
    assert cuda_kernel_report.violations(kernel(gemm, registers=128, stack=256)) == []
    broken = cuda_kernel_report.violations(kernel(gemm, registers=129, stack=264, barriers=2, div64=3))
    assert len(broken) == 4 and "129 registers" in broken[1], broken
    double = gemm.replace("__nv_bfloat16", "double")
    assert cuda_kernel_report.violations(kernel(double, registers=220, barriers=2)) == []
    assert cuda_kernel_report.violations(kernel(double, div64=1)) == ["1 64-bit divisions in loops"]
    # Every other kernel (the tangent, the direct forwards, the un-pools): the division rule
    # alone, in every dtype.
    jvp = gemm.replace("conv_pool_gemm_kernel", "jvp_kernel")
    assert cuda_kernel_report.violations(kernel(jvp, registers=250, stack=300, barriers=None)) == []
    assert cuda_kernel_report.violations(kernel(jvp, div64=5, barriers=None)) == ["5 64-bit divisions in loops"]
    patch = gemm.replace("conv_pool_gemm_kernel<__nv_bfloat16, int>", "conv_pool_patch_kernel<float, char, 3, 2>")
    assert cuda_kernel_report.violations(kernel(patch, div64=2, barriers=None)) == ["2 64-bit divisions in loops"]
    unpool = gemm.replace("conv_pool_gemm_kernel", "unpool_kernel")
    assert cuda_kernel_report.violations(kernel(unpool, registers=250, stack=300, barriers=None)) == []
    assert cuda_kernel_report.violations(kernel(unpool, div64=31, barriers=None)) == ["31 64-bit divisions in loops"]
    runs = unpool.replace("unpool_kernel", "unpool_runs_kernel")
    assert cuda_kernel_report.violations(kernel(runs, div64=3, barriers=None)) == ["3 64-bit divisions in loops"]


def test_the_report_keeps_the_forward_over_runs_two_tiles_apart():
    name = ("void fusedops::cuda::(anonymous namespace)::conv_pool_runs_kernel<__nv_bfloat16, signed char, {}>"
            "(fusedops::Geometry, __nv_bfloat16 const*)")
    facts = cuda_kernel_report.PtxFacts(main_loop_barriers=1)
    wide = cuda_kernel_report.Kernel(name.format(128), registers=128, stack=176, ptx=facts, main_loop_sass=187)
    narrow = cuda_kernel_report.Kernel(name.format(64), registers=124, ptx=facts, main_loop_sass=134)
    assert (wide.label, narrow.label) == ("conv_pool_runs_kernel, 128 rows", "conv_pool_runs_kernel, 64 rows")
    dw = name.replace("conv_pool_runs_kernel", "linear_weight_grad_runs_kernel").replace(", signed char", "")
    assert cuda_kernel_report.Kernel(dw.format(128)).label == "linear_weight_grad_runs_kernel, 128 rows"
    rows = cuda_kernel_report.summarize([wide, narrow])
    assert [(r[0], r[2], r[3], r[8]) for r in rows] == [("conv_pool_runs_kernel, 128 rows", 128, 176, 187),
                                                         ("conv_pool_runs_kernel, 64 rows", 124, 0, 134)]
    text = cuda_kernel_report.report({90: [wide, narrow]})
    assert "| conv_pool_runs_kernel, 128 rows | bfloat16 | 128 | 176 |" in text and text.count("| ok |") == 2
    gemm = cuda_kernel_report.Kernel(name.replace("conv_pool_runs_kernel", "conv_pool_gemm_kernel").replace(
        ", {}>", ">"), ptx=facts)
    assert gemm.label == "conv_pool_gemm_kernel"
    grads = cuda_kernel_report.Kernel(name.replace("conv_pool_runs_kernel", "conv_grads_runs_kernel").format(128))
    assert grads.label == "conv_grads_runs_kernel, 128 rows"


# --- make triton-check --------------------------------------------------------------------------


def test_res_usage_and_tensor_core_counts_are_parsed():
    text = ("Resource usage:\n Function conv_block_fwd_kernel:\n  REG:255 STACK:1120 SHARED:1024 LOCAL:0 "
            "CONSTANT[0]:672 TEXTURE:0 SURFACE:0 SAMPLER:0\n")
    assert triton_compile.parse_res_usage(text) == {"REG": 255, "STACK": 1120, "SHARED": 1024, "LOCAL": 0}
    ptx = "\twgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {...};\n\tmma.sync.aligned.m16n8k8 {...};\n"
    assert triton_compile.count_tensor_core_ops(ptx) == (1, 1)


# PTX blocks as LLVM prints them: a block before a loop, the loop's header and latch (marked in
# the comments after their labels), and the loop's exit, laid out after the loop.
_PTX = """\
$L__BB0_1:                              // %.lr.ph
{before}\tbra.uni \t$L__BB0_2;
$L__BB0_3:                              // %._crit_edge
{after}\tret;
$L__BB0_2:                              // =>This Loop Header: Depth=1
                                        //     Child Loop BB0_4 Depth 2
{header}\t@%p1 bra \t$L__BB0_4;
$L__BB0_4:                              //   in Loop: Header=BB0_2 Depth=1
{latch}\t@%p2 bra \t$L__BB0_2;
\tbra.uni \t$L__BB0_3;
"""
_DIVS = "\tdiv.s32 \t%r6, %r5, %r4;\n\t@%p3 rem.s64 \t%rd6, %rd5, %rd4;\n"


def test_integer_divisions_are_counted_inside_loops_only():
    count = triton_compile.count_loop_divisions
    blocks = dict(before="", after="", header="", latch="")
    assert count(_PTX.format(**{**blocks, "before": _DIVS, "after": _DIVS})) == 0  # outside the loop
    assert count(_PTX.format(**{**blocks, "header": "\tmul.hi.s32 \t%r6, %r5, 954437177;\n"})) == 0
    assert count(_PTX.format(**{**blocks, "latch": "\tdiv.rn.f32 \t%f1, %f2, %f3;\n"})) == 0  # a float division
    assert count(_PTX.format(**{**blocks, "header": _DIVS, "latch": "\tdiv.u32 \t%r7, %r5, %r4;\n"})) == 3


def test_a_division_in_any_kernels_loop_fails_the_triton_check():
    gemm, other = _launch(90), _launch(90, kernel="conv_block_jvp_kernel")
    results = {gemm.key(): triton_compile.Compiled(1.0), other.key(): triton_compile.Compiled(1.0)}
    assert triton_check.loop_division_errors([gemm, other], results) == []
    results[gemm.key()] = triton_compile.Compiled(1.0, loop_divisions=2)
    errors = triton_check.loop_division_errors([gemm, other], results)
    assert len(errors) == 1 and "conv_block_dx_kernel" in errors[0] and "2 integer divisions" in errors[0]
    results[other.key()] = triton_compile.Compiled(1.0, loop_divisions=4)  # the tangent kernel too
    errors = triton_check.loop_division_errors([gemm, other], results)
    assert len(errors) == 2 and "conv_block_jvp_kernel" in errors[1] and "4 integer divisions" in errors[1]


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
        assert configs and all(len(c) == 5 and c[4] is False for c in configs)
        assert triton_check.reachable_configs(linear.linear_configs, dtype)
    assert len(triton_check.reachable_configs(conv_block.conv_block_configs, torch.float32)) == 6
    # The forward's tiles hold every pool tap of their outputs (TAP_ROWS) where the products run
    # on tensor cores (16-bit, TF32) and the window has 2, 4 or 8 taps (probed at those and
    # at others), and loop over the taps elsewhere (the FMA units: IEEE fp32, fp64).
    fwd = conv_block.conv_block_fwd_configs
    for dtype, tf32, tap_rows in ((torch.bfloat16, False, {True, False}), (torch.float16, False, {True, False}),
                                  (torch.float32, True, {True, False}), (torch.float32, False, {False}),
                                  (torch.float64, False, {False})):
        assert {c[4] for c in triton_check.reachable_configs(fwd, dtype, tf32)} == tap_rows
    assert {c[0] for c in triton_check.reachable_configs(fwd, torch.bfloat16) if c[4]} == {64, 128}
    # The weight gradient takes 64-row tiles (wgmma on Hopper) for 16-bit inputs only, and steps
    # 16 positions at a time in float32.
    for dtype, rows, steps in ((torch.bfloat16, {64}, {16, 32}), (torch.float16, {64}, {16, 32}),
                               (torch.float32, {32, 64}, {16})):
        configs = triton_check.reachable_configs(conv_block.conv_block_dw_configs, dtype)
        assert {c[0] for c in configs} == rows and {c[2] for c in configs} == steps
