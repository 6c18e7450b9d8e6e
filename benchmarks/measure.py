"""Timing, hardware ceilings and saved-for-backward bytes.

GPU: CUDA events around a run of calls that rotate through enough input copies to exceed
the L2 cache, after warm-up; medians over rounds. CPU: ``time.perf_counter`` around one call.
Providers are always timed interleaved (round r of every provider before round r+1, in a
shuffled order), so a slow drift of the machine hits all of them alike; speed-ups are medians
of per-round ratios.
"""

from __future__ import annotations

import random
import statistics
import time
from typing import Callable, Dict, List, Sequence, Tuple

import torch


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_call(fn: Callable[[int], object], device: str, calls: int) -> float:
    """Milliseconds per call of ``fn(i)`` for ``i`` in ``range(calls)``."""
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for i in range(calls):
            fn(i)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / calls
    t0 = time.perf_counter()
    for i in range(calls):
        fn(i)
    return (time.perf_counter() - t0) * 1e3 / calls


def module_call(module: torch.nn.Module, x: torch.Tensor, backward: bool) -> Callable[[], object]:
    """One call of ``module`` on ``x``, as a function of no arguments: the forward under
    ``no_grad``, or the forward and the backward of the output's sum (which gradients: those of
    the parameters, and ``x``'s where ``x`` requires grad)."""
    if backward:
        def run():
            module(x).sum().backward()
    else:
        def run():
            with torch.no_grad():
                return module(x)
    return run


def block_seconds(fn: Callable[[], object], calls: int, device: str = "cpu") -> float:
    """Seconds per call over a block of ``calls`` calls of ``fn()``, one synchronisation at the
    end on CUDA (host-bound calls queue faster than the GPU runs them: then this is host time)."""
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / calls


def paired_blocks(baseline: Callable[[], object], candidate: Callable[[], object], calls: int,
                  rounds: int) -> Tuple[float, float]:
    """``(baseline's median ms per call, median over rounds of baseline / candidate time)``:
    each called twice to warm up, then per round a block of ``calls`` calls of each, the
    baseline's first (CPU: no synchronisation)."""
    for fn in (baseline, candidate):
        fn()
        fn()
    times, ratios = [], []
    for _ in range(rounds):
        t_base, t_cand = block_seconds(baseline, calls), block_seconds(candidate, calls)
        times.append(t_base)
        ratios.append(t_base / t_cand)
    return statistics.median(times) * 1e3, statistics.median(ratios)


def interleaved(
    fns: Dict[str, Callable[[int], object]], device: str, rounds: int, calls: int
) -> Dict[str, List[float]]:
    """Per-round ms/call of every function; every function once per round, in an order
    shuffled anew each round (seeded, so a run is repeatable).

    A call pays for what the one before it did: on CPU the large buffers a step frees go back
    to the system and come back as page faults in the next step's allocations. In a fixed
    order that cost fell on the same provider every round: whichever fusedops provider ran
    right after eager took 15-60% longer than the same kernels later in the round (mnist conv1
    training step). Shuffled, each provider follows each other one in a share of the rounds,
    which the median over rounds leaves out."""
    times: Dict[str, List[float]] = {name: [] for name in fns}
    order = list(fns)
    shuffle = random.Random(0).shuffle
    for _ in range(rounds):
        shuffle(order)
        for name in order:
            sync(device)
            times[name].append(time_call(fns[name], device, calls))
    return times


def median_ratio(baseline: Sequence[float], times: Sequence[float]) -> float:
    """Median over rounds of baseline / time: the speed-up, robust to drift."""
    return statistics.median(b / t for b, t in zip(baseline, times))


def rotation_count(bytes_per_input: int, device: str) -> int:
    """How many input copies to rotate through so that they exceed the last-level cache twice."""
    if device == "cuda":
        cache = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 * 2**20)
    else:
        cache = 32 * 2**20
    return max(1, min(32, -(-2 * cache // max(1, bytes_per_input))))


def measure_ceilings(device: str, dtype: torch.dtype) -> Dict[str, float]:
    """Copy bandwidth (GB/s) and matmul throughput (TFLOP/s) of this device, measured once."""
    n_bytes = 512 * 2**20 if device == "cuda" else 128 * 2**20
    src = torch.empty(n_bytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    copy_ms = []
    for _ in range(7):
        sync(device)
        copy_ms.append(time_call(lambda i: dst.copy_(src), device, 3))
    gbps = 2 * n_bytes / (statistics.median(copy_ms) * 1e-3) / 1e9  # read + write
    n = 8192 if device == "cuda" else 1024
    mm_dtype = dtype if device == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=mm_dtype)
    b = torch.randn(n, n, device=device, dtype=mm_dtype)
    mm_ms = []
    for _ in range(7):
        sync(device)
        mm_ms.append(time_call(lambda i: a @ b, device, 3))
    tflops = 2 * n**3 / (statistics.median(mm_ms) * 1e-3) / 1e12
    return {"copy_gbps": round(gbps, 2), "matmul_tflops": round(tflops, 3), "matmul_dtype": str(mm_dtype)}


def saved_bytes(module: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes saved for backward by one forward, beyond the input and the parameters."""
    exclude = {x.untyped_storage().data_ptr()} | {p.untyped_storage().data_ptr() for p in module.parameters()}
    storages: Dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in exclude:
            storages[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x)
    return sum(storages.values())


def peak_memory_mb(step: Callable[[int], object], device: str) -> float:
    """Peak device memory of one step above what was allocated before it (CUDA only)."""
    if device != "cuda":
        return float("nan")
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step(0)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20
