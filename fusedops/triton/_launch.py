"""Host-side helpers the Triton launchers share: device guard, index width, grid, dtypes.

- ``on_device(t)``: Triton launches on the *current* CUDA device, so every launch runs inside
  ``torch.cuda.device(t.device)`` (tensors on ``cuda:1`` while ``cuda:0`` is current would
  otherwise be read by a kernel on the wrong GPU).
- ``index_dtype(...)``: the kernels do their index and address arithmetic in ``IDX``: int32
  while every element offset and row count fits (cheaper integer math in the inner loops),
  int64 once one reaches 2^31.
- ``split_grid(x, yz)``: CUDA grids allow 2^31 - 1 programs along x but only 65,535 along y
  and z; a count that may exceed that (groups x channel tiles, a linear's feature tiles) is
  spread over y and z, and the kernel rebuilds it as ``program_id(1) + program_id(2) *
  num_programs(1)``, returning early past the end.
- ``chunk_length(...)`` and ``reduction_slices(...)``: how a long float32 reduction is summed
  (see "Summation order" below).

Summation order. A float32 sum of ``L`` terms added one after another (what a K loop of
``tl.dot`` does: it accumulates into one register tile) has a rounding error growing like
``L``, while cuBLAS/cuDNN, which split and block their reductions, grow far slower: on an
H200 a serial 4,608-term reduction was 9x torch's error, a 300,000-term weight gradient 10-30x.
So every K loop is blocked: partial sums over chunks of about ``sqrt(L)`` terms (a fresh
accumulator per chunk) are added into the total, an error of order ``L^(3/4)``; and the
weight-gradient reductions over all positions (``N x OH x OW``, or a linear's rows) are also
split over ``S`` programs whose float32 partial sums a second kernel adds in slice order
(``reduce.sum_slices``), which also gives those kernels enough programs to fill the GPU. Both
orders are fixed, so results stay deterministic. Only IEEE float32 is chunked (see
``chunk_length``).
"""

from __future__ import annotations

import contextlib
import math

import torch
import triton
import triton.language as tl

from .._env import EnvVar

_INTERPRET_ENV = EnvVar("TRITON_INTERPRET")

GRID_X_MAX = 2**31 - 1
PROGRAMS_PER_SM = 4  # weight-gradient programs wanted per multiprocessor
MIN_SLICE_STEPS = 8  # a reduction slice runs at least this many BLOCK_K steps
INTERPRETER_SMS = 4  # "multiprocessors" under Triton's CPU interpreter: small splits, still exercised
META_SMS = 132  # meta tensors (compile checks, prewarm) are launched as on an H100 / H200
GRID_YZ_MAX = 65535
INT32_LIMIT = 2**31


def on_device(t: torch.Tensor):
    """Context in which launches go to ``t``'s CUDA device (a no-op for other devices)."""
    if t.device.type == "cuda":
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def extent(t: torch.Tensor) -> int:
    """One past the largest element offset ``t`` addresses from its data pointer (0 if empty)."""
    if t.numel() == 0:
        return 0
    return 1 + sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride()))


def index_dtype(*counts: int):
    """``tl.int64`` if any element offset or index count in ``counts`` reaches 2^31, else ``tl.int32``."""
    return tl.int64 if max(counts, default=0) >= INT32_LIMIT else tl.int32


def split_grid(x: int, yz: int):
    """Grid ``(x, y, z)`` with ``y * z >= yz`` and every dimension within CUDA's limits."""
    y = max(1, min(yz, GRID_YZ_MAX))
    z = triton.cdiv(yz, y)
    if x > GRID_X_MAX or z > GRID_YZ_MAX:
        raise RuntimeError(f"the triton backend cannot launch this problem: it needs {x} x {yz} programs, "
                           f"over CUDA's grid limits ({GRID_X_MAX} x {GRID_YZ_MAX}^2)")
    return max(x, 1), y, z


def acc_dtype(dtype: torch.dtype):
    """Accumulator type: float64 for float64 inputs, else float32."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def dot_dtype(dtype: torch.dtype):
    """Operand type of the products: the input's own (tensor cores), except under Triton's CPU
    interpreter, which misreads 16-bit floats: there float32 (exact for bf16/fp16 products)."""
    if dtype in (torch.float16, torch.bfloat16) and _INTERPRET_ENV.get() == "1":
        return tl.float32
    return {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}.get(dtype, tl.float64)


def use_fma(dtype: torch.dtype) -> bool:
    """Whether products run on the FMA units instead of ``tl.dot``: for float64. Triton 3.6
    cannot lower a float64 tensor-core operand computed in registers from 8-bit loads (the
    un-pooled conv gradient, the ReLU mask of a linear): it asserts "fp64 don't support largeK
    MMA". float64 exists for gradcheck, where FMA speed is plenty."""
    return dtype == torch.float64


def chunk_length(length: int, block: int, dtype: torch.dtype, precision: str) -> int:
    """Terms per partial sum of a blocked reduction of ``length`` terms taken ``block`` at a
    time: for IEEE float32 products (``precision`` "ieee") about ``sqrt(length)``, a multiple
    of ``block`` (at least one block); otherwise the whole reduction, one chunk: TF32 and
    16-bit operands round far above the accumulation error, float64 accumulates far below
    any tolerance, and one chunk keeps the K loop one software-pipelined loop (TF32 32->64
    layers ran 3x slower in one-block chunks on the H200). See "Summation order" above."""
    steps = triton.cdiv(max(length, 1), block)
    if dtype != torch.float32 or precision != "ieee":
        return steps * block
    return max(1, round(math.sqrt(length) / block)) * block


_SMS: dict = {}


def sm_count(device: torch.device) -> int:
    """Multiprocessors of ``device``, cached per device; ``META_SMS`` for meta tensors (the
    compile checks record launches as a Hopper GPU would make them), ``INTERPRETER_SMS`` for
    CPU tensors (Triton's interpreter)."""
    if device.type == "meta":
        return META_SMS
    if device.type != "cuda":
        return INTERPRETER_SMS
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SMS:
        _SMS[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SMS[index]


def reduction_slices(length: int, tiles: int, block: int, device: torch.device):
    """``(slices, slice_length)`` for a reduction of ``length`` terms computed by ``tiles``
    output tiles: enough slices that ``tiles x slices`` programs fill the GPU
    (``PROGRAMS_PER_SM`` per multiprocessor), each slice at least ``MIN_SLICE_STEPS`` steps
    of ``block`` terms; ``slice_length`` is a multiple of ``block``."""
    want = triton.cdiv(PROGRAMS_PER_SM * sm_count(device), max(tiles, 1))
    most = triton.cdiv(max(length, 1), MIN_SLICE_STEPS * block)
    slices = max(1, min(want, most))
    slice_length = triton.cdiv(triton.cdiv(max(length, 1), slices), block) * block
    return triton.cdiv(max(length, 1), slice_length), slice_length
