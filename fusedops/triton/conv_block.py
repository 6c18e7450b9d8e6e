"""Triton kernels of the fused conv block: forward, input gradient, weight + bias gradient.

Notation: input ``x (N, C, H, W)``, weight ``w (Cout, Cg, KH, KW)`` with ``Cg = C / G``,
conv output ``c (N, Cout, OH, OW)`` (never stored), block output ``y (N, Cout, PH, PW)`` and
the int window offsets ``o`` (same shape), pool window ``PKH x PKW``. All tensors are addressed
through their strides (NCHW, channels_last or any other layout); index and address arithmetic
is in ``IDX`` (int32, or int64 once an offset or count reaches 2^31, see ``_launch.py``).

Forward (``conv_block_fwd_kernel``): an implicit GEMM whose columns are output channels of one
group and whose rows are conv positions: on tensor cores, with a pool window of 2, 4 or 8
taps, every tap of ``BLOCK_M // taps`` pooled outputs ``(n, ph, pw)`` (tap rows: one GEMM over
``K = Cg * KH * KW``, the bias and ReLU (NaN kept), then the max and its tap over each
output's rows); otherwise ``BLOCK_M`` pooled outputs and a loop over the pool taps ``(pkh,
pkw)`` (not unrolled: code size, registers and compile time do not grow with the window), one
GEMM a tap folded into a running max and argmax. Either way a tap wins when larger or NaN,
taps in row-major order, so ties go to the first and NaN propagates, as ``F.max_pool2d``.
For non-overlapping pools every conv output is computed exactly once. Where a group's
channels come in whole BLOCK_K runs and the products run on tensor cores, the K loop reads
runs of adjacent channels from a channels_last input (``channel_run``); otherwise it gathers
each element.

Backward: the conv-output gradient ``dc`` is never stored: the GEMMs' loads rebuild it from
``dy`` and ``o`` (``_unpooled_grad``): ``dc[n, c, oh, ow]`` is the sum of ``dy[n, c, ph, pw]``
over the pool windows ``(ph, pw)`` that contain ``(oh, ow)`` and whose offset ``o`` names it.
Only the windows that can contain the position are visited: one per dimension for
non-overlapping pools, ``(PKH - 1) * PDH // PSH + 1`` in general.
``conv_block_dx_kernel``: rows input pixels ``(n, ih, iw)``, columns input channels of a
group, reduction over ``(co, kh, kw)``. ``conv_block_dw_kernel``: rows ``(ci, kh, kw)``,
columns output channels, reduction over all conv positions ``(n, oh, ow)``, split into slices
that fill the GPU, whose float32 partial sums ``reduce.sum_slices_kernel`` adds in a fixed order
(deterministic: no atomics); the programs of the first row tile also reduce ``db``. Every
reduction is summed in chunks (``_launch`` "Summation order").

Runs of channels in the backward, as in the forward: where the products run on tensor cores
and a group's output channels are a multiple of BLOCK_K, ``conv_block_dx_kernel`` steps over
``(kh, kw, co)`` (``CO_RUN``); where both channel counts are multiples of 16,
``conv_block_dw_runs_kernel`` replaces ``conv_block_dw_kernel`` (rows output channels, columns
input channels at one kernel tap). A step then needs one conv position, pool window and mask
per row, and reads ``dy``, the offsets and ``x`` as runs of adjacent channels: vector loads
from channels_last tensors (dense NCHW ones are read from channels_last copies).

Specialisation: kernel size, stride, dilation and the pool window are constexpr (``_geometry``),
so the K loops divide only by constants, which compile to multiplies (``make triton-check``
counts the integer divisions left in every kernel's loops: none in these four); image sizes,
paddings, channel counts and strides stay runtime arguments.

Grids: ``(row tiles, y, z)`` where ``y * z`` covers ``groups x column tiles`` (``split_grid``);
each program finds its group and column tile from ``program_id(1) + program_id(2) *
num_programs(1)``.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch
import triton
import triton.language as tl

from .._env import EnvVar
from ..ops.conv_block import ConvBlockParams, output_memory_format
from ._device import matmul_tile
from ._launch import (
    KernelLaunch,
    PlanCache,
    acc_dtype,
    chunk_length,
    described,
    dot_dtype,
    extent,
    index_dtype,
    interpreting,
    reduction_slices,
    split_grid,
    use_fma,
)
from .forced_tiles import Forced, current
from .reduce import SplitGradients


def _precision(dtype: torch.dtype) -> str:
    """TF32 exactly when torch's conv would use it (cudnn.allow_tf32, float32 input)."""
    if dtype == torch.float32 and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return "ieee"


