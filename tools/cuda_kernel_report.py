"""Compile the CUDA kernels for sm_90 (and sm_80) without a GPU and report what each costs.

For every kernel of ``csrc/cuda/*.cu``: registers, stack (spills), static shared memory
(``cuobjdump -res-usage`` on the cubin), the instructions of its main loop (``cuobjdump
-sass``), and the integer divisions and remainders inside its loops (PTX ``div``/``rem`` on
64-bit and 32-bit operands in blocks on a cycle of the control-flow graph). ptxas turns each
64-bit one into a call of a ~70-instruction routine.

Rules for the implicit-GEMM kernels (conv forward, input and weight gradients, linear forward,
input and weight gradients) in float32 (IEEE and TF32), float16 and bfloat16, checked with
``--check``:

- at most 128 registers per thread, so that two blocks of 256 threads fit an SM;
- at most 256 bytes of stack (spills);
- no 64-bit division or remainder in a loop;
- one barrier per step of the main loop (double-buffered shared memory: the next stage is
  stored while the current one is read).

float64 (kept for gradcheck) is reported, held only to the division rule; so is every other
kernel (the direct forwards, the un-pools, the tangent, the reductions: grid-stride loops that
step their coordinates with carries or divide by multiplies, FastDivisor).

Usage: ``python tools/cuda_kernel_report.py [--arch 90 --arch 80] [--out benchmarks/cuda-sm90.md] [--check]``
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = tuple(sorted(name for name in os.listdir(os.path.join(ROOT, "csrc", "cuda")) if name.endswith(".cu")))
# torch's CUDAExtension flags that change what the kernels compile to (no implicit half conversions).
NVCC_FLAGS = ["-O3", "-std=c++17", "--expt-relaxed-constexpr", "-D__CUDA_NO_HALF_OPERATORS__",
              "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__"]
# conv_grads_kernel and conv_grads_runs_kernel run the input and weight gradients' implicit GEMMs
# (two main loops).
GEMM_KERNELS = ("conv_pool_gemm_kernel", "conv_pool_runs_kernel", "conv_grads_kernel", "conv_grads_runs_kernel",
                "linear_forward_kernel", "linear_forward_runs_kernel", "linear_input_grad_kernel",
                "linear_input_grad_runs_kernel", "linear_weight_grad_kernel", "linear_weight_grad_runs_kernel")
MAX_REGISTERS = 128  # 65536 registers per SM / (2 blocks x 256 threads)
MAX_STACK = 256  # bytes of spills per thread
DTYPES = {"float": "float32", "double": "float64", "__half": "float16", "__nv_bfloat16": "bfloat16",
          "fusedops::cuda::Tf32": "tf32"}


@dataclass
class PtxFacts:
    """What the PTX of one kernel says about its loops."""

    loop_div64: int = 0  # 64-bit integer divisions and remainders inside loops
    loop_div32: int = 0  # 32-bit ones
    main_loop_barriers: Optional[int] = None  # barriers per step of its main loops, the most (None: no such loop)


@dataclass
class Kernel:
    """One compiled kernel: its demangled name and what it costs."""

    name: str
    registers: int = 0
    stack: int = 0
    shared: int = 0
    ptx: PtxFacts = None
    main_loop_sass: Optional[int] = None  # SASS instructions in the main loop (None: no main loop)
    main_loop_multiplies: Optional[int] = None  # HMMA / FFMA / DFMA instructions among them

    @property
    def template(self) -> str:
        """The kernel's name without namespaces and arguments (``conv_pool_gemm_kernel``)."""
        m = re.search(r"(\w+)<", self.name) or re.search(r"(\w+)\(", self.name)
        return m.group(1) if m else self.name

    @property
    def label(self) -> str:
        """The report's name for it: the template, with the tile's rows where a kernel comes in
        several (``conv_pool_runs_kernel, 128 rows``; conv_grads_runs_kernel: its weight
        gradient's; the linear forward and both gradients over runs), with its pool where the
        pool is a template argument (``conv_pool_patch_kernel, 2x2 pool``)."""
        m = re.search(r"(?:conv_(?:pool|grads)|linear_(?:forward|input_grad|weight_grad))_runs_kernel<[^<>]*, (\d+)>",
                      self.name)
        if m:
            return f"{self.template}, {m.group(1)} rows"
        m = re.search(r"conv_pool_patch_kernel<[^<>]*, \d+, (\d+)>", self.name)
        if m:
            return f"{self.template}, " + ("no pool" if m.group(1) == "1" else f"{m.group(1)}x{m.group(1)} pool")
        return self.template

    @property
    def dtype(self) -> str:
        """The element type (first template argument) as torch names it."""
        m = re.search(r"<([\w:]+)", self.name)
        return DTYPES.get(m.group(1), m.group(1)) if m else "?"


