"""Torch compositions the fused ops must equal, and comparison helpers."""

import torch
import torch.nn.functional as F

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
