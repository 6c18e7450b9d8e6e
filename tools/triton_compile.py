"""Compile Triton kernels for a GPU that is not here, exactly as fusedops' launchers launch them.

``record_launches()`` replaces ``JITFunction.run`` (what ``kernel[grid](...)`` calls): instead of
launching, it binds the launch's arguments the way Triton does (argument specialisation:
dtypes, ints equal to 1, 16-byte divisibility; constexprs; options) for each target and records
a ``Launch``. ``compile_all()`` then compiles each distinct specialisation with
``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`` in worker processes
(a compiler crash or hang takes down only its worker) and reads the resources: shared memory
from the compiled metadata, registers and stack from ``cuobjdump -res-usage`` on the cubin,
tensor-core instructions from the PTX.

Tied to Triton 3.6's launch path (``create_function_from_signature``, ``_pack_args``), the
Triton of the GPU machines. Import it before anything imports triton, with TRITON_INTERPRET
unset, so that ``@triton.jit`` makes real ``JITFunction``\\ s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import multiprocessing
import os
import queue
import re
import shutil
import subprocess
import tempfile
import time
from typing import Dict, List, Optional, Tuple

# Per-block shared memory a kernel may use (the opt-in maximum, cudaDevAttrMaxSharedMemoryPerBlockOptin):
# 227 KB on sm_90 (H100), 163 KB on sm_80 (A100).
SHARED_LIMIT = {90: 227 * 1024, 80: 163 * 1024}
# Grid limits of every CUDA GPU since sm_30.
GRID_LIMIT = (2**31 - 1, 65535, 65535)


@dataclasses.dataclass
class Launch:
    """One kernel launch as bound for one target: what ``triton.compile`` needs, and its grid."""

    module: str
    kernel: str
    arch: int
    case: str
    dtype: str
    grid: Tuple[int, int, int]
    signature: dict
    constexprs: dict
    attrs: dict
    options: dict

    def key(self) -> str:
        """Identity of the compiled binary: launches with equal keys share one compile."""
        return repr((self.module, self.kernel, self.arch, sorted(self.signature.items()),
                     sorted((k, repr(v)) for k, v in self.constexprs.items()),
                     sorted((k, repr(v)) for k, v in self.attrs.items()), sorted(self.options.items())))

    def meta(self, name, default=None):
        """The constexpr argument ``name`` (``BLOCK_M``, ``ACC``, ...) of this launch."""
        for path, value in self.constexprs.items():
            if self._param_name(path) == name:
                return value
        return default

    def _param_name(self, path):
        return list(self.signature)[path[0]]


@dataclasses.dataclass
class Compiled:
    """What one compile produced (or why it failed)."""

    seconds: float
    shared: int = 0
    registers: int = 0
    stack: int = 0
    wgmma: int = 0
    mma: int = 0
    loop_divisions: int = 0
    error: Optional[str] = None


def _grid3(grid) -> Tuple[int, int, int]:
    grid = tuple(int(g) for g in grid)
    return grid + (1,) * (3 - len(grid))


@contextlib.contextmanager
def record_launches(archs, current_case, sink: List[Launch]):
    """Within this context, ``kernel[grid](...)`` appends one ``Launch`` per arch to ``sink``
    and launches nothing. ``current_case()`` returns ``(case name, dtype name)`` of the case
    being run."""
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import JITFunction, create_function_from_signature

    backends = {arch: make_backend(GPUTarget("cuda", arch, 32)) for arch in archs}
    binders = {}

    def run(self, *args, grid, warmup, **kwargs):
        if callable(grid):
            raise TypeError(f"{self.fn.__name__}: the check needs launchers to pass a tuple grid")
        # As JITFunction.run does before it binds.
        kwargs["debug"] = kwargs.get("debug", self.debug) or knobs.runtime.debug
        kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
        for arch, backend in backends.items():
            binder = binders.get((self, arch))
            if binder is None:
                binder = binders[(self, arch)] = create_function_from_signature(self.signature, self.params, backend)
            bound_args, specialization, options = binder(*args, **dict(kwargs))
            options, signature, constexprs, attrs = self._pack_args(backend, dict(kwargs), bound_args,
                                                                    specialization, options)
            sink.append(Launch(self.fn.__module__, self.fn.__name__, arch, *current_case(), _grid3(grid), signature,
                               constexprs, attrs, dict(options.__dict__)))
        return None

    saved = JITFunction.run
    JITFunction.run = run
    try:
        yield
    finally:
        JITFunction.run = saved


def _cuobjdump() -> str:
    import triton

    bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    found = bundled if os.path.exists(bundled) else shutil.which("cuobjdump")
    if not found:
        raise RuntimeError("cuobjdump not found (Triton's NVIDIA backend ships one in backends/nvidia/bin)")
    return found


def parse_res_usage(text: str) -> Dict[str, int]:
    """``REG``, ``STACK``, ``SHARED``, ``LOCAL`` of the (single) function ``cuobjdump -res-usage`` lists."""
    line = next((ln for ln in text.splitlines() if "REG:" in ln), "")
    return {k: int(v) for k, v in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", line)}


def count_tensor_core_ops(ptx: str) -> Tuple[int, int]:
    """``(wgmma, mma)``: Hopper warpgroup MMAs and warp-level ``mma.sync`` instructions in the PTX."""
    return len(re.findall(r"^\s*wgmma\.mma_async", ptx, re.M)), len(re.findall(r"^\s*mma\.sync", ptx, re.M))


_LABEL = re.compile(r"^(\$L__\w+):")
_LOOP_NOTE = re.compile(r"//.*(Loop Header|in Loop:)")
_INT_DIVISION = re.compile(r"^\s*(?:@!?%p\d+\s+)?(?:div|rem)\.[su](?:16|32|64)\b")


def count_loop_divisions(ptx: str) -> int:
    """Integer divisions and remainders (``div``/``rem`` on s/u 16-64 bit operands; float
    divisions are ``div.rn.f32`` and the like) in the basic blocks of the kernel's loops, in
    the PTX. LLVM marks each block of a loop in the comments after its label (``=>This Loop
    Header``, ``in Loop: Header=...``); the layout alone does not tell, since blocks before a
    loop may be placed after it. ptxas turns each such instruction into a ~20-instruction
    sequence (a 64-bit one into a call), while a division by a compile-time constant never
    reaches the PTX as one (LLVM makes it a multiply)."""
    count = 0
    in_loop = False
    lines = ptx.splitlines()
    for i, line in enumerate(lines):
        if _LABEL.match(line):  # a block starts: is it in a loop?
            in_loop = bool(_LOOP_NOTE.search(line))
            for note in lines[i + 1:]:
                if not note.strip().startswith("//"):
                    break
                in_loop = in_loop or bool(_LOOP_NOTE.search(note))
        elif in_loop and _INT_DIVISION.match(line):
            count += 1
    return count


def _compile_one(launch: Launch) -> Compiled:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(importlib.import_module(launch.module), launch.kernel)
    start = time.perf_counter()
    kernel = triton.compile(ASTSource(fn, launch.signature, launch.constexprs, launch.attrs),
                            target=GPUTarget("cuda", launch.arch, 32), options=launch.options)
    seconds = time.perf_counter() - start
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(kernel.asm["cubin"])
        cubin.flush()
        usage = parse_res_usage(subprocess.run([_cuobjdump(), "-res-usage", cubin.name], check=True,
                                               capture_output=True, text=True).stdout)
    wgmma, mma = count_tensor_core_ops(kernel.asm["ptx"])
    return Compiled(seconds, shared=int(kernel.metadata.shared), registers=usage.get("REG", 0),
                    stack=usage.get("STACK", 0), wgmma=wgmma, mma=mma,
                    loop_divisions=count_loop_divisions(kernel.asm["ptx"]))


def _worker(jobs, results, log_path):
    # The compiler's own diagnostics (MLIR dumps, assertion messages) go to a log per worker;
    # the parent quotes the relevant lines when a compile fails.
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(log, 2)
    os.dup2(log, 1)
    while True:
        item = jobs.get()
        if item is None:
            return
        index, launch = item
        start, logged = time.perf_counter(), os.lseek(log, 0, os.SEEK_END)
        try:
            compiled = _compile_one(launch)
        except Exception as exc:  # a compile error is a result, reported by the parent
            told = _telling_lines(log_path, logged)
            compiled = Compiled(time.perf_counter() - start,
                                error=describe_error(exc) + (f" ({told[-1][:300]})" if told else ""))
        results.put((index, compiled))


def describe_error(exc: BaseException) -> str:
    """One line: where Triton's frontend stopped (``at line:col`` of the kernel) and the root cause."""
    chain = [exc]
    while len(chain) < 20 and (chain[-1].__cause__ or chain[-1].__context__) is not None:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    where = next((str(e).split(":", 1)[0] for e in chain if str(e).startswith("at ")), "")
    root = chain[-1]
    text = " ".join(str(root).split())
    return (f"{where}: " if where else "") + f"{type(root).__name__}: {text[:300]}"


