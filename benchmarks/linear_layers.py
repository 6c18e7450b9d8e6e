"""One linear layer with each activation: ``FusedLinear`` against ``nn.Linear`` + the activation
module, on the CPU, paired in one process.

    python benchmarks/linear_layers.py                         # 1 and 2 threads
    python benchmarks/linear_layers.py --threads 2 --rounds 21 --acts gelu,silu

For each layer shape (batch x in -> out), activation and mode (forward under ``no_grad``;
training: forward and backward of ``.sum()``, input, weight and bias gradients), the eager
chain and the fused module (automatic choice) are timed in alternating blocks of calls; the
table gives the eager chain's median milliseconds and the median over rounds of eager time /
fused time in the same round (> 1: the fused layer is faster). The shapes are the quickstart
MLP's (batch 64), a wider layer, a short reduction (where the GEMM is cheap and the passes
count) and a large one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Tuple

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import fusedops  # noqa: E402
from benchmarks.measure import module_call, paired_blocks  # noqa: E402

SHAPES: List[Tuple[int, int, int]] = [(64, 784, 512), (64, 512, 512), (64, 32, 512), (256, 1024, 1024),
                                      (2048, 1024, 1024)]
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "gelu_tanh": lambda: nn.GELU(approximate="tanh"), "silu": nn.SiLU}


def measure(shape: Tuple[int, int, int], activation: str, mode: str, rounds: int) -> Tuple[float, float]:
    """(eager median ms, median over rounds of eager / fused time)."""
    rows, k, n = shape
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(rows, k, generator=gen).requires_grad_(mode == "train")
    eager = nn.Sequential(nn.Linear(k, n), ACTIVATIONS[activation]())
    fused = fusedops.FusedLinear.from_modules(*eager)
    if fused.activation != activation:
        raise RuntimeError(f"FusedLinear.from_modules made activation {fused.activation}, not {activation}")
    steps = module_call(eager, x, mode == "train"), module_call(fused, x, mode == "train")
    # Blocks of about 3e7 multiply-adds (10-30 ms here), enough that the timer's resolution does
    # not count, and at most 300 calls where the layer is tiny.
    calls = min(300, max(2, int(3e7 / (rows * k * n * (3 if mode == "train" else 1)))))
    return paired_blocks(steps[0], steps[1], calls, rounds)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", default="1,2", help="comma list of torch thread counts (default 1,2)")
    parser.add_argument("--rounds", type=int, default=15, help="paired rounds per row (default 15)")
    parser.add_argument("--acts", default=",".join(ACTIVATIONS), help="comma list of " + ", ".join(ACTIVATIONS))
    parser.add_argument("--shapes", default=None, help="comma list of BxKxN (default: " +
                        ", ".join("x".join(map(str, s)) for s in SHAPES) + ")")
    args = parser.parse_args(argv)
    acts = args.acts.split(",")
    unknown = [a for a in acts if a not in ACTIVATIONS]
    if unknown:
        parser.error(f"unknown activation(s) {unknown}; choose from {list(ACTIVATIONS)}")
    shapes = SHAPES if args.shapes is None else [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    print(f"fusedops {fusedops.__version__}, torch {torch.__version__}, CPU, float32; "
          "ratio = median over rounds of eager / FusedLinear time (> 1: fused faster)")
    print("| threads | layer | activation | mode | eager ms | ratio |")
    print("| ---: | --- | --- | --- | ---: | ---: |")
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        for shape in shapes:
            for act in acts:
                for mode in ("fwd", "train"):
                    ms, ratio = measure(shape, act, mode, args.rounds)
                    layer = f"{shape[0]} x {shape[1]} -> {shape[2]}"
                    print(f"| {threads} | {layer} | {act} | {mode} | {ms:.3f} | {ratio:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
