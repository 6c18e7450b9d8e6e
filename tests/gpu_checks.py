"""The gpu-marked suite's check of both fused ops: one backend, one precision, one case.

``check_conv_block`` and ``check_linear`` each:

1. round the float64 inputs to the precision's dtype (``low``) and lay the input out as asked;
2. run the fused op through its public function and autograd (output, every gradient), and
   the graph-level op for the state it saves (window offsets, relu mask, pre-activation);
   the allocator is poisoned before every kernel call (tests/gpu_memory.py), so an element
   no kernel writes is NaN (or, with ``pattern="big"``, 0x7F: an impossible offset, a huge
   float);
3. run torch itself at the same dtype and TF32 setting, and the float64 oracle on ``low``
   (the same inputs, computed exactly);
4. check the saved state: every window offset names a pool tap whose exact value is the
   window's max within the precision's accumulation error (``Precision.tap_tol``), and is -1
   exactly where that max is not positive; every relu mask bit is the sign of the exact
   pre-activation (where it is clear of 0);
5. apply DESIGN.md's rule to the output and to every gradient: the error against the float64
   oracle is at most 2x torch's own (``oracle.twice_torch_violation``). Gradients are compared
   with the oracle's gradients *along each side's own routing* (its offsets or relu mask,
   fed to the reference backward in float64): where two pool taps are within rounding of
   each other both are correct maxima, and which one each side takes is checked in step 4
   and by tests/test_gpu_offsets.py; the rule measures the arithmetic. With TF32 on, torch's
   error is the larger of the measured one and that of its IEEE computation on
   TF32-truncated operands: TF32 allows that much whether or not cuDNN/cuBLAS picked a TF32
   algorithm for the shape.

float64 has no torch at a lower precision to compare with: there ours must equal the oracle
(``torch.testing.assert_close``). ``check_conv_block_jvp`` applies the same rule to the
tangent op (double backward) at the backend's own offsets. Offsets no window has (an element
left unwritten) are reported, and replaced by -1 for the oracle's routing, which would index
out of bounds with them (on a GPU that would end the process's CUDA context). Every problem of
a case is reported in one AssertionError. On CPU tensors nothing is poisoned; the checks run
there too (tests/test_gpu_harness.py).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

import fusedops
from fusedops import backends
from fusedops.functional import conv_block_params
from tests import gpu_memory, oracle
from tools.triton_cases import precision as tf32_flags  # torch's TF32 switches for conv and matmul


@dataclasses.dataclass(frozen=True)
class Precision:
    """A dtype and torch's TF32 switches (cudnn.allow_tf32 and cuda.matmul.allow_tf32) for it.
    ``tap_tol``: how far (relative to the largest value) a kernel's accumulated pool-tap value
    may be from the exact one, so that a tap within it of the window's max is a correct max."""

    label: str
    dtype: torch.dtype
    tf32: bool
    tap_tol: float


PRECISIONS: Dict[str, Precision] = {p.label: p for p in (
    Precision("fp32", torch.float32, False, 1e-4),
    Precision("tf32", torch.float32, True, 1e-2),
    Precision("bf16", torch.bfloat16, False, 1e-4),  # products exact, accumulated in fp32
    Precision("fp16", torch.float16, False, 1e-4),
    Precision("fp64", torch.float64, False, 1e-10),
)}



def _sliced(t):
    """Same values, every other element of a row twice as wide (non-contiguous)."""
    wide = t.new_zeros(*t.shape[:-1], 2 * t.shape[-1])
    wide[..., ::2] = t
    return wide[..., ::2]


LAYOUTS: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    # same values, other strides
    "nchw": lambda t: t,
    "channels_last": lambda t: t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t,
    "sliced": _sliced,
    "transposed": lambda t: t.transpose(-1, -2).contiguous().transpose(-1, -2),
}


@dataclasses.dataclass
class Run:
    """One side's results: output, gradients (None where not asked) and the saved state."""

    out: torch.Tensor
    grads: List[Optional[torch.Tensor]]
    saved: Optional[torch.Tensor] = None
    tangent: Optional[torch.Tensor] = None

    def tensors(self) -> List[torch.Tensor]:
        """Every tensor of the run (for bitwise comparisons)."""
        return [t for t in (self.out, *self.grads, self.saved, self.tangent) if t is not None]


