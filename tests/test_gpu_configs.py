"""One case per launcher configuration, large shapes included, and the proof that no
configuration is left without a case.

``test_every_launcher_config_has_a_case`` runs on every machine (it needs no GPU): it lists
what the launchers can choose (tests/gpu_cases.py: the Triton config functions, the CUDA
launchers' arithmetic mirrored with constants read from csrc/cuda) and fails on any choice
that no case of the gpu-marked suite reaches. ``python -m tests.gpu_cases`` prints the whole
table. The gpu-marked ``test_config_case`` runs the cases made for the configurations.

Review of the configurations against the cases (2026-11, fusedops/triton/*.py and csrc/cuda):

Triton, conv_block_configs (fwd: rows N*PH*PW, columns Cout/g; dx: rows N*H*W, columns
Cin/g; dw: rows Cin/g*KH*KW, columns Cout/g; BLOCK_M x BLOCK_N x BLOCK_K, 4 warps), each in
fp32, tf32, bf16, fp16 (fp64: one 32x32x16 config with 8 warps, reached by every grid case):

| config | fwd | dx | dw |
| --- | --- | --- | --- |
| 32x16x16 | grid (<= 16 out channels) | grid | grid |
| 32x32x16 | deep 500->32, small 24->24 | small 24->24 10x10 | small 24->24, wide 24->24 |
| 32x64x16 | deep 500->96 (2 column tiles) | deep 500->16 / 500->32 (Cin/g 500) | wide 40->40, multi-wave |
| 64x16x32 | wide 16->16 58x58 (4205 rows), empty split-K | wide 16->16, empty split-K | deep 500->16 (4500 rows) |
| 64x32x32 | wide 24->24 58x58 | wide 24->24, multi-wave | deep 500->32 |
| 64x64x32 | wide 40->40, multi-wave (1176 programs) | wide 40->40 | deep 500->96, 1024->2048 |

The forward in tf32, bf16 and fp16 (tensor cores) takes tap rows instead where its pool window
has 2, 4 or 8 taps (conv_block_fwd_configs, probed at 1, 2, 4, 8, 9, 16 and 144 taps; its
tiles hold every tap of BLOCK_M / taps pooled outputs): 64xNx16 for at most 4096 conv values
(N 16/32/64/128: the grid, ``deep 500->32``, ``runs 16->64``, ``deep 500->96``), else 128xNx32
(``wide 16->16``, ``wide 24->24``, ``wide 40->40``, and ``wide 16->96 34x34 b4`` for 128x128
with 8 warps). Its tap loop (the table's fwd column) runs there for other windows: the ``pool
3x3 ...`` cases, one per config (32x16 by the grid's 3x3 pools).

The weight gradient's rows (conv_block_dw_configs) are 64 for bf16 and fp16 whatever the
row count (wgmma on Hopper): its 32-row configs above are fp32/tf32 only, and in bf16/fp16
it runs 64x16x16 (grid), 64x32x16 (small 24->24, wide 24->24), 64x64x16 (wide 40->40,
multi-wave) and the 64-row configs above. Where both channel counts per group are multiples of
16 and the products run on tensor cores (tf32, bf16, fp16), the weight gradient runs
conv_block_dw_runs_kernel instead (conv_block_dw_runs_configs: rows 64/32/16 output channels,
columns 64/32/16 input channels at one kernel tap, each the largest dividing its count; 32
positions a step, 16 in tf32 with 8 warps at 64x64): ``runs {16,32,64}->{16,32,64}`` and
``deep 512->16/32`` reach its nine configs, which is why the gather's deep cases have 500
input channels. The input gradient's ``CO_RUN`` variant (runs of output channels) has the
configs above; the runs cases reach it.

Triton, linear_configs (BLOCK_M 16/32/64 for <= 16 / <= 256 / more rows, BLOCK_N 16/32/64 for
<= 16 / <= 256 / more out_features, BLOCK_K 32; the same config for fwd, dx, dw): the nine
``{10, 200, 1000}x40->{12, 100, 300}`` cases, one per config, with every activation among
them; the grid reaches 16x16 too. The tangent kernel (32 outputs x 32, fixed): the grid cases
marked ``jvp`` in every precision.

Not chosen by the config functions but compiled variants too: int64 index math (2^31 elements
and more) and grids split over y and z (over 65,535 column tiles) run on the GPU forced onto
small problems (tests/test_triton_launch.py, gpu-marked); HAS_BIAS, HAS_DB and every
activation code are reached by the grid.

CUDA (tile_gemm.cuh: 64x64x16 tiles, 256 threads; wmma for fp16/bf16, FMA for fp32/fp64):

- forward direct (<= 4 input channels per group, filters within 48 KiB of shared memory; 8
  output channels a thread where a group has >= 4: ``basic_2x2_pool``, a partial chunk; else 1:
  ``depthwise``; its patch kernel for 3x3 stride 1 with a 2x2 pool or none, 8 channels a thread,
  in every type but float64: ``valid``, ``no_pool``, ``basic_2x2_pool`` in every input layout,
  ``first layer 3->8`` with unequal pool strides and paddings or a 1x1 pool of stride 2, and
  ``grid-stride 1->4 1024x1024 b17``, whose grid-stride loop runs twice) and gemm, each for
  float/double/half/bfloat16 x int8/int16/int32 offsets: grid cases (int8; direct int16:
  pool_large_window_int16), ``int16 offsets, gemm 6->4 pool 12x12/2``, ``int32 offsets, direct
  2->2 pool 182`` and ``int32 offsets, gemm 6->4 pool 182`` (33124-tap windows), all precisions.
  The same cases reach bias grad, un-pool and (``jvp``) the tangent kernel in every instance.
- gemm: second M tile (Cout/g > 64: ``deep 500->96``), groups (``winograd_groups_same_ceil``),
  several waves (``multi-wave 32->64 56x56 b96``: 1176 blocks).
- input grad: second M tile (Cin/g > 64: ``deep 500->16``); weight grad: second M tile
  (``deep 500->96``), one split-K slice (grid), several (``wide 16->16``: 33), an empty slice
  (``empty split-K slices 3->16 99x171 b8``: 264 slices of 528 over 135432 positions).
- grid-stride loops (65536 blocks of 256 threads per pass) running twice or more: direct
  forward, un-pool and tangent (``grid-stride 1->2 1024x1024 b17``, 17.8M outputs per
  channel), split-K sum (``grid-stride 1024->2048 3x3``: 18.9M weights).
- channel runs (run_gemm.cuh: 16-byte runs, fp16/bf16 with Cin/groups a multiple of 8, TF32 of
  4, in any input layout: a channels_last copy where the input has no runs in place): forward,
  gradients (Cout/groups a multiple of a run too) and the channels_last un-pool per type x
  offsets: the ``runs ...`` cases and every grid case with such channel counts; the input
  gradient by stride phase (``runs stride 2 16->32``), phases no tap reads (``runs 1x1 stride
  2``); TF32's
  runs of 4 where the 16-bit types take the tile engine: ``runs of 4 channels 12->20
  channels_last``; linear over runs where in (and out) features are whole runs: ``x40`` cases,
  ``gradient runs 70x40->24``, ``runs of 4 features 70x36->20``.
- linear: forward/input grad/weight grad/split-K sum/column sum/activation grad (relu, smooth)
  per element type: grid; second M and N tiles (``200x40->100``); split-K one / several / empty
  (``135432x48->40``); grid-stride twice: activation grad (``16400x64->1024``), split-K sum
  (``64x4096->4100``).
"""

