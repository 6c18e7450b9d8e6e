"""Fixed-order sum of reduction slices: the second half of a split reduction.

A weight-gradient kernel split over ``S`` slices of its reduction (``_launch.reduction_slices``)
writes float32 (float64 for float64 inputs) partial sums ``part (S, COUNT)``;
``sum_slices_kernel`` adds them in slice order and casts: ``out[i] = sum_s part[s, i]``.
The order is fixed, so the result is deterministic (no atomics). ``SplitGradients`` is the
plan of both sides for a weight gradient and its bias gradient.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from ._launch import KernelLaunch

BLOCK = 256


@triton.jit
def sum_slices_kernel(part_ptr, out_ptr, S, COUNT, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """out[i] = sum_{s < S} part[s * COUNT + i] in s order, for BLOCK elements ``i``; ``part``
    and ``out`` contiguous. Grid: ``(cdiv(COUNT, BLOCK),)``."""
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = i < COUNT
    total = tl.zeros((BLOCK,), dtype=ACC)
    for s in range(0, S):
        total += tl.load(part_ptr + s * COUNT + i, mask=ok, other=0.0)
    tl.store(out_ptr + i, total.to(out_ptr.dtype.element_ty), mask=ok)


def sum_slices_launch(slices: int, count: int, acc: torch.dtype) -> Optional[KernelLaunch]:
    """The launch adding ``part (slices, count)`` into ``out (count,)`` (both contiguous, ``part``
    of dtype ``acc``), or None when there is nothing to add."""
    if count == 0:
        return None
    return KernelLaunch(sum_slices_kernel, (triton.cdiv(count, BLOCK), 1, 1), (slices, count),
                        {"ACC": tl.float64 if acc == torch.float64 else tl.float32, "BLOCK": BLOCK})


class SplitGradients:
    """Where a weight-gradient kernel split into ``slices`` writes ``dw (dw_shape)`` and ``db
    (channels,)``, and how the slices are added: with one slice into ``dw`` and ``db``
    themselves, else into float32 (float64) partial-sum buffers ``(slices, *dw_shape)`` and,
    when ``db`` is wanted, ``(slices, channels)``, which ``launch`` then adds in slice order."""

    def __init__(self, dw_shape: Tuple[int, ...], channels: int, dtype: torch.dtype, slices: int, need_db: bool):
        self.split = slices > 1
        self.split_db = self.split and need_db
        self.acc = torch.float64 if dtype == torch.float64 else torch.float32
        self.dw_shape, self.db_shape = (slices, *dw_shape), (slices, channels)
        self.sum_dw = sum_slices_launch(slices, math.prod(dw_shape), self.acc) if self.split else None
        self.sum_db = sum_slices_launch(slices, channels, self.acc) if self.split_db else None

    def launch(self, kernel: KernelLaunch, *inputs: torch.Tensor, dw: torch.Tensor, db: torch.Tensor) -> None:
        """Run the weight-gradient ``kernel`` on ``inputs`` followed by its two outputs (``dw``
        and ``db`` themselves, or the partial-sum buffers), then add the slices into ``dw``
        and ``db``."""
        if not self.split:
            kernel.launch(*inputs, dw, db)
            return
        part_dw = torch.empty(self.dw_shape, device=dw.device, dtype=self.acc)
        part_db = torch.empty(self.db_shape, device=dw.device, dtype=self.acc) if self.split_db else db
        kernel.launch(*inputs, part_dw, part_db)
        if self.sum_dw is not None:  # None for an empty dw
            self.sum_dw.launch(part_dw, dw)
        if self.sum_db is not None:
            self.sum_db.launch(part_db, db)