def _leaves(*tensors, input_grad: bool = True):
    """Leaves requiring grad; the first (the input) only with ``input_grad`` (a first layer's)."""
    return [None if t is None else t.detach().requires_grad_(input_grad or i > 0) for i, t in enumerate(tensors)]


def _poison(pattern: str, device, *tensors) -> None:
    gpu_memory.poison(gpu_memory.PATTERNS[pattern], gpu_memory.nbytes(*tensors), device)


def _as4d(t):
    return t if t is None or t.dim() == 4 else t.unsqueeze(0)


# --- conv block ----------------------------------------------------------------------------------


def window_taps(conv: torch.Tensor, p) -> torch.Tensor:
    """``(N, C, T, PH, PW)``: the value of ``conv`` (N, C, OH, OW) at each of the ``T`` taps of
    every pool window, in row-major tap order; ``-inf`` where a tap lies in the pool padding."""
    if not p.has_pool:
        return conv.unsqueeze(2)
    n, c, oh, ow = conv.shape
    (kh, kw), (sh, sw), (ph_, pw_), (dh, dw) = p.pool_kernel_size, p.pool_stride, p.pool_padding, p.pool_dilation
    out_h, out_w = _pool_hw(oh, ow, p)
    need_h, need_w = (out_h - 1) * sh + (kh - 1) * dh + 1, (out_w - 1) * sw + (kw - 1) * dw + 1
    padded = F.pad(conv, (pw_, max(0, need_w - pw_ - ow), ph_, max(0, need_h - ph_ - oh)), value=float("-inf"))
    padded = padded[..., :need_h, :need_w]
    taps = F.unfold(padded, (kh, kw), dilation=(dh, dw), stride=(sh, sw))
    return taps.view(n, c, kh * kw, out_h, out_w)


def _pool_hw(oh, ow, p):
    from fusedops._args import pool_output_size

    return tuple(pool_output_size(size, k, s, pad, d, p.pool_ceil_mode) for size, k, s, pad, d in
                 zip((oh, ow), p.pool_kernel_size, p.pool_stride, p.pool_padding, p.pool_dilation))


def exact_conv(x64, w64, b64, p) -> torch.Tensor:
    """``relu(conv2d(x, w, b))`` (N, C, OH, OW) in float64, with the block's padding."""
    top, bottom, left, right = p.padding
    x = F.pad(_as4d(x64), (left, right, top, bottom))
    return F.relu(F.conv2d(x, w64, b64, p.stride, 0, p.dilation, p.groups))


def offset_problems(offsets, x64, w64, b64, p, precision: Precision) -> List[str]:
    """Where ``offsets`` (N, C, PH, PW) is not a correct max of its window (see module doc)."""
    taps = window_taps(exact_conv(x64, w64, b64, p), p)
    if taps.numel() == 0:
        return []
    offsets = offsets.long()
    tol = precision.tap_tol * oracle.scale_of(taps)
    vmax = taps.max(dim=2).values
    on = offsets >= 0
    invalid = (offsets < -1) | (offsets >= taps.shape[2])
    chosen = taps.gather(2, offsets.clamp(0, taps.shape[2] - 1).unsqueeze(2)).squeeze(2)
    not_max = on & ~invalid & (~torch.isfinite(chosen) | (vmax - chosen > tol))
    wrongly_off = ~on & (vmax > tol)
    problems = []
    for what, mask in (("invalid values (unwritten?)", invalid), ("taps that are not the window's max", not_max),
                       ("-1 (ReLU off) where the window's max is positive", wrongly_off)):
        count = int(mask.sum())
        if count:
            first = [int(i) for i in mask.nonzero()[0]]
            window = taps[first[0], first[1], :, first[2], first[3]].tolist()[:16]
            problems.append(f"offsets: {count} of {mask.numel()} are {what}; first at (n, c, ph, pw) = {first}: "
                            f"offset {int(offsets[tuple(first)])}, window {window}")
    return problems