import pathlib
import re

import pytest

from tests import gpu_cases
from tests.conftest import require_gpu_backend

CUDA_DIR = pathlib.Path(__file__).resolve().parents[1] / "csrc" / "cuda"


def test_every_launcher_config_has_a_case():
    gaps = gpu_cases.coverage_gaps()
    assert gaps == [], "launcher configurations no gpu case reaches (add a case to tests/gpu_cases.py):\n" + \
        "\n".join(gaps)


def test_a_missing_case_is_a_gap():
    """The coverage check can fail: without the cases made for them, their configs are gaps."""
    dropped = ("deep 500->16 6x6", "runs 16->32 6x6 b3", "empty split-K slices 3->16 99x171 b8",
               "wide 16->96 34x34 b4")
    without = [c for c in gpu_cases.ALL_CASES if c.name not in dropped]
    gaps = gpu_cases.coverage_gaps(gpu_cases.jobs(without))
    assert ("triton conv_block_dw_kernel bf16 {'BLOCK_M': 64, 'BLOCK_N': 16, 'BLOCK_K': 32, 'num_warps': 4, "
            "'TAP_ROWS': False}") in gaps
    assert ("triton conv_block_dw_runs_kernel tf32 {'BLOCK_M': 32, 'BLOCK_N': 16, 'BLOCK_K': 16, 'num_warps': 4, "
            "'TAP_ROWS': False}") in gaps
    assert ("triton conv_block_fwd_kernel bf16 {'BLOCK_M': 128, 'BLOCK_N': 128, 'BLOCK_K': 32, 'num_warps': 8, "
            "'TAP_ROWS': True}") in gaps
    assert "cuda conv weight grad: an empty split-K slice" in gaps


