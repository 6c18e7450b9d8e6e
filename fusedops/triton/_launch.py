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
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from .._env import EnvVar

_INTERPRET_ENV = EnvVar("TRITON_INTERPRET")

GRID_X_MAX = 2**31 - 1
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
