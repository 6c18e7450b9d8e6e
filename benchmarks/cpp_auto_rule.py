"""The measurements behind automatic choice's rules for the ``cpp`` conv block: its im2col path
(pooled layers that neither have <= 4 input channels per group nor take the Winograd path) and,
with ``--no-pool``, its layers without a pool (conv + bias + ReLU).

For each layer shape: eager NCHW, eager channels_last, and ``FusedConvBlock`` with
``backend="cpp"`` and ``backend="reference"``, interleaved in one process; per round each is
timed twice and the faster call kept; prints the median over rounds of eager NCHW's time over
each provider's (paired), for the no_grad forward and for forward + backward (input gradient
included; a fixed random output gradient). Automatic choice takes ``cpp`` where it is at least
as fast as the reference (what it would run otherwise).

    python benchmarks/cpp_auto_rule.py                 # 2 threads, batch 64, 15 rounds
    python benchmarks/cpp_auto_rule.py --no-pool       # the layers without a pool
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import fusedops

# (in channels, out channels, kernel, stride, padding, input size), each with MaxPool2d(2).
SHAPES = [
    (6, 16, 5, 1, 0, 14),  # the CIFAR tutorial CNN's conv2 (K = 150)
    (16, 32, 3, 2, 1, 32),  # K = 144, strided
    (8, 16, 5, 1, 2, 28),  # K = 200
    (32, 64, 3, 2, 1, 32),  # K = 288, strided
    (16, 32, 5, 1, 0, 14),  # K = 400
    (12, 24, 7, 1, 3, 16),  # K = 588
    (32, 64, 5, 1, 2, 14),  # K = 800
]
# The same without a pool: Winograd layers (3x3 stride 1, >= 8 channels per group) first, then
# small layers (the direct convolution and im2col) such as a ResNet-style model's.
NO_POOL_SHAPES = [
    (32, 64, 3, 1, 1, 14),  # benchmarks/run.py's no-pool layers
    (32, 64, 3, 1, 1, 16),
    (16, 16, 3, 1, 1, 16),
    (64, 64, 3, 1, 1, 8),
    (8, 16, 3, 1, 1, 32),
    (6, 6, 3, 1, 1, 8),  # tests/models.py's residual_bn
    (4, 16, 3, 1, 1, 8),
    (2, 16, 3, 1, 1, 16),
    (3, 16, 5, 1, 2, 32),
    (6, 16, 5, 1, 0, 14),
    (16, 32, 3, 2, 1, 16),
]


def _block(cin, cout, k, stride, pad, pool):
    layers = [nn.Conv2d(cin, cout, k, stride, pad), nn.ReLU()] + ([nn.MaxPool2d(2)] if pool else [])
    return nn.Sequential(*layers)


def _run(module, x, mode, grad):
    if mode == "fwd":
        with torch.no_grad():
            module(x)
    else:
        module(x.detach().requires_grad_()).backward(grad)


def _seconds(module, x, mode, grad):
    start = time.perf_counter()
    _run(module, x, mode, grad)
    return time.perf_counter() - start


def measure(shape, batch: int, rounds: int, pool: bool = True) -> dict:
    """{mode: {provider: median paired speed-up over eager NCHW}} for one layer shape."""
    cin, cout, k, stride, pad, size = shape
    x = torch.randn(batch, cin, size, size)
    providers = {
        "eager": (_block(cin, cout, k, stride, pad, pool), x),
        "channels_last": (
            _block(cin, cout, k, stride, pad, pool).to(memory_format=torch.channels_last),
            x.contiguous(memory_format=torch.channels_last),
        ),
    }
    for backend in ("cpp", "reference"):
        block = fusedops.FusedConvBlock(cin, cout, k, stride, pad, pool_kernel_size=2 if pool else None,
                                       backend=backend)
        providers[backend] = (block, x)
    # The output gradient a following layer would pass back: dense, in the output's layout (a
    # `.sum()` loss would pass a stride-0 one, which no real network's layer receives).
    grads = {}
    for name, (module, xin) in providers.items():
        with torch.no_grad():
            grads[name] = torch.randn_like(module(xin))
    result = {}
    for mode in ("fwd", "train"):
        for name, (module, xin) in providers.items():  # warm-up
            _run(module, xin, mode, grads[name])
        ratios = {name: [] for name in providers}
        for _ in range(rounds):
            t = {name: min(_seconds(m, xin, mode, grads[name]) for _ in range(2))
                 for name, (m, xin) in providers.items()}
            for name in providers:
                ratios[name].append(t["eager"] / t[name])
        result[mode] = {name: statistics.median(r) for name, r in ratios.items() if name != "eager"}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--no-pool", action="store_true", help="layers without a pool (conv + bias + ReLU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    setting = f"{args.rounds} rounds, batch {args.batch}, {args.threads} threads"
    print(f"speed-up over eager NCHW (paired medians, {setting})")
    print("| layer | K | fwd: channels_last | cpp | reference | train: channels_last | cpp | reference |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for shape in NO_POOL_SHAPES if args.no_pool else SHAPES:
        cin, cout, k, stride, _, size = shape
        r = measure(shape, args.batch, args.rounds, pool=not args.no_pool)
        cells = [f"{r[m][p]:.2f}x" for m in ("fwd", "train") for p in ("channels_last", "cpp", "reference")]
        layer = f"{cin}->{cout} {k}x{k}" + (f"/{stride}" if stride > 1 else "") + f" @{size}"
        print(f"| {layer} | {cin * k * k} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
