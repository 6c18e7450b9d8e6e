"""fusedops benchmark CLI: fused layers against eager PyTorch and torch.compile.

    python benchmarks/run.py                      # best device present, default settings
    python benchmarks/run.py --device cpu --ops conv_block --modes fwd --providers fusedops,compile
    python benchmarks/run.py --quick              # fewer rounds, smallest layers only

Prints one table per op (median ms, speed-up over eager and over torch.compile, TFLOP/s,
GB/s, % of the roofline floor, peak memory, saved-for-backward bytes) and writes
``benchmarks/results/<device-slug>.json`` and a PNG plot of the speed-ups. Every provider's
output is checked against eager before it is timed: a wrong result stops the run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import re
import statistics
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import measure, providers, workloads  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}
TOLERANCE = {torch.float64: 1e-9, torch.float32: 2e-3, torch.bfloat16: 5e-2, torch.float16: 1e-2}


def device_slug(device: str) -> str:
    if device == "cuda":
        name = torch.cuda.get_device_name(0)
    else:
        name = "cpu-" + (_cpu_model() or platform.machine())
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _triton_version() -> str:
    try:
        import triton

        return triton.__version__
    except ImportError:
        return "not installed"


class Progress:
    """A one-line progress bar on stderr."""

    def __init__(self, total: int):
        self.total, self.done = total, 0

    def step(self, label: str) -> None:
        self.done += 1
        width = 30
        filled = int(width * self.done / max(1, self.total))
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {label[:60]:60}")
        sys.stderr.flush()
        if self.done == self.total:
            sys.stderr.write("\n")


def check_output(name: str, step, reference: torch.Tensor, dtype: torch.dtype) -> None:
    """Raise if ``step``'s forward output differs from eager's beyond the dtype's tolerance."""
    out = step(0)
    err = (out.float() - reference.float()).abs().max().item() if out.numel() else 0.0
    scale = max(reference.float().abs().max().item(), 1.0) if reference.numel() else 1.0
    if not math.isfinite(err) or err > TOLERANCE[dtype] * scale:
        raise RuntimeError(f"{name}: output differs from eager by {err:.3g} (scale {scale:.3g}); not timed")


def bench_one(w, mode, dtype, args, ceilings):
    """Time every provider of one workload in one mode; returns result rows."""
    device = args.device
    itemsize = torch.empty(0, dtype=dtype).element_size()
    provs = providers.make_providers(w, device, dtype, args.providers)
    shape = w.input_shape(args.batch)
    count = measure.rotation_count(math.prod(shape) * itemsize, device)
    inputs = providers.make_inputs(w, args.batch, device, dtype, count, mode)
    fwd = {p.name: providers.make_step(p, w, inputs, "fwd") for p in provs if p.graph_of is None}
    with torch.no_grad():
        reference = fwd["eager"](0)
    for p in provs:
        if p.graph_of is None:
            check_output(p.name, fwd[p.name], reference, dtype)
    steps, skipped = {}, []
    for p in provs:
        if mode == "fwd" and p.name in fwd:  # the step checked above is the one to time
            steps[p.name] = fwd[p.name]
            continue
        try:
            steps[p.name] = providers.make_step(p, w, inputs, mode)
        except RuntimeError as exc:  # e.g. a CUDA graph that cannot be captured
            skipped.append(f"{p.name}: {exc}")
    for step in steps.values():  # warm-up (compiles, autotunes, allocates)
        for i in range(2):
            step(i)
    measure.sync(device)
    calls = max(count, 5) if device == "cuda" else 1
    times = measure.interleaved(steps, device, args.rounds, calls)
    flops, nbytes = w.flops(args.batch, mode), w.bytes(args.batch, mode, itemsize)
    floor_ms = max(nbytes / (ceilings["copy_gbps"] * 1e9), flops / (ceilings["matmul_tflops"] * 1e12)) * 1e3
    rows = []
    for p in provs:
        if p.name not in steps:
            continue
        med = statistics.median(times[p.name])
        saved = None
        if mode == "train" and p.eager_autograd and w.op != "train_step":
            x = inputs[0].contiguous(memory_format=torch.channels_last) if p.channels_last else inputs[0]
            saved = measure.saved_bytes(p.module, x)
        peak = measure.peak_memory_mb(steps[p.name], device)
        rows.append({
            "op": w.op, "layer": w.layer, "shape": list(shape), "dtype": str(dtype).replace("torch.", ""),
            "mode": mode, "provider": p.name, "median_ms": round(med, 4),
            "speedup_vs_eager": round(measure.median_ratio(times["eager"], times[p.name]), 3),
            "speedup_vs_compile": (round(measure.median_ratio(times["compile"], times[p.name]), 3)
                                   if "compile" in times else None),
            "tflops": round(flops / (med * 1e-3) / 1e12, 4), "gbps": round(nbytes / (med * 1e-3) / 1e9, 2),
            "roofline_pct": round(100 * floor_ms / med, 1),
            "peak_mem_mb": None if math.isnan(peak) else round(peak, 1), "saved_bytes": saved,
        })
    for line in skipped:
        print(f"  skipped {line}", file=sys.stderr)
    return rows


