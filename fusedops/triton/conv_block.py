"""Triton kernels of the fused conv block: forward, input gradient, weight + bias gradient.

Notation: input ``x (N, C, H, W)``, weight ``w (Cout, Cg, KH, KW)`` with ``Cg = C / G``,
conv output ``c (N, Cout, OH, OW)`` (never stored), block output ``y (N, Cout, PH, PW)`` and
the int window offsets ``o`` (same shape), pool window ``PKH x PKW``. All tensors are addressed
through their strides (NCHW, channels_last or any other layout); index and address arithmetic
is in ``IDX`` (int32, or int64 once an offset or count reaches 2^31, see ``_launch.py``).

Forward (``conv_block_fwd_kernel``): an implicit GEMM whose rows are pooled outputs
``(n, ph, pw)`` and columns output channels of one group. For each pool tap ``(pkh, pkw)``
(a runtime loop: code size, registers and compile time do not grow with the window) it
computes the conv value at that tap for every row (reduction over ``K = Cg * KH * KW``
gathered from ``x``), adds the bias, applies ReLU (NaN kept) and folds it into a running max
and argmax: a tap replaces the max when larger or NaN, taps in row-major order, so ties go to
the first and NaN propagates, as ``F.max_pool2d``. For non-overlapping pools every conv
output is computed exactly once.

Backward: the conv-output gradient ``dc`` is never stored: the GEMMs' loads rebuild it from
``dy`` and ``o`` (``_unpooled_grad``): ``dc[n, c, oh, ow]`` is the sum of ``dy[n, c, ph, pw]``
over the pool windows ``(ph, pw)`` that contain ``(oh, ow)`` and whose offset ``o`` names it.
Only the windows that can contain the position are visited: one per dimension for
non-overlapping pools, ``(PKH - 1) * pdh // psh + 1`` in general.
``conv_block_dx_kernel``: rows input pixels ``(n, ih, iw)``, columns input channels of a
group, reduction over ``(co, kh, kw)``. ``conv_block_dw_kernel``: rows ``(ci, kh, kw)``,
columns output channels, reduction over all conv positions ``(n, oh, ow)``, split into slices
that fill the GPU, whose float32 partial sums ``reduce.sum_slices_kernel`` adds in a fixed order
(deterministic: no atomics); the programs of the first row tile also reduce ``db``. Every
reduction is summed in chunks (``_launch`` "Summation order").

Grids: ``(row tiles, y, z)`` where ``y * z`` covers ``groups x column tiles`` (``split_grid``);
each program finds its group and column tile from ``program_id(1) + program_id(2) *
num_programs(1)``.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch
import triton
import triton.language as tl

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


@triton.jit
def conv_block_fwd_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, o_ptr,
    ROWS, PHW, H, W, Cg, Coutg, KH, KW, OH, OW, PH, PW, PKH, PKW, N_TILES, NG, CHUNK,
    sh, sw, pt, pl, dh, dw, psh, psw, pph, ppw, pdh, pdw,
    sxn, sxc, sxh, sxw, syn, syc, syh, syw, sb,
    HAS_BIAS: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr, DOT: tl.constexpr, FMA: tl.constexpr,
    IDX: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """y[n, c, ph, pw] = max over pool taps of relu(conv(x, w)[n, c, oh, ow] + b[c]); o = its tap.

    ``ROWS = N * PH * PW``, ``PHW = PH * PW``; ``NG = G * N_TILES`` with ``N_TILES =
    cdiv(Coutg, BLOCK_N)``. Grid: ``(cdiv(ROWS, BLOCK_M), y, z)`` with ``y * z >= NG``. ``w`` is
    contiguous; ``b`` has stride ``sb``; ``y`` and ``o`` share their strides. The reduction is
    summed in partial sums of ``CHUNK`` terms (a multiple of BLOCK_K; ``_launch`` "Summation order").
    """
    j = tl.program_id(1) + tl.program_id(2) * tl.num_programs(1)
    if j >= NG:
        return
    grp = j // N_TILES
    rows = tl.program_id(0).to(IDX) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < ROWS
    n = rows // PHW
    ph = (rows // PW) % PH
    pw = rows % PW
    co = (j % N_TILES) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = co < Coutg
    c = (grp * Coutg + co).to(IDX)
    K = Cg * KH * KW
    if HAS_BIAS:
        bias = tl.load(b_ptr + c * sb, mask=col_ok, other=0.0).to(ACC)
    best = tl.full((BLOCK_M, BLOCK_N), float("-inf"), ACC)
    where = tl.full((BLOCK_M, BLOCK_N), -1, tl.int32)
    for tap in range(0, PKH * PKW):
        oh = ph * psh - pph + (tap // PKW) * pdh
        ow = pw * psw - ppw + (tap % PKW) * pdw
        valid = row_ok & (oh >= 0) & (oh < OH) & (ow >= 0) & (ow < OW)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
        for c0 in range(0, K, CHUNK):
            part = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
            for k0 in range(c0, tl.minimum(c0 + CHUNK, K), BLOCK_K):
                k = k0 + tl.arange(0, BLOCK_K)
                k_ok = k < K
                ci = k // (KH * KW)
                kh = (k // KW) % KH
                kw = k % KW
                ih = oh[:, None] * sh - pt + kh[None, :] * dh
                iw = ow[:, None] * sw - pl + kw[None, :] * dw
                x_ok = valid[:, None] & k_ok[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
                x_off = n[:, None] * sxn + (grp * Cg + ci)[None, :].to(IDX) * sxc + ih * sxh + iw * sxw
                xv = tl.load(x_ptr + x_off, mask=x_ok, other=0.0)
                wv = tl.load(w_ptr + c[None, :] * K + k[:, None], mask=k_ok[:, None] & col_ok[None, :], other=0.0)
                part += matmul_tile(xv.to(DOT), wv.to(DOT), PRECISION, FMA).to(ACC)
            acc += part
        if HAS_BIAS:
            acc += bias[None, :]
        v = tl.where((acc > 0) | (acc != acc), acc, 0.0)
        take = valid[:, None] & ((v > best) | (v != v))
        best = tl.where(take, v, best)
        where = tl.where(take, tap, where)
    offsets = tl.where((best > 0) | (best != best), where, -1)
    y_off = n[:, None] * syn + c[None, :] * syc + ph[:, None] * syh + pw[:, None] * syw
    ok = row_ok[:, None] & col_ok[None, :]
    tl.store(y_ptr + y_off, best.to(y_ptr.dtype.element_ty), mask=ok)
    tl.store(o_ptr + y_off, offsets.to(o_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _unpooled_grad(g_ptr, o_ptr, n, c, oh, ow, ok, PH, PW, PKH, PKW, WIN_H, WIN_W, psh, psw, pph, ppw, pdh, pdw,
                   sgn, sgc, sgh, sgw, son, soc, soh, sow, ACC: tl.constexpr):
    """dc[n, c, oh, ow] (broadcast 2-D index tensors, ``ok`` masks the valid ones) from dy and the offsets, in ACC.

    Pool window ``ph`` covers conv rows ``ph * psh - pph + kh * pdh`` for ``kh < PKH``, so the
    windows containing row ``oh`` are ``ph = (oh + pph) // psh - i`` for ``i < WIN_H =
    (PKH - 1) * pdh // psh + 1``, at tap ``kh = (oh + pph - ph * psh) / pdh`` where that is
    integral and below ``PKH`` (likewise for columns). A window contributes ``dy`` where its
    saved offset is that tap, ``kh * PKW + kw``.
    """
    num_h = oh + pph
    num_w = ow + ppw
    ph_last = num_h // psh
    pw_last = num_w // psw
    dc = tl.zeros(ok.shape, dtype=ACC)
    for i in range(0, WIN_H * WIN_W):
        ph = ph_last - i // WIN_W
        pw = pw_last - i % WIN_W
        kh_num = num_h - ph * psh
        kw_num = num_w - pw * psw
        kh = kh_num // pdh
        kw = kw_num // pdw
        hit = (ok & (ph >= 0) & (pw >= 0) & (ph < PH) & (pw < PW) & (kh * pdh == kh_num) & (kw * pdw == kw_num)
               & (kh < PKH) & (kw < PKW))
        o = tl.load(o_ptr + n * son + c * soc + ph * soh + pw * sow, mask=hit, other=-1)
        hit = hit & (o.to(tl.int32) == kh * PKW + kw)
        dc += tl.load(g_ptr + n * sgn + c * sgc + ph * sgh + pw * sgw, mask=hit, other=0.0).to(ACC)
    return dc


@triton.jit
def conv_block_dx_kernel(
    g_ptr, o_ptr, w_ptr, dx_ptr,
    ROWS, HW, H, W, Cg, Coutg, KH, KW, OH, OW, PH, PW, PKH, PKW, WIN_H, WIN_W, N_TILES, NG, CHUNK,
    sh, sw, pt, pl, dh, dw, psh, psw, pph, ppw, pdh, pdw,
    sgn, sgc, sgh, sgw, son, soc, soh, sow, sdn, sdc, sdh, sdw,
    ACC: tl.constexpr, PRECISION: tl.constexpr, DOT: tl.constexpr, FMA: tl.constexpr, IDX: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dx[n, g*Cg + ci, ih, iw] = sum_{co, kh, kw} dc[n, g*Coutg + co, oh, ow] * w[g*Coutg + co, ci, kh, kw]
    with ih = oh*sh - pt + kh*dh (oh integral, in range).

    ``ROWS = N * H * W``, ``HW = H * W``; ``NG = G * N_TILES``, ``N_TILES = cdiv(Cg, BLOCK_N)``.
    Grid: ``(cdiv(ROWS, BLOCK_M), y, z)`` with ``y * z >= NG``. ``w`` is contiguous. Partial
    sums of ``CHUNK`` terms, as the forward.
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
    R = Coutg * KH * KW
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for c0 in range(0, R, CHUNK):
        part = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
        for r0 in range(c0, tl.minimum(c0 + CHUNK, R), BLOCK_K):
            r = r0 + tl.arange(0, BLOCK_K)
            r_ok = r < R
            co = r // (KH * KW)
            kh = (r // KW) % KH
            kw = r % KW
            oh_num = ih[:, None] + pt - kh[None, :] * dh
            ow_num = iw[:, None] + pl - kw[None, :] * dw
            oh = oh_num // sh
            ow = ow_num // sw
            ok = (row_ok[:, None] & r_ok[None, :] & (oh_num >= 0) & (ow_num >= 0) & (oh * sh == oh_num)
                  & (ow * sw == ow_num) & (oh < OH) & (ow < OW))
            c = (grp * Coutg + co)[None, :].to(IDX)
            dc = _unpooled_grad(g_ptr, o_ptr, n[:, None], c, oh, ow, ok, PH, PW, PKH, PKW, WIN_H, WIN_W,
                                psh, psw, pph, ppw, pdh, pdw, sgn, sgc, sgh, sgw, son, soc, soh, sow, ACC)
            w_row = (grp * Coutg + co)[:, None].to(IDX) * (Cg * KH * KW)
            w_off = w_row + ci[None, :] * (KH * KW) + (kh * KW + kw)[:, None]
            wv = tl.load(w_ptr + w_off, mask=r_ok[:, None] & ci_ok[None, :], other=0.0)
            part += matmul_tile(dc.to(w_ptr.dtype.element_ty).to(DOT), wv.to(DOT), PRECISION, FMA).to(ACC)
        acc += part
    dx_off = n[:, None] * sdn + (grp * Cg + ci)[None, :].to(IDX) * sdc + ih[:, None] * sdh + iw[:, None] * sdw
    tl.store(dx_ptr + dx_off, acc.to(dx_ptr.dtype.element_ty), mask=row_ok[:, None] & ci_ok[None, :])


@triton.jit
def conv_block_dw_kernel(
    g_ptr, o_ptr, x_ptr, dw_ptr, db_ptr,
    P, OHW, H, W, Cg, Coutg, KH, KW, OH, OW, PH, PW, PKH, PKW, WIN_H, WIN_W, N_TILES, NG, M_TILES, SLICE, CHUNK,
    sh, sw, pt, pl, dh, dw, psh, psw, pph, ppw, pdh, pdw,
    sgn, sgc, sgh, sgw, son, soc, soh, sow, sxn, sxc, sxh, sxw,
    HAS_DB: tl.constexpr, SPLIT: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr, DOT: tl.constexpr,
    FMA: tl.constexpr, IDX: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dw[g*Coutg + co, k] = sum_{n, oh, ow} x[n, g*Cg + ci, ih, iw] * dc[n, g*Coutg + co, oh, ow]
    for k = (ci, kh, kw); db[c] = sum dc.

    ``P = N * OH * OW`` conv positions, ``OHW = OH * OW``; ``NG = G * N_TILES``, ``N_TILES =
    cdiv(Coutg, BLOCK_N)``, ``M_TILES = cdiv(Cg*KH*KW, BLOCK_M)``. The positions are split into
    slices of ``SLICE`` (a multiple of BLOCK_K), summed in partial sums of ``CHUNK`` terms
    (``_launch`` "Summation order"). Grid: ``(M_TILES * slices, y, z)`` with ``y * z >= NG``;
    program ``(i, j)`` computes row tile ``i % M_TILES`` of slice ``i // M_TILES``; ``db`` is
    reduced by the programs of row tile 0. Without ``SPLIT`` (one slice) ``dw`` (Cout,
    Cg*KH*KW) and ``db`` (Cout,) are written in their dtype, contiguous; with it each slice
    writes ACC partial sums, ``dw_ptr`` (slices, Cout, Cg*KH*KW) and ``db_ptr`` (slices, Cout),
    which ``reduce.sum_slices_kernel`` adds.
    """
    j = tl.program_id(1) + tl.program_id(2) * tl.num_programs(1)
    if j >= NG:
        return
    grp = j // N_TILES
    pid_m = tl.program_id(0) % M_TILES
    piece = tl.program_id(0) // M_TILES
    K = Cg * KH * KW
    k = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    k_ok = k < K
    ci = k // (KH * KW)
    kh = (k // KW) % KH
    kw = k % KW
    co = (j % N_TILES) * BLOCK_N + tl.arange(0, BLOCK_N)
    co_ok = co < Coutg
    c = (grp * Coutg + co).to(IDX)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    db = tl.zeros((BLOCK_N,), dtype=ACC)
    start = piece.to(IDX) * SLICE
    end = tl.minimum(start + SLICE, P)
    for c0 in range(start, end, CHUNK):
        part = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
        part_db = tl.zeros((BLOCK_N,), dtype=ACC)
        for p0 in range(c0, tl.minimum(c0 + CHUNK, end), BLOCK_K):
            p = (p0 + tl.arange(0, BLOCK_K)).to(IDX)
            p_ok = p < end
            n = p // OHW
            oh = (p // OW) % OH
            ow = p % OW
            dc = _unpooled_grad(g_ptr, o_ptr, n[:, None], c[None, :], oh[:, None], ow[:, None],
                                p_ok[:, None] & co_ok[None, :], PH, PW, PKH, PKW, WIN_H, WIN_W,
                                psh, psw, pph, ppw, pdh, pdw, sgn, sgc, sgh, sgw, son, soc, soh, sow, ACC)
            ih = oh[None, :] * sh - pt + kh[:, None] * dh
            iw = ow[None, :] * sw - pl + kw[:, None] * dw
            x_ok = k_ok[:, None] & p_ok[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            x_off = n[None, :] * sxn + (grp * Cg + ci)[:, None].to(IDX) * sxc + ih * sxh + iw * sxw
            xv = tl.load(x_ptr + x_off, mask=x_ok, other=0.0)
            part += matmul_tile(xv.to(DOT), dc.to(x_ptr.dtype.element_ty).to(DOT), PRECISION, FMA).to(ACC)
            if HAS_DB:
                part_db += tl.sum(dc, axis=0)
        acc += part
        db += part_db
    cout = NG // N_TILES * Coutg
    if SPLIT:  # this slice's partial sums, in ACC
        dw_ptr += piece.to(IDX) * cout * K
        db_ptr += piece.to(IDX) * cout
    tl.store(dw_ptr + c[None, :] * K + k[:, None], acc.to(dw_ptr.dtype.element_ty), mask=k_ok[:, None] & co_ok[None, :])
    if HAS_DB:
        if pid_m == 0:
            tl.store(db_ptr + c, db.to(db_ptr.dtype.element_ty), mask=co_ok)


def _geometry(input, weight, p: ConvBlockParams, out_hw):
    """``(sizes, steps, windows)``: the kernels' size and step arguments, and the pool-window
    candidates per dimension ``(WIN_H, WIN_W)`` the backward visits."""
    n, cin, h, w = input.shape
    cout, cg, kh, kw = weight.shape
    oh, ow = p.conv_output_hw((h, w), (kh, kw))
    pool = p.pool_kernel_size if p.has_pool else (1, 1)
    ps, pp, pd = (p.pool_stride, p.pool_padding, p.pool_dilation) if p.has_pool else ((1, 1), (0, 0), (1, 1))
    sizes = (h, w, cg, cout // p.groups, kh, kw, oh, ow, out_hw[0], out_hw[1], *pool)
    steps = (*p.stride, p.padding[0], p.padding[2], *p.dilation, *ps, *pp, *pd)
    windows = tuple((k - 1) * d // s + 1 for k, s, d in zip(pool, ps, pd))
    return sizes, steps, windows


def _meta(input: torch.Tensor) -> dict:
    return {"ACC": acc_dtype(input.dtype), "PRECISION": _precision(input.dtype), "DOT": dot_dtype(input.dtype),
            "FMA": use_fma(input.dtype)}


_PLANS = PlanCache()


class _ForwardPlan(NamedTuple):
    shape: Tuple[int, ...]
    memory_format: torch.memory_format
    offsets_dtype: torch.dtype
    launch: Optional[KernelLaunch]  # None for an empty output


def _forward_plan(input, weight, bias, p: ConvBlockParams) -> _ForwardPlan:
    out_hw = p.output_hw(input.shape[-2:], weight.shape[-2:])
    fmt = output_memory_format(input)
    shape = (input.shape[0], weight.shape[0], *out_hw)
    y = torch.empty(shape, device="meta", dtype=input.dtype, memory_format=fmt)  # its strides
    if y.numel() == 0:
        return _ForwardPlan(shape, fmt, p.offsets_dtype(), None)
    w = torch.empty(weight.shape, device="meta", dtype=weight.dtype)  # weight.contiguous()
    sizes, steps, _ = _geometry(input, w, p, out_hw)
    coutg = sizes[3]
    n, phw = shape[0], out_hw[0] * out_hw[1]
    rows = n * phw
    cfg = conv_block_configs(rows, coutg, input.dtype)
    n_tiles = triton.cdiv(coutg, cfg["BLOCK_N"])
    grid = split_grid(triton.cdiv(rows, cfg["BLOCK_M"]), n_tiles * p.groups)
    idx = index_dtype(extent(input), extent(y), w.numel(), rows)
    meta = _meta(input)
    chunk = chunk_length(w[0].numel(), cfg["BLOCK_K"], input.dtype, meta["PRECISION"])
    scalars = (rows, phw, *sizes, n_tiles, n_tiles * p.groups, chunk, *steps, *input.stride(), *y.stride(),
               bias.stride(0) if bias is not None else 0)
    launch = KernelLaunch(conv_block_fwd_kernel, grid, scalars,
                          dict(HAS_BIAS=bias is not None, IDX=idx, **meta, **cfg))
    return _ForwardPlan(shape, fmt, p.offsets_dtype(), launch)


def forward(input, weight, bias, p: ConvBlockParams):
    """Launch the fused forward: returns ``(y, offsets)`` like the reference."""
    key = ("fwd", described(input), input.device, described(weight), described(bias), p,
           _precision(input.dtype), interpreting())
    plan = _PLANS.get(key, lambda: _forward_plan(input, weight, bias, p))
    y = torch.empty(plan.shape, device=input.device, dtype=input.dtype, memory_format=plan.memory_format)
    offsets = torch.empty(plan.shape, device=input.device, dtype=plan.offsets_dtype, memory_format=plan.memory_format)
    if plan.launch is not None:
        w = weight.contiguous()
        plan.launch.launch(input, w, bias if bias is not None else w, y, offsets)
    return y, offsets


class _BackwardPlan(NamedTuple):
    grad_input_format: torch.memory_format
    dx: Optional[KernelLaunch]  # None when grad_input is not asked or empty
    dw: Optional[KernelLaunch]  # None when neither grad_weight nor grad_bias is asked
    split: Optional[SplitGradients]


def _backward_plan(grad_output, input, weight, offsets, p: ConvBlockParams, output_mask) -> _BackwardPlan:
    w = torch.empty(weight.shape, device="meta", dtype=weight.dtype)  # weight.contiguous()
    sizes, steps, windows = _geometry(input, w, p, grad_output.shape[-2:])
    h, wd, cg, coutg, kh, kw, oh, ow = sizes[:8]
    meta = _meta(input)
    n = input.shape[0]
    strides = (*grad_output.stride(), *offsets.stride())
    fmt = output_memory_format(input)
    dx = dw = split = None
    if output_mask[0] and input.numel():
        grad_input = torch.empty_like(input, device="meta", memory_format=fmt)
        rows = n * h * wd
        idx = index_dtype(extent(input), extent(grad_output), extent(offsets), w.numel(), rows)
        cfg = conv_block_configs(rows, cg, input.dtype)
        n_tiles = triton.cdiv(cg, cfg["BLOCK_N"])
        grid = split_grid(triton.cdiv(rows, cfg["BLOCK_M"]), n_tiles * p.groups)
        scalars = (rows, h * wd, *sizes, *windows, n_tiles, n_tiles * p.groups,
                   chunk_length(coutg * kh * kw, cfg["BLOCK_K"], input.dtype, meta["PRECISION"]),
                   *steps, *strides, *grad_input.stride())
        dx = KernelLaunch(conv_block_dx_kernel, grid, scalars, dict(IDX=idx, **meta, **cfg))
    if output_mask[1] or output_mask[2]:
        k = cg * kh * kw
        positions = n * oh * ow
        cfg = conv_block_configs(k, coutg, input.dtype)
        n_tiles, m_tiles = triton.cdiv(coutg, cfg["BLOCK_N"]), triton.cdiv(k, cfg["BLOCK_M"])
        slices, slice_len = reduction_slices(positions, m_tiles * n_tiles * p.groups, cfg["BLOCK_K"], input.device)
        split = SplitGradients(tuple(w.shape), w.shape[0], w.dtype, slices, output_mask[2])
        grid = split_grid(m_tiles * slices, n_tiles * p.groups)
        idx = index_dtype(extent(input), extent(grad_output), extent(offsets), slices * w.numel(), positions)
        scalars = (positions, oh * ow, *sizes, *windows, n_tiles, n_tiles * p.groups, m_tiles, slice_len,
                   chunk_length(slice_len, cfg["BLOCK_K"], input.dtype, meta["PRECISION"]),
                   *steps, *strides, *input.stride())
        dw = KernelLaunch(conv_block_dw_kernel, grid, scalars,
                          dict(HAS_DB=bool(output_mask[2]), SPLIT=slices > 1, IDX=idx, **meta, **cfg))
    return _BackwardPlan(fmt, dx, dw, split)


def backward(grad_output, input, weight, offsets, p: ConvBlockParams, output_mask):
    """Launch the backward kernels: ``(grad_input, grad_weight, grad_bias)``, empty where not asked."""
    mask = (bool(output_mask[0]), bool(output_mask[1]), bool(output_mask[2]))
    key = ("bwd", described(grad_output), described(input), input.device, described(weight),
           described(offsets), p, mask, _precision(input.dtype), interpreting())
    plan = _PLANS.get(key, lambda: _backward_plan(grad_output, input, weight, offsets, p, mask))
    w = weight.contiguous()
    grad_input = grad_weight = grad_bias = input.new_empty(0)
    if mask[0]:
        grad_input = torch.empty_like(input, memory_format=plan.grad_input_format)
        if plan.dx is not None:
            plan.dx.launch(grad_output, offsets, w, grad_input)
    if plan.dw is not None:
        dw = torch.empty(w.shape, device=w.device, dtype=w.dtype)
        db = torch.empty(w.shape[0], device=w.device, dtype=w.dtype) if mask[2] else dw
        plan.split.launch(plan.dw, grad_output, offsets, input, dw=dw, db=db)
        grad_weight = dw if mask[1] else grad_weight
        grad_bias = db if mask[2] else grad_bias
    return grad_input, grad_weight, grad_bias