def _torch_conv(x, w, b, g, kwargs, p, input_grad: bool = True) -> Run:
    xs, ws, bs = _leaves(x, w, b, input_grad=input_grad)
    out = oracle.conv_block(xs, ws, bs, **kwargs)
    grads = oracle.grads(out, [xs, ws, bs], g)
    _, offsets = torch.ops.fusedops.conv_block_forward(_as4d(x), w, b, *p, "reference")
    return Run(out.detach(), grads, offsets)


def _fused_conv(backend, x, w, b, g, kwargs, p, pattern, like: Run, input_grad: bool = True) -> Run:
    """The fused op, poisoned before each kernel call (sizes from torch's run ``like``)."""
    device = x.device
    xs, ws, bs = _leaves(x, w, b, input_grad=input_grad)
    _poison(pattern, device, like.out, like.saved)
    out = fusedops.conv_relu_maxpool2d(xs, ws, bs, backend=backend, **kwargs)
    _poison(pattern, device, *[t for t in like.grads if t is not None])
    grads = oracle.grads(out, [xs, ws, bs], g)
    _poison(pattern, device, like.out, like.saved)
    _, offsets = torch.ops.fusedops.conv_block_forward(_as4d(x), w, b, *p, backend)
    return Run(out.detach(), grads, offsets)


def _valid_routing(offsets, p) -> torch.Tensor:
    """``offsets`` with the values no window has (an unwritten element) replaced by -1: the
    reference backward would index out of bounds with them (an offset problem reports them)."""
    taps = p.pool_kernel_size[0] * p.pool_kernel_size[1] if p.has_pool else 1
    return torch.where((offsets >= -1) & (offsets < taps), offsets, torch.full_like(offsets, -1))


def _exact_conv_grads(x64, w64, b64, g64, p, offsets, input_grad: bool = True) -> List[Optional[torch.Tensor]]:
    """The float64 gradients along the given offsets (the reference backward); no input
    gradient without ``input_grad``."""
    gx, gw, gb = torch.ops.fusedops.conv_block_backward(_as4d(g64), _as4d(x64), w64, _valid_routing(offsets, p),
                                                        *p[:8], [True, True, b64 is not None], "reference")
    return [gx.view(x64.shape) if input_grad else None, gw, gb if b64 is not None else None]


NAMES = ("grad input", "grad weight", "grad bias")


def run_conv_block(backend, x, w, b, kwargs, pattern="nan", input_grad: bool = True):
    """``(torch's Run, the fused op's Run)`` on the given (already rounded) tensors with a
    fixed random output gradient; the fused op poisoned with ``pattern`` before each kernel.
    Without ``input_grad`` the input needs no gradient (a network's first layer)."""
    p = conv_block_params(tuple(w.shape[-2:]), **kwargs)
    g = torch.randn(oracle.conv_block(x.detach(), w, b, **kwargs).shape, dtype=torch.float64,
                    device=x.device).to(x.dtype)
    theirs = _torch_conv(x, w, b, g, kwargs, p, input_grad)
    return theirs, _fused_conv(backend, x, w, b, g, kwargs, p, pattern, theirs, input_grad), g, p


