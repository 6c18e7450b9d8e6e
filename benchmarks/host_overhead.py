"""Host time per call: the fused modules against the eager layer chains they replace.

    python benchmarks/host_overhead.py                 # CPU (and CUDA when present)
    python benchmarks/host_overhead.py --rounds 31 --calls 400

On tiny tensors the kernels' work is negligible, so what is timed is the time a call costs
the host (Python, the dispatcher, autograd, launches): what a user feels per layer in eager
mode on a GPU, where the tutorial layers take a few microseconds of GPU work each.

Workloads: ``Conv2d(4, 8, 3, padding=1) -> ReLU -> MaxPool2d(2)`` on ``(1, 4, 8, 8)`` and
``Linear(16, 16) -> ReLU`` on ``(2, 16)``; modes: forward under ``no_grad`` and forward +
backward. Providers: the eager chain, the fused module with automatic choice, and with each
available backend named. Every provider is timed interleaved with the eager chain (blocks of
``calls`` calls, ``rounds`` rounds); the table gives median microseconds per call and the
median over rounds of fused / eager time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Dict, List

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import fusedops  # noqa: E402
from benchmarks.measure import block_seconds, module_call  # noqa: E402


def _chains(device: str):
    """(name, eager module, fused module factory(backend), input) per workload."""
    conv = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)).to(device)
    lin = nn.Sequential(nn.Linear(16, 16), nn.ReLU()).to(device)
    return [
        ("Conv2d+ReLU+MaxPool2d", conv, lambda b: fusedops.FusedConvBlock.from_modules(*conv, backend=b),
         torch.randn(1, 4, 8, 8, device=device)),
        ("Linear+ReLU", lin, lambda b: fusedops.FusedLinear.from_modules(*lin, backend=b),
         torch.randn(2, 16, device=device)),
    ]


def measure(device: str, rounds: int, calls: int) -> List[Dict[str, object]]:
    """One row per (workload, mode, provider): median us per call and median ratio to eager."""
    backends = [None] + [b for b in fusedops.available_backends() if _runs(b, device)]
    rows = []
    for name, eager, make, x in _chains(device):
        for mode in ("no_grad fwd", "fwd+bwd"):
            backward = mode == "fwd+bwd"
            arg = x.detach().requires_grad_(True) if backward else x
            fns = {"eager chain": module_call(eager, arg, backward)}
            for b in backends:
                fns[f"fused {b or 'auto'}"] = module_call(make(b), arg, backward)
            for fn in fns.values():  # warm-up: caches, lazy init, first launches
                for _ in range(max(calls // 4, 10)):
                    fn()
            times: Dict[str, List[float]] = {k: [] for k in fns}
            for _ in range(rounds):
                for k, fn in fns.items():
                    times[k].append(block_seconds(fn, calls, device) * 1e6)
            base = times["eager chain"]
            for k, t in times.items():
                rows.append({
                    "device": device, "workload": name, "mode": mode, "provider": k,
                    "us_per_call": statistics.median(t),
                    "vs_eager": statistics.median(a / b for a, b in zip(t, base)),
                })
    return rows


def _runs(backend: str, device: str) -> bool:
    probe = torch.zeros(1, device=device)
    return not fusedops.backends._REGISTRY[backend].unsupported_reasons([probe])


def table(rows: List[Dict[str, object]]) -> str:
    """Markdown table of the rows."""
    lines = ["| device | call | mode | provider | us per call | time vs eager chain |",
             "| --- | --- | --- | --- | ---: | ---: |"]
    for r in rows:
        lines.append(
            f"| {r['device']} | {r['workload']} | {r['mode']} | {r['provider']} | "
            f"{r['us_per_call']:.1f} | {r['vs_eager']:.2f}x |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds (default 15)")
    parser.add_argument("--calls", type=int, default=200, help="calls per timed block (default 200)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.calls < 1:
        parser.error("--rounds and --calls must be positive")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        if args.device == "cuda":
            parser.error("--device cuda: no CUDA device here")
        devices.remove("cuda")
    rows = [row for d in devices for row in measure(d, args.rounds, args.calls)]
    print(f"host time per call, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"median of {args.rounds} interleaved blocks of {args.calls} calls")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
