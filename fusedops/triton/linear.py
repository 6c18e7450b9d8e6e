"""Triton kernels of the fused linear: GEMM + bias + activation, and its backward.

Shapes: ``x (M, K)`` (leading dims flattened), ``w (N, K)``, ``b (N,)``, ``z = x @ w.T + b``,
``y = act(z)`` (M, N). ACT: 0 none, 1 relu, 2 gelu (exact), 3 gelu_tanh, 4 silu.
Saved for backward (written by the forward): the bool mask ``z > 0`` (NaN on) for relu,
``z`` for gelu/gelu_tanh/silu, nothing for none.

Backward: ``dz = dy * act'(z)`` is computed on the fly in the loads of both GEMMs
(never stored): ``dx = dz @ w`` (grid over M x K tiles, reduction over N) and
``dw = dz.T @ x`` (grid over N x K tiles, reduction over M split into slices that fill the
GPU, whose float32 partial sums ``reduce.sum_slices_kernel`` adds in a fixed order: no atomics,
deterministic); the programs of the first K tile also reduce ``db = sum_m dz``. Every
reduction is summed in chunks (``_launch`` "Summation order").

Index and address arithmetic is in ``IDX`` (int32, or int64 once an offset reaches 2^31);
the second grid dimension is spread over grid y and z (``_launch.split_grid``), so any
``out_features`` / ``in_features`` launches.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl

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

ACT_CODES = {"": 0, "relu": 1, "gelu": 2, "gelu_tanh": 3, "silu": 4}


def _precision(dtype) -> str:
    """TF32 exactly when torch's matmul would use it (cuda.matmul.allow_tf32, float32)."""
    return "tf32" if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 else "ieee"


def linear_configs(m: int, n: int, dtype: torch.dtype) -> dict:
    """Block sizes from the problem sizes (16 is tl.dot's minimum). float64 multiplies on the
    FMA units (``_launch.use_fma``) in one small tile whose product fits in registers."""
    if use_fma(dtype):
        return {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 16, "num_warps": 8}
    return {
        "BLOCK_M": 16 if m <= 16 else 32 if m <= 256 else 64,
        "BLOCK_N": 16 if n <= 16 else 32 if n <= 256 else 64,
        "BLOCK_K": 32,
        "num_warps": 4,
    }


@triton.jit
def _exp_m2u(z):
    """exp(-2 u) for gelu_tanh's u = sqrt(2/pi) (z + 0.044715 z^3)."""
    return tl.exp(-1.5957691216057308 * (z + 0.044715 * z * z * z))


@triton.jit
def _sigmoid_2u(z):
    """sigmoid(2 u) = (1 + tanh(u)) / 2 for gelu_tanh: no cancellation for negative z, where
    1 + tanh(u) computed as 1 - 2 / (exp(2u) + 1) lost the digits (8x torch's float32 error at
    z = -2)."""
    return 1.0 / (1.0 + _exp_m2u(z))


@triton.jit
def _activation(z, ACT: tl.constexpr):
    if ACT == 1:
        return tl.where((z > 0) | (z != z), z, 0.0)
    elif ACT == 2:
        return 0.5 * z * (1.0 + tl.math.erf(z * 0.7071067811865476))
    elif ACT == 3:
        return z * _sigmoid_2u(z)
    elif ACT == 4:
        return z / (1.0 + tl.exp(-z))
    else:
        return z