def _telling_lines(log_path: str, offset: int = 0) -> list:
    """The compiler's assertion and error lines in a worker's log, from byte ``offset`` on."""
    try:
        with open(log_path, errors="replace") as f:
            f.seek(offset)
            lines = f.read().splitlines()
    except OSError:
        lines = []
    return [ln.strip() for ln in lines if "Assertion" in ln or "LLVM ERROR" in ln]


def _crash_reason(log_path: str, exitcode) -> str:
    telling = _telling_lines(log_path)
    return f"compiler crashed (exit {exitcode})" + (f": {telling[-1][:300]}" if telling else "")


class _Worker:
    """A compile process with its own job queue, so the parent always knows what it holds."""

    def __init__(self, ctx, results, log_path):
        self.jobs = ctx.Queue()
        self.log_path = log_path
        self.proc = ctx.Process(target=_worker, args=(self.jobs, results, log_path), daemon=True)
        self.proc.start()
        self.job: Optional[int] = None
        self.started = 0.0

    def give(self, index, launch):
        self.job, self.started = index, time.monotonic()
        self.jobs.put((index, launch))


def compile_all(launches: List[Launch], jobs: int, time_limit: float, progress) -> Dict[str, Compiled]:
    """Compile each distinct launch once, ``jobs`` at a time; returns ``{launch.key(): Compiled}``.
    A compile still running after ``time_limit`` seconds is killed and reported, as is a
    compiler crash (Triton's C++ assertions abort the process). ``progress(done, total,
    launch, compiled)`` follows each result; ``progress(done, total, None, note)`` notes where
    the compiler output was kept when something failed."""
    unique: Dict[str, Launch] = {}
    for launch in launches:
        unique.setdefault(launch.key(), launch)
    keys = list(unique)
    pending = list(range(len(keys)))
    ctx = multiprocessing.get_context("spawn")
    result_q = ctx.Queue()
    logdir = tempfile.mkdtemp(prefix="triton-check-logs-")
    workers: List[_Worker] = []
    results: Dict[str, Compiled] = {}

    def finish(index, compiled):
        results[keys[index]] = compiled
        progress(len(results), len(keys), unique[keys[index]], compiled)

    try:
        while len(results) < len(keys):
            while len(workers) < max(1, min(jobs, len(keys))):
                workers.append(_Worker(ctx, result_q, os.path.join(logdir, f"worker{time.monotonic_ns()}.log")))
            for worker in workers:
                if worker.job is None and pending:
                    index = pending.pop(0)
                    worker.give(index, unique[keys[index]])
            try:
                index, compiled = result_q.get(timeout=0.5)
                finish(index, compiled)
                for worker in workers:
                    if worker.job == index:
                        worker.job = None
            except queue.Empty:
                pass
            for worker in list(workers):
                overdue = worker.job is not None and time.monotonic() - worker.started > time_limit
                if overdue:
                    worker.proc.kill()
                    worker.proc.join()
                if worker.proc.is_alive():
                    continue
                workers.remove(worker)
                if worker.job is not None and keys[worker.job] not in results:
                    why = (f"no result after {time_limit:.0f} s (killed)" if overdue
                           else _crash_reason(worker.log_path, worker.proc.exitcode))
                    finish(worker.job, Compiled(time.monotonic() - worker.started, error=why))
    finally:
        for worker in workers:
            worker.jobs.put(None)
        for worker in workers:
            worker.proc.join(timeout=10)
            if worker.proc.is_alive():
                worker.proc.kill()
        if any(r.error for r in results.values()):
            progress(len(results), len(keys), None, f"compiler output of the workers kept in {logdir}")
        else:
            shutil.rmtree(logdir, ignore_errors=True)
    return results
