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
- ``KernelLaunch`` and ``PlanCache``: the launch path (see "Launch path" below).

Summation order. A float32 sum of ``L`` terms added one after another (what a K loop of
``tl.dot`` does: it accumulates into one register tile) has a rounding error growing like
``L``, while cuBLAS/cuDNN, which split and block their reductions, grow far slower: on an
H200 a serial 4,608-term reduction was 9x torch's error, a 300,000-term weight gradient 10-30x.
So every K loop is blocked: partial sums over chunks of about ``sqrt(L)`` terms (a fresh
accumulator per chunk) are added into the total, an error of order ``L^(3/4)``; and the
weight-gradient reductions over all positions (``N x OH x OW``, or a linear's rows) are also
split over ``S`` programs whose float32 partial sums a second kernel adds in slice order
(``reduce.sum_slices_kernel``), which also gives those kernels enough programs to fill the GPU. Both
orders are fixed, so results stay deterministic. Only IEEE float32 is chunked (see
``chunk_length``).

Launch path. The tutorial layers run a few microseconds of GPU work per kernel, so a call's
host time is what a user feels. Each launcher therefore works out everything that depends
only on the problem (shapes, strides, dtypes, parameters, device, TF32 flags) once, as a
*plan* cached in a ``PlanCache``: output shapes, grids, block sizes, the kernels' scalar
arguments, as ``KernelLaunch`` objects whose only per-call arguments are the tensors. A
``KernelLaunch`` on a CUDA tensor launches the kernel's compiled handle directly (Triton's
``CompiledKernel.run``, as ``CompiledKernel.__getitem__`` does) instead of going through
``JITFunction.run``, which re-binds and re-specialises some 40 arguments on every launch.
The handle is fetched once per device and pointer alignment (``kernel.warmup`` on the real
arguments), the only things besides the cached scalars that Triton specialises a kernel on.
Where that path does not apply it calls ``kernel[grid](...)`` as before: CPU tensors, meta
tensors (the compile checks record launches through ``JITFunction.run``), Triton's
interpreter (``TRITON_INTERPRET=1``, also for CUDA tensors), launch hooks installed
(profilers), a Triton without ``knobs``, or ``FUSEDOPS_TRITON_FAST_LAUNCH=0``. A handle, once
fetched, does not see later changes of Triton's debug or instrumentation settings.
"""

from __future__ import annotations

import contextlib
import math
from typing import List, Optional

import torch
import triton
import triton.language as tl

from .._env import EnvVar

_INTERPRET_ENV = EnvVar("TRITON_INTERPRET")
_FAST_LAUNCH_ENV = EnvVar("FUSEDOPS_TRITON_FAST_LAUNCH")

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


def interpreting() -> bool:
    """Whether Triton runs kernels under its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return _INTERPRET_ENV.get() == "1"


def dot_dtype(dtype: torch.dtype):
    """Operand type of the products: the input's own (tensor cores), except under Triton's CPU
    interpreter, which misreads 16-bit floats: there float32 (exact for bf16/fp16 products)."""
    if dtype in (torch.float16, torch.bfloat16) and interpreting():
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


def _hooks_installed() -> bool:
    """Whether launch hooks are set (a profiler's): then launches go through ``JITFunction.run``,
    which calls them. Also True when this Triton has no ``knobs`` (no direct launches there)."""
    runtime = getattr(getattr(triton, "knobs", None), "runtime", None)
    if runtime is None:
        return True
    for hook in (runtime.launch_enter_hook, runtime.launch_exit_hook):
        if hook is not None and getattr(hook, "calls", True):  # a HookChain is set when it has calls
            return True
    return False


class KernelLaunch:
    """One launch of a ``@triton.jit`` kernel with everything but its leading tensor arguments
    fixed: the grid, the scalar arguments that follow the tensors, and the keyword arguments
    (constexpr parameters and launch options such as ``num_warps``).

    ``launch(*tensors)`` runs ``kernel[grid](*tensors, *scalars, **kwargs)`` on the tensors'
    device; on CUDA it launches the compiled handle directly (see "Launch path" above)."""

    __slots__ = ("kernel", "grid", "scalars", "kwargs", "_constexprs", "_handles")

    def __init__(self, kernel, grid, scalars, kwargs):
        self.kernel, self.grid, self.scalars, self.kwargs = kernel, tuple(grid), tuple(scalars), dict(kwargs)
        self._constexprs = None  # the constexpr parameters' values in signature order, on first direct launch
        self._handles = {}  # (device index, pointer alignments) -> (run, function, packed metadata)

    def launch(self, *tensors) -> None:
        device = tensors[0].device
        if device.type != "cuda" or _FAST_LAUNCH_ENV.get() == "0" or interpreting() or _hooks_installed():
            with on_device(tensors[0]):
                self.kernel[self.grid](*tensors, *self.scalars, **self.kwargs)
            return
        index = device.index
        if index != torch.cuda.current_device():
            with torch.cuda.device(index):
                self._launch_direct(index, tensors)
        else:
            self._launch_direct(index, tensors)

    def _launch_direct(self, index: int, tensors) -> None:
        key = (index, *[t.data_ptr() % 16 == 0 for t in tensors])
        handle = self._handles.get(key)
        if handle is None:
            handle = self._handles[key] = self._compile(tensors)
        run, function, metadata = handle
        g0, g1, g2 = self.grid
        run(g0, g1, g2, torch._C._cuda_getCurrentRawStream(index), function, metadata, None, None, None,
            *tensors, *self.scalars, *self._constexprs)

    def _compile(self, tensors):
        """The compiled kernel for these arguments (compiled now if Triton's cache lacks it)."""
        compiled = self.kernel.warmup(*tensors, *self.scalars, grid=self.grid, **self.kwargs)
        if hasattr(compiled, "result"):  # an asynchronous compile
            compiled = compiled.result()
        if self._constexprs is None:
            params = self.kernel.params
            rest = params[len(tensors) + len(self.scalars):]
            missing = [p.name for p in rest if not p.is_constexpr]
            if missing:
                raise RuntimeError(f"KernelLaunch of {self.kernel.__name__}: parameters {missing} are neither "
                                   "tensors, scalars nor constexprs")
            self._constexprs = tuple(self.kwargs[p.name] if p.name in self.kwargs else p.default for p in rest)
        run = compiled.run  # loads the module on this device (``_init_handles``) on first access
        return run, compiled.function, compiled.packed_metadata


def described(t: Optional[torch.Tensor]):
    """What a launch plan depends on of a tensor: shape, strides, dtype (None when absent)."""
    return None if t is None else (t.shape, t.stride(), t.dtype)


_PLAN_CACHES: List[PlanCache] = []


class PlanCache:
    """Launch plans keyed by what they depend on; ``get(key, build)`` builds a missing one.
    Cleared when it reaches ``size`` plans (a workload uses a handful), and by ``clear_plans``."""

    def __init__(self, size: int = 512):
        self.size = size
        self._plans: dict = {}
        _PLAN_CACHES.append(self)

    def get(self, key, build):
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) >= self.size:
                self._plans.clear()
            plan = self._plans[key] = build()
        return plan

    def clear(self) -> None:
        self._plans.clear()


def clear_plans() -> None:
    """Forget every cached launch plan (after a change to this module's limits, or to a kernel)."""
    for cache in _PLAN_CACHES:
        cache.clear()
