"""Torch compositions the fused ops must equal, and comparison helpers."""

import torch
import torch.nn.functional as F

import fusedops

ACTIVATIONS = {
    None: lambda z: z,
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_tanh": lambda z: F.gelu(z, approximate="tanh"),
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


def assert_gpu_error_at_most_twice_torch(backend, dtype, in_channels=32, tf32=False):
    """DESIGN.md's rule on a GPU: the error of ``backend`` against the float64 oracle, for the
    conv block (Cin -> 64, 28x28) and a GELU linear layer, is at most 2x torch's own error at
    ``dtype`` (with torch's TF32 flags set to ``tf32`` for both)."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        x = torch.randn(8, in_channels, 28, 28, dtype=torch.float64, device="cuda")
        w = torch.randn(64, in_channels, 3, 3, dtype=torch.float64, device="cuda") / in_channels**0.5
        b = torch.randn(64, dtype=torch.float64, device="cuda")
        exact = conv_block(x, w, b, padding=1)
        low = [t.to(dtype) for t in (x, w, b)]
        ours = fusedops.conv_relu_maxpool2d(*low, padding=1, backend=backend).double()
        theirs = conv_block(*low, padding=1).double()
        assert (ours - exact).abs().max() <= 2 * (theirs - exact).abs().max() + 1e-6
        lx = torch.randn(300, 512, dtype=torch.float64, device="cuda")
        lw = torch.randn(256, 512, dtype=torch.float64, device="cuda") / 20
        exact = linear(lx, lw, activation="gelu")
        ours = fusedops.linear(lx.to(dtype), lw.to(dtype), activation="gelu", backend=backend).double()
        theirs = linear(lx.to(dtype), lw.to(dtype), activation="gelu").double()
        assert (ours - exact).abs().max() <= 2 * (theirs - exact).abs().max() + 1e-6
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old
