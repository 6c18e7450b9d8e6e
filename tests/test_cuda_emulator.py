"""The CUDA kernels' device code run on the CPU by a block emulator (tests/cuda_emulator/).

No GPU and no CUDA toolkit: the kernels of ``csrc/cuda/conv_block_kernels.cuh`` and ``linear.cu``
(the code above its launchers) are compiled by the host C++ compiler against stand-ins for the
CUDA runtime, half types, wmma and the cp.async pipeline primitives
(``tests/cuda_emulator/*.h``), their ``__shared__`` declarations pointed at the emulator's
shared memory. Each block runs as 256 coroutines that switch at ``__syncthreads``, in both
thread orders (a result that depends on the order is a shared-memory race), cp.async copies
landing when issued in one and when waited for in the other; the outputs are compared with
direct computations in double. What the emulator cannot see: the GPU's memory model beyond
barriers, warp-level timing, the real wmma fragment layouts and anything in the launchers
(their choices are mirrored in tests/gpu_cases.py and run on a GPU by ``pytest -m gpu``).
"""

import os
import re
import shutil
import subprocess
from typing import Optional

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA_DIR = os.path.join(ROOT, "csrc", "cuda")
EMULATOR = os.path.join(ROOT, "tests", "cuda_emulator")
CONV_KERNELS = "conv_block_kernels.cuh"  # the conv kernels; their launchers are in conv_block_*.cu


def kernels_for_the_host(source: str, first_launcher: Optional[str]) -> str:
    """The device code of a .cu file up to its first launcher (or of a kernels header, with no
    launcher, up to the end of its namespaces), with its ``__shared__`` declarations turned into
    references to the emulator's shared memory."""
    end = "\n}  // namespace cuda\n" if first_launcher is None else f"\ncudaError_t {first_launcher}("
    cut = source.index(end)
    code = source[:cut].rstrip()
    assert code.endswith("}  // namespace"), "the kernels end with the anonymous namespace"
    code = re.sub(r"extern __shared__ __align__\(\d+\) unsigned char (\w+)\[\];",
                  r"unsigned char* \1 = emu::shared_memory;", code)
    code = re.sub(r"__shared__ ([\w:]+(?:<[\w:, ]+>)?) (\w+);",
                  r"\1& \2 = *reinterpret_cast<\1*>(emu::shared_memory);", code)
    code = re.sub(r"__shared__ ([\w:]+) (\w+)\[\w+\];", r"\1* \2 = reinterpret_cast<\1*>(emu::shared_memory);", code)
    assert "__shared__" not in code and "<<<" not in code, "a declaration the emulator cannot place"
    return code + "\n}  // namespace cuda\n}  // namespace fusedops\n"


def _compiler():
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    pytest.fail("no C++ compiler found (CXX, c++, g++, clang++): the extension's build needs one too")


def _build(tmp_path, test: str, generated: str, source: str, first_launcher: Optional[str], *flags: str,
           cuda_dir: str = CUDA_DIR):
    """The emulated test ``tests/cuda_emulator/<test>.cpp`` built over the kernels of the .cu
    text ``source`` (written to ``generated``, which the test includes), with the headers of
    ``cuda_dir``; its executable."""
    (tmp_path / generated).write_text(kernels_for_the_host(source, first_launcher))
    exe = tmp_path / test
    # The emulator's headers first: they stand in for cuda_runtime.h, cuda_fp16.h, cuda_bf16.h and mma.h.
    build = subprocess.run([_compiler(), "-std=c++20", "-O2", "-Wall", "-Wno-unknown-pragmas", *flags, "-I", EMULATOR,
                            "-I", str(tmp_path), "-I", cuda_dir, "-o", str(exe),
                            os.path.join(EMULATOR, f"{test}.cpp")], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-6000:]
    return exe


def _source(name: str) -> str:
    with open(os.path.join(CUDA_DIR, name)) as f:
        return f.read()


