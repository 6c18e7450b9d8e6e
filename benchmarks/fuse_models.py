"""Every model the fuse() tests rewrite (``tests/models.py``), the original against
``fusedops.fuse()`` of it, on the CPU, paired in one process.

    python benchmarks/fuse_models.py                      # batch 64, 2 threads
    python benchmarks/fuse_models.py --models mlp,lenet_functional --rounds 31

For each model and mode (eval: the forward under ``no_grad`` of the model in eval mode, fused
in eval mode, so BatchNorms are folded; train: zero_grad, the forward, the backward of the
output's sum and an SGD step with momentum, in train mode), the original and the fused model (automatic
backend choice) are timed in alternating blocks of calls from the same weights and input.
The table gives the original's median milliseconds per call and the median over rounds of
original time / fused time in the same round (> 1: the fused model is faster).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, List, Sequence, Tuple

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import fusedops  # noqa: E402
from benchmarks.measure import block_seconds, paired_blocks  # noqa: E402
from tests.models import FUSE_MODELS  # noqa: E402

MODES = ("eval", "train")


def model_call(model: torch.nn.Module, x: torch.Tensor, mode: str) -> Callable[[], object]:
    """One call as a function of no arguments: the eval forward, or a whole SGD step."""
    if mode == "eval":
        def run():
            with torch.no_grad():
                return model(x)
        return run
    # lr 0: the step does all of its arithmetic (momentum buffers, the update), and the
    # weights stay where they started, so every round computes on the same finite values (the
    # gradient of a sum grows the weights without bound: inf and NaN within tens of steps).
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        model(x).sum().backward()
        opt.step()
    return step


def measure(name: str, mode: str, batch: int, rounds: int) -> Tuple[float, float]:
    """(original's median ms per call, median over rounds of original / fused time)."""
    factory, shape = FUSE_MODELS[name]
    torch.manual_seed(0)
    original = factory()
    original.train(mode == "train")
    fused = fusedops.fuse(original)
    x = torch.randn(batch, *shape)
    orig_call, fused_call = model_call(original, x, mode), model_call(fused, x, mode)
    orig_call()
    # Blocks of about 20 ms, sized from one call after a first one.
    n = max(1, min(500, int(0.02 / max(block_seconds(orig_call, 1), 1e-6))))
    return paired_blocks(orig_call, fused_call, n, rounds)


def _names(text: str) -> List[str]:
    names = [n for n in text.split(",") if n]
    unknown = [n for n in names if n not in FUSE_MODELS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown model(s) {unknown}; known: {', '.join(FUSE_MODELS)}")
    return names


def main(argv: Sequence[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=_names, default=list(FUSE_MODELS), help="comma-separated names")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    opts = parser.parse_args(argv)
    torch.set_num_threads(opts.threads)
    print(f"fuse() against the original model: CPU, batch {opts.batch}, {opts.threads} thread(s), "
          f"torch {torch.__version__}; median of {opts.rounds} rounds of (original / fused time)\n")
    print("| model | mode | original ms | fused speed-up |")
    print("| --- | --- | ---: | ---: |")
    for name in opts.models:
        for mode in MODES:
            ms, ratio = measure(name, mode, opts.batch, opts.rounds)
            print(f"| {name} | {mode} | {ms:.3f} | {ratio:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