def print_table(op: str, rows) -> None:
    rows = [r for r in rows if r["op"] == op]
    if not rows:
        return
    print(f"\n== {op} ==")
    header = (f"{'layer':36} {'dtype':8} {'mode':5} {'provider':28} {'ms':>9} {'vs eager':>8} {'vs comp':>8} "
              f"{'TFLOP/s':>8} {'GB/s':>8} {'roof%':>6} {'peakMB':>7} {'saved':>10}")
    print(header)
    print("-" * len(header))
    for r in rows:
        vs_compile = f"{r['speedup_vs_compile']:7.2f}x" if r["speedup_vs_compile"] else f"{'-':>8}"
        peak = f"{r['peak_mem_mb']:7.1f}" if r["peak_mem_mb"] is not None else f"{'-':>7}"
        saved = f"{r['saved_bytes']:10d}" if r["saved_bytes"] is not None else f"{'-':>10}"
        extra = ""
        if r["op"] == "train_step":
            extra = f"  {r['shape'][0] / (r['median_ms'] * 1e-3):,.0f} images/s"
        print(f"{r['layer'][:36]:36} {r['dtype']:8} {r['mode']:5} {r['provider'][:28]:28} {r['median_ms']:9.3f} "
              f"{r['speedup_vs_eager']:7.2f}x {vs_compile} {r['tflops']:8.3f} {r['gbps']:8.1f} "
              f"{r['roofline_pct']:6.1f} {peak} {saved}{extra}")


def plot(rows, path: Path, title: str) -> None:
    """Horizontal bars: speed-up over eager of every non-eager provider per (layer, dtype, mode)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot written", file=sys.stderr)
        return
    groups = sorted({(r["layer"], r["dtype"], r["mode"]) for r in rows}, key=lambda g: (g[0], g[1], g[2]))
    names = sorted({r["provider"] for r in rows if r["provider"] != "eager"})
    fig, ax = plt.subplots(figsize=(10, 0.35 * len(groups) * max(1, len(names)) + 1.5))
    height = 0.8 / max(1, len(names))
    for k, name in enumerate(names):
        values = []
        for g in groups:
            match = [r["speedup_vs_eager"] for r in rows if (r["layer"], r["dtype"], r["mode"]) == g
                     and r["provider"] == name]
            values.append(match[0] if match else 0.0)
        ax.barh([i + k * height for i in range(len(groups))], values, height=height, label=name)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks([i + 0.4 - height / 2 for i in range(len(groups))])
    ax.set_yticklabels([f"{g[0]} [{g[1]}, {g[2]}]" for g in groups], fontsize=7)
    ax.set_xlabel("speed-up over eager (median of paired ratios)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="fusedops benchmarks against eager PyTorch and torch.compile")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", default=None, help="comma list; default bfloat16,float32 on CUDA, float32 on CPU")
    parser.add_argument("--batch", type=int, default=None, help="default 256 on CUDA, 64 on CPU")
    parser.add_argument("--ops", default="conv_block,linear,train_step")
    parser.add_argument("--layers", default=None, help="only layers whose name contains one of these (comma list)")
    parser.add_argument("--modes", default="fwd,train")
    parser.add_argument("--providers", default=None, help="only these provider name prefixes (eager always runs)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per provider (default 15 CUDA, 7 CPU)")
    parser.add_argument("--quick", action="store_true", help="3 rounds and the tutorial layers only")
    parser.add_argument("--full", action="store_true", help="also the ImageNet-sized layers on CPU")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--no-save", action="store_true", help="print only; write no JSON or plot")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device")
    args.dtypes = [DTYPES[d] for d in (args.dtypes or ("bfloat16,float32" if args.device == "cuda" else "float32"))
                   .split(",")]
    args.batch = args.batch or (256 if args.device == "cuda" else 64)
    args.rounds = args.rounds or (3 if args.quick else 15 if args.device == "cuda" else 7)
    args.providers = args.providers.split(",") if args.providers else None
    return args


def select_workloads(args):
    pool = workloads.ALL if (args.device == "cuda" or args.full) else workloads.CPU_DEFAULT
    if args.quick:
        pool = [w for w in pool if w.layer.startswith(("mnist", "cifar conv", "mlp"))]
    ops = args.ops.split(",")
    chosen = [w for w in pool if w.op in ops]
    if args.layers:
        chosen = [w for w in chosen if any(s in w.layer for s in args.layers.split(","))]
    return chosen


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.manual_seed(0)
    chosen = select_workloads(args)
    jobs = [(w, m, d) for w in chosen for d in args.dtypes for m in args.modes.split(",") if m in w.modes]
    ceilings = {str(d).replace("torch.", ""): measure.measure_ceilings(args.device, d) for d in args.dtypes}
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else f"CPU {_cpu_model()}"
    print(f"device: {name} | torch {torch.__version__} | triton {_triton_version()} | batch {args.batch}"
          f" | fusedops backends here: {providers.fusedops_backends_for(args.device)}")
    print(f"ceilings: {ceilings}")
    progress = Progress(len(jobs))
    rows = []
    for w, mode, dtype in jobs:
        progress.step(f"{w.layer} {mode} {dtype}")
        rows += bench_one(w, mode, dtype, args, ceilings[str(dtype).replace("torch.", "")])
    for op in ("conv_block", "linear", "train_step"):
        print_table(op, rows)
    if not args.no_save:
        out_dir = Path(args.out)
        out_dir.mkdir(parents=True, exist_ok=True)
        slug = device_slug(args.device)
        result = {
            "device": name, "torch": torch.__version__, "triton": _triton_version(), "commit": _git_commit(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "batch": args.batch, "rounds": args.rounds, "ceilings": ceilings, "rows": rows,
        }
        json_path = out_dir / f"{slug}.json"
        json_path.write_text(json.dumps(result, indent=1) + "\n")
        plot(rows, out_dir / f"{slug}.png", f"fusedops speed-ups on {name} (batch {args.batch})")
        print(f"\nwrote {json_path.relative_to(ROOT) if json_path.is_relative_to(ROOT) else json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