def _build_and_run(tmp_path, test: str, generated: str, source: str, first_launcher: Optional[str]):
    run = subprocess.run([str(_build(tmp_path, test, generated, _source(source), first_launcher))],
                         capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, (run.stdout + run.stderr)[-6000:]
    return run.stdout


def test_conv_kernels_match_a_direct_convolution(tmp_path):
    out = _build_and_run(tmp_path, "conv_kernels_test", "conv_block_kernels.inc", CONV_KERNELS, None)
    assert "27 conv geometries, 0 failures" in out, out
    # float16 and bfloat16 on the fourteen geometries with Cin/groups a multiple of 8, TF32 on the
    # fifteen with Cin/groups a multiple of 4 (among them 1x1 20->24: K = 20, a partial step of
    # 16), each in tiles of 64 and of 128 output channels (16->136: two of 128, the second 8 rows)
    assert "channel-run forward: 43 geometry and type pairs" in out, out
    # and on those with Cout/groups a multiple of a run too: twelve and fifteen (one with
    # asymmetric padding and a ceil-mode pool; four strided: stride 2 along w only, 12 output
    # channels in TF32 only, four phases of unequal rows, strides 3 x 2; two of them with stride
    # phases no tap reaches; one with a rectangular pool)
    assert "channel-run backward: 39 geometry and type pairs" in out, out
    # the channels_last un-pool (a run of channels a thread) on the geometries whose Cout is whole
    # runs: 19 in float16 and bfloat16, 23 in TF32, each in two check_case calls (x, y layouts)
    assert "channels_last un-pool: 122 checks" in out, out
    # the direct forward's patch kernel (3x3 stride 1) in the four float-accumulator types, two
    # check_case calls each: with a 2x2 pool on 3->32, 2 groups of 3->10 and 2->12 (windows of
    # stride 1 and padding 1), without one on 3->16
    assert "patch forward: 24 checks with a 2x2 pool, 8 without" in out, out


def test_linear_kernels_match_products_in_double(tmp_path):
    out = _build_and_run(tmp_path, "linear_kernels_test", "linear_kernels.inc", "linear.cu", "linear_forward")
    assert "11 linear shapes and 3 activations, 0 failures" in out, out
    # float16 and bfloat16 on the six shapes with in features a multiple of 8 (16, 40, 72), TF32
    # on the seven with a multiple of 4 (also 100: a partial k step of 16), each in blocks of 64
    # and of 128 rows (130 x 40 -> 7: two of 128, the second 2 rows; 260 x 40 -> 104: three, the
    # third 4 rows); and linear_rows and weight_grad_rows at their bounds
    assert "forward over runs: 22 shape and type pairs" in out, out
    # and on the five with out features a multiple of 8 (and 4) too, both gradients in blocks of
    # 64 and 128 rows: 64 x 16 -> 64, 70 x 40 -> 24 (a partial k step of the weight gradient),
    # 100 x 72 -> 136 (partial tiles and steps; the weight gradient's second 128-row block 8 rows),
    # 260 x 40 -> 104 (the input gradient in three 128-row blocks; the weight gradient's second
    # 64-row half 40 rows) and 70 x 40 -> 264 (the weight gradient in three 128-row blocks, the
    # third 8 rows: blocks placed 64 rows apart would leave rows 256.. unwritten)
    assert "gradients over runs: 15 shape and type pairs" in out, out


PATCH_MUTATIONS = {
    # a window's tap outside the conv output pooled (its sum covers padding and beyond)
    "tap outside the conv output": (
        "        if (r0 + th < 0 || r0 + th >= OH || c0 + tw < 0 || c0 + tw >= OW) continue;\n", ""),
    # the pooled output's digits not stepped: a grid-stride pass redoes the thread's first output
    "digits not stepped": ("       q += int64_t(gridDim.x) * blockDim.x, qs.next(g)) {\n    const int r0",
                           "       q += int64_t(gridDim.x) * blockDim.x) {\n    const int r0"),
}


@pytest.mark.parametrize("mutation", sorted(PATCH_MUTATIONS))
def test_the_emulator_sees_a_broken_patch_kernel(tmp_path, mutation):
    """The direct forward's patch kernel, run on the direct geometries: a window pooling a tap
    past the conv output fails the 2->12 geometry (windows of stride 1 and padding 1 along h), a
    grid-stride loop that does not step its output's coordinates the 3->16 one (792 outputs a
    channel, 3 blocks)."""
    before, after = PATCH_MUTATIONS[mutation]
    source = _source(CONV_KERNELS)
    assert source.count(before) == 1
    exe = _build(tmp_path, "conv_kernels_test", "conv_block_kernels.inc", source.replace(before, after),
                 None, "-DFUSEDOPS_EMULATOR_DIRECT_QUICK")
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=1200)
    failed = [line for line in run.stdout.splitlines() if line.startswith("FAIL")]
    assert run.returncode == 1 and failed and all("forward" in line for line in failed), run.stdout[-3000:]