def check_conv_block(backend: str, x64, w64, b64, kwargs, precision: Precision, layout: str = "nchw",
                     pattern: str = "nan", input_grad: bool = True) -> None:
    """Steps 1-5 of the module doc for ``conv_relu_maxpool2d`` (inputs: float64 tensors on the
    device under test; ``b64`` may be None; ``kwargs`` the op's keyword arguments)."""
    dtype = precision.dtype
    x, w, b = (None if t is None else t.to(dtype) for t in (x64, w64, b64))
    x = LAYOUTS[layout](x)
    x64, w64, b64 = (None if t is None else t.double() for t in (x, w, b))  # the rounded values, exactly
    problems: List[str] = []
    with tf32_flags(precision.tf32):
        theirs, ours, g, p = run_conv_block(backend, x, w, b, kwargs, pattern, input_grad)
        g64 = g.double()
        _check_like(ours.out, theirs.out, x.device)
        problems += offset_problems(ours.saved, x64, w64, b64, p, precision)
        exact_out = oracle.conv_block(x64, w64, b64, **kwargs)
        exact_ours = _exact_conv_grads(x64, w64, b64, g64, p, ours.saved, input_grad)
        if dtype == torch.float64:
            problems += _close_problems(ours, exact_out, exact_ours)
        else:
            exact_theirs = _exact_conv_grads(x64, w64, b64, g64, p, theirs.saved, input_grad)
            errors = _errors(ours, theirs, exact_out, exact_ours, exact_theirs)
            if precision.tf32:
                with tf32_flags(False):
                    xt, wt, gt = (oracle.tf32_operand(t) for t in (x, w, g))
                    emulated = _torch_conv(xt, wt, b, gt, kwargs, p, input_grad)
                exact_emulated = _exact_conv_grads(x64, w64, b64, g64, p, emulated.saved, input_grad)
                errors = _max_torch_error(errors, _errors(ours, emulated, exact_out, exact_ours, exact_emulated))
            problems += oracle.twice_torch_violations(errors)
    assert not problems, f"{backend} {precision.label} {layout}: " + "; ".join(problems)


def run_conv_block_jvp(backend, x, w, b, kwargs, pattern="nan"):
    """``(ours, offsets, tangents)``: the tangent op ``conv_block_jvp`` of ``backend`` at its
    own forward's offsets, along random tangents of the input, weight and bias (given
    tensors already rounded; poisoned before each kernel call)."""
    p = conv_block_params(tuple(w.shape[-2:]), **kwargs)
    x4 = _as4d(x)
    kernels = backends._REGISTRY[backend]  # called directly, as the autograd Functions do
    like = torch.ops.fusedops.conv_block_forward(x4, w, b, *p, "reference")
    _poison(pattern, x.device, *like)
    _, offsets = kernels.conv_block_forward(x4, w, b, p)
    tangents = [torch.randn(t.shape, dtype=torch.float64, device=t.device).to(t.dtype) for t in (x4, w)]
    tangents.append(None if b is None else torch.randn(b.shape, dtype=torch.float64, device=b.device).to(b.dtype))
    _poison(pattern, x.device, like[0])
    ours = kernels.conv_block_jvp(x4, w, offsets, *tangents, p)
    return ours, offsets, tangents


def check_conv_block_jvp(backend: str, x64, w64, b64, kwargs, precision: Precision, layout: str = "nchw",
                         pattern: str = "nan") -> None:
    """The tangent op (double backward, forward-mode AD) against the float64 reference tangent
    at the same offsets: DESIGN.md's rule against the reference backend's torch ops at the
    same precision (float64: equal)."""
    dtype = precision.dtype
    x, w, b = (None if t is None else t.to(dtype) for t in (x64, w64, b64))
    x = LAYOUTS[layout](x)
    p = conv_block_params(tuple(w.shape[-2:]), **kwargs)
    with tf32_flags(precision.tf32):
        ours, offsets, tangents = run_conv_block_jvp(backend, x, w, b, kwargs, pattern)
        routing = _valid_routing(offsets, p)
        invalid = int((routing != offsets).sum())
        offsets = routing
        exact_args = [None if t is None else t.double() for t in (_as4d(x), w, *tangents)]
        exact = torch.ops.fusedops.conv_block_jvp(exact_args[0], exact_args[1], offsets, *exact_args[2:], *p[:8],
                                                  "reference")
        _check_like(ours, exact.to(dtype), x.device)
        if dtype == torch.float64:
            problems = [m.replace("output:", "tangent:", 1) for m in _close_problems(Run(ours, []), exact, [])]
        else:
            theirs = torch.ops.fusedops.conv_block_jvp(_as4d(x), w, offsets, *tangents, *p[:8], "reference")
            torch_error = oracle.max_error(theirs, exact)
            if precision.tf32:
                with tf32_flags(False):
                    tx, tw = (oracle.tf32_operand(t) for t in tangents[:2])
                    emulated = torch.ops.fusedops.conv_block_jvp(oracle.tf32_operand(_as4d(x)), oracle.tf32_operand(w),
                                                                 offsets, tx, tw, tangents[2], *p[:8], "reference")
                torch_error = max(torch_error, oracle.max_error(emulated, exact))
            problems = oracle.twice_torch_violations(
                {"tangent": (oracle.max_error(ours, exact), torch_error, oracle.scale_of(exact), ours.dtype)})
        if invalid:
            problems.append(f"offsets: {invalid} invalid values (unwritten?)")
    assert not problems, f"{backend} {precision.label} {layout}: " + "; ".join(problems)