def _cuda_home() -> Optional[str]:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
        return home
    nvcc = shutil.which("nvcc")
    if not nvcc:
        return None
    sys.path.insert(0, ROOT)
    try:
        from setup import _real_nvcc  # follows symlinks and wrapper scripts to the toolkit's nvcc
    finally:
        sys.path.pop(0)
    return os.path.dirname(os.path.dirname(_real_nvcc(nvcc)))


def find_tools():
    """(nvcc, cuobjdump): the toolkit's, cuobjdump also from PATH or Triton's NVIDIA backend."""
    home = _cuda_home()
    if home is None:
        raise RuntimeError("nvcc not found: set CUDA_HOME or put nvcc on PATH")
    nvcc = os.path.join(home, "bin", "nvcc")
    candidates = [os.path.join(home, "bin", "cuobjdump"), shutil.which("cuobjdump") or ""]
    spec = importlib.util.find_spec("triton")
    if spec and spec.origin:
        candidates.append(os.path.join(os.path.dirname(spec.origin), "backends", "nvidia", "bin", "cuobjdump"))
    cuobjdump = next((c for c in candidates if c and os.path.exists(c)), None)
    if cuobjdump is None:
        raise RuntimeError(f"cuobjdump not found (tried {', '.join(c for c in candidates if c)})")
    return nvcc, cuobjdump


