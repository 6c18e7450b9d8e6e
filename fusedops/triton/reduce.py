"""Fixed-order sum of reduction slices: the second half of a split reduction.

A weight-gradient kernel split over ``S`` slices of its reduction (``_launch.reduction_slices``)
writes float32 (float64 for float64 inputs) partial sums ``part (S, COUNT)``;
``sum_slices_kernel`` adds them in slice order and casts: ``out[i] = sum_s part[s, i]``.
The order is fixed, so the result is deterministic (no atomics). ``SplitGradients`` holds
both sides for a weight gradient and its bias gradient.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import on_device

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


def sum_slices(part: torch.Tensor, out: torch.Tensor) -> None:
    """``out.view(-1)[i] = part[:, i].sum()`` in slice order; ``part (S, out.numel())`` and
    ``out`` contiguous."""
    count = out.numel()
    if count == 0:
        return
    with on_device(out):
        sum_slices_kernel[(triton.cdiv(count, BLOCK),)](
            part, out, part.shape[0], count, ACC=tl.float64 if part.dtype == torch.float64 else tl.float32,
            BLOCK=BLOCK,
        )


class SplitGradients:
    """Where a weight-gradient kernel split into ``slices`` writes ``dw`` and ``db``: with one
    slice ``dw`` and ``db`` themselves (``split`` False), else float32 (float64) partial-sum
    buffers ``(slices, *dw.shape)`` and, when ``db`` is wanted, ``(slices, *db.shape)``;
    ``finish()`` adds the slices into ``dw`` and ``db``."""

    def __init__(self, dw: torch.Tensor, db: torch.Tensor, slices: int, need_db: bool):
        self.dw_out, self.db_out, self.split = dw, db, slices > 1
        acc = torch.float64 if dw.dtype == torch.float64 else torch.float32
        self.dw = torch.empty((slices, *dw.shape), device=dw.device, dtype=acc) if self.split else dw
        self.split_db = self.split and need_db
        self.db = torch.empty((slices, *db.shape), device=db.device, dtype=acc) if self.split_db else db

    def finish(self) -> None:
        if self.split:
            sum_slices(self.dw.view(self.dw.shape[0], -1), self.dw_out)
        if self.split_db:
            sum_slices(self.db, self.db_out)
