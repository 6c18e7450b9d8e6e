"""Triton kernels of the fused conv block: forward, input gradient, weight + bias gradient.

Notation: input ``x (N, C, H, W)``, weight ``w (Cout, Cg, KH, KW)`` with ``Cg = C / G``,
conv output ``c (N, Cout, OH, OW)`` (never stored), block output ``y (N, Cout, PH, PW)`` and
the int window offsets ``o`` (same shape). All tensors are addressed through their strides
(NCHW, channels_last or any other layout), with int64 offsets.

Forward (``conv_block_fwd_kernel``): an implicit GEMM whose rows are pooled outputs
``(n, ph, pw)`` and columns output channels of one group. For each pool tap ``(pkh, pkw)``
(a compile-time loop) it computes the conv value at that tap for every row (reduction over
``K = Cg * KH * KW`` gathered from ``x``), adds the bias, applies ReLU (NaN kept) and folds
it into a running max and argmax: a tap replaces the max when larger or NaN, taps in
row-major order, so ties go to the first and NaN propagates, as ``F.max_pool2d``. For
non-overlapping pools every conv output is computed exactly once.

Backward: the conv-output gradient ``dc`` is never stored: the GEMMs' loads rebuild it from
``dy`` and ``o``:  ``dc[n, c, oh, ow] = sum over pool taps (pkh, pkw) with
ph = (oh + pph - pkh*pdh) / psh, pw = ... integral and in range and o[n, c, ph, pw] ==
pkh*PKW + pkw  of  dy[n, c, ph, pw]``.
``conv_block_dx_kernel``: rows input pixels ``(n, ih, iw)``, columns input channels of a
group, reduction over ``(co, kh, kw)``. ``conv_block_dw_kernel``: rows ``(ci, kh, kw)``,
columns output channels, reduction over all conv positions ``(n, oh, ow)`` in one program
(deterministic: no atomics); the programs of the first row tile also reduce ``db``.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ..ops.conv_block import ConvBlockParams, output_memory_format


def _acc_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _dot_dtype(dtype: torch.dtype):
    """Operand type of tl.dot: the input's own (tensor cores), except under Triton's CPU
    interpreter, which misreads 16-bit floats: there float32 (exact for bf16/fp16 products)."""
    if dtype in (torch.float16, torch.bfloat16) and os.environ.get("TRITON_INTERPRET", "0") == "1":
        return tl.float32
    return {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}.get(dtype, tl.float64)


def _precision(dtype: torch.dtype) -> str:
    """TF32 exactly when torch's conv would use it (cudnn.allow_tf32, float32 input)."""
    if dtype == torch.float32 and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return "ieee"