def demangle(names: List[str]) -> Dict[str, str]:
    """Mangled -> demangled names (c++filt; the mangled name where it is missing)."""
    filt = shutil.which("c++filt")
    if not filt or not names:
        return {n: n for n in names}
    out = subprocess.run([filt], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    return dict(zip(names, out.splitlines()))


_ENTRY = re.compile(r"^(?:\.visible\s+)?\.entry\s+([^\s(]+)\(")
_LABEL = re.compile(r"^(\$\w+):")
_BRANCH = re.compile(r"\bbra(?:\.uni)?\s+(\$\w+);")
_END = re.compile(r"^(?:@!?%p\w+\s+)?(?:ret|exit)\b")
_DIV = re.compile(r"\b(?:div|rem)(?:\.full)?\.([su])(32|64)\b")
_PRODUCT = re.compile(r"\b(?:wmma\.mma|mma\.sync|fma\.rn\.f32|fma\.rn\.f64)\b")
_BARRIER = re.compile(r"^(?:@!?%p\w+\s+)?(?:bar|barrier)\.sync\b")


def ptx_facts(ptx: str) -> Dict[str, PtxFacts]:
    """PtxFacts per kernel (mangled name), from the control-flow graph of its PTX: basic blocks
    split at labels and after branches, edges from branches and fall-through. A block is in a
    loop when it lies on a cycle (a strongly connected component with an edge inside it),
    wherever the compiler placed it; loops nest as in a loop-nesting forest (a loop's entry
    blocks removed, the rest searched again). A main loop is an innermost loop holding a
    multiply (mma or fma) and a barrier: a double-buffered main loop has one barrier per step,
    a single-buffered one two. A kernel with several (one per GEMM it runs) reports the most."""
    result: Dict[str, PtxFacts] = {}
    name, lines = None, []
    for line in ptx.splitlines() + [".entry __end__("]:
        m = _ENTRY.match(line)
        if m:
            if name is not None:
                result[name] = _facts(_blocks(lines))
            name, lines = m.group(1), []
        elif name is not None:
            lines.append(line.strip())
    return result


def _blocks(lines: List[str]):
    """(instructions, successor indices) per basic block."""
    blocks, labels, current = [], {}, []
    for line in lines:
        if not line or line.startswith("//"):
            continue
        m = _LABEL.match(line)
        if m:
            if current:
                blocks.append(current)
            labels[m.group(1)] = len(blocks)  # the block that starts after the label
            current = []
            continue
        current.append(line)
        if _BRANCH.search(line) or _END.match(line):
            blocks.append(current)
            current = []
    if current:
        blocks.append(current)
    succ = []
    for i, block in enumerate(blocks):
        last = block[-1]
        out = []
        m = _BRANCH.search(last)
        if m and m.group(1) in labels:
            out.append(labels[m.group(1)])
        # No fall-through after an unpredicated branch, ret or exit.
        unconditional = (m or _END.match(last)) and not last.startswith("@")
        if not unconditional and i + 1 < len(blocks):
            out.append(i + 1)
        succ.append(out)
    return blocks, succ


def _sccs(nodes, succ):
    """Strongly connected components of the subgraph on `nodes` (iterative Tarjan)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter([s for s in succ[root] if s in nodes]))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = set()
                    while True:
                        x = stack.pop()
                        on.discard(x)
                        comp.add(x)
                        if x == v:
                            break
                    out.append(comp)
            elif w not in index:
                index[w] = low[w] = counter[0]
                counter[0] += 1
                stack.append(w)
                on.add(w)
                work.append((w, iter([s for s in succ[w] if s in nodes])))
            elif w in on:
                low[v] = min(low[v], index[w])
    return out


def _loops(nodes, succ, preds):
    """Every loop (set of blocks) of the subgraph on `nodes`, outer loops before inner ones."""
    found = []
    for comp in _sccs(nodes, succ):
        if len(comp) == 1 and next(iter(comp)) not in succ[next(iter(comp))]:
            continue
        found.append(comp)
        entries = {b for b in comp if any(p not in comp for p in preds[b])} or {min(comp)}
        found += _loops(comp - entries, succ, preds)
    return found


def _facts(graph) -> PtxFacts:
    blocks, succ = graph
    preds = [[] for _ in blocks]
    for i, out in enumerate(succ):
        for j in out:
            preds[j].append(i)
    loops = _loops(set(range(len(blocks))), succ, preds)
    facts = PtxFacts()
    for b in set().union(*loops) if loops else ():
        for line in blocks[b]:
            for _sign, bits in _DIV.findall(line):
                if bits == "64":
                    facts.loop_div64 += 1
                else:
                    facts.loop_div32 += 1

    def count(loop, pattern):
        return sum(1 for b in loop for line in blocks[b] if pattern.search(line))

    main = [loop for loop in loops if count(loop, _PRODUCT) and count(loop, _BARRIER)]
    innermost = [loop for loop in main if not any(other < loop for other in main)]
    if innermost:
        facts.main_loop_barriers = max(count(loop, _BARRIER) for loop in innermost)
    return facts


_SASS_FUNCTION = re.compile(r"\n\s*Function : (\S+)")
_SASS_INSTRUCTION = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", re.M)
_SASS_BRANCH = re.compile(r"\bBRA\b.*?(0x[0-9a-f]+)")


def _main_loops(sass: str) -> Dict[str, List[str]]:
    """Per kernel (mangled name): the instructions of the innermost SASS loop (from a backward
    BRA's target to the branch) that holds a multiply (HMMA, FFMA or DFMA) and a barrier (BAR)."""
    result: Dict[str, List[str]] = {}
    parts = _SASS_FUNCTION.split(sass)
    for name, body in zip(parts[1::2], parts[2::2]):
        code = [(int(a, 16), text) for a, text in _SASS_INSTRUCTION.findall(body)]
        loops = []
        for address, text in code:
            m = _SASS_BRANCH.search(text)
            if m and int(m.group(1), 16) < address:
                loops.append((int(m.group(1), 16), address))
        found = []
        for start, end in loops:
            inside = [text for address, text in code if start <= address <= end]
            if any(_MULTIPLY.search(t) for t in inside) and any(t.startswith("BAR") for t in inside):
                found.append(inside)
        if found:
            result[name] = min(found, key=len)
    return result


_MULTIPLY = re.compile(r"\b(?:HMMA|FFMA|DFMA)\b")


def sass_main_loops(sass: str) -> Dict[str, int]:
    """Per kernel (mangled name): the instructions of its main loop (_main_loops), the cost of
    one k step. Division routines called from it are not counted."""
    return {name: len(loop) for name, loop in _main_loops(sass).items()}


def sass_main_loop_multiplies(sass: str) -> Dict[str, int]:
    """Per kernel (mangled name): the multiply instructions (HMMA, FFMA, DFMA) of its main loop:
    with sass_main_loops, the instructions a step spends per multiply."""
    return {name: sum(1 for t in loop if _MULTIPLY.search(t)) for name, loop in _main_loops(sass).items()}


_RES = re.compile(r"Function (\S+):\s*\n\s*REG:(\d+) STACK:(\d+) SHARED:(\d+)")


def compile_kernels(arch: int, workdir: str, nvcc: str, cuobjdump: str) -> List[Kernel]:
    """Every kernel of SOURCES compiled for sm_<arch>."""
    kernels: Dict[str, Kernel] = {}
    include = os.path.join(ROOT, "csrc")
    for source in SOURCES:
        path = os.path.join(ROOT, "csrc", "cuda", source)
        stem = os.path.join(workdir, f"{os.path.splitext(source)[0]}.sm{arch}")
        for kind in ("cubin", "ptx"):
            cmd = [nvcc, *NVCC_FLAGS, f"-arch=sm_{arch}", f"-{kind}", "-I", include, "-o", f"{stem}.{kind}", path]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"nvcc failed on {source} (sm_{arch}):\n{done.stderr[-4000:]}")
        res = subprocess.run([cuobjdump, "-res-usage", f"{stem}.cubin"], capture_output=True, text=True,
                             check=True).stdout
        sass_text = subprocess.run([cuobjdump, "-sass", f"{stem}.cubin"], capture_output=True, text=True,
                                   check=True).stdout
        sass, multiplies = sass_main_loops(sass_text), sass_main_loop_multiplies(sass_text)
        with open(f"{stem}.ptx") as f:
            facts = ptx_facts(f.read())
        for mangled, reg, stack, shared in _RES.findall(res):
            kernels[mangled] = Kernel(mangled, int(reg), int(stack), int(shared), facts.get(mangled, PtxFacts()),
                                      sass.get(mangled), multiplies.get(mangled))
    names = demangle(list(kernels))
    for mangled, k in kernels.items():
        k.name = names[mangled]
    return list(kernels.values())


def violations(k: Kernel) -> List[str]:
    """The rules (module docstring) a kernel breaks."""
    out = []
    if k.ptx.loop_div64:
        out.append(f"{k.ptx.loop_div64} 64-bit divisions in loops")
    if k.dtype == "float64" or k.template not in GEMM_KERNELS:
        return out
    if k.registers > MAX_REGISTERS:
        out.append(f"{k.registers} registers > {MAX_REGISTERS}")
    if k.stack > MAX_STACK:
        out.append(f"{k.stack} bytes of stack > {MAX_STACK}")
    if k.ptx.main_loop_barriers is None:
        out.append("no main loop found")
    elif k.ptx.main_loop_barriers > 1:
        out.append(f"{k.ptx.main_loop_barriers} barriers per main-loop step (single-buffered)")
    return out


def summarize(kernels: List[Kernel]) -> List[tuple]:
    """One row per (kernel label, dtype): the maxima over its other template arguments (offset
    types)."""
    rows: Dict[tuple, list] = {}
    for k in kernels:
        key = (k.label, k.dtype)
        r = rows.setdefault(key, [0, 0, 0, 0, 0, -1, -1, -1])
        barriers = -1 if k.ptx.main_loop_barriers is None else k.ptx.main_loop_barriers
        sass = -1 if k.main_loop_sass is None else k.main_loop_sass
        multiplies = -1 if k.main_loop_multiplies is None else k.main_loop_multiplies
        for i, v in enumerate((k.registers, k.stack, k.shared, k.ptx.loop_div64, k.ptx.loop_div32, barriers, sass,
                               multiplies)):
            r[i] = max(r[i], v)
    return sorted((key + tuple(v)) for key, v in rows.items())


def report(results: Dict[int, List[Kernel]]) -> str:
    lines = ["# CUDA kernels compiled for sm_90 and sm_80 (no GPU needed)", "",
             "Generated by `python tools/cuda_kernel_report.py` (`make cuda-kernel-check`): registers, stack",
             "and static shared memory from `cuobjdump -res-usage`; loop div: integer divisions and",
             "remainders (64-bit / 32-bit) inside loops of the PTX; barriers per step: `bar.sync` in the",
             "innermost loop that multiplies (2 when one shared-memory stage is loaded and then read,",
             "1 when the next stage is stored while the current one is read); main-loop SASS: the",
             "instructions of the innermost SASS loop with a multiply and a barrier (`cuobjdump -sass`;",
             "division routines it calls not counted), the cost of one k step, and the multiplies among them",
             "(HMMA, FFMA, DFMA): a step's instructions per multiply are what the main loop spends on",
             "everything else. Rules for the implicit GEMMs",
             f"in float32/float16/bfloat16: <= {MAX_REGISTERS} registers (2 blocks of 256 threads per SM), <=",
             f"{MAX_STACK} bytes of stack, no 64-bit division in a loop, one barrier per step (float64: the",
             "division rule only; so is every other kernel, in every dtype).",
             "Maxima over the offset types (and the direct kernel's two widths, 8 and 1 output channels a thread);",
             "the conv forward and weight gradient over runs in their two tiles, 64 and 128 output channels a",
             "block, and the linear kernels over runs in theirs, 64 and 128 rows (the weight gradient's: out",
             "features).",
             ""]
    for arch, kernels in sorted(results.items(), reverse=True):
        lines += [f"## sm_{arch}", "",
                  "| kernel | dtype | registers | stack | shared | loop div 64 / 32 | barriers per step | "
                  "main-loop SASS / multiplies | rule |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        broken = {(k.label, k.dtype): "; ".join(violations(k)) for k in kernels if violations(k)}
        for label, dtype, reg, stack, shared, d64, d32, barriers, sass, multiplies in summarize(kernels):
            rule = broken.get((label, dtype), "ok")
            step = "" if barriers < 0 else str(barriers)
            size = "" if sass < 0 else f"{sass} / {multiplies}"
            lines.append(f"| {label} | {dtype} | {reg} | {stack} | {shared} | {d64} / {d32} | {step} | {size} | "
                         f"{rule} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, action="append", help="compute capability x10 (default: 90 and 80)")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "cuda-sm90.md"),
                        help="markdown report ('' for none)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a GEMM kernel (or an un-pool) breaks a rule")
    args = parser.parse_args(argv)
    nvcc, cuobjdump = find_tools()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.arch or [90, 80]:
            results[arch] = compile_kernels(arch, tmp, nvcc, cuobjdump)
    text = report(results)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    bad = [f"sm_{arch} {k.name[:120]}: {'; '.join(violations(k))}"
           for arch, kernels in results.items() for k in kernels if violations(k)]
    if args.check and bad:
        print(f"cuda-kernel-check: FAILED: {len(bad)} kernels break a rule:\n  " + "\n  ".join(bad), file=sys.stderr)
        return 1
    if args.check:
        print(f"cuda-kernel-check: passed ({sum(len(k) for k in results.values())} kernels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
