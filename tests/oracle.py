"""Torch compositions the fused ops must equal, and comparison helpers."""

import math

import torch
import torch.nn.functional as F


def _gelu_tanh(z):
    """torch's tanh-approximated GELU; in float64 (the exact reference) as z sigmoid(2u), the same
    function: torch's 0.5 z (1 + tanh(u)) cancels to 0 for z below about -6.5 (1 + tanh(u) under
    float64's resolution), where the value is still ~1e-21 at z = -8 and the kernels, which
    compute sigmoid(2u), get it right."""
    if z.dtype != torch.float64:
        return F.gelu(z, approximate="tanh")
    return z * torch.sigmoid(2.0 * math.sqrt(2.0 / math.pi) * (z + 0.044715 * z * z * z))


ACTIVATIONS = {
    None: lambda z: z,
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_tanh": _gelu_tanh,
    "silu": F.silu,
}


def conv_block(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, *, pool_kernel_size=2,
               pool_stride=None, pool_padding=0, pool_dilation=1, pool_ceil_mode=False):
    """``F.max_pool2d(F.relu(F.conv2d(...)))`` exactly as API.md defines the op."""
    y = F.relu(F.conv2d(x, w, b, stride, padding, dilation, groups))
    if pool_kernel_size is None:
        return y
    return F.max_pool2d(y, pool_kernel_size, pool_stride, pool_padding, pool_dilation, pool_ceil_mode)


def linear(x, w, b=None, *, activation=None):
    """``act(F.linear(x, w, b))``."""
    return ACTIVATIONS[activation](F.linear(x, w, b))


def grads(out, inputs, grad_output):
    """Gradients of ``out`` w.r.t. the tensors of ``inputs`` that require grad (None otherwise)."""
    needed = [t for t in inputs if t is not None and t.requires_grad]
    got = iter(torch.autograd.grad(out, needed, grad_output, allow_unused=True))
    return [next(got) if t is not None and t.requires_grad else None for t in inputs]


def leaf(t, requires_grad=True):
    """A detached copy of ``t`` (same strides) that is a leaf requiring grad."""
    return t.detach().clone(memory_format=torch.preserve_format).requires_grad_(requires_grad)


def max_error(got, want) -> float:
    """``max |got - want|`` in float64 over the elements (0 for empty tensors). Equal values
    count 0 (so do equal infinities); a NaN, or infinities that differ, count ``inf``: an
    element a kernel left unwritten (NaN-poisoned) is an infinite error."""
    assert got.shape == want.shape, f"shape {tuple(got.shape)} != {tuple(want.shape)}"
    if got.numel() == 0:
        return 0.0
    got, want = got.double(), want.double()
    diff = torch.where(got == want, 0.0, (got - want).abs())
    return torch.nan_to_num(diff, nan=float("inf"), posinf=float("inf")).max().item()


def scale_of(t) -> float:
    """Largest finite ``|t|`` (1 where there is none): the size the error floor is relative to."""
    finite = t[torch.isfinite(t)] if t.numel() else t
    return max(finite.abs().max().item(), 1e-30) if finite.numel() else 1.0


def twice_torch_violation(name, our_error, torch_error, scale, dtype=torch.float32):
    """DESIGN.md's rule for one output or gradient: the error of ours against the
    float64 oracle is at most 2x torch's own error at the same precision, plus a floor: 8
    float32 ulps of the largest value (below that, errors are the accumulation-order noise
    of a float32 reduction, which every dtype accumulates in, and which torch's own order may
    happen to avoid on a small tensor), plus half an ulp of ``dtype`` at the largest value
    (the rounding of a correctly rounded result: on a tensor of a few elements torch's own
    rounding may happen to land closer). Returns the violation's description, or None."""
    magnitude = 2.0 ** math.floor(math.log2(scale)) if scale > 0 else 0.0
    floor = 8 * torch.finfo(torch.float32).eps * scale + 0.5 * torch.finfo(dtype).eps * magnitude
    if our_error <= 2 * torch_error + floor:
        return None
    if math.isinf(our_error) or math.isnan(our_error):
        return f"{name}: non-finite values where the oracle is finite (an element left unwritten, or a NaN)"
    ratio = our_error / torch_error if torch_error else float("inf")
    return (f"{name}: error {our_error:.3g} > 2 x torch's {torch_error:.3g} + {floor:.2g} "
            f"({ratio:.1f}x torch; largest value {scale:.3g})")


def twice_torch_violations(errors) -> list:
    """The rule applied to every ``name: (our_error, torch_error, scale)`` of ``errors``: the
    description of each violation."""
    return [v for v in (twice_torch_violation(name, *e) for name, e in errors.items()) if v]


def tf32_operand(t):
    """``t`` (float32) with the 13 low mantissa bits cleared: the operand a TF32 tensor-core
    product reads (truncation, the worse of TF32's roundings). Other dtypes unchanged."""
    if t is None or t.dtype != torch.float32:
        return t
    return (t.view(torch.int32) & ~0x1FFF).view(torch.float32)
