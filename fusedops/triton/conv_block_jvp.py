"""Triton kernel of the fused conv block's tangent at fixed offsets (``conv_block_jvp``).

For input ``x (N, C, H, W)``, weight ``w (Cout, Cg, KH, KW)``, the forward's offsets
``o (N, Cout, PH, PW)`` and tangents ``tx`` (like ``x``), ``tw`` (like ``w``), ``tb (Cout,)``,
each of which may be absent (zero):

    t[n, c, ph, pw] = 0                                            where o < 0 (ReLU off)
                    = tb[c] + sum_{ci, kh, kw} tx[n, g*Cg + ci, ih, iw] * w[c, ci, kh, kw]
                                             + x[n, g*Cg + ci, ih, iw] * tw[c, ci, kh, kw]

at the conv position ``(oh, ow)`` of the window's max (``oh = ph*psh - pph + (o // PKW)*pdh``,
``ih = oh*sh - pt + kh*dh``, 0 outside the input). It is the block's forward-mode derivative
and the double backward's gradient with respect to ``grad_output``. Each output is one dot
product of length ``K = Cg * KH * KW`` at its own conv position (positions differ per
channel), so the kernel is a gathered reduction, not a GEMM. Every tensor is addressed
through its strides (any layout), with int64 offsets (it runs only in double backward and
forward-mode AD, where the index width is not what bounds it).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..ops.conv_block import ConvBlockParams, output_memory_format
from ._launch import acc_dtype, on_device

BLOCK_M = 32  # outputs per program
BLOCK_K = 32  # reduction elements per step


@triton.jit
def conv_block_jvp_kernel(
    x_ptr, w_ptr, o_ptr, tx_ptr, tw_ptr, tb_ptr, y_ptr,
    N, C_OUT, H, W, Cg, Coutg, PH, PW,
    sh, sw, pt, pl, dh, dw, psh, psw, pph, ppw, pdh, pdw,
    sxn, sxc, sxh, sxw, swc, swi, swh, sww, son, soc, soh, sow,
    stn, stc, sth, stw, stwc, stwi, stwh, stww, stb, syn, syc, syh, syw,
    KH: tl.constexpr, KW: tl.constexpr, PKW: tl.constexpr,
    HAS_TX: tl.constexpr, HAS_TW: tl.constexpr, HAS_TB: tl.constexpr, ACC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """t (above) for BLOCK_M outputs in (n, c, ph, pw) order. Grid: (cdiv(N*Cout*PH*PW, BLOCK_M),).
    The filter and pool-window widths are constexpr (as in the other conv kernels), so the K
    loop splits k into (ci, kh, kw) by multiplies, not divisions."""
    idx = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    ok = idx < N * C_OUT * PH * PW
    pw = idx % PW
    ph = (idx // PW) % PH
    c = (idx // (PW * PH)) % C_OUT
    n = idx // (PW * PH * C_OUT)
    grp = c // Coutg
    o = tl.load(o_ptr + n * son + c * soc + ph * soh + pw * sow, mask=ok, other=-1).to(tl.int64)
    on = ok & (o >= 0)
    oh = ph * psh - pph + (o // PKW) * pdh
    ow = pw * psw - ppw + (o % PKW) * pdw
    acc = tl.zeros((BLOCK_M,), dtype=ACC)
    if HAS_TB:
        acc += tl.load(tb_ptr + c * stb, mask=on, other=0.0).to(ACC)
    K = Cg * KH * KW
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        ci = k // (KH * KW)
        kh = (k // KW) % KH
        kw = k % KW
        ih = oh[:, None] * sh - pt + kh[None, :] * dh
        iw = ow[:, None] * sw - pl + kw[None, :] * dw
        m = on[:, None] & (k < K)[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        ch = grp[:, None] * Cg + ci[None, :]
        cw = c[:, None]
        if HAS_TX:
            tx = tl.load(tx_ptr + n[:, None] * stn + ch * stc + ih * sth + iw * stw, mask=m, other=0.0)
            wv = tl.load(w_ptr + cw * swc + ci[None, :] * swi + kh[None, :] * swh + kw[None, :] * sww,
                         mask=m, other=0.0)
            acc += tl.sum(tx.to(ACC) * wv.to(ACC), axis=1)
        if HAS_TW:
            xv = tl.load(x_ptr + n[:, None] * sxn + ch * sxc + ih * sxh + iw * sxw, mask=m, other=0.0)
            tw = tl.load(tw_ptr + cw * stwc + ci[None, :] * stwi + kh[None, :] * stwh + kw[None, :] * stww,
                         mask=m, other=0.0)
            acc += tl.sum(xv.to(ACC) * tw.to(ACC), axis=1)
    acc = tl.where(on, acc, 0.0)
    tl.store(y_ptr + n * syn + c * syc + ph * syh + pw * syw, acc.to(y_ptr.dtype.element_ty), mask=ok)


def jvp(input, weight, offsets, input_tangent, weight_tangent, bias_tangent, p: ConvBlockParams):
    """Launch the tangent kernel: returns ``t`` (offsets' shape, input's dtype and layout)."""
    out = torch.empty_like(offsets, dtype=input.dtype, memory_format=output_memory_format(input))
    if out.numel() == 0:
        return out
    n, _, h, w = input.shape
    cout, cg, kh, kw = weight.shape
    pool = p.pool_kernel_size if p.has_pool else (1, 1)
    ps, pp, pd = (p.pool_stride, p.pool_padding, p.pool_dilation) if p.has_pool else ((1, 1), (0, 0), (1, 1))
    zeros4 = (0, 0, 0, 0)
    tx, tw, tb = input_tangent, weight_tangent, bias_tangent
    grid = (triton.cdiv(out.numel(), BLOCK_M),)
    with on_device(input):
        conv_block_jvp_kernel[grid](
            input, weight, offsets, tx if tx is not None else input, tw if tw is not None else weight,
            tb if tb is not None else weight, out,
            n, cout, h, w, cg, cout // p.groups, out.shape[2], out.shape[3],
            *p.stride, p.padding[0], p.padding[2], *p.dilation, *ps, *pp, *pd,
            *input.stride(), *weight.stride(), *offsets.stride(),
            *(tx.stride() if tx is not None else zeros4), *(tw.stride() if tw is not None else zeros4),
            tb.stride(0) if tb is not None else 0, *out.stride(),
            KH=kh, KW=kw, PKW=pool[1],
            HAS_TX=tx is not None, HAS_TW=tw is not None, HAS_TB=tb is not None, ACC=acc_dtype(input.dtype),
            BLOCK_M=BLOCK_M, BLOCK_K=BLOCK_K,
        )
    return out

