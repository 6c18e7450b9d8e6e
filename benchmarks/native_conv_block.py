"""Time the compiled conv-block kernels alone: ``fusedops::native_conv_block_forward`` and
``_backward`` called directly (no autograd, no backend selection), on the tutorial CNNs'
32->64 layers (Conv2d(32, 64, 3, padding=1) + ReLU + MaxPool2d(2)).

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

ARGS = ([1, 1], [1, 1, 1, 1], [1, 1], 1, [2, 2], [2, 2], [0, 0], [1, 1])  # stride ... pool_dilation


def _median_ms(fn, rounds: int) -> float:
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def time_layer(size: int, batch: int, rounds: int) -> dict:
    """Median ms of the native forward, the native backward (all three gradients) and eager's
    forward+backward, on a batch of (32, size, size) inputs."""
    ops = torch.ops.fusedops
    x = torch.randn(batch, 32, size, size)
    w, b = torch.randn(64, 32, 3, 3), torch.randn(64)
    y, offsets = ops.native_conv_block_forward(x, w, b, *ARGS, False)
    g = torch.randn_like(y)
    conv = torch.nn.Conv2d(32, 64, 3, padding=1)
    xe = x.clone().requires_grad_()

    def eager():
        torch.max_pool2d(torch.relu(conv(xe)), 2).backward(g)

    return {
        "forward": _median_ms(lambda: ops.native_conv_block_forward(x, w, b, *ARGS, False), rounds),
        "backward": _median_ms(lambda: ops.native_conv_block_backward(g, x, w, offsets, *ARGS, [True] * 3), rounds),
        "eager fwd+bwd": _median_ms(eager, rounds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=20)
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    for name, size in (("mnist conv2 32->64 14x14", 14), ("cifar conv2 32->64 16x16", 16)):
        timings = time_layer(size, opts.batch, opts.rounds)
        print(f"{name}, batch {opts.batch}, {opts.threads} thread(s): "
              + ", ".join(f"{k} {v:.2f} ms" for k, v in timings.items()))


if __name__ == "__main__":
    main()