# --- shared comparison helpers -------------------------------------------------------------------


def _check_like(out, expected, device) -> None:
    """The output has torch's shape and dtype and lies on the inputs' device."""
    if out.shape != expected.shape or out.dtype != expected.dtype or out.device != device:
        raise AssertionError(f"output {tuple(out.shape)} {out.dtype} on {out.device}, expected "
                             f"{tuple(expected.shape)} {expected.dtype} on {device}")


def _errors(ours: Run, theirs: Run, exact_out, exact_ours, exact_theirs) -> Dict[str, tuple]:
    """``name: (our error, torch's error, scale, dtype)`` for the output and every gradient."""
    errors = {"output": (oracle.max_error(ours.out, exact_out), oracle.max_error(theirs.out, exact_out),
                         oracle.scale_of(exact_out), ours.out.dtype)}
    for name, o, t, eo, et in zip(NAMES, ours.grads, theirs.grads, exact_ours, exact_theirs):
        if eo is None:
            assert o is None, f"{name}: a gradient where none was asked for"
            continue
        errors[name] = (oracle.max_error(o, eo), oracle.max_error(t, et), oracle.scale_of(eo), o.dtype)
    return errors


def _max_torch_error(errors, other) -> Dict[str, tuple]:
    return {name: (e[0], max(e[1], other[name][1]), *e[2:]) for name, e in errors.items()}


def _close_problems(ours: Run, exact_out, exact_grads) -> List[str]:
    problems = []
    for name, got, want in [("output", ours.out, exact_out), *zip(NAMES, ours.grads, exact_grads)]:
        if want is None:
            continue
        try:
            torch.testing.assert_close(got, want)
        except AssertionError as exc:
            problems.append(f"{name}: {str(exc).splitlines()[0]} ({oracle.max_error(got, want):.3g} max)")
    return problems


# --- linear --------------------------------------------------------------------------------------


def _torch_linear(x, w, b, g, activation) -> Run:
    xs, ws, bs = _leaves(x, w, b)
    out = oracle.linear(xs, ws, bs, activation=activation)
    grads = oracle.grads(out, [xs, ws, bs], g)
    _, saved = torch.ops.fusedops.linear_forward(x, w, b, activation or "", "reference")
    return Run(out.detach(), grads, saved)


def _fused_linear(backend, x, w, b, g, activation, pattern, like: Run) -> Run:
    device = x.device
    xs, ws, bs = _leaves(x, w, b)
    _poison(pattern, device, like.out, like.saved)
    out = fusedops.linear(xs, ws, bs, activation=activation, backend=backend)
    _poison(pattern, device, *[t for t in like.grads if t is not None])
    grads = oracle.grads(out, [xs, ws, bs], g)
    _poison(pattern, device, like.out, like.saved)
    _, saved = torch.ops.fusedops.linear_forward(x, w, b, activation or "", backend)
    return Run(out.detach(), grads, saved)


def _exact_linear_grads(x64, w64, b64, g64, activation, saved) -> List[Optional[torch.Tensor]]:
    """float64 gradients; for relu along the given mask (the reference backward)."""
    if activation == "relu":
        gx, gw, gb = torch.ops.fusedops.linear_backward(g64, x64, w64, saved, "relu",
                                                        [True, True, b64 is not None], "reference")
        return [gx, gw, gb if b64 is not None else None]
    leaves = _leaves(x64, w64, b64)
    return oracle.grads(oracle.linear(*leaves, activation=activation), leaves, g64)