def test_the_cuda_mirror_uses_the_sources_constants():
    """tests/gpu_cases.py decides as csrc/cuda does, with the same constants."""
    c = gpu_cases.CUDA_CONSTANTS
    sources = {name: (CUDA_DIR / name).read_text() for name in ("tile_loaders.h", "tile_gemm.cuh", "common.cuh",
                                                                "linear.cu", "run_loaders.h", "bindings.cpp",
                                                                "run_gemm.cuh")}
    # The conv kernels (conv_block_kernels.cuh) and their launchers (conv_block_forward.cu, ...).
    sources["conv_block*"] = "\n".join(path.read_text() for path in sorted(CUDA_DIR.glob("conv_block*")))
    expected = {
        "tile_loaders.h": [rf"constexpr int kBM = {c['kBM']}, kBN = {c['kBN']}, kBK = {c['kBK']}, "
                           rf"kThreads = {c['kThreads']};"],
        "tile_gemm.cuh": [rf"blocks < {c['grid_stride_blocks']} \? blocks : {c['grid_stride_blocks']}",
                          rf"constexpr int64_t kMaxSerialSum = {c['max_serial_sum']};",
                          r"reduction_splits\(count, channels, int64_t\(kThreads\) \* 16\)",
                          r"ceil_div\(count, int64_t\(kThreads\) \* kMaxSerialSum\)",
                          rf"return splits < {c['grid_z']} \? splits : {c['grid_z']};"],
        "common.cuh": [rf"constexpr int64_t kFillBlocks = {c['split_blocks']};", r"ceil_div\(kFillBlocks, tiles",
                       rf"int64_t min_chunk = {c['min_chunk']}\)",
                       rf"return dtype == DType::Half \|\| dtype == DType::BFloat16 \? {gpu_cases.RUN_LEN['bf16']} : "
                       rf"dtype == DType::Tf32 \? {gpu_cases.RUN_LEN['tf32']} : 0;",
                       r"constexpr bool kTensorCores =\s+std::is_same<T, __half>::value \|\| "
                       r"std::is_same<T, __nv_bfloat16>::value \|\| std::is_same<T, Tf32>::value;"],
        "conv_block*": [rf"constexpr int kDirectMaxChannels = {c['kDirectMaxChannels']};",
                        rf"constexpr int kDirectWideChannels = {c['kDirectWideChannels']};",
                        rf"constexpr int64_t kDirectWideMin = {c['kDirectWideMin']};",
                        rf"constexpr int64_t kDirectMaxSmem = {c['kDirectMaxSmem'] // 1024} \* 1024;",
                        rf"constexpr int kDirectGradKernel = {c['kDirectGradKernel']};",
                        rf"constexpr int kDirectGradMaxChannels = {c['kDirectGradMaxChannels']};",
                        rf"constexpr int kPatchKernel = {c['kPatchKernel']};",
                        r"if \(g\.KH != kPatchKernel \|\| g\.KW != kPatchKernel \|\| g\.sh != 1 \|\| g\.sw != 1 \|\| "
                        r"g\.dh != 1 \|\| g\.dw != 1\) return 0;",
                        r"if \(g\.PKH == 1 && g\.PKW == 1\) return 1;",
                        r"return g\.PKH == 2 && g\.PKW == 2 && g\.pdh == 1 && g\.pdw == 1 \? 2 : 0;",
                        r"if constexpr \(sizeof\(typename Num<T>::Acc\) == 4 && std::is_same<OffT, int8_t>::value\) "
                        r"\{\s+const int side = conv_patch_pool\(g\);\s+if \(side > 0\) \{",
                        r"if \(want_dx \|\| g\.Cg > kDirectGradMaxChannels \|\| g\.KH != kDirectGradKernel \|\| "
                        r"g\.KW != kDirectGradKernel \|\|\s+g\.Cout < 1 \|\| g\.Cout > 65535\)",
                        r"const int co = g\.Coutg >= kDirectWideMin && filter_bytes \* kDirectWideChannels <= "
                        r"kDirectMaxSmem\s+\? kDirectWideChannels : 1;",
                        r"if \(filter_bytes \* co > kDirectMaxSmem\) return 0;",
                        r"if \(g\.G \* ceil_div\(g\.Coutg, co\) > 65535\) return 0;",
                        rf"const int64_t most = {c['grid_z']} / g\.G;",
                        r"reduction_splits\(g\.N \* g\.OH \* g\.OW, tiles\)",
                        r"ceil_div\(ceil_div\(g\.N \* g\.OH \* g\.OW, dw_splits\), step\) \* step",
                        r"return forward_runs_fit\(dtype, g, x, xs\) && g\.Coutg % run_len\(dtype\) == 0 &&\s+"
                        r"g\.Coutg \* g\.KW < std::numeric_limits<int32_t>::max\(\) && dx_blocks < ",
                        r"return cc_major >= 8 && forward_runs_fit\(dtype, g, x, xs\);",
                        r"return cc_major >= 8 && backward_runs_fit\(dtype, g, x, xs\);",
                        r"channel_sum_splits\(positions, g\.Cout\)",
                        r"grid_for\(conv_elems\)", r"grid_for\(conv_elems / kRunLen<T>\)",
                        r"channels\(g\.Cout / run\)",
                        r"dw_count = dw \? g\.Cout \* g\.K : 0, db_count = db && plan\.db_splits > 1 \? g\.Cout : 0",
                        r"grid_for\(dw_count \+ db_count\)",
                        r"const int64_t total = g\.N \* g\.Cout \* g\.PH \* g\.PW;", r"grid_for\(total\)",
                        r"const int64_t len = run_len\(dtype\);",
                        r"return len > 0 && g\.Cg % len == 0 && g\.Cg > kDirectMaxChannels &&",
                        r"runs_at_every_pixel\(len, g, x, xs\);",
                        r"return g\.Coutg > kBM && ceil_div\(g\.Coutg, kWideRows\) \* kWideRows == "
                        r"ceil_div\(g\.Coutg, kBM\) \* kBM \? kWideRows : kBM;",
                        r"const int64_t tiles = ceil_div\(g\.Coutg, rows\) \* ceil_div\(g\.K, kBN\) \* g\.G;",
                        r"const int dw_rows = runs \? run_rows\(g\) : kBM;",
                        r"dw \? weight_grad_splits<T>\(g, dw_rows\) : 0, runs \? kRunBK<T> : kBK, runs,\s+dw_rows\);",
                        r"g\.Cg \* g\.KW < std::numeric_limits<int32_t>::max\(\) && image_offsets_fit\(g, xs\) &&",
                        r"const int64_t span = \(g\.Cg - 1\) \* xs\.s\[1\] \+ \(g\.H - 1\) \* xs\.s\[2\] \+ "
                        r"\(g\.W - 1\) \* xs\.s\[3\];",
                        r"dx_blocks < \(int64_t\(1\) << 30\) &&\s+g\.OH \* g\.OW \* g\.Cout < kInt32;",
                        r"return xs\.s\[1\] == 1 && pixel_step\(xs\.s\[0\], g\.N\) && pixel_step\(xs\.s\[2\], g\.H\) "
                        r"&& pixel_step\(xs\.s\[3\], g\.W\) &&"],
        "bindings.cpp": [r"if \(can\(input\.const_data_ptr\(\), in_place\.xs\)\) return \{input, in_place\.xs, true\};",
                         r"if \(!can\(nullptr, copy_strides\)\) return in_place;",
                         r"const ConvInput in = output_mask\[0\] \|\| output_mask\[1\]\s+\? conv_input\("],
        "run_loaders.h": [rf"constexpr int kRunLen = {c['kRunBytes']} / static_cast<int>\(sizeof\(T\)\);",
                          r"int64_t rem = \(r \+ p\) % s, hits = 0;",
                          r"for \(int64_t kk = 0; kk < kernel && hits < 2 && kk - \(hits \? ph\.first : 0\) <= s;",
                          r"return s < size \? s : \(size > 0 \? size : 1\);",
                          rf"constexpr int kRunBK = {c['kRunsPerStep']} \* kRunLen<T>;"],
        "linear.cu": [r"if constexpr \(kTensorCores<T>\) \{\s+// 16-byte runs",
                      r"if \(cc_major >= 8 && in_f % kRunLen<T> == 0 && aligned\(x\) && aligned\(w\)\)",
                      r"const bool runs = kTensorCores<T> && cc_major >= 8 && in_f % kRunLen<T> == 0 && "
                      r"out_f % kRunLen<T> == 0 &&\s+aligned\(dz\);", r"if \(runs && aligned\(w\)\) \{",
                      r"const bool dw_runs = runs && aligned\(x\);",
                      r"reduction_splits\(rows, ceil_div\(out_f, tile\) \* ceil_div\(in_f, kBN\)\)",
                      r"if \(out_f <= kBM \|\| ceil_div\(out_f, kWideRows\) \* kWideRows != "
                      r"ceil_div\(out_f, kBM\) \* kBM\) return kBM;",
                      r"const int64_t tiles = ceil_div\(out_f, kWideRows\) \* ceil_div\(in_f, kBN\);",
                      r"return tiles \* weight_grad_splits\(rows, in_f, out_f, kWideRows\) >= kFillBlocks "
                      r"\? kWideRows : kBM;",
                      r"const int tile = dw_runs \? weight_grad_rows\(rows, in_f, out_f\) : kBM;",
                      # the workspace, sized for the tile the launcher may take
                      r"const int tile = len > 0 && in_f % len == 0 && out_f % len == 0 \? "
                      r"weight_grad_rows\(rows, in_f, out_f\) : kBM;",
                      r"weight_grad_splits\(rows, in_f, out_f, tile\) \* out_f \* in_f\) \* acc_bytes\(dtype\)",
                      r"const int64_t splits = weight_grad_splits\(rows, in_f, out_f, tile\);",
                      r"const auto kernel = tile == kWideRows \? linear_weight_grad_runs_kernel<T, kWideRows>\s+"
                      r": linear_weight_grad_runs_kernel<T, kBM>;",
                      r"const int64_t step = dw_runs \? kRunBK<T> : kBK;",
                      r"ceil_div\(ceil_div\(rows, splits\), step\) \* step", r"grid_for\(rows \* out_f\)",
                      r"grid_for\(out_f \* in_f\)",
                      r"const int64_t wide = ceil_div\(rows, kWideRows\);",
                      r"const bool fills = wide \* ceil_div\(cols, kBN\) >= kFillBlocks;",
                      r"return fills && pads_little \? kWideRows : kBM;",
                      r"const auto kernel = tile == kWideRows \? linear_forward_runs_kernel<T, kWideRows>\s+"
                      r": linear_forward_runs_kernel<T, kBM>;",
                      r"const auto kernel = tile == kWideRows \? linear_input_grad_runs_kernel<T, kWideRows>\s+"
                      r": linear_input_grad_runs_kernel<T, kBM>;",
                      r"const dim3 runs_grid\(static_cast<unsigned>\(ceil_div\(rows, tile\)\), grid\.y\);",
                      r"const bool pads_little = wide \* kWideRows - ceil_div\(rows, kBM\) \* kBM <= rows / 16;",
                      r"const int tile = linear_rows\(rows, out_f\);", r"const int tile = linear_rows\(rows, in_f\);"],
        "run_gemm.cuh": [r"constexpr int kWideRows = 2 \* kBM;"],
    }
    missing = [f"{name}: {pattern}" for name, patterns in expected.items() for pattern in patterns
               if not re.search(pattern, sources[name])]
    assert missing == [], "csrc/cuda changed: update the mirror of its launchers in tests/gpu_cases.py:\n" + \
        "\n".join(missing)


def test_case_ids_are_unique():
    for cases in (gpu_cases.CONV_GRID + gpu_cases.CONV_LAYOUTS + gpu_cases.CONV_CONFIGS,
                  gpu_cases.LINEAR_GRID + gpu_cases.LINEAR_LAYOUTS + gpu_cases.LINEAR_CONFIGS):
        ids = [c.id for c in cases]
        assert len(ids) == len(set(ids))


@pytest.mark.gpu
@pytest.mark.parametrize("backend,precision,case",
                         gpu_cases.job_params(gpu_cases.CONV_CONFIGS + gpu_cases.LINEAR_CONFIGS))
def test_config_case(backend, precision, case):
    require_gpu_backend(backend)
    case.check(backend, precision)