def conv_block_configs(rows: int, cols: int, dtype: torch.dtype) -> dict:
    """Block sizes from the problem sizes (16 is tl.dot's minimum), for inputs of ``dtype``."""
    block_n = 16 if cols <= 16 else 32 if cols <= 32 else 64
    block_m = 32 if rows <= 4096 else 64
    return {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": 16 if rows <= 4096 else 32, "num_warps": 4}


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr):
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def conv_block_fwd_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, o_ptr,
    N, H, W, Cg, Coutg, KH, KW, OH, OW, PH, PW,
    sh, sw, pt, pl, dh, dw, psh, psw, pph, ppw, pdh, pdw,
    sxn, sxc, sxh, sxw, syn, syc, syh, syw,
    PKH: tl.constexpr, PKW: tl.constexpr, HAS_BIAS: tl.constexpr, ACC: tl.constexpr,
    PRECISION: tl.constexpr, DOT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """y[n, c, ph, pw] = max over pool taps of relu(conv(x, w)[n, c, oh, ow] + b[c]); o = its tap.

    Grid: (cdiv(N * PH * PW, BLOCK_M), cdiv(Cout / G, BLOCK_N), G). ``w`` is contiguous.
    """
    pid_m, pid_n, grp = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < N * PH * PW
    n = (rows // (PH * PW)).to(tl.int64)
    ph = (rows // PW) % PH
    pw = rows % PW
    co = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = co < Coutg
    c = (grp * Coutg + co).to(tl.int64)
    K = Cg * KH * KW
    if HAS_BIAS:
        bias = tl.load(b_ptr + c, mask=col_ok, other=0.0).to(ACC)
    best = tl.full((BLOCK_M, BLOCK_N), float("-inf"), ACC)
    where = tl.full((BLOCK_M, BLOCK_N), -1, tl.int32)
    for tap in tl.static_range(PKH * PKW):
        oh = ph * psh - pph + (tap // PKW) * pdh
        ow = pw * psw - ppw + (tap % PKW) * pdw
        valid = row_ok & (oh >= 0) & (oh < OH) & (ow >= 0) & (ow < OW)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            k_ok = k < K
            ci = k // (KH * KW)
            kh = (k // KW) % KH
            kw = k % KW
            ih = oh[:, None] * sh - pt + kh[None, :] * dh
            iw = ow[:, None] * sw - pl + kw[None, :] * dw
            x_ok = valid[:, None] & k_ok[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            x_off = n[:, None] * sxn + (grp * Cg + ci)[None, :].to(tl.int64) * sxc + ih * sxh + iw * sxw
            xv = tl.load(x_ptr + x_off, mask=x_ok, other=0.0)
            wv = tl.load(w_ptr + c[None, :] * K + k[:, None], mask=k_ok[:, None] & col_ok[None, :], other=0.0)
            acc += _dot(xv.to(DOT), wv.to(DOT), PRECISION).to(ACC)
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
def _unpooled_grad(g_ptr, o_ptr, n, c, oh, ow, ok, PH, PW, psh, psw, pph, ppw, pdh, pdw,
                   sgn, sgc, sgh, sgw, son, soc, soh, sow, PKH: tl.constexpr, PKW: tl.constexpr, ACC: tl.constexpr):
    """dc[n, c, oh, ow] (broadcast 2-D index tensors) from dy and the offsets, in ACC."""
    dc = tl.zeros(oh.shape, dtype=ACC)
    for tap in tl.static_range(PKH * PKW):
        ph_num = oh + pph - (tap // PKW) * pdh
        pw_num = ow + ppw - (tap % PKW) * pdw
        ph = ph_num // psh
        pw = pw_num // psw
        hit = ok & (ph_num >= 0) & (pw_num >= 0) & (ph * psh == ph_num) & (pw * psw == pw_num) & (ph < PH) & (pw < PW)
        o = tl.load(o_ptr + n * son + c * soc + ph * soh + pw * sow, mask=hit, other=-1)
        hit = hit & (o.to(tl.int32) == tap)
        dc += tl.load(g_ptr + n * sgn + c * sgc + ph * sgh + pw * sgw, mask=hit, other=0.0).to(ACC)
    return dc


@triton.jit
def conv_block_dx_kernel(
    g_ptr, o_ptr, w_ptr, dx_ptr,
    N, H, W, Cg, Coutg, KH, KW, OH, OW, PH, PW,
    sh, sw, pt, pl, dh, dw, psh, psw, pph, ppw, pdh, pdw,
    sgn, sgc, sgh, sgw, son, soc, soh, sow, sdn, sdc, sdh, sdw,
    PKH: tl.constexpr, PKW: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr, DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dx[n, g*Cg + ci, ih, iw] = sum_{co, kh, kw} dc[n, g*Coutg + co, oh, ow] * w[g*Coutg + co, ci, kh, kw]
    with ih = oh*sh - pt + kh*dh (oh integral, in range). Grid: (cdiv(N*H*W, BLOCK_M), cdiv(Cg, BLOCK_N), G).
    """
    pid_m, pid_n, grp = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < N * H * W
    n = (rows // (H * W)).to(tl.int64)
    ih = (rows // W) % H
    iw = rows % W
    ci = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ci_ok = ci < Cg
    R = Coutg * KH * KW
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for r0 in range(0, R, BLOCK_K):
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
        c = (grp * Coutg + co)[None, :].to(tl.int64)
        dc = _unpooled_grad(g_ptr, o_ptr, n[:, None], c, oh, ow, ok, PH, PW, psh, psw, pph, ppw, pdh, pdw,
                            sgn, sgc, sgh, sgw, son, soc, soh, sow, PKH, PKW, ACC)
        w_row = (grp * Coutg + co)[:, None].to(tl.int64) * (Cg * KH * KW)
        w_off = w_row + ci[None, :] * (KH * KW) + (kh * KW + kw)[:, None]
        wv = tl.load(w_ptr + w_off, mask=r_ok[:, None] & ci_ok[None, :], other=0.0)
        acc += _dot(dc.to(w_ptr.dtype.element_ty).to(DOT), wv.to(DOT), PRECISION).to(ACC)
    dx_off = n[:, None] * sdn + (grp * Cg + ci)[None, :].to(tl.int64) * sdc + ih[:, None] * sdh + iw[:, None] * sdw
    tl.store(dx_ptr + dx_off, acc.to(dx_ptr.dtype.element_ty), mask=row_ok[:, None] & ci_ok[None, :])


@triton.jit
def conv_block_dw_kernel(
    g_ptr, o_ptr, x_ptr, dw_ptr, db_ptr,
    N, H, W, Cg, Coutg, KH, KW, OH, OW, PH, PW,
    sh, sw, pt, pl, dh, dw, psh, psw, pph, ppw, pdh, pdw,
    sgn, sgc, sgh, sgw, son, soc, soh, sow, sxn, sxc, sxh, sxw,
    PKH: tl.constexpr, PKW: tl.constexpr, HAS_DB: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
    DOT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dw[g*Coutg + co, k] = sum_{n, oh, ow} x[n, g*Cg + ci, ih, iw] * dc[n, g*Coutg + co, oh, ow]
    for k = (ci, kh, kw); db[c] = sum dc. Grid: (cdiv(Cg*KH*KW, BLOCK_M), cdiv(Coutg, BLOCK_N), G).
    ``dw`` is contiguous (Cout, Cg*KH*KW); ``db`` (Cout,) is written by the pid 0 row tile.
    """
    pid_m, pid_n, grp = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    K = Cg * KH * KW
    k = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    k_ok = k < K
    ci = k // (KH * KW)
    kh = (k // KW) % KH
    kw = k % KW
    co = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    co_ok = co < Coutg
    c = (grp * Coutg + co).to(tl.int64)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    db = tl.zeros((BLOCK_N,), dtype=ACC)
    P = N * OH * OW
    for p0 in range(0, P, BLOCK_K):
        p = p0 + tl.arange(0, BLOCK_K)
        p_ok = p < P
        n = (p // (OH * OW)).to(tl.int64)
        oh = (p // OW) % OH
        ow = p % OW
        dc = _unpooled_grad(g_ptr, o_ptr, n[:, None], c[None, :], oh[:, None], ow[:, None],
                            p_ok[:, None] & co_ok[None, :], PH, PW, psh, psw, pph, ppw, pdh, pdw,
                            sgn, sgc, sgh, sgw, son, soc, soh, sow, PKH, PKW, ACC)
        ih = oh[None, :] * sh - pt + kh[:, None] * dh
        iw = ow[None, :] * sw - pl + kw[:, None] * dw
        x_ok = k_ok[:, None] & p_ok[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        x_off = n[None, :] * sxn + (grp * Cg + ci)[:, None].to(tl.int64) * sxc + ih * sxh + iw * sxw
        xv = tl.load(x_ptr + x_off, mask=x_ok, other=0.0)
        acc += _dot(xv.to(DOT), dc.to(x_ptr.dtype.element_ty).to(DOT), PRECISION).to(ACC)
        if HAS_DB:
            db += tl.sum(dc, axis=0)
    tl.store(dw_ptr + c[None, :] * K + k[:, None], acc.to(dw_ptr.dtype.element_ty), mask=k_ok[:, None] & co_ok[None, :])
    if HAS_DB:
        if pid_m == 0:
            tl.store(db_ptr + c, db.to(db_ptr.dtype.element_ty), mask=co_ok)


def _geometry(input, weight, p: ConvBlockParams, out_hw):
    n, cin, h, w = input.shape
    cout, cg, kh, kw = weight.shape
    oh, ow = p.conv_output_hw((h, w), (kh, kw))
    pool = p.pool_kernel_size if p.has_pool else (1, 1)
    ps, pp, pd = (p.pool_stride, p.pool_padding, p.pool_dilation) if p.has_pool else ((1, 1), (0, 0), (1, 1))
    sizes = (n, h, w, cg, cout // p.groups, kh, kw, oh, ow, out_hw[0], out_hw[1])
    steps = (*p.stride, p.padding[0], p.padding[2], *p.dilation, *ps, *pp, *pd)
    return sizes, steps, pool


def forward(input, weight, bias, p: ConvBlockParams):
    """Launch the fused forward: returns ``(y, offsets)`` like the reference."""
    out_hw = p.output_hw(input.shape[-2:], weight.shape[-2:])
    fmt = output_memory_format(input)
    shape = (input.shape[0], weight.shape[0], *out_hw)
    y = torch.empty(shape, device=input.device, dtype=input.dtype, memory_format=fmt)
    offsets = torch.empty(shape, device=input.device, dtype=p.offsets_dtype(), memory_format=fmt)
    if y.numel() == 0:
        return y, offsets
    w = weight.contiguous()
    sizes, steps, pool = _geometry(input, w, p, out_hw)
    rows, coutg = shape[0] * out_hw[0] * out_hw[1], sizes[4]
    cfg = conv_block_configs(rows, coutg, input.dtype)
    grid = (triton.cdiv(rows, cfg["BLOCK_M"]), triton.cdiv(coutg, cfg["BLOCK_N"]), p.groups)
    conv_block_fwd_kernel[grid](
        input, w, bias if bias is not None else w, y, offsets, *sizes, *steps, *input.stride(), *y.stride(),
        PKH=pool[0], PKW=pool[1], HAS_BIAS=bias is not None, ACC=_acc_dtype(input.dtype),
        PRECISION=_precision(input.dtype), DOT=_dot_dtype(input.dtype), **cfg,
    )
    return y, offsets


def backward(grad_output, input, weight, offsets, p: ConvBlockParams, output_mask):
    """Launch the backward kernels: ``(grad_input, grad_weight, grad_bias)``, empty where not asked."""
    w = weight.contiguous()
    sizes, steps, pool = _geometry(input, w, p, grad_output.shape[-2:])
    n, h, wd, cg, coutg, kh, kw = sizes[:7]
    acc, prec, dot = _acc_dtype(input.dtype), _precision(input.dtype), _dot_dtype(input.dtype)
    strides = (*grad_output.stride(), *offsets.stride())
    grad_input = input.new_empty(0)
    if output_mask[0]:
        grad_input = torch.empty_like(input, memory_format=output_memory_format(input))
        if grad_input.numel():
            cfg = conv_block_configs(n * h * wd, cg, input.dtype)
            grid = (triton.cdiv(n * h * wd, cfg["BLOCK_M"]), triton.cdiv(cg, cfg["BLOCK_N"]), p.groups)
            conv_block_dx_kernel[grid](
                grad_output, offsets, w, grad_input, *sizes, *steps, *strides, *grad_input.stride(),
                PKH=pool[0], PKW=pool[1], ACC=acc, PRECISION=prec, DOT=dot, **cfg,
            )
    grad_weight, grad_bias = input.new_empty(0), input.new_empty(0)
    if output_mask[1] or output_mask[2]:
        dw = torch.empty(w.shape, device=w.device, dtype=w.dtype)
        db = torch.empty(w.shape[0], device=w.device, dtype=w.dtype) if output_mask[2] else dw
        k = cg * kh * kw
        cfg = conv_block_configs(k, coutg, input.dtype)
        grid = (triton.cdiv(k, cfg["BLOCK_M"]), triton.cdiv(coutg, cfg["BLOCK_N"]), p.groups)
        conv_block_dw_kernel[grid](
            grad_output, offsets, input, dw, db, *sizes, *steps, *strides, *input.stride(),
            PKH=pool[0], PKW=pool[1], HAS_DB=bool(output_mask[2]), ACC=acc, PRECISION=prec, DOT=dot, **cfg,
        )
        grad_weight = dw if output_mask[1] else grad_weight
        grad_bias = db if output_mask[2] else grad_bias
    return grad_input, grad_weight, grad_bias
