"""Time the compiled conv-block kernels alone: ``fusedops::native_conv_block_forward`` and
``_backward`` called directly (no autograd, no backend selection), on the tutorial CNNs'
pooled layers (LAYERS below: Conv2d + ReLU + MaxPool2d(2)).

    python benchmarks/native_conv_block.py                      # 2 threads, batch 64
    python benchmarks/native_conv_block.py --threads 1 --batch 16

Prints the median of ``--rounds`` calls per kernel, and eager's forward+backward of the same
layer for scale. Used for the step-by-step kernel measurements in benchmarks/NOTES.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import fusedops  # noqa: F401  (loads fusedops._C, which registers the native ops)

# (name, in channels, out channels, kernel, padding, input size), each with MaxPool2d(2), stride 1.
LAYERS = [
    ("mnist conv1 1->32 28x28", 1, 32, 3, 1, 28),
    ("cifar conv1 3->32 32x32", 3, 32, 3, 1, 32),
    ("mnist conv2 32->64 14x14", 32, 64, 3, 1, 14),
    ("cifar conv2 32->64 16x16", 32, 64, 3, 1, 16),
    ("lenet conv1 3->6 5x5 32x32", 3, 6, 5, 0, 32),
    ("lenet conv2 6->16 5x5 14x14", 6, 16, 5, 0, 14),
]


def _median_ms(fn, rounds: int) -> float:
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def time_layer(cin: int, cout: int, kernel: int, padding: int, size: int, batch: int, rounds: int) -> dict:
    """Median ms of the native forward, the native backward and eager's forward+backward on a
    batch of (cin, size, size) inputs; the input gradient only where a network needs it (not
    for first layers, <= 4 input channels, as in benchmarks/workloads.py)."""
    ops = torch.ops.fusedops
    args = ([1, 1], [padding] * 4, [1, 1], 1, [2, 2], [2, 2], [0, 0], [1, 1])  # stride ... pool_dilation
    input_grad = cin > 4
    x = torch.randn(batch, cin, size, size)
    w, b = torch.randn(cout, cin, kernel, kernel), torch.randn(cout)
    y, offsets = ops.native_conv_block_forward(x, w, b, *args, False)
    g = torch.randn_like(y)
    conv = torch.nn.Conv2d(cin, cout, kernel, padding=padding)
    xe = x.clone().requires_grad_(input_grad)

    def eager():
        torch.max_pool2d(torch.relu(conv(xe)), 2).backward(g)

    mask = [input_grad, True, True]
    return {
        "forward": _median_ms(lambda: ops.native_conv_block_forward(x, w, b, *args, False), rounds),
        "backward": _median_ms(lambda: ops.native_conv_block_backward(g, x, w, offsets, *args, mask), rounds),
        "eager fwd+bwd": _median_ms(eager, rounds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=20)
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    for name, *layer in LAYERS:
        timings = time_layer(*layer, opts.batch, opts.rounds)
        print(f"{name}, batch {opts.batch}, {opts.threads} thread(s): "
              + ", ".join(f"{k} {v:.2f} ms" for k, v in timings.items()))


if __name__ == "__main__":
    main()