def test_the_emulator_sees_a_missing_barrier(tmp_path):
    """Without the barrier that ends each pool tap of the conv forward, the next tap's operand
    stores overwrite the result tile while other threads still read it."""
    source = _source(CONV_KERNELS)
    barrier = "      __syncthreads();  // s.c is overwritten by the next tap's tile\n"
    assert barrier in source
    exe = _build(tmp_path, "conv_kernels_test", "conv_block_kernels.inc", source.replace(barrier, ""),
                 None, "-DFUSEDOPS_EMULATOR_QUICK")
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=1200)
    assert run.returncode == 1 and "forward" in run.stdout and "FAIL" in run.stdout, run.stdout[-3000:]


@pytest.mark.parametrize("mutation", ["wait", "barrier", "issue"])
def test_the_emulator_sees_a_stage_read_before_its_copies_landed_or_overwritten(tmp_path, mutation):
    """The channel-run forward reads a stage only after its own cp.async copies landed (the
    wait) and everyone's did (the barrier after it), and overwrites a stage only after every
    thread is done reading it (copies issued after that barrier). Waiting for one group fewer
    or dropping the barrier reads a stage too early: the emulator's late copies show it; issuing
    the next copies before the wait and the barrier overwrites a stage other threads still read:
    its early copies (the reversed-order run) show that."""
    source = _source("run_gemm.cuh")
    wait = "    __pipeline_wait_prior(kRunStages - 2);\n    __syncthreads();\n"
    issue = "    if (i + kRunStages - 1 < steps) {\n      next();\n      issue(write);\n    }\n"
    assert wait + issue in source
    broken = {"wait": wait.replace("kRunStages - 2", "kRunStages - 1") + issue,
              "barrier": wait.replace("    __syncthreads();\n", "") + issue,
              "issue": issue + wait}[mutation]
    cuda_dir = tmp_path / "csrc" / "cuda"  # with csrc's headers beside it, as the includes expect
    shutil.copytree(os.path.dirname(CUDA_DIR), tmp_path / "csrc")
    (cuda_dir / "run_gemm.cuh").write_text(source.replace(wait + issue, broken))
    exe = _build(tmp_path, "conv_kernels_test", "conv_block_kernels.inc", _source(CONV_KERNELS),
                 None, "-DFUSEDOPS_EMULATOR_RUNS_QUICK", cuda_dir=str(cuda_dir))
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=1200)
    assert run.returncode == 1 and "channel-run forward" in run.stdout and "FAIL" in run.stdout, run.stdout[-3000:]


@pytest.mark.parametrize("operand", ["A", "B"])
def test_the_emulator_sees_an_operand_stored_across_k_read_as_along_it(tmp_path, operand):
    """An operand stored across k ((k, m) / (k, n) stages) must be read by the wmma layout that
    matches (col_major A, row_major B); the other layout reads the stage transposed, which the
    linear gradients over runs must show (the weight gradient stores both operands across k,
    the input gradient its B)."""
    source = _source("run_gemm.cuh")
    layout = {"A": "using LayoutA = std::conditional_t<kAKMajor, wmma::col_major, wmma::row_major>;",
              "B": "using LayoutB = std::conditional_t<kBKMajor, wmma::row_major, wmma::col_major>;"}[operand]
    assert layout in source
    broken = layout.replace("wmma::col_major, wmma::row_major", "wmma::row_major, wmma::row_major") \
        .replace("wmma::row_major, wmma::col_major", "wmma::col_major, wmma::col_major")
    cuda_dir = tmp_path / "csrc" / "cuda"
    shutil.copytree(os.path.dirname(CUDA_DIR), tmp_path / "csrc")
    (cuda_dir / "run_gemm.cuh").write_text(source.replace(layout, broken))
    exe = _build(tmp_path, "linear_kernels_test", "linear_kernels.inc", _source("linear.cu"), "linear_forward",
                 cuda_dir=str(cuda_dir))
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=1200)
    assert run.returncode == 1 and "gradient over runs" in run.stdout and "FAIL" in run.stdout, run.stdout[-3000:]
