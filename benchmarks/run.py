"""fusedops benchmark CLI: fused blocks against eager PyTorch on the tutorial CNN layers.

Usage: python benchmarks/run.py [--device cpu|cuda] [--batch N] [--modes fwd,train] [--repeat R]

Each layer is Conv2d(3x3, pad 1) + ReLU + MaxPool2d(2). Every provider's output is checked
against eager before it is timed. On CPU the providers are timed interleaved in one
process (A, B, A, B, ...) and the table reports medians and the median of the per-round
ratios; on CUDA, CUDA events after warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import fusedops  # noqa: E402

# (name, in_channels, out_channels, height/width)
LAYERS = [
    ("mnist.conv1 1->32 28x28", 1, 32, 28),
    ("mnist.conv2 32->64 14x14", 32, 64, 14),
    ("cifar.conv1 3->32 32x32", 3, 32, 32),
    ("cifar.conv2 32->64 16x16", 32, 64, 16),
]


def _step(module, x, mode):
    out = module(x)
    if mode == "train":
        out.backward(torch.ones_like(out))
    return out


def _time_once(fn, device) -> float:
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def bench_layer(layer, device, batch, mode, repeat, backends):
    name, cin, cout, size = layer
    eager = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)).to(device)
    providers = {"eager": eager}
    for b in backends:
        providers[f"fusedops-{b}"] = fusedops.FusedConvBlock.from_modules(*eager, backend=b)
    x = torch.randn(batch, cin, size, size, device=device, requires_grad=(mode == "train"))
    ref = eager(x)
    for pname, module in providers.items():
        torch.testing.assert_close(module(x), ref, atol=1e-4, rtol=1e-4, msg=lambda m, p=pname: f"{p}: {m}")
        for _ in range(2):  # warm-up
            _step(module, x, mode)
    times = {p: [] for p in providers}
    for _ in range(repeat):  # interleaved rounds
        for pname, module in providers.items():
            times[pname].append(_time_once(lambda m=module: _step(m, x, mode), device))
    rows = []
    for pname, ts in times.items():
        ratios = [e / t for e, t in zip(times["eager"], ts)]
        rows.append((name, mode, pname, statistics.median(ts), statistics.median(ratios)))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=None, help="default 256 on CUDA, 64 on CPU")
    parser.add_argument("--modes", default="fwd,train")
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args(argv)
    batch = args.batch or (256 if args.device == "cuda" else 64)
    probe = [torch.empty(1, device=args.device)]
    backends = [
        b for b in fusedops.available_backends()
        if not fusedops.backends._REGISTRY[b].unsupported_reasons(probe)
    ]
    print(f"device={args.device} torch={torch.__version__} batch={batch} backends={backends}")
    print(f"{'layer':28} {'mode':6} {'provider':20} {'median ms':>10} {'speed-up':>9}")
    for layer in LAYERS:
        for mode in args.modes.split(","):
            for row in bench_layer(layer, args.device, batch, mode, args.repeat, backends):
                print(f"{row[0]:28} {row[1]:6} {row[2]:20} {row[3]:10.3f} {row[4]:8.2f}x", flush=True)


if __name__ == "__main__":
    main()