@triton.jit
def _activation_grad(z, ACT: tl.constexpr):
    """act'(z) for gelu (2), gelu_tanh (3), silu (4)."""
    if ACT == 2:
        return 0.5 * (1.0 + tl.math.erf(z * 0.7071067811865476)) + z * tl.exp(-0.5 * z * z) * 0.3989422804014327
    elif ACT == 3:
        # s = (1 + t) / 2 with t = tanh(u); 1 - t^2 = 4 s (1 - s), and 1 - s = e s with e = exp(-2u):
        # 1 - s itself cancels where s nears 1 (4x torch's float32 error at z in [1, 5)). e is
        # capped at the largest float so that e s is 0, not inf * 0, where e overflows (s is 0
        # there). A select between e s and 1 - s took the bf16 weight-gradient kernel from 162
        # to 242 registers on sm_90; the cap keeps 163.
        e = _exp_m2u(z)
        s = 1.0 / (1.0 + e)
        one_minus_s = tl.minimum(e, 3.4028234663852886e38) * s
        return s + 2.0 * z * s * one_minus_s * 0.7978845608028654 * (1.0 + 0.134145 * z * z)
    else:
        s = 1.0 / (1.0 + tl.exp(-z))
        return s * (1.0 + z * (1.0 - s))


@triton.jit
def linear_fwd_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, s_ptr, M, N, K, CHUNK, sxm, sxk, swn, swk, sb,
    ACT: tl.constexpr, HAS_BIAS: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr, DOT: tl.constexpr,
    FMA: tl.constexpr, IDX: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """y = act(x @ w.T + b) (M, N) contiguous; s = saved state (contiguous, see module docstring).

    ``b`` has stride ``sb``. Grid: ``(cdiv(M, BLOCK_M), y, z)`` with ``y * z >= cdiv(N, BLOCK_N)``.
    The reduction is summed in partial sums of ``CHUNK`` terms (a multiple of BLOCK_K; ``_launch``
    "Summation order").
    """
    pid_n = (tl.program_id(1) + tl.program_id(2) * tl.num_programs(1)).to(IDX)
    if pid_n * BLOCK_N >= N:
        return
    rm = tl.program_id(0).to(IDX) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok, n_ok = rm < M, rn < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for c0 in range(0, K, CHUNK):
        part = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
        for k0 in range(c0, tl.minimum(c0 + CHUNK, K), BLOCK_K):
            rk = (k0 + tl.arange(0, BLOCK_K)).to(IDX)
            k_ok = rk < K
            xv = tl.load(x_ptr + rm[:, None] * sxm + rk[None, :] * sxk, mask=m_ok[:, None] & k_ok[None, :],
                         other=0.0)
            wv = tl.load(w_ptr + rn[None, :] * swn + rk[:, None] * swk, mask=n_ok[None, :] & k_ok[:, None],
                         other=0.0)
            part += matmul_tile(xv.to(DOT), wv.to(DOT), PRECISION, FMA).to(ACC)
        acc += part
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn * sb, mask=n_ok, other=0.0).to(ACC)[None, :]
    z = acc.to(y_ptr.dtype.element_ty).to(ACC)  # torch rounds z to the output dtype before act
    off = rm[:, None] * N + rn[None, :]
    ok = m_ok[:, None] & n_ok[None, :]
    tl.store(y_ptr + off, _activation(z, ACT).to(y_ptr.dtype.element_ty), mask=ok)
    if ACT == 1:
        tl.store(s_ptr + off, ((z > 0) | (z != z)).to(s_ptr.dtype.element_ty), mask=ok)
    elif ACT >= 2:
        tl.store(s_ptr + off, z.to(s_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _dz(g_ptr, s_ptr, rm, rn, ok, sgm, sgn, N, ACT: tl.constexpr, ACC: tl.constexpr):
    """dz[rm, rn] = dy * act'(z), from dy and the saved state, in ACC (2-D index tensors of the index type)."""
    g = tl.load(g_ptr + rm * sgm + rn * sgn, mask=ok, other=0.0).to(ACC)
    if ACT == 1:
        on = tl.load(s_ptr + rm * N + rn, mask=ok, other=0)
        g = tl.where(on != 0, g, 0.0)
    elif ACT >= 2:
        z = tl.load(s_ptr + rm * N + rn, mask=ok, other=0.0).to(ACC)
        g = g * _activation_grad(z, ACT)
    return g


@triton.jit
def linear_dx_kernel(
    g_ptr, s_ptr, w_ptr, dx_ptr, M, N, K, CHUNK, sgm, sgn, swn, swk,
    ACT: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr, DOT: tl.constexpr, FMA: tl.constexpr,
    IDX: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dx[m, k] = sum_n dz[m, n] * w[n, k]; dx (M, K) contiguous.

    Grid: ``(cdiv(M, BLOCK_M), y, z)`` with ``y * z >= cdiv(K, BLOCK_K)``. Partial sums of
    ``CHUNK`` terms (a multiple of BLOCK_N), as the forward.
    """
    pid_k = (tl.program_id(1) + tl.program_id(2) * tl.num_programs(1)).to(IDX)
    if pid_k * BLOCK_K >= K:
        return
    rm = tl.program_id(0).to(IDX) * BLOCK_M + tl.arange(0, BLOCK_M)
    rk = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    m_ok, k_ok = rm < M, rk < K
    acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=ACC)
    for c0 in range(0, N, CHUNK):
        part = tl.zeros((BLOCK_M, BLOCK_K), dtype=ACC)
        for n0 in range(c0, tl.minimum(c0 + CHUNK, N), BLOCK_N):
            rn = (n0 + tl.arange(0, BLOCK_N)).to(IDX)
            n_ok = rn < N
            dz = _dz(g_ptr, s_ptr, rm[:, None], rn[None, :], m_ok[:, None] & n_ok[None, :], sgm, sgn, N, ACT, ACC)
            wv = tl.load(w_ptr + rn[:, None] * swn + rk[None, :] * swk, mask=n_ok[:, None] & k_ok[None, :],
                         other=0.0)
            part += matmul_tile(dz.to(w_ptr.dtype.element_ty).to(DOT), wv.to(DOT), PRECISION, FMA).to(ACC)
        acc += part
    tl.store(dx_ptr + rm[:, None] * K + rk[None, :], acc.to(dx_ptr.dtype.element_ty),
             mask=m_ok[:, None] & k_ok[None, :])


@triton.jit
def linear_dw_kernel(
    g_ptr, s_ptr, x_ptr, dw_ptr, db_ptr, M, N, K, N_TILES, SLICE, CHUNK, sgm, sgn, sxm, sxk,
    ACT: tl.constexpr, HAS_DB: tl.constexpr, SPLIT: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
    DOT: tl.constexpr, FMA: tl.constexpr, IDX: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """dw[n, k] = sum_m dz[m, n] * x[m, k]; db[n] = sum_m dz[m, n].

    ``N_TILES = cdiv(N, BLOCK_N)``. The rows ``m`` are split into slices of ``SLICE`` (a
    multiple of BLOCK_M), summed in partial sums of ``CHUNK`` terms (``_launch`` "Summation
    order"). Grid: ``(N_TILES * slices, y, z)`` with ``y * z >= max(1, cdiv(K, BLOCK_K))``;
    program ``(i, j)`` computes feature tile ``i % N_TILES`` of slice ``i // N_TILES``; ``db``
    is reduced by the programs of K tile 0. Without ``SPLIT`` (one slice) ``dw`` (N, K) and
    ``db`` (N,) are written in their dtype, contiguous; with it each slice writes ACC partial
    sums, ``dw_ptr`` (slices, N, K) and ``db_ptr`` (slices, N), which ``reduce.sum_slices_kernel`` adds.
    """
    pid_k = (tl.program_id(1) + tl.program_id(2) * tl.num_programs(1)).to(IDX)
    if (pid_k > 0) & (pid_k * BLOCK_K >= K):
        return
    piece = tl.program_id(0) // N_TILES
    rn = (tl.program_id(0) % N_TILES).to(IDX) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    n_ok, k_ok = rn < N, rk < K
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=ACC)
    db = tl.zeros((BLOCK_N,), dtype=ACC)
    start = piece.to(IDX) * SLICE
    end = tl.minimum(start + SLICE, M)
    for c0 in range(start, end, CHUNK):
        part = tl.zeros((BLOCK_N, BLOCK_K), dtype=ACC)
        part_db = tl.zeros((BLOCK_N,), dtype=ACC)
        for m0 in range(c0, tl.minimum(c0 + CHUNK, end), BLOCK_M):
            rm = (m0 + tl.arange(0, BLOCK_M)).to(IDX)
            m_ok = rm < end
            dz_t = _dz(g_ptr, s_ptr, rm[None, :], rn[:, None], n_ok[:, None] & m_ok[None, :], sgm, sgn, N, ACT, ACC)
            xv = tl.load(x_ptr + rm[:, None] * sxm + rk[None, :] * sxk, mask=m_ok[:, None] & k_ok[None, :],
                         other=0.0)
            part += matmul_tile(dz_t.to(x_ptr.dtype.element_ty).to(DOT), xv.to(DOT), PRECISION, FMA).to(ACC)
            if HAS_DB:
                part_db += tl.sum(dz_t, axis=1)
        acc += part
        db += part_db
    if SPLIT:  # this slice's partial sums, in ACC
        dw_ptr += piece.to(IDX) * N * K
        db_ptr += piece.to(IDX) * N
    tl.store(dw_ptr + rn[:, None] * K + rk[None, :], acc.to(dw_ptr.dtype.element_ty),
             mask=n_ok[:, None] & k_ok[None, :])
    if HAS_DB:
        if pid_k == 0:
            tl.store(db_ptr + rn, db.to(db_ptr.dtype.element_ty), mask=n_ok)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` as (M, last): a view where the strides allow, else a copy."""
    return t.reshape(t.shape[:-1].numel(), t.shape[-1])  # not -1: a last dim of 0 makes -1 ambiguous


def _meta(input: torch.Tensor) -> dict:
    return {"ACC": acc_dtype(input.dtype), "PRECISION": _precision(input.dtype), "DOT": dot_dtype(input.dtype),
            "FMA": use_fma(input.dtype)}


_PLANS = PlanCache()


def _forward_plan(x, weight, bias, act: int) -> Optional[KernelLaunch]:
    m, k = x.shape
    n = weight.shape[0]
    if not (m and n):
        return None
    cfg = linear_configs(m, n, x.dtype)
    grid = split_grid(triton.cdiv(m, cfg["BLOCK_M"]), triton.cdiv(n, cfg["BLOCK_N"]))
    idx = index_dtype(extent(x), extent(weight), m * n)
    meta = _meta(x)
    scalars = (m, n, k, chunk_length(k, cfg["BLOCK_K"], x.dtype, meta["PRECISION"]), *x.stride(), *weight.stride(),
               bias.stride(0) if bias is not None else 0)
    return KernelLaunch(linear_fwd_kernel, grid, scalars,
                        dict(ACT=act, HAS_BIAS=bias is not None, IDX=idx, **meta, **cfg))


def forward(input, weight, bias, activation: str):
    """Launch the fused forward: ``(y, saved)`` like the reference."""
    x = _rows(input)
    m, n = x.shape[0], weight.shape[0]
    act = ACT_CODES[activation]
    key = ("fwd", described(x), x.device, described(weight), described(bias), act, _precision(x.dtype),
           interpreting())
    launch = _PLANS.get(key, lambda: _forward_plan(x, weight, bias, act))
    y = torch.empty((m, n), device=input.device, dtype=input.dtype)
    saved = input.new_empty(0) if act == 0 else torch.empty(
        (m, n), device=input.device, dtype=torch.bool if act == 1 else input.dtype
    )
    if launch is not None:
        launch.launch(x, weight, bias if bias is not None else weight, y, saved if act else y)
    out_shape = (*input.shape[:-1], n)
    return y.view(out_shape), saved.view(out_shape) if act else saved


class _BackwardPlan(NamedTuple):
    dx: Optional[KernelLaunch]  # None when grad_input is not asked or has no elements to compute
    zero_dx: bool  # grad_input is zeros (no input features to reduce over: n == 0 with rows)
    dw: Optional[KernelLaunch]  # None when neither grad_weight nor grad_bias is asked, or n == 0
    split: Optional[SplitGradients]


def _backward_plan(g, x, weight, s, act: int, output_mask) -> _BackwardPlan:
    m, k = x.shape
    n = weight.shape[0]
    meta = _meta(x)
    cfg = linear_configs(m, n, x.dtype)
    dx = dw = split = None
    if output_mask[0] and m and k:
        idx = index_dtype(extent(x), extent(g), extent(weight), m * n, m * k)
        grid = split_grid(triton.cdiv(m, cfg["BLOCK_M"]), triton.cdiv(k, cfg["BLOCK_K"]))
        chunk = chunk_length(n, cfg["BLOCK_N"], x.dtype, meta["PRECISION"])
        dx = KernelLaunch(linear_dx_kernel, grid, (m, n, k, chunk, *g.stride(), *weight.stride()),
                          dict(ACT=act, IDX=idx, **meta, **cfg))
    if (output_mask[1] or output_mask[2]) and n:
        n_tiles, k_tiles = triton.cdiv(n, cfg["BLOCK_N"]), max(1, triton.cdiv(k, cfg["BLOCK_K"]))
        slices, slice_len = reduction_slices(m, n_tiles * k_tiles, cfg["BLOCK_M"], x.device)
        split = SplitGradients((n, k), n, x.dtype, slices, output_mask[2])
        grid = split_grid(n_tiles * slices, k_tiles)
        # (slices + 1) * slice_len bounds the kernel's slice ends (start + SLICE) and chunk ends.
        idx = index_dtype(extent(x), extent(g), extent(weight), m * n, slices * n * k, (slices + 1) * slice_len)
        scalars = (m, n, k, n_tiles, slice_len, chunk_length(slice_len, cfg["BLOCK_M"], x.dtype, meta["PRECISION"]),
                   *g.stride(), *x.stride())
        dw = KernelLaunch(linear_dw_kernel, grid, scalars,
                          dict(ACT=act, HAS_DB=bool(output_mask[2]), SPLIT=slices > 1, IDX=idx, **meta, **cfg))
    return _BackwardPlan(dx, bool(output_mask[0] and m and not k), dw, split)


def backward(grad_output, input, weight, saved, activation: str, output_mask):
    """Launch the backward kernels: ``(grad_input, grad_weight, grad_bias)``, empty where not asked."""
    x = _rows(input)
    g = _rows(grad_output)
    m, k = x.shape
    n = weight.shape[0]
    act = ACT_CODES[activation]
    s = saved.reshape(m, n) if act else g
    mask = (bool(output_mask[0]), bool(output_mask[1]), bool(output_mask[2]))
    key = ("bwd", described(g), described(x), x.device, described(weight), described(s) if act else None, act,
           mask, _precision(x.dtype), interpreting())
    plan = _PLANS.get(key, lambda: _backward_plan(g, x, weight, s, act, mask))
    grad_input, grad_weight, grad_bias = input.new_empty(0), input.new_empty(0), input.new_empty(0)
    if mask[0]:
        dx = torch.empty((m, k), device=input.device, dtype=input.dtype)
        if plan.dx is not None:
            plan.dx.launch(g, s, weight, dx)
        elif plan.zero_dx:
            dx.zero_()
        grad_input = dx.view(input.shape)
    if mask[1] or mask[2]:
        dw = torch.empty((n, k), device=input.device, dtype=input.dtype)
        db = torch.empty(n, device=input.device, dtype=input.dtype) if mask[2] else dw
        if plan.dw is not None:
            plan.split.launch(plan.dw, g, s, x, dw=dw, db=db)
        grad_weight = dw if mask[1] else grad_weight
        grad_bias = db if mask[2] else grad_bias
    return grad_input, grad_weight, grad_bias
