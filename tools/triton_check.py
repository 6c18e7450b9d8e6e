"""make triton-check: compile every Triton kernel for sm_90 and sm_80 as the launchers specialise it.

No GPU is needed. The launchers run on meta tensors over the shapes of ``tools/triton_cases.py``
in bf16, fp16, fp32 (TF32 and IEEE) and fp64; each launch is bound as Triton binds it and
compiled for each target (``tools/triton_compile.py``). The check fails on:

- a compile error or compiler crash;
- shared memory over the target's per-block limit (227 KB sm_90, 163 KB sm_80);
- a compile slower than ``--max-compile-seconds`` (30 s);
- a grid over the hardware limits (x < 2^31, y and z <= 65,535);
- a block config the launchers can pick that no case compiled (coverage);
- an integer division or remainder inside any kernel's loops (in the PTX).

It prints a table (kernel, case, dtype, config, shared memory, registers, stack, wgmma/mma
count, compile seconds) and writes it to ``benchmarks/triton-sm90.md`` (with an sm_80 summary).
Needs Triton 3.6 (the GPU machines' Triton); ``make triton-check`` runs it in a virtualenv
with torch 2.13 (CPU) and Triton 3.6.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import sys
import tempfile
import time
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

KERNEL_CONFIGS = {
    # kernel name -> (module, config function); every kernel must be compiled in every config
    # its launcher can pick, for every dtype.
    "conv_block_fwd_kernel": ("fusedops.triton.conv_block", "conv_block_fwd_configs"),
    "conv_block_dx_kernel": ("fusedops.triton.conv_block", "conv_block_configs"),
    "conv_block_dw_kernel": ("fusedops.triton.conv_block", "conv_block_dw_configs"),
    "conv_block_dw_runs_kernel": ("fusedops.triton.conv_block", "conv_block_dw_runs_configs"),
    "linear_fwd_kernel": ("fusedops.triton.linear", "linear_configs"),
    "linear_dx_kernel": ("fusedops.triton.linear", "linear_configs"),
    "linear_dw_kernel": ("fusedops.triton.linear", "linear_configs"),
}
CONFIG_KEYS = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "num_warps", "TAP_ROWS")  # TAP_ROWS: the forward's, else False
# Config functions that take more than (rows, cols, dtype): the values each extra argument is
# probed at (the forward's pool taps: 2, 4 and 8 take tap rows, others the tap loop).
CONFIG_PROBES = {"conv_block_fwd_configs": {"taps": (1, 2, 4, 8, 9, 16, 144)}}


def config_of(launch) -> tuple:
    """``(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, TAP_ROWS)`` of a launch."""
    return tuple(launch.options["num_warps"] if k == "num_warps" else bool(launch.meta(k, False)) if k == "TAP_ROWS"
                 else launch.meta(k) for k in CONFIG_KEYS)


def reachable_configs(function, dtype, tf32: bool = False) -> set:
    """Every config ``function(rows, cols, dtype, **extra)`` returns with torch's TF32 switches
    at ``tf32``, probed at and around powers of two (and at each extra argument's values of
    ``CONFIG_PROBES``; None, where the function's kernel does not run, is no config)."""
    import itertools

    from tools.triton_cases import precision

    probes = sorted({v for i in range(32) for v in (2**i - 1, 2**i, 2**i + 1) if v > 0})
    extra = CONFIG_PROBES.get(function.__name__, {})
    extras = [dict(zip(extra, values)) for values in itertools.product(*extra.values())]
    with precision(tf32):
        configs = (function(r, c, dtype, **kw) for r in probes for c in probes for kw in extras)
        return {tuple(cfg.get(k, False) if k == "TAP_ROWS" else cfg[k] for k in CONFIG_KEYS) for cfg in configs
                if cfg is not None}


def coverage_gaps(launches, dtypes) -> list:
    """``kernel dtype config`` for each reachable config no launch compiled."""
    import importlib

    from tools.triton_cases import DTYPES

    seen = {(ln.kernel, ln.dtype, config_of(ln)) for ln in launches}
    gaps = []
    for kernel, (module, name) in KERNEL_CONFIGS.items():
        function = getattr(importlib.import_module(module), name)
        for label in dtypes:
            for config in sorted(reachable_configs(function, *DTYPES[label])):
                if (kernel, label, config) not in seen:
                    gaps.append(f"{kernel} {label} {dict(zip(CONFIG_KEYS, config))}")
    return gaps


def grid_errors(launches) -> list:
    """One line per launch whose grid is outside CUDA's limits."""
    from tools.triton_compile import GRID_LIMIT

    errors = set()
    for ln in launches:
        if any(g > limit or g < 1 for g, limit in zip(ln.grid, GRID_LIMIT)):
            errors.add(f"{ln.kernel} [{ln.case}, {ln.dtype}]: grid {ln.grid} exceeds the limits {GRID_LIMIT}")
    return sorted(errors)


def resource_errors(launches, results, max_seconds) -> list:
    """One line per launch whose compile failed, needs more shared memory than its target
    allows per block, or took over ``max_seconds``."""
    from tools.triton_compile import SHARED_LIMIT

    errors = []
    for ln in launches:
        r = results[ln.key()]
        where = f"sm_{ln.arch} {ln.kernel} [{ln.case}, {ln.dtype}, {dict(zip(CONFIG_KEYS, config_of(ln)))}]"
        if r.error:
            errors.append(f"{where}: {r.error}")
        elif r.shared > SHARED_LIMIT[ln.arch]:
            errors.append(f"{where}: {r.shared} B of shared memory, over the {SHARED_LIMIT[ln.arch]} B per-block limit")
        elif r.seconds > max_seconds:
            errors.append(f"{where}: compiled in {r.seconds:.1f} s, over {max_seconds:.0f} s")
    return list(dict.fromkeys(errors))


# No kernel's loops divide: the implicit GEMMs' conv geometry is constexpr (the filter and
# pool-window sizes, strides, dilations), a weight gradient steps through its positions by
# carries, a linear layer has no geometry; the tangent kernel's K loop splits k by its constexpr
# filter size (its strides and dilations only multiply).


def loop_division_errors(launches, results) -> list:
    """One line per compiled kernel with an integer division or remainder in a loop."""
    errors = []
    for ln in launches:
        r = results[ln.key()]
        if not r.error and r.loop_divisions:
            errors.append(f"sm_{ln.arch} {ln.kernel} [{ln.case}, {ln.dtype}]: {r.loop_divisions} integer "
                          "divisions/remainders inside its loops")
    return list(dict.fromkeys(errors))


def _cfg(ln) -> str:
    bm, bn, bk, warps, tap_rows = config_of(ln)
    return f"{bm}x{bn}x{bk} w{warps}" + (" taps" if tap_rows else "")


def table(launches, results, arch) -> list:
    """Markdown rows, one per (kernel, case, dtype) on ``arch``."""
    rows = ["| kernel | case | dtype | BMxBNxBK warps | grid | shared KB | regs | stack B | wgmma | mma | "
            "loop div | compile s |",
            "| --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    seen = set()
    for ln in launches:
        if ln.arch != arch or (ln.kernel, ln.case, ln.dtype) in seen:
            continue
        seen.add((ln.kernel, ln.case, ln.dtype))
        r = results[ln.key()]
        grid = "x".join(str(g) for g in ln.grid)
        if r.error:
            rows.append(f"| {ln.kernel} | {ln.case} | {ln.dtype} | {_cfg(ln)} | {grid} | FAILED: {r.error} |"
                        " | | | | | |")
            continue
        rows.append(f"| {ln.kernel} | {ln.case} | {ln.dtype} | {_cfg(ln)} | {grid} | {r.shared / 1024:.1f} | "
                    f"{r.registers} | {r.stack} | {r.wgmma} | {r.mma} | {r.loop_divisions} | {r.seconds:.1f} |")
    return rows


def summary(launches, results, arch) -> list:
    """Markdown rows: per kernel, the maxima over every case and dtype on ``arch``."""
    from tools.triton_compile import SHARED_LIMIT

    worst = defaultdict(lambda: [0, 0, 0, 0.0, 0, 0, 0])
    for ln in launches:
        r = results[ln.key()]
        if ln.arch != arch or r.error:
            continue
        w = worst[ln.kernel]
        w[:] = [max(w[0], r.shared), max(w[1], r.registers), max(w[2], r.stack), max(w[3], r.seconds),
                max(w[4], r.wgmma), max(w[5], r.mma), max(w[6], r.loop_divisions)]
    rows = [f"| kernel | max shared KB (limit {SHARED_LIMIT[arch] // 1024}) | max regs | max stack B | "
            "max compile s | max wgmma | max mma | max loop div |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for kernel, (shared, regs, stack, secs, wgmma, mma, divs) in sorted(worst.items()):
        rows.append(f"| {kernel} | {shared / 1024:.1f} | {regs} | {stack} | {secs:.1f} | {wgmma} | {mma} | {divs} |")
    return rows


def write_report(path, launches, results, archs, errors, elapsed, compiles) -> None:
    """The markdown report: failures, per-kernel maxima for each arch, the sm_90 table."""
    import torch
    import triton

    lines = [
        "# Triton kernels compiled for the GPU (`make triton-check`)",
        "",
        "Generated by `make triton-check` (`tools/triton_check.py`); do not edit. Every Triton kernel,",
        "specialised as the launchers specialise it for each case and dtype, compiled with",
        f"Triton {triton.__version__} (torch {torch.__version__.split('+')[0]} on the host) for "
        + ", ".join(f"sm_{a}" for a in archs) + " without a GPU. Shared memory is",
        "the compiled kernel's (dynamic, per block); registers and stack per thread from",
        "`cuobjdump -res-usage`; wgmma/mma count the tensor-core instructions in the PTX; loop div",
        "counts the integer divisions and remainders inside the PTX's loops (every kernel must",
        "have none: a failure); compile seconds are wall time with",
        f"{compiles} compiles shared by parallel workers on this machine.",
        "",
        f"{datetime.date.today().isoformat()}: {len(set(ln.key() for ln in launches))} compiles, "
        f"{elapsed:.0f} s, " + (f"**{len(errors)} failures**" if errors else "no failures") + ".",
        "",
    ]
    if errors:
        lines += ["## Failures", ""] + [f"- {e}" for e in errors] + [""]
    for arch in archs:
        lines += [f"## sm_{arch}: maxima per kernel", ""] + summary(launches, results, arch) + [""]
    lines += ["## sm_90: every kernel, case and dtype", ""] + table(launches, results, 90 if 90 in archs else archs[0])
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None) -> int:
    """Run the check; 0 when everything compiled within limits, 1 otherwise."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", default="90,80", help="compute capabilities (default 90,80)")
    parser.add_argument("--dtypes", default=None, help="comma-separated subset of bf16,fp16,tf32,fp32,fp64")
    parser.add_argument("--cases", default=None, help="only cases whose name contains this text")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compiles")
    parser.add_argument("--max-compile-seconds", type=float, default=30.0)
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "triton-sm90.md"),
                        help="report path ('' for none)")
    args = parser.parse_args(argv)

    if "triton" in sys.modules:
        raise RuntimeError("tools/triton_check.py must run before anything imports triton")
    # Real JITFunctions (not the interpreter's), and a fresh cache: every kernel is compiled
    # (and timed) by this run.
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="triton-check-cache-")
    import triton

    from tools import triton_cases
    from tools.triton_compile import compile_all, record_launches

    archs = [int(a) for a in args.archs.split(",")]
    dtypes = args.dtypes.split(",") if args.dtypes else list(triton_cases.DTYPES)
    cases = [dataclasses.replace(c, dtypes=tuple(d for d in c.dtypes if d in dtypes)) for c in triton_cases.CASES
             if args.cases is None or args.cases in c.name]
    if not triton.__version__.startswith("3.6"):
        print(f"triton-check: warning: Triton {triton.__version__}; the GPU machines run 3.6", file=sys.stderr)
    start = time.monotonic()
    launches = []
    current = ["", ""]

    def on_case(name, dtype):
        current[:] = [name, dtype]

    errors = []
    with record_launches(archs, lambda: tuple(current), launches):
        try:
            triton_cases.run_all(cases, on_case)
        except Exception as exc:
            errors.append(f"launcher failed on [{current[0]}, {current[1]}]: {type(exc).__name__}: {exc}")
    errors += grid_errors(launches)
    if args.cases is None:
        errors += [f"no case compiles {gap}" for gap in coverage_gaps(launches, dtypes)]
    compiles = len({ln.key() for ln in launches})
    print(f"triton-check: {len(launches)} launches, {compiles} distinct compiles for "
          + ", ".join(f"sm_{a}" for a in archs) + f" (Triton {triton.__version__}, {args.jobs} workers)", flush=True)

    def progress(done, total, launch, compiled):
        if launch is None:
            print(f"triton-check: {compiled}", flush=True)
            return
        status = f"FAILED: {compiled.error}" if compiled.error else (
            f"{compiled.shared / 1024:.0f} KB smem, {compiled.registers} regs, {compiled.stack} B stack")
        print(f"  [{done}/{total}] {compiled.seconds:5.1f} s sm_{launch.arch} {launch.kernel} "
              f"({launch.case}, {launch.dtype}): {status}", flush=True)

    results = compile_all(launches, args.jobs, args.max_compile_seconds, progress)
    errors += resource_errors(launches, results, args.max_compile_seconds)
    errors += loop_division_errors(launches, results)
    elapsed = time.monotonic() - start
    for arch in archs:
        print(f"\nsm_{arch}: maxima per kernel\n" + "\n".join(summary(launches, results, arch)))
    main_arch = 90 if 90 in archs else archs[0]
    print(f"\nsm_{main_arch}: every kernel, case and dtype\n" + "\n".join(table(launches, results, main_arch)))
    if args.out:
        write_report(args.out, launches, results, archs, errors, elapsed, compiles)
        print(f"\ntriton-check: wrote {os.path.relpath(args.out, ROOT)}")
    if errors:
        print(f"\ntriton-check: FAILED ({len(errors)}):\n" + "\n".join(f"  {e}" for e in errors), file=sys.stderr)
        return 1
    print(f"triton-check: passed ({compiles} compiles in {elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
