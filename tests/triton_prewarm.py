"""Compile the gpu-marked suite's Triton kernels in parallel before the tests run.

Triton compiles a kernel for every specialisation a launch binds (dtypes, constexprs, which
int arguments are 1 or divisible by 16, pointer alignment), one at a time, in the process
that launches it: the suite's cases need about a thousand compiles, ~0.5 s each. Here each
job's launches are bound on meta tensors exactly as the launchers bind them on the GPU
(``tools/triton_compile.record_launches``, Triton 3.6's binder) and compiled by ``jobs``
worker processes into Triton's cache, where the tests then find them.

    python -m tests.triton_prewarm [--jobs N] [--arch 90] [--dry-run]

tests/conftest.py runs ``prewarm(jobs)`` at the start of a run that selects gpu-marked
Triton cases (``FUSEDOPS_TRITON_PREWARM=0`` turns it off). It only saves time: a compile it
misses (or one it cannot do) happens in the test, as without it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable, List, Optional, Sequence, Tuple

MIN_JOBS = 20  # fewer triton jobs than this: compiling in the tests costs less than the workers' start


def enabled_reason(env=os.environ) -> Optional[str]:
    """Why no prewarm runs in this process (None: it may)."""
    if env.get("FUSEDOPS_TRITON_PREWARM", "1") == "0":
        return "FUSEDOPS_TRITON_PREWARM=0"
    if env.get("TRITON_INTERPRET", "0") == "1":
        return "TRITON_INTERPRET=1: nothing is compiled"
    return None


def jobs_of_items(items) -> List[Tuple[str, str, object]]:
    """``(backend, precision, case)`` of the collected gpu tests that run a case of
    tests/gpu_cases.py on the triton backend and are not skipped."""
    out = []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        case = params.get("case")
        if params.get("backend") != "triton" or not hasattr(case, "launch") or "precision" not in params:
            continue
        if item.get_closest_marker("gpu") is None or item.get_closest_marker("skip") is not None:
            continue
        out.append(("triton", params["precision"], case))
    return out


def record(job_list: Sequence, arch: int) -> list:
    """The launches of ``job_list`` bound for ``sm_<arch>`` (``tools.triton_compile.Launch``)."""
    from tests import gpu_cases
    from tools.triton_compile import record_launches

    launches: list = []
    current = ["", ""]
    with gpu_cases.meta_backend("triton"), record_launches([arch], lambda: tuple(current), launches):
        for backend, precision, case in job_list:
            if backend == "triton":
                current[:] = [case.id, precision]
                case.launch("triton", precision, "meta")
    return launches


def prewarm(job_list: Sequence, workers: int, arch: int, say: Callable[[str], None] = print) -> str:
    """Compile the kernels of ``job_list`` into Triton's cache; returns a one-line summary."""
    from tools.triton_compile import compile_all

    start = time.monotonic()
    launches = record(job_list, arch)
    distinct = len({ln.key() for ln in launches})
    say(f"triton prewarm: {len(job_list)} jobs, {distinct} kernels to compile for sm_{arch} with {workers} workers")
    results = compile_all(launches, workers, 120.0, lambda *a: None)
    failed = [r.error for r in results.values() if r.error]
    line = (f"triton prewarm: {distinct} kernels compiled for sm_{arch} in {time.monotonic() - start:.0f} s "
            f"({workers} workers)")
    if failed:
        line += f"; {len(failed)} failed to compile (the tests compile them again and report): {failed[0][:200]}"
    return line


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    parser.add_argument("--arch", type=int, default=None, help="compute capability, e.g. 90 (default: the GPU's)")
    parser.add_argument("--dry-run", action="store_true", help="count the kernels, compile nothing")
    args = parser.parse_args(argv)
    why = enabled_reason()
    if why:
        print(f"triton prewarm: skipped ({why})")
        return 0
    # Real JITFunctions: tests/conftest.py (imported with the CPU tests' cases) must not switch
    # the interpreter on where there is no GPU.
    os.environ["TRITON_INTERPRET"] = "0"
    import torch

    from tests import gpu_cases

    arch = args.arch
    if arch is None:
        if not torch.cuda.is_available():
            print("triton prewarm: no CUDA device; give --arch (e.g. 90) to compile for one")
            return 0
        major, minor = torch.cuda.get_device_capability()
        arch = 10 * major + minor
    job_list = gpu_cases.jobs(gpu_cases.ALL_CASES, "triton")
    if args.dry_run:
        launches = record(job_list, arch)
        print(f"triton prewarm (dry run): {len(job_list)} jobs, {len({ln.key() for ln in launches})} kernels")
        return 0
    print(prewarm(job_list, args.jobs, arch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
