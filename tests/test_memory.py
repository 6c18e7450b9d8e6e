"""What the fused block saves for backward, measured with saved_tensors_hooks."""

import torch
from torch import nn

import fusedops
from benchmarks.measure import saved_bytes


def _saved_bytes(module, x):
    """Bytes saved for backward beyond the input and the parameters (the benchmark's measure), and the output."""
    return saved_bytes(module, x), module(x)


def test_fused_block_saves_10x_less_than_eager():
    torch.manual_seed(0)
    eager = nn.Sequential(nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
    fused = fusedops.FusedConvBlock.from_modules(*eager)
    x = torch.randn(8, 32, 16, 16, requires_grad=True)
    eager_bytes, ref = _saved_bytes(eager, x)
    fused_bytes, out = _saved_bytes(fused, x)
    torch.testing.assert_close(out, ref)
    pooled = 8 * 64 * 8 * 8
    assert fused_bytes == pooled  # one int8 offset per pooled output, nothing else
    assert eager_bytes >= 10 * fused_bytes, (eager_bytes, fused_bytes)


def test_offsets_widen_only_for_large_windows():
    w = torch.randn(2, 1, 1, 1, requires_grad=True)
    for size, dtype in ((11, torch.int8), (12, torch.int16)):
        x = torch.randn(1, 1, size, size)
        found = []

        def pack(t, found=found):
            found.append(t.dtype)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fusedops.conv_relu_maxpool2d(x, w, pool_kernel_size=size)
        assert dtype in found, (size, found)


def test_no_grad_saves_nothing():
    block = fusedops.FusedConvBlock(3, 4, 3)
    lin = fusedops.FusedLinear(4, 2, activation="gelu")
    packed = []
    with torch.no_grad(), torch.autograd.graph.saved_tensors_hooks(lambda t: packed.append(t) or t, lambda t: t):
        block(torch.randn(1, 3, 8, 8))
        lin(torch.randn(3, 4))
    assert packed == []


def test_linear_saves_mask_for_relu_and_nothing_for_identity():
    x = torch.randn(16, 32, requires_grad=True)
    for activation, extra in ((None, 0), ("relu", 16 * 8), ("gelu", 16 * 8 * 4)):
        lin = fusedops.FusedLinear(32, 8, activation=activation)
        saved, _ = _saved_bytes(lin, x)
        assert saved == extra, (activation, saved)