def run_linear(backend, x, w, b, activation, pattern="nan"):
    """``(torch's Run, the fused op's Run, grad_output)`` (see ``run_conv_block``)."""
    g = torch.randn(*x.shape[:-1], w.shape[0], dtype=torch.float64, device=x.device).to(x.dtype)
    theirs = _torch_linear(x, w, b, g, activation)
    return theirs, _fused_linear(backend, x, w, b, g, activation, pattern, theirs), g


def mask_problems(mask, z64, precision: Precision) -> List[str]:
    """Where the relu mask is not the sign of the exact pre-activation (clear of 0)."""
    if z64.numel() == 0:
        return []
    clear = z64.abs() > precision.tap_tol * oracle.scale_of(z64)
    wrong = clear & (mask.bool() != (z64 > 0))
    count = int(wrong.sum())
    return [f"relu mask: {count} of {mask.numel()} bits differ from the sign of z"] if count else []


def check_linear(backend: str, x64, w64, b64, activation: Optional[str], precision: Precision,
                 layout: str = "nchw", pattern: str = "nan") -> None:
    """Steps 1-5 of the module doc for ``linear`` (inputs: float64 tensors on the device under test)."""
    dtype = precision.dtype
    x, w, b = (None if t is None else t.to(dtype) for t in (x64, w64, b64))
    x = LAYOUTS[layout](x) if x.dim() >= 2 else x
    x64, w64, b64 = (None if t is None else t.double() for t in (x, w, b))
    problems: List[str] = []
    with tf32_flags(precision.tf32):
        theirs, ours, g = run_linear(backend, x, w, b, activation, pattern)
        g64 = g.double()
        _check_like(ours.out, theirs.out, x.device)
        z64 = F.linear(x64, w64, b64)
        if activation == "relu":
            problems += mask_problems(ours.saved, z64, precision)
        exact_out = oracle.linear(x64, w64, b64, activation=activation)
        exact_ours = _exact_linear_grads(x64, w64, b64, g64, activation, ours.saved)
        if dtype == torch.float64:
            problems += _close_problems(ours, exact_out, exact_ours)
        else:
            exact_theirs = _exact_linear_grads(x64, w64, b64, g64, activation, theirs.saved)
            errors = _errors(ours, theirs, exact_out, exact_ours, exact_theirs)
            if activation not in (None, "relu"):  # the saved pre-activation
                errors["saved z"] = (oracle.max_error(ours.saved, z64), oracle.max_error(theirs.saved, z64),
                                     oracle.scale_of(z64))
            if precision.tf32:
                with tf32_flags(False):
                    xt, wt, gt = (oracle.tf32_operand(t) for t in (x, w, g))
                    emulated = _torch_linear(xt, wt, b, gt, activation)
                exact_emulated = _exact_linear_grads(x64, w64, b64, g64, activation, emulated.saved)
                other = _errors(ours, emulated, exact_out, exact_ours, exact_emulated)
                if "saved z" in errors:
                    other["saved z"] = (0.0, oracle.max_error(emulated.saved, z64), 0.0)
                errors = _max_torch_error(errors, other)
            problems += oracle.twice_torch_violations(errors)
    assert not problems, f"{backend} {precision.label} {activation}: " + "; ".join(problems)


def random_conv_inputs(shape, out_channels, kernel, kwargs, device="cuda", scale_weight=False):
    """float64 ``(x, w, b, kwargs)`` for a case ``(input shape, out_channels, kernel, kwargs)``
    (kwargs may hold ``bias=False``); ``scale_weight`` divides the weight by sqrt(fan-in), so
    that deep reductions stay in the range of every dtype."""
    kwargs = dict(kwargs)
    bias = kwargs.pop("bias", True)
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    groups = kwargs.get("groups", 1)
    x = torch.randn(shape, dtype=torch.float64, device=device)
    w = torch.randn(out_channels, shape[-3] // groups, kh, kw, dtype=torch.float64, device=device)
    if scale_weight:
        w /= (w[0].numel()) ** 0.5
    b = torch.randn(out_channels, dtype=torch.float64, device=device) if bias else None
    return x, w, b, kwargs


def params_of(shape: Sequence[int], kernel, kwargs):
    """The normalised ConvBlockParams of a case."""
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    return conv_block_params((kh, kw), **{k: v for k, v in kwargs.items() if k != "bias"})