def conv_block_configs(rows: int, cols: int, dtype: torch.dtype) -> dict:
    """Block sizes from the problem sizes (16 is tl.dot's minimum). float64 multiplies on the
    FMA units (``_launch.use_fma``) in one small tile whose ``BLOCK_M x BLOCK_K x BLOCK_N``
    product fits in registers."""
    if use_fma(dtype):
        return {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 16, "num_warps": 8}
    block_n = 16 if cols <= 16 else 32 if cols <= 32 else 64
    block_m = 32 if rows <= 4096 else 64
    return {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": 16 if rows <= 4096 else 32, "num_warps": 4}


def tap_rows_fit(taps: int, block_m: int) -> bool:
    """Whether a forward tile of ``block_m`` rows can hold every tap of its pooled outputs
    (``conv_block_fwd_kernel``'s ``TAP_ROWS``): ``taps`` a power of two, ``8 * taps <= block_m``."""
    return taps & (taps - 1) == 0 and 8 * taps <= block_m


def conv_block_fwd_configs(rows: int, cols: int, dtype: torch.dtype, taps: int = 4) -> dict:
    """Block config of the forward for ``rows`` pooled outputs, ``cols`` output channels a group
    and ``taps`` pool taps (4: MaxPool2d(2)).

    Where the products run on tensor cores (16-bit inputs, float32 as TF32) and the window has
    2, 4 or 8 taps, tap rows (``TAP_ROWS``): a tile's rows are every tap of ``BLOCK_M //
    taps`` pooled outputs and it holds one accumulator, so it takes the plain conv GEMM's tiles:
    128 rows (64 where ``rows * taps``, the conv values computed, is at most 4096), up to 128
    output channels, 8 warps (two warpgroups of 64 rows) for 128 x 128, K steps of 32 (16 for
    the small problems). Elsewhere the tap loop's :func:`conv_block_configs`: float64 and IEEE
    float32 (FMA units), other windows (3x3, 4x4, ...), and no pool (one tap: the loop is one
    GEMM too, and a 128-row tile would store four times the outputs of a pooled one; sm_90,
    a 32->64 layer without pool, bf16: 229 registers in tap rows at 128 x 64, 96 in the loop
    at 64 x 64; TF32 spilled 232 bytes)."""
    if use_fma(dtype) or dtype == torch.float32 and _precision(dtype) == "ieee" or taps not in (2, 4, 8):
        return conv_block_configs(rows, cols, dtype)
    small = rows * taps <= 4096
    block_m = 64 if small else 128
    block_n = 16 if cols <= 16 else 32 if cols <= 32 else 64 if cols <= 64 else 128
    return {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": 16 if small else 32,
            "num_warps": 8 if block_m * block_n >= 128 * 128 else 4, "TAP_ROWS": True}


def conv_block_dw_configs(rows: int, cols: int, dtype: torch.dtype) -> dict:
    """Block sizes of the weight gradient (rows ``Cg*KH*KW``, columns ``Coutg``): as
    :func:`conv_block_configs`, except 64 rows for 16-bit inputs, and 16 positions per step
    for float32. A 64-row tile is what Hopper's warpgroup MMA (wgmma) needs with 4 warps (32
    rows compile to mma.sync), and each row tile re-gathers the un-pooled gradient ``dc`` of
    its positions, so fewer, taller tiles also gather it fewer times (5 instead of 9 times for
    a 32->64 3x3 layer's 288 rows). In float32 a 64 x 64 tile stepping 32 positions spilled 4 KB
    per thread (IEEE products on the FMA units; sm_90, ``make triton-check``), and 280 bytes
    stepping 16 with 4 warps: 64 x 64 float32 tiles take 8 warps."""
    cfg = conv_block_configs(rows, cols, dtype)
    if dtype in (torch.float16, torch.bfloat16):
        cfg["BLOCK_M"] = 64
    elif dtype == torch.float32:
        cfg["BLOCK_K"] = 16
        if cfg["BLOCK_M"] * cfg["BLOCK_N"] >= 64 * 64:
            cfg["num_warps"] = 8
    return cfg


@triton.jit
def _conv_rows(x_ptr, w_ptr, x_base, ph, pw, tap, row_ok, c, col_ok, H, W, Cg, OH, OW, CHUNK, pt, pl, pph, ppw,
               sxc, sxh, sxw, KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
               DH: tl.constexpr, DW: tl.constexpr, PKW: tl.constexpr, PSH: tl.constexpr, PSW: tl.constexpr,
               PDH: tl.constexpr, PDW: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr, DOT: tl.constexpr,
               FMA: tl.constexpr, IDX: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               BLOCK_K: tl.constexpr, CG_RUN: tl.constexpr, ONE_CHUNK: tl.constexpr):
    """``(acc, valid)``: ``(BLOCK_M, BLOCK_N)`` conv sums, row ``i`` at pool tap ``tap`` (one
    for every row, or each row's own) of pooled output ``(ph[i], pw[i])`` of the image at
    ``x_base[i]``, column ``j`` output channel ``c[j]``, reduced over ``K = Cg * KH * KW`` in the
    order and chunks :func:`conv_block_fwd_kernel` describes (``CG_RUN``, ``CHUNK``,
    ``ONE_CHUNK``); ``valid[i]``: the row is an output (``row_ok``) and its tap lies inside the
    conv output (elsewhere the row's sums are 0)."""
    oh = ph * PSH - pph + (tap // PKW) * PDH
    ow = pw * PSW - ppw + (tap % PKW) * PDW
    valid = row_ok & (oh >= 0) & (oh < OH) & (ow >= 0) & (ow < OW)
    ih0 = oh * SH - pt
    iw0 = ow * SW - pl
    if CG_RUN > 0:
        K = CG_RUN * (KH * KW)
    else:
        K = Cg * (KH * KW)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for c0 in range(0, K, CHUNK):
        part = acc if ONE_CHUNK else tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
        for k0 in range(c0, tl.minimum(c0 + CHUNK, K), BLOCK_K):
            if CG_RUN > 0:
                # Step k0 of (kh, kw, ci) order: kernel tap kk, channels ci0 .. ci0 + BLOCK_K.
                kk = k0 // CG_RUN
                ci0 = k0 - kk * CG_RUN
                kh = kk // KW
                ih = ih0 + kh * DH
                iw = iw0 + (kk - kh * KW) * DW
                r_ok = valid & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
                r_off = x_base + ih * sxh + iw * sxw + ci0 * sxc
                xv = tl.load(x_ptr + r_off[:, None] + tl.arange(0, BLOCK_K)[None, :] * sxc, mask=r_ok[:, None],
                             other=0.0)
                # w is (Cout, KH, KW, Cg) here: the step's weights are adjacent too.
                wv = tl.load(w_ptr + c[None, :] * K + (k0 + tl.arange(0, BLOCK_K))[:, None], mask=col_ok[None, :],
                             other=0.0)
            else:
                k = k0 + tl.arange(0, BLOCK_K)
                k_ok = k < K
                ci = k // (KH * KW)
                kh = (k // KW) % KH
                kw = k % KW
                ih = ih0[:, None] + kh[None, :] * DH
                iw = iw0[:, None] + kw[None, :] * DW
                x_ok = valid[:, None] & k_ok[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
                x_off = x_base[:, None] + ci[None, :].to(IDX) * sxc + ih * sxh + iw * sxw
                xv = tl.load(x_ptr + x_off, mask=x_ok, other=0.0)
                wv = tl.load(w_ptr + c[None, :] * K + k[:, None], mask=k_ok[:, None] & col_ok[None, :],
                             other=0.0)
            part += matmul_tile(xv.to(DOT), wv.to(DOT), PRECISION, FMA).to(ACC)
        acc = part if ONE_CHUNK else acc + part
    return acc, valid


@triton.jit
def _tap_rows(BLOCK_M: tl.constexpr, PT: tl.constexpr):
    """``(tap, p)`` of each of a tap-rows tile's ``BLOCK_M`` rows: pool tap ``tap < PT`` of the
    tile's pooled output ``p < BLOCK_M // PT`` (``PT`` a power of two, ``8 * PT <= BLOCK_M``).
    The tap's low bit is row bit 3 and its other bits the top row bits: in Hopper's warpgroup MMA
    accumulator each warp holds 16 rows, a thread rows ``i`` and ``i + 8``, so a thread's row
    pairs are two taps of one output (their max moves no data) and the other taps lie in other
    warps at the same place. In a trial kernel (sm_90, bf16, 128 x 128 x 64, 8 warps) this took
    163 registers and no shared memory beyond the pipeline's, against 209 registers and 32 KB
    more with the taps in the top row bits alone."""
    r = tl.arange(0, BLOCK_M)  # any one-to-one layout is correct; this one is for speed
    if PT == 1:
        return r * 0, r
    else:
        P_HI: tl.constexpr = BLOCK_M // (8 * PT)
        return (r // 8) % 2 + r // (16 * P_HI) * 2, r % 8 + (r // 16) % P_HI * 8


@triton.jit
def _take_later_tap(va, ta, vb, tb):
    """Combine of the pool max over ``(value, tap)`` pairs as ``F.max_pool2d`` takes it: NaN
    above every number (of two NaNs, the later tap), of two numbers the larger (of equal ones,
    the earlier tap). A total order on the pairs, so any reduction tree gives the same pair."""
    a_nan = va != va
    b_nan = vb != vb
    take_b = (b_nan & (~a_nan | (tb > ta))) | (~a_nan & ~b_nan & ((vb > va) | ((vb == va) & (tb < ta))))
    return tl.where(take_b, vb, va), tl.where(take_b, tb, ta)


@triton.jit
def _pool_rows(v, tap, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PT: tl.constexpr):
    """The pool max and its tap over a tap-rows tile ``v (BLOCK_M, BLOCK_N)`` whose rows
    :func:`_tap_rows` lays out (``tap`` its rows' taps): ``(BLOCK_M // PT, BLOCK_N)`` each."""
    t = tl.broadcast_to(tap[:, None], (BLOCK_M, BLOCK_N))
    if PT == 1:
        return v, t
    else:
        P_HI: tl.constexpr = BLOCK_M // (8 * PT)
        # Rows as (tap >> 1, p >> 3, tap & 1, p & 7): reduce the two tap axes.
        v, t = tl.reduce((tl.reshape(v, (PT // 2, P_HI, 2, 8, BLOCK_N)), tl.reshape(t, (PT // 2, P_HI, 2, 8, BLOCK_N))),
                         2, _take_later_tap)
        v, t = tl.reduce((v, t), 0, _take_later_tap)
        return tl.reshape(v, (BLOCK_M // PT, BLOCK_N)), tl.reshape(t, (BLOCK_M // PT, BLOCK_N))


@triton.jit
def conv_block_fwd_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, o_ptr,
    ROWS, PHW, H, W, Cg, Coutg, OH, OW, PH, PW, N_TILES, NG, CHUNK, pt, pl, pph, ppw,
    sxn, sxc, sxh, sxw, syn, syc, syh, syw, sb,
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, DH: tl.constexpr,
    DW: tl.constexpr, PKH: tl.constexpr, PKW: tl.constexpr, PSH: tl.constexpr, PSW: tl.constexpr,
    PDH: tl.constexpr, PDW: tl.constexpr, WIN_H: tl.constexpr, WIN_W: tl.constexpr,
    HAS_BIAS: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr, DOT: tl.constexpr, FMA: tl.constexpr,
    IDX: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    CG_RUN: tl.constexpr = 0, ONE_CHUNK: tl.constexpr = False, TAP_ROWS: tl.constexpr = False,
):
    """y[n, c, ph, pw] = max over pool taps of relu(conv(x, w)[n, c, oh, ow] + b[c]); o = its tap.

    ``ROWS = N * PH * PW``, ``PHW = PH * PW``; ``NG = G * N_TILES`` with ``N_TILES =
    cdiv(Coutg, BLOCK_N)``. Grid: ``(cdiv(ROWS, BLOCK_M // taps), y, z)`` with ``y * z >= NG``
    (``taps = PKH * PKW`` with ``TAP_ROWS``, else 1). ``w`` is contiguous; ``b`` has stride
    ``sb``; ``y`` and ``o`` share their strides. The reduction is summed in partial sums of
    ``CHUNK`` terms (a multiple of BLOCK_K; ``_launch`` "Summation order"); with ``ONE_CHUNK``
    (``CHUNK`` covers the reduction: every precision but IEEE float32, and IEEE float32
    reductions of one chunk) the products go straight into the running sum, a tile of registers
    fewer (sm_90, bf16, the VGG block's forward: 213 -> 185 registers); the sums are the same
    but for the sign of a zero one (no longer 0 + -0). The geometry (``_GEOMETRY``: kernel,
    stride, dilation, pool window) is constexpr, so the K loop's index arithmetic divides by
    constants only (no division instruction).

    Two ways through K (:func:`_conv_rows`). ``CG_RUN = 0``: K in ``(ci, kh, kw)`` order (the
    weight's), each x element gathered with its own address and mask. ``CG_RUN = Cg`` (a
    multiple of BLOCK_K; ``w`` permuted to ``(Cout, KH, KW, Cg)``): K in ``(kh, kw, ci)`` order,
    so a K step is BLOCK_K channels at one kernel tap, one address and one mask per row, and K
    is a constant; with x channels_last (``sxc == 1``, which Triton specialises) the steps' x and
    w loads are 16-byte vectors.

    Two ways through the pool window. Without ``TAP_ROWS`` a tile's rows are ``BLOCK_M`` pooled
    outputs and a loop over the taps runs one GEMM each, folding each into a running max and
    argmax: three tiles of registers (the sums, the max, its tap). With ``TAP_ROWS`` (the taps a
    power of two, ``8 * taps <= BLOCK_M``) the rows are every tap of ``BLOCK_M // taps`` pooled
    outputs (:func:`_tap_rows`): one GEMM, one K loop (one software-pipeline ramp instead of one
    a tap) and one tile of registers, the max taken once at the end (:func:`_pool_rows`); tiles
    as large as a plain conv's then fit without spilling (sm_90, bf16, the VGG layer's 128 x 128
    x 32 tiles with 8 warps: 136 registers and no stack; the tap loop: 255 and 152 bytes of
    stack).
    """
    j = tl.program_id(1) + tl.program_id(2) * tl.num_programs(1)
    if j >= NG:
        return
    grp = j // N_TILES
    PT: tl.constexpr = PKH * PKW if TAP_ROWS else 1
    tap, p = _tap_rows(BLOCK_M, PT)
    rows = tl.program_id(0).to(IDX) * (BLOCK_M // PT) + p
    row_ok = rows < ROWS
    n = rows // PHW
    ph = (rows // PW) % PH
    pw = rows % PW
    co = (j % N_TILES) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = co < Coutg
    c = (grp * Coutg + co).to(IDX)
    x_base = n * sxn + (grp * Cg).to(IDX) * sxc
    if HAS_BIAS:
        bias = tl.load(b_ptr + c * sb, mask=col_ok, other=0.0).to(ACC)
    if TAP_ROWS:
        acc, valid = _conv_rows(x_ptr, w_ptr, x_base, ph, pw, tap, row_ok, c, col_ok, H, W, Cg, OH, OW, CHUNK, pt,
                                pl, pph, ppw, sxc, sxh, sxw, KH, KW, SH, SW, DH, DW, PKW, PSH, PSW, PDH, PDW, ACC,
                                PRECISION, DOT, FMA, IDX, BLOCK_M, BLOCK_N, BLOCK_K, CG_RUN, ONE_CHUNK)
        if HAS_BIAS:
            acc += bias[None, :]
        # ReLU (NaN kept); a tap outside the conv output never wins.
        v = tl.where(valid[:, None], tl.where((acc > 0) | (acc != acc), acc, 0.0), float("-inf"))
        best, where = _pool_rows(v, tap, BLOCK_M, BLOCK_N, PT)
        rows = tl.program_id(0).to(IDX) * (BLOCK_M // PT) + tl.arange(0, BLOCK_M // PT)
        row_ok = rows < ROWS
        n = rows // PHW
        ph = (rows // PW) % PH
        pw = rows % PW
    else:
        best = tl.full((BLOCK_M, BLOCK_N), float("-inf"), ACC)
        where = tl.full((BLOCK_M, BLOCK_N), -1, tl.int32)
        for t in range(0, PKH * PKW):
            acc, valid = _conv_rows(x_ptr, w_ptr, x_base, ph, pw, t, row_ok, c, col_ok, H, W, Cg, OH, OW, CHUNK, pt,
                                    pl, pph, ppw, sxc, sxh, sxw, KH, KW, SH, SW, DH, DW, PKW, PSH, PSW, PDH, PDW,
                                    ACC, PRECISION, DOT, FMA, IDX, BLOCK_M, BLOCK_N, BLOCK_K, CG_RUN, ONE_CHUNK)
            if HAS_BIAS:
                acc += bias[None, :]
            v = tl.where((acc > 0) | (acc != acc), acc, 0.0)
            take = valid[:, None] & ((v > best) | (v != v))
            best = tl.where(take, v, best)
            where = tl.where(take, t, where)
    offsets = tl.where((best > 0) | (best != best), where, -1)
    y_off = n[:, None] * syn + c[None, :] * syc + ph[:, None] * syh + pw[:, None] * syw
    ok = row_ok[:, None] & col_ok[None, :]
    tl.store(y_ptr + y_off, best.to(y_ptr.dtype.element_ty), mask=ok)
    tl.store(o_ptr + y_off, offsets.to(o_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _unpooled_grad(g_ptr, o_ptr, n, c, oh, ow, ok, PH, PW, pph, ppw, sgn, sgc, sgh, sgw, son, soc, soh, sow,
                   PKH: tl.constexpr, PKW: tl.constexpr, PSH: tl.constexpr, PSW: tl.constexpr, PDH: tl.constexpr,
                   PDW: tl.constexpr, WIN_H: tl.constexpr, WIN_W: tl.constexpr, ACC: tl.constexpr,
                   ROW_MASK: tl.constexpr = False):
    """dc[n, c, oh, ow] (broadcast 2-D index tensors, ``ok`` masks the valid ones) from dy and the offsets, in ACC.

    Pool window ``ph`` covers conv rows ``ph * PSH - pph + kh * PDH`` for ``kh < PKH``, so the
    windows containing row ``oh`` are ``ph = (oh + pph) // PSH - i`` for ``i < WIN_H =
    (PKH - 1) * PDH // PSH + 1``, at tap ``kh = (oh + pph - ph * PSH) / PDH`` where that is
    integral and below ``PKH`` (likewise for columns). A window contributes ``dy`` where its
    saved offset is that tap, ``kh * PKW + kw``. The pool geometry is constexpr: every division
    here is by a constant (a multiply, or nothing for a non-overlapping pool's unit steps).

    ``ROW_MASK``: ``n, oh, ow, ok`` are columns ``(R, 1)`` and ``c`` a row ``(1, C)`` of
    adjacent channels (the runs of channels): ``dy`` is then loaded under the window's mask
    alone, which is the same for a row's channels, and selected by the offsets afterwards, so
    both loads stay vectors along the channels (a mask that differs per element would split a
    load into scalar ones); without it ``dy`` is loaded only where the offset names the tap.
    """
    num_h = oh + pph
    num_w = ow + ppw
    ph_last = num_h // PSH
    pw_last = num_w // PSW
    full, _ = tl.broadcast(ok, c)  # the tile's shape (ok may be a column, c a row)
    dc = tl.zeros(full.shape, dtype=ACC)
    for i in range(0, WIN_H * WIN_W):
        ph = ph_last - i // WIN_W
        pw = pw_last - i % WIN_W
        kh_num = num_h - ph * PSH
        kw_num = num_w - pw * PSW
        kh = kh_num // PDH
        kw = kw_num // PDW
        hit = (ok & (ph >= 0) & (pw >= 0) & (ph < PH) & (pw < PW) & (kh * PDH == kh_num) & (kw * PDW == kw_num)
               & (kh < PKH) & (kw < PKW))
        o = tl.load(o_ptr + n * son + c * soc + ph * soh + pw * sow, mask=hit, other=-1)
        named = o.to(tl.int32) == kh * PKW + kw
        if ROW_MASK:
            g = tl.load(g_ptr + n * sgn + c * sgc + ph * sgh + pw * sgw, mask=hit, other=0.0).to(ACC)
            dc += tl.where(named, g, 0.0)
        else:
            dc += tl.load(g_ptr + n * sgn + c * sgc + ph * sgh + pw * sgw, mask=hit & named, other=0.0).to(ACC)
    return dc


@triton.jit
def conv_block_dx_kernel(
    g_ptr, o_ptr, w_ptr, dx_ptr,
    ROWS, HW, H, W, Cg, Coutg, OH, OW, PH, PW, N_TILES, NG, CHUNK, pt, pl, pph, ppw,
    sgn, sgc, sgh, sgw, son, soc, soh, sow, sdn, sdc, sdh, sdw,
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, DH: tl.constexpr,
    DW: tl.constexpr, PKH: tl.constexpr, PKW: tl.constexpr, PSH: tl.constexpr, PSW: tl.constexpr,
    PDH: tl.constexpr, PDW: tl.constexpr, WIN_H: tl.constexpr, WIN_W: tl.constexpr,
    ACC: tl.constexpr, PRECISION: tl.constexpr, DOT: tl.constexpr, FMA: tl.constexpr, IDX: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, CO_RUN: tl.constexpr = 0,
    ONE_CHUNK: tl.constexpr = False,
):
    """dx[n, g*Cg + ci, ih, iw] = sum_{co, kh, kw} dc[n, g*Coutg + co, oh, ow] * w[g*Coutg + co, ci, kh, kw]
    with ih = oh*SH - pt + kh*DH (oh integral, in range).

    ``ROWS = N * H * W``, ``HW = H * W``; ``NG = G * N_TILES``, ``N_TILES = cdiv(Cg, BLOCK_N)``.
    Grid: ``(cdiv(ROWS, BLOCK_M), y, z)`` with ``y * z >= NG``. Partial sums of ``CHUNK``
    terms and ``ONE_CHUNK``, as the forward; constexpr geometry, as the forward (for stride 1 the divisions by
    the stride and their integrality tests compile to nothing).

    Two ways through the reduction, as the forward. ``CO_RUN = 0``: ``(co, kh, kw)`` order,
    ``w`` contiguous ``(Cout, Cg, KH, KW)``, ``dc`` rebuilt element by element. ``CO_RUN =
    Coutg`` (a multiple of BLOCK_K; ``w`` permuted to ``(Cout, KH, KW, Cg)``, the forward's
    layout, a view without a copy for a channels_last weight): ``(kh, kw, co)`` order, so a
    step is BLOCK_K output channels at one kernel tap: one conv position, pool window and mask
    per row, and with channels_last ``dy`` and offsets (``sgc == soc == 1``) vector loads of
    both; the step's weights are rows of ``Cg`` adjacent input channels.
    """
    j = tl.program_id(1) + tl.program_id(2) * tl.num_programs(1)
    if j >= NG:
        return
    grp = j // N_TILES
    rows = tl.program_id(0).to(IDX) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < ROWS
    n = rows // HW
    ih = (rows // W) % H
    iw = rows % W
    ci = (j % N_TILES) * BLOCK_N + tl.arange(0, BLOCK_N)
    ci_ok = ci < Cg
    if CO_RUN > 0:
        R = CO_RUN * (KH * KW)
    else:
        R = Coutg * (KH * KW)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for c0 in range(0, R, CHUNK):
        part = acc if ONE_CHUNK else tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
        for r0 in range(c0, tl.minimum(c0 + CHUNK, R), BLOCK_K):
            if CO_RUN > 0:
                # Step r0 of (kh, kw, co) order: kernel tap kk, output channels co0 .. co0 + BLOCK_K.
                kk = r0 // CO_RUN
                co0 = r0 - kk * CO_RUN
                kh = kk // KW
                oh_num = ih + pt - kh * DH
                ow_num = iw + pl - (kk - kh * KW) * DW
                oh = oh_num // SH
                ow = ow_num // SW
                ok = (row_ok & (oh_num >= 0) & (ow_num >= 0) & (oh * SH == oh_num) & (ow * SW == ow_num)
                      & (oh < OH) & (ow < OW))
                c = (grp * Coutg + co0 + tl.arange(0, BLOCK_K)).to(IDX)
                dc = _unpooled_grad(g_ptr, o_ptr, n[:, None], c[None, :], oh[:, None], ow[:, None], ok[:, None],
                                    PH, PW, pph, ppw, sgn, sgc, sgh, sgw, son, soc, soh, sow,
                                    PKH, PKW, PSH, PSW, PDH, PDW, WIN_H, WIN_W, ACC, ROW_MASK=True)
                wv = tl.load(w_ptr + (c * (KH * KW) + kk)[:, None] * Cg + ci[None, :], mask=ci_ok[None, :], other=0.0)
            else:
                r = r0 + tl.arange(0, BLOCK_K)
                r_ok = r < R
                co = r // (KH * KW)
                kh = (r // KW) % KH
                kw = r % KW
                oh_num = ih[:, None] + pt - kh[None, :] * DH
                ow_num = iw[:, None] + pl - kw[None, :] * DW
                oh = oh_num // SH
                ow = ow_num // SW
                ok = (row_ok[:, None] & r_ok[None, :] & (oh_num >= 0) & (ow_num >= 0) & (oh * SH == oh_num)
                      & (ow * SW == ow_num) & (oh < OH) & (ow < OW))
                c = (grp * Coutg + co)[None, :].to(IDX)
                dc = _unpooled_grad(g_ptr, o_ptr, n[:, None], c, oh, ow, ok, PH, PW, pph, ppw,
                                    sgn, sgc, sgh, sgw, son, soc, soh, sow, PKH, PKW, PSH, PSW, PDH, PDW, WIN_H, WIN_W,
                                    ACC)
                w_row = (grp * Coutg + co)[:, None].to(IDX) * (Cg * (KH * KW))
                w_off = w_row + ci[None, :] * (KH * KW) + (kh * KW + kw)[:, None]
                wv = tl.load(w_ptr + w_off, mask=r_ok[:, None] & ci_ok[None, :], other=0.0)
            part += matmul_tile(dc.to(w_ptr.dtype.element_ty).to(DOT), wv.to(DOT), PRECISION, FMA).to(ACC)
        acc = part if ONE_CHUNK else acc + part
    dx_off = n[:, None] * sdn + (grp * Cg + ci)[None, :].to(IDX) * sdc + ih[:, None] * sdh + iw[:, None] * sdw
    tl.store(dx_ptr + dx_off, acc.to(dx_ptr.dtype.element_ty), mask=row_ok[:, None] & ci_ok[None, :])


@triton.jit
def _slice_positions(piece, SLICE, P, OHW, OH, OW, IDX: tl.constexpr, BLOCK_K: tl.constexpr):
    """The positions of a weight-gradient program's first step: slice ``piece`` covers conv
    positions ``[start, end)`` (``end = min(start + SLICE, P)``), and its first BLOCK_K
    positions ``p = start + i`` as digits ``(n, oh, ow)`` (radices ``OH``, ``OW``), with
    BLOCK_K in the same digits ``(step_n, step_h, step_w)``: the only divisions of the
    position walk, once per program (``_next_positions`` steps without dividing)."""
    start = piece.to(IDX) * SLICE
    end = tl.minimum(start + SLICE, P)
    p = start + tl.arange(0, BLOCK_K).to(IDX)
    n = p // OHW
    oh = (p // OW) % OH
    ow = p % OW
    step_n = BLOCK_K // OHW
    step_h = (BLOCK_K // OW) % OH
    step_w = BLOCK_K % OW
    return start, end, n, oh, ow, step_n, step_h, step_w


@triton.jit
def _next_positions(n, oh, ow, step_n, step_h, step_w, OH, OW):
    """``p += BLOCK_K`` on the digits of ``_slice_positions``: each digit stays below its radix,
    so a digit takes one compare-and-subtract carry and nothing divides."""
    ow += step_w
    carry = ow >= OW
    ow = tl.where(carry, ow - OW, ow)
    oh += step_h + carry.to(oh.dtype)
    carry = oh >= OH
    oh = tl.where(carry, oh - OH, oh)
    n += step_n + carry.to(n.dtype)
    return n, oh, ow


@triton.jit
def conv_block_dw_kernel(
    g_ptr, o_ptr, x_ptr, dw_ptr, db_ptr,
    P, OHW, H, W, Cg, Coutg, OH, OW, PH, PW, N_TILES, NG, M_TILES, SLICE, CHUNK, pt, pl, pph, ppw,
    sgn, sgc, sgh, sgw, son, soc, soh, sow, sxn, sxc, sxh, sxw,
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, DH: tl.constexpr,
    DW: tl.constexpr, PKH: tl.constexpr, PKW: tl.constexpr, PSH: tl.constexpr, PSW: tl.constexpr,
    PDH: tl.constexpr, PDW: tl.constexpr, WIN_H: tl.constexpr, WIN_W: tl.constexpr,
    HAS_DB: tl.constexpr, SPLIT: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr, DOT: tl.constexpr,
    FMA: tl.constexpr, IDX: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ONE_CHUNK: tl.constexpr = False,
):
    """dw[g*Coutg + co, k] = sum_{n, oh, ow} x[n, g*Cg + ci, ih, iw] * dc[n, g*Coutg + co, oh, ow]
    for k = (ci, kh, kw); db[c] = sum dc.

    ``P = N * OH * OW`` conv positions, ``OHW = OH * OW``; ``NG = G * N_TILES``, ``N_TILES =
    cdiv(Coutg, BLOCK_N)``, ``M_TILES = cdiv(Cg*KH*KW, BLOCK_M)``. The positions are split into
    slices of ``SLICE`` (a multiple of BLOCK_K), summed in partial sums of ``CHUNK`` terms
    (``_launch`` "Summation order"; ``ONE_CHUNK`` where one chunk covers the slice, as the
    forward). Grid: ``(M_TILES * slices, y, z)`` with ``y * z >= NG``;
    program ``(i, j)`` computes row tile ``i % M_TILES`` of slice ``i // M_TILES``; ``db`` is
    reduced by the programs of row tile 0. Without ``SPLIT`` (one slice) ``dw`` (Cout,
    Cg*KH*KW) and ``db`` (Cout,) are written in their dtype, contiguous; with it each slice
    writes ACC partial sums, ``dw_ptr`` (slices, Cout, Cg*KH*KW) and ``db_ptr`` (slices, Cout),
    which ``reduce.sum_slices_kernel`` adds.

    The positions ``p`` of a step are decomposed into ``(n, oh, ow)`` once, before the loop
    (``_slice_positions``); each step then adds ``BLOCK_K`` as a mixed-radix sum with one carry
    per digit (``_next_positions``), so the loop divides by nothing while the image size stays
    a runtime argument.
    """
    j = tl.program_id(1) + tl.program_id(2) * tl.num_programs(1)
    if j >= NG:
        return
    grp = j // N_TILES
    pid_m = tl.program_id(0) % M_TILES
    piece = tl.program_id(0) // M_TILES
    K = Cg * (KH * KW)
    k = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    k_ok = k < K
    ci = k // (KH * KW)
    kh = (k // KW) % KH
    kw = k % KW
    co = (j % N_TILES) * BLOCK_N + tl.arange(0, BLOCK_N)
    co_ok = co < Coutg
    c = (grp * Coutg + co).to(IDX)
    x_chan = (grp * Cg + ci).to(IDX) * sxc
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    db = tl.zeros((BLOCK_N,), dtype=ACC)
    start, end, n, oh, ow, step_n, step_h, step_w = _slice_positions(piece, SLICE, P, OHW, OH, OW, IDX, BLOCK_K)
    for c0 in range(start, end, CHUNK):
        part = acc if ONE_CHUNK else tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
        part_db = db if ONE_CHUNK else tl.zeros((BLOCK_N,), dtype=ACC)
        for p0 in range(c0, tl.minimum(c0 + CHUNK, end), BLOCK_K):
            p_ok = (p0 + tl.arange(0, BLOCK_K)) < end
            dc = _unpooled_grad(g_ptr, o_ptr, n[:, None], c[None, :], oh[:, None], ow[:, None],
                                p_ok[:, None] & co_ok[None, :], PH, PW, pph, ppw,
                                sgn, sgc, sgh, sgw, son, soc, soh, sow, PKH, PKW, PSH, PSW, PDH, PDW, WIN_H, WIN_W,
                                ACC)
            ih = oh[None, :] * SH - pt + kh[:, None] * DH
            iw = ow[None, :] * SW - pl + kw[:, None] * DW
            x_ok = k_ok[:, None] & p_ok[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            x_off = n[None, :] * sxn + x_chan[:, None] + ih * sxh + iw * sxw
            xv = tl.load(x_ptr + x_off, mask=x_ok, other=0.0)
            part += matmul_tile(xv.to(DOT), dc.to(x_ptr.dtype.element_ty).to(DOT), PRECISION, FMA).to(ACC)
            if HAS_DB:
                part_db += tl.sum(dc, axis=0)
            n, oh, ow = _next_positions(n, oh, ow, step_n, step_h, step_w, OH, OW)
        acc = part if ONE_CHUNK else acc + part
        db = part_db if ONE_CHUNK else db + part_db
    cout = NG // N_TILES * Coutg
    if SPLIT:  # this slice's partial sums, in ACC
        dw_ptr += piece.to(IDX) * cout * K
        db_ptr += piece.to(IDX) * cout
    tl.store(dw_ptr + c[None, :] * K + k[:, None], acc.to(dw_ptr.dtype.element_ty), mask=k_ok[:, None] & co_ok[None, :])
    if HAS_DB:
        if pid_m == 0:
            tl.store(db_ptr + c, db.to(db_ptr.dtype.element_ty), mask=co_ok)


@triton.jit
def conv_block_dw_runs_kernel(
    g_ptr, o_ptr, x_ptr, dw_ptr, db_ptr,
    P, OHW, H, W, Cg, Coutg, OH, OW, PH, PW, N_TILES, NG, M_TILES, SLICE, CHUNK, pt, pl, pph, ppw,
    sgn, sgc, sgh, sgw, son, soc, soh, sow, sxn, sxc, sxh, sxw,
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, DH: tl.constexpr,
    DW: tl.constexpr, PKH: tl.constexpr, PKW: tl.constexpr, PSH: tl.constexpr, PSW: tl.constexpr,
    PDH: tl.constexpr, PDW: tl.constexpr, WIN_H: tl.constexpr, WIN_W: tl.constexpr,
    HAS_DB: tl.constexpr, SPLIT: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr, DOT: tl.constexpr,
    FMA: tl.constexpr, IDX: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    CI_RUN: tl.constexpr, ONE_CHUNK: tl.constexpr = False,
):
    """``conv_block_dw_kernel``'s sums (``dw[g*Coutg + co, ci, kh, kw]``, ``db``) over runs of
    channels: rows output channels ``co`` (BLOCK_M, dividing ``Coutg``), columns ``(kh, kw,
    ci)`` with BLOCK_N adjacent input channels at one kernel tap (``CI_RUN = Cg``, a multiple
    of BLOCK_N), reduction over the conv positions ``p = (n, oh, ow)`` in BLOCK_K steps.

    Each step loads, per position, one pool window's ``dy`` and offsets for the tile's
    BLOCK_M output channels and one input pixel's BLOCK_N channels: vector loads where ``dy``,
    the offsets and ``x`` are channels_last (``sgc == soc == sxc == 1``). ``N_TILES = KH * KW
    * Cg / BLOCK_N`` column tiles per group, ``M_TILES = Coutg / BLOCK_M``; grid, slices,
    chunks, the position stepping and the outputs (``dw`` in its own ``(Cout, Cg, KH, KW)``
    order, or the slices' partial sums) are ``conv_block_dw_kernel``'s; ``db`` is reduced by
    the programs of column tile 0.
    """
    j = tl.program_id(1) + tl.program_id(2) * tl.num_programs(1)
    if j >= NG:
        return
    grp = j // N_TILES
    col_tile = j % N_TILES
    kk = col_tile // (CI_RUN // BLOCK_N)
    ci = (col_tile - kk * (CI_RUN // BLOCK_N)) * BLOCK_N + tl.arange(0, BLOCK_N)
    kh = kk // KW
    kw = kk - kh * KW
    pid_m = tl.program_id(0) % M_TILES
    piece = tl.program_id(0) // M_TILES
    c = (grp * Coutg + pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(IDX)
    x_chan = (grp * Cg + ci).to(IDX) * sxc
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    db = tl.zeros((BLOCK_M,), dtype=ACC)
    start, end, n, oh, ow, step_n, step_h, step_w = _slice_positions(piece, SLICE, P, OHW, OH, OW, IDX, BLOCK_K)
    for c0 in range(start, end, CHUNK):
        part = acc if ONE_CHUNK else tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
        part_db = db if ONE_CHUNK else tl.zeros((BLOCK_M,), dtype=ACC)
        for p0 in range(c0, tl.minimum(c0 + CHUNK, end), BLOCK_K):
            p_ok = (p0 + tl.arange(0, BLOCK_K)) < end
            # dc of the step's positions (rows) and the tile's output channels (columns)
            dc = _unpooled_grad(g_ptr, o_ptr, n[:, None], c[None, :], oh[:, None], ow[:, None], p_ok[:, None],
                                PH, PW, pph, ppw, sgn, sgc, sgh, sgw, son, soc, soh, sow,
                                PKH, PKW, PSH, PSW, PDH, PDW, WIN_H, WIN_W, ACC, ROW_MASK=True)
            ih = oh * SH - pt + kh * DH
            iw = ow * SW - pl + kw * DW
            x_ok = p_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            xv = tl.load(x_ptr + (n * sxn + ih * sxh + iw * sxw)[:, None] + x_chan[None, :], mask=x_ok[:, None],
                         other=0.0)
            dct = tl.trans(dc.to(x_ptr.dtype.element_ty).to(DOT))
            part += matmul_tile(dct, xv.to(DOT), PRECISION, FMA).to(ACC)
            if HAS_DB:
                part_db += tl.sum(dc, axis=0)
            n, oh, ow = _next_positions(n, oh, ow, step_n, step_h, step_w, OH, OW)
        acc = part if ONE_CHUNK else acc + part
        db = part_db if ONE_CHUNK else db + part_db
    K = Cg * (KH * KW)
    if SPLIT:  # this slice's partial sums, in ACC
        dw_ptr += piece.to(IDX) * (NG // N_TILES * Coutg) * K
        db_ptr += piece.to(IDX) * (NG // N_TILES * Coutg)
    ci_ok = ci < Cg
    tl.store(dw_ptr + c[:, None] * K + ci[None, :] * (KH * KW) + kk, acc.to(dw_ptr.dtype.element_ty),
             mask=ci_ok[None, :])
    if HAS_DB:
        if col_tile == 0:
            tl.store(db_ptr + c, db.to(db_ptr.dtype.element_ty))


class _Geometry(NamedTuple):
    """The kernels' geometry arguments: runtime sizes and paddings, and the constexpr rest."""

    sizes: Tuple[int, ...]  # H, W, Cg, Coutg, OH, OW, PH, PW
    pads: Tuple[int, ...]  # pt, pl, pph, ppw
    constexprs: dict  # KH, KW, SH, SW, DH, DW, PKH, PKW, PSH, PSW, PDH, PDW, WIN_H, WIN_W


def _geometry(input, weight, p: ConvBlockParams, out_hw) -> _Geometry:
    """The kernels' geometry arguments. Kernel size, stride, dilation and the pool window are
    compile-time constants (a network has a handful of them; the K loops then divide by
    constants only); image sizes and paddings stay runtime values. ``WIN_H x WIN_W`` are the
    pool-window candidates per conv position that the backward visits."""
    n, cin, h, w = input.shape
    cout, cg, kh, kw = weight.shape
    oh, ow = p.conv_output_hw((h, w), (kh, kw))
    pool = p.pool_kernel_size if p.has_pool else (1, 1)
    ps, pp, pd = (p.pool_stride, p.pool_padding, p.pool_dilation) if p.has_pool else ((1, 1), (0, 0), (1, 1))
    windows = tuple((k - 1) * d // s + 1 for k, s, d in zip(pool, ps, pd))
    constexprs = dict(KH=kh, KW=kw, SH=p.stride[0], SW=p.stride[1], DH=p.dilation[0], DW=p.dilation[1],
                      PKH=pool[0], PKW=pool[1], PSH=ps[0], PSW=ps[1], PDH=pd[0], PDW=pd[1],
                      WIN_H=windows[0], WIN_W=windows[1])
    return _Geometry((h, w, cg, cout // p.groups, oh, ow, out_hw[0], out_hw[1]),
                     (p.padding[0], p.padding[2], *pp), constexprs)


def _meta(input: torch.Tensor) -> dict:
    return {"ACC": acc_dtype(input.dtype), "PRECISION": _precision(input.dtype), "DOT": dot_dtype(input.dtype),
            "FMA": use_fma(input.dtype)}


_PLANS = PlanCache()


class _ForwardPlan(NamedTuple):
    shape: Tuple[int, ...]
    memory_format: torch.memory_format
    offsets_dtype: torch.dtype
    launch: Optional[KernelLaunch]  # None for an empty output
    channels_last_copy: bool = False  # the kernel reads a channels_last copy of the input
    channel_runs: bool = False  # CG_RUN > 0: the weight goes as (Cout, KH, KW, Cg)


_CHANNEL_RUNS_ENV = EnvVar("FUSEDOPS_TRITON_CHANNEL_RUNS")


def channel_run(dtype: torch.dtype, precision: str, cg: int, block_k: int) -> int:
    """``CG_RUN`` of the forward kernel: ``cg`` where its K loop takes BLOCK_K channels per step
    (from a channels_last input, a dense NCHW input copied to channels_last first; the weight
    permuted to ``(Cout, KH, KW, Cg)``, a copy of Cout x K elements unless it is channels_last),
    else 0 (the per-element gather). Needs whole BLOCK_K runs of channels (``cg % block_k ==
    0``) and tensor cores (16-bit inputs, or float32 as TF32): IEEE float32 and float64 multiply
    on the FMA units, where the gather's loads cost less than the tile's registers (sm_90: a
    64 x 64 IEEE float32 tile read in runs of channels spilled 184 bytes a thread, against 16
    for the gather). ``FUSEDOPS_TRITON_CHANNEL_RUNS=0`` turns it off (to compare)."""
    if _CHANNEL_RUNS_ENV.get() == "0" or use_fma(dtype) or precision == "ieee" and dtype == torch.float32:
        return 0
    return cg if cg % block_k == 0 else 0


def conv_block_dw_runs_configs(cg: int, coutg: int, dtype: torch.dtype) -> Optional[dict]:
    """Block sizes of ``conv_block_dw_runs_kernel`` for ``cg`` input and ``coutg`` output
    channels per group, or None where the weight gradient gathers (``conv_block_dw_kernel``):
    as :func:`channel_run`, tensor cores only (the TF32 switch read here), and whole tiles of
    both channel counts: BLOCK_N input channels (64, 32 or 16) dividing ``cg``, BLOCK_M output
    channels dividing ``coutg`` (64 where it can: Hopper's wgmma wants 64-row tiles), BLOCK_K
    positions a step (32; 16 for float32, whose 64 x 64 tiles take 8 warps, as
    :func:`conv_block_dw_configs`)."""
    if _CHANNEL_RUNS_ENV.get() == "0" or use_fma(dtype) or _precision(dtype) == "ieee" and dtype == torch.float32:
        return None
    block_n = next((b for b in (64, 32, 16) if cg % b == 0), None)
    block_m = next((b for b in (64, 32, 16) if coutg % b == 0), None)
    if block_n is None or block_m is None or cg == 0 or coutg == 0:  # no channels: no tiles (the gather returns)
        return None
    wide = dtype == torch.float32 and block_m * block_n >= 64 * 64
    return {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": 16 if dtype == torch.float32 else 32,
            "num_warps": 8 if wide else 4}


def _channels_last_copy(t: torch.Tensor) -> bool:
    """Whether the runs of channels read ``t`` from a channels_last copy: a dense NCHW tensor
    (other layouts are read in place, through their strides)."""
    return t.stride(1) != 1 and t.is_contiguous()


def _kernel_weight(weight: torch.Tensor, runs: bool) -> torch.Tensor:
    """The weight as the forward and input-gradient kernels read it: ``(Cout, KH, KW, Cg)``
    contiguous for runs of channels (the weight itself, no copy, when it is channels_last),
    else ``(Cout, Cg, KH, KW)`` contiguous."""
    return weight.permute(0, 2, 3, 1).contiguous() if runs else weight.contiguous()


def _channels_last_strides(t: torch.Tensor, copy: bool) -> Tuple[int, ...]:
    """Strides the kernels read ``t`` by: its channels_last copy's where ``copy``, else its own."""
    if copy:
        return torch.empty_like(t, device="meta", memory_format=torch.channels_last).stride()
    return t.stride()


def _forward_plan(input, weight, bias, p: ConvBlockParams, tiles: Forced) -> _ForwardPlan:
    out_hw = p.output_hw(input.shape[-2:], weight.shape[-2:])
    fmt = output_memory_format(input)
    shape = (input.shape[0], weight.shape[0], *out_hw)
    y = torch.empty(shape, device="meta", dtype=input.dtype, memory_format=fmt)  # its strides
    if y.numel() == 0:
        return _ForwardPlan(shape, fmt, p.offsets_dtype(), None)
    w = torch.empty(weight.shape, device="meta", dtype=weight.dtype)  # weight.contiguous()
    geo = _geometry(input, w, p, out_hw)
    coutg = geo.sizes[3]
    n, phw = shape[0], out_hw[0] * out_hw[1]
    rows = n * phw
    taps = geo.constexprs["PKH"] * geo.constexprs["PKW"]
    cfg = tiles.configs.get("fwd") or conv_block_fwd_configs(rows, coutg, input.dtype, taps)
    if cfg.get("TAP_ROWS") and not tap_rows_fit(taps, cfg["BLOCK_M"]):
        raise ValueError(f"forced_tiles: TAP_ROWS needs a power-of-two pool window of at most BLOCK_M / 8 taps, "
                         f"got {taps} taps with BLOCK_M={cfg['BLOCK_M']}")
    n_tiles = triton.cdiv(coutg, cfg["BLOCK_N"])
    pooled_per_tile = cfg["BLOCK_M"] // taps if cfg.get("TAP_ROWS") else cfg["BLOCK_M"]
    grid = split_grid(triton.cdiv(rows, pooled_per_tile), n_tiles * p.groups)
    idx = index_dtype(extent(input), extent(y), w.numel(), rows)
    meta = _meta(input)
    chunk = chunk_length(w[0].numel(), cfg["BLOCK_K"], input.dtype, meta["PRECISION"])
    cg_run = channel_run(input.dtype, meta["PRECISION"], geo.sizes[2], cfg["BLOCK_K"])
    # A dense NCHW input is read from a channels_last copy (same extent); any other layout in
    # place, through its strides (an expanded batch, say, stays unexpanded).
    copy = cg_run > 0 and _channels_last_copy(input)
    x_strides = _channels_last_strides(input, copy)
    scalars = (rows, phw, *geo.sizes, n_tiles, n_tiles * p.groups, chunk, *geo.pads, *x_strides, *y.stride(),
               bias.stride(0) if bias is not None else 0)
    launch = KernelLaunch(conv_block_fwd_kernel, grid, scalars,
                          dict(**geo.constexprs, HAS_BIAS=bias is not None, IDX=idx, **meta, **cfg, CG_RUN=cg_run,
                               ONE_CHUNK=chunk >= w[0].numel()))
    return _ForwardPlan(shape, fmt, p.offsets_dtype(), launch, copy, cg_run > 0)


def forward(input, weight, bias, p: ConvBlockParams):
    """Launch the fused forward: returns ``(y, offsets)`` like the reference."""
    tiles = current()
    key = ("fwd", described(input), input.device, described(weight), described(bias), p,
           _precision(input.dtype), interpreting(), _CHANNEL_RUNS_ENV.get(), tiles.key)
    plan = _PLANS.get(key, lambda: _forward_plan(input, weight, bias, p, tiles))
    y = torch.empty(plan.shape, device=input.device, dtype=input.dtype, memory_format=plan.memory_format)
    offsets = torch.empty(plan.shape, device=input.device, dtype=plan.offsets_dtype, memory_format=plan.memory_format)
    if plan.launch is not None:
        w = _kernel_weight(weight, plan.channel_runs)
        x = input.contiguous(memory_format=torch.channels_last) if plan.channels_last_copy else input
        plan.launch.launch(x, w, bias if bias is not None else w, y, offsets)
    return y, offsets


class _BackwardPlan(NamedTuple):
    grad_input_format: torch.memory_format
    dx: Optional[KernelLaunch]  # None when grad_input is not asked or empty
    dw: Optional[KernelLaunch]  # None when neither grad_weight nor grad_bias is asked
    split: Optional[SplitGradients]
    dx_runs: bool = False  # CO_RUN > 0: the weight goes as (Cout, KH, KW, Cg), as in the forward
    copies: Tuple[bool, bool, bool] = (False, False, False)  # dy, offsets, x read from channels_last copies


def _backward_plan(grad_output, input, weight, offsets, p: ConvBlockParams, output_mask,
                   tiles: Forced) -> _BackwardPlan:
    w = torch.empty(weight.shape, device="meta", dtype=weight.dtype)  # weight.contiguous()
    geo = _geometry(input, w, p, grad_output.shape[-2:])
    h, wd, cg, coutg, oh, ow = geo.sizes[:6]
    kh, kw = w.shape[-2:]
    meta = _meta(input)
    n = input.shape[0]
    fmt = output_memory_format(input)
    want_dx = output_mask[0] and input.numel() > 0
    want_dw = output_mask[1] or output_mask[2]
    rows = n * h * wd
    dx_cfg = tiles.configs.get("dx") or conv_block_configs(rows, cg, input.dtype)
    co_run = channel_run(input.dtype, meta["PRECISION"], coutg, dx_cfg["BLOCK_K"]) if want_dx else 0
    run_cfg = conv_block_dw_runs_configs(cg, coutg, input.dtype) if want_dw else None
    dw_forced = tiles.configs.get("dw")
    if run_cfg is not None and dw_forced is not None:
        if cg % dw_forced["BLOCK_N"] or coutg % dw_forced["BLOCK_M"]:
            raise ValueError(f"forced_tiles: conv_block_dw_runs_kernel needs BLOCK_M dividing the {coutg} output and "
                             f"BLOCK_N dividing the {cg} input channels of a group, got {dw_forced}")
        run_cfg = dw_forced
    # Runs of channels read dy and the offsets (and, for the weight gradient, x) from
    # channels_last copies where they are dense NCHW, as the forward reads x.
    runs = co_run > 0 or run_cfg is not None
    copies = (runs and _channels_last_copy(grad_output), runs and _channels_last_copy(offsets),
              run_cfg is not None and _channels_last_copy(input))
    strides = (*_channels_last_strides(grad_output, copies[0]), *_channels_last_strides(offsets, copies[1]))
    dx = dw = split = None
    if want_dx:
        grad_input = torch.empty_like(input, device="meta", memory_format=fmt)
        # grad_input is dense even where input is not (an expanded batch): its own extent counts.
        idx = index_dtype(extent(input), extent(grad_input), extent(grad_output), extent(offsets), w.numel(), rows)
        n_tiles = triton.cdiv(cg, dx_cfg["BLOCK_N"])
        grid = split_grid(triton.cdiv(rows, dx_cfg["BLOCK_M"]), n_tiles * p.groups)
        chunk = chunk_length(coutg * kh * kw, dx_cfg["BLOCK_K"], input.dtype, meta["PRECISION"])
        scalars = (rows, h * wd, *geo.sizes, n_tiles, n_tiles * p.groups, chunk, *geo.pads, *strides,
                   *grad_input.stride())
        dx = KernelLaunch(conv_block_dx_kernel, grid, scalars,
                          dict(**geo.constexprs, IDX=idx, **meta, **dx_cfg, CO_RUN=co_run,
                               ONE_CHUNK=chunk >= coutg * kh * kw))
    if want_dw:
        k = cg * kh * kw
        positions = n * oh * ow
        if run_cfg is not None:
            kernel, cfg = conv_block_dw_runs_kernel, run_cfg
            m_tiles, n_tiles = coutg // cfg["BLOCK_M"], k // cfg["BLOCK_N"]
            extra = dict(CI_RUN=cg)
        else:
            kernel, cfg = conv_block_dw_kernel, dw_forced or conv_block_dw_configs(k, coutg, input.dtype)
            n_tiles, m_tiles = triton.cdiv(coutg, cfg["BLOCK_N"]), triton.cdiv(k, cfg["BLOCK_M"])
            extra = {}
        slices, slice_len = reduction_slices(positions, m_tiles * n_tiles * p.groups, cfg["BLOCK_K"], input.device)
        split = SplitGradients(tuple(w.shape), w.shape[0], w.dtype, slices, output_mask[2])
        grid = split_grid(m_tiles * slices, n_tiles * p.groups)
        # (slices + 1) * slice_len bounds the kernel's slice ends (start + SLICE) and chunk ends.
        idx = index_dtype(extent(input), extent(grad_output), extent(offsets), slices * w.numel(),
                          (slices + 1) * slice_len)
        chunk = chunk_length(slice_len, cfg["BLOCK_K"], input.dtype, meta["PRECISION"])
        if chunk % cfg["BLOCK_K"] or slice_len % cfg["BLOCK_K"]:  # the kernel's position stepping needs both
            raise RuntimeError(f"{kernel.__name__}: chunk {chunk} and slice {slice_len} must be multiples of "
                               f"BLOCK_K {cfg['BLOCK_K']}")
        scalars = (positions, oh * ow, *geo.sizes, n_tiles, n_tiles * p.groups, m_tiles, slice_len, chunk,
                   *geo.pads, *strides, *_channels_last_strides(input, copies[2]))
        dw = KernelLaunch(kernel, grid, scalars,
                          dict(**geo.constexprs, HAS_DB=bool(output_mask[2]), SPLIT=slices > 1, IDX=idx, **meta,
                               **cfg, **extra, ONE_CHUNK=chunk >= slice_len))
    return _BackwardPlan(fmt, dx, dw, split, co_run > 0, copies)


def backward(grad_output, input, weight, offsets, p: ConvBlockParams, output_mask):
    """Launch the backward kernels: ``(grad_input, grad_weight, grad_bias)``, empty where not asked."""
    mask = (bool(output_mask[0]), bool(output_mask[1]), bool(output_mask[2]))
    tiles = current()
    key = ("bwd", described(grad_output), described(input), input.device, described(weight),
           described(offsets), p, mask, _precision(input.dtype), interpreting(), _CHANNEL_RUNS_ENV.get(), tiles.key)
    plan = _PLANS.get(key, lambda: _backward_plan(grad_output, input, weight, offsets, p, mask, tiles))
    copy_g, copy_o, copy_x = plan.copies
    g = grad_output.contiguous(memory_format=torch.channels_last) if copy_g else grad_output
    o = offsets.contiguous(memory_format=torch.channels_last) if copy_o else offsets
    grad_input = grad_weight = grad_bias = input.new_empty(0)
    if mask[0]:
        grad_input = torch.empty_like(input, memory_format=plan.grad_input_format)
        if plan.dx is not None:
            w = _kernel_weight(weight, plan.dx_runs)
            plan.dx.launch(g, o, w, grad_input)
    if plan.dw is not None:
        x = input.contiguous(memory_format=torch.channels_last) if copy_x else input
        dw = torch.empty(weight.shape, device=weight.device, dtype=weight.dtype)
        db = torch.empty(weight.shape[0], device=weight.device, dtype=weight.dtype) if mask[2] else dw
        plan.split.launch(plan.dw, g, o, x, dw=dw, db=db)
        grad_weight = dw if mask[1] else grad_weight
        grad_bias = db if mask[2] else grad_bias
    return grad_input, grad_weight, grad_bias
