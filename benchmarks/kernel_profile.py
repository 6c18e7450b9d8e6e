"""Kernel time per training step of the tutorial conv blocks on CUDA, per backend.

    python benchmarks/kernel_profile.py [--batch 256] [--dtypes bfloat16,float32]

For each tutorial layer (3x3 pad 1, ReLU, MaxPool2d(2)) and dtype, runs ``y = m(x);
y.float().sum().backward()`` for eager (Conv2d + ReLU + MaxPool2d, cudnn.benchmark on) and
each fusedops GPU backend, and prints one line per run: the wall time per step (mean of 10
after 3 warm-ups, synchronised), the CUDA time summed over its kernels
(``torch.profiler``, 5 steps), and the five most expensive kernels; then a markdown table of
the same (``make gpu-report``'s bench stage puts it in its summary). It says where a
backend's time goes; ``benchmarks/run.py`` is the benchmark.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

import fusedops

LAYERS = ((1, 32, 28), (32, 64, 14), (3, 32, 32), (32, 64, 16))
BACKENDS = ("eager", "triton", "cuda")


def make(backend: str, cin: int, cout: int, dtype: torch.dtype) -> torch.nn.Module:
    if backend == "eager":
        m = torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2))
    else:
        m = fusedops.FusedConvBlock(cin, cout, 3, padding=1, backend=backend)
    return m.cuda().to(dtype)


def profile_step(m: torch.nn.Module, x: torch.Tensor):
    """``(wall ms, kernel ms, the five largest kernels as "name ms xcount; ...")`` of one step."""
    def step():
        m(x).float().sum().backward()

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        step()
    torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) / 10 * 1e3
    with profile(activities=[ProfilerActivity.CUDA], acc_events=True) as prof:
        for _ in range(5):
            step()
        torch.cuda.synchronize()
    events = prof.key_averages()
    total = sum(e.device_time_total for e in events) / 5 / 1e3
    top = sorted(events, key=lambda e: -e.device_time_total)[:5]
    kernels = "; ".join(f"{e.key[:60]} {e.device_time_total / 5 / 1e3:.3f}ms x{e.count // 5}" for e in top)
    return wall, total, kernels


def _short(kernel: str) -> str:
    """``"void ns::(anonymous namespace)::name<T> 0.25ms x1"`` -> ``"name<T> 0.25ms"``."""
    name, ms, _ = kernel.rsplit(" ", 2)
    return f"{name.split('::')[-1][:40]} {ms}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dtypes", default="bfloat16,float32")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("needs a CUDA device")
    torch.backends.cudnn.benchmark = True
    table = ["| dtype | layer | backend | wall ms | kernels ms | largest kernels |",
             "| --- | --- | --- | ---: | ---: | --- |"]
    for name in args.dtypes.split(","):
        dtype = getattr(torch, name)
        for cin, cout, hw in LAYERS:
            x0 = torch.randn(args.batch, cin, hw, hw, device="cuda", dtype=dtype)
            for backend in BACKENDS:
                label = f"{name} {cin}->{cout}@{hw} {backend}"
                try:
                    x = x0.clone().requires_grad_(cin > 3)
                    wall, total, kernels = profile_step(make(backend, cin, cout, dtype), x)
                except Exception as exc:  # one backend failing must not hide the others' numbers
                    print(f"{label}: ERROR {type(exc).__name__}: {str(exc)[:300]}", flush=True)
                    table.append(f"| {name} | {cin}->{cout} @{hw} | {backend} | error | | {type(exc).__name__} |")
                    continue
                print(f"{label}: wall {wall:.3f} ms, kernels {total:.3f} ms | {kernels}", flush=True)
                short = "; ".join(_short(k) for k in kernels.split("; ")[:3])
                table.append(f"| {name} | {cin}->{cout} @{hw} | {backend} | {wall:.3f} | {total:.3f} | {short} |")
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
