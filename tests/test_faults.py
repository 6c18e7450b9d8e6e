"""Faults in use: an error raised inside the native ops (bad input reaching them directly,
past the Python checks) leaks no memory and leaves nothing behind: the next call gives the
result it gave before, and a module that raised keeps working."""

import os

import pytest
import torch

import fusedops
from fusedops import _native
from fusedops.functional import conv_block_params

pytestmark = pytest.mark.skipif(not _native.loaded(), reason=f"fusedops._C not built: {_native.LOAD_ERROR}")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _conv_args(x, w, b=None, **kwargs):
    return (x, w, b, *conv_block_params(tuple(w.shape[-2:]), **kwargs))


def _bad_native_calls():
    """Native calls that fail inside the C++ op, some after it allocated its outputs' sizes."""
    x, w = torch.randn(4, 8, 32, 32), torch.randn(16, 8, 3, 3)
    p = conv_block_params((3, 3), padding=1)
    out, offsets = torch.ops.fusedops.native_conv_block_forward(x, w, None, *p)
    g = torch.randn_like(out)
    return [
        ("forward bias shape", ValueError,
         lambda: torch.ops.fusedops.native_conv_block_forward(*_conv_args(x, w, torch.randn(3), padding=1))),
        ("forward bad geometry", ValueError,
         lambda: torch.ops.fusedops.native_conv_block_forward(*_conv_args(torch.randn(4, 8, 2, 2), w))),
        ("backward offsets shape", ValueError,
         lambda: torch.ops.fusedops.native_conv_block_backward(g, x, w, offsets[:1], *p[:8], [True, True, True])),
        ("backward offsets dtype", TypeError,
         lambda: torch.ops.fusedops.native_conv_block_backward(g, x, w, offsets.float(), *p[:8], [True] * 3)),
        ("backward grad shape", ValueError,
         lambda: torch.ops.fusedops.native_conv_block_backward(g[:, :1], x, w, offsets, *p[:8], [True] * 3)),
        ("linear features", ValueError,
         lambda: torch.ops.fusedops.native_linear_forward(torch.randn(64, 100), torch.randn(50, 99), None, "relu")),
    ]


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads the resident set from /proc (Linux)")
def test_errors_inside_the_native_ops_leak_nothing_and_the_next_call_is_right():
    x, w, b = torch.randn(4, 8, 32, 32), torch.randn(16, 8, 3, 3), torch.randn(16)
    good = _conv_args(x, w, b, padding=1)
    before = torch.ops.fusedops.native_conv_block_forward(*good)
    calls = _bad_native_calls()
    for _, exc, call in calls:  # warm-up: allocator pools, lazily loaded code
        with pytest.raises(exc):
            call()
    rss = _rss_bytes()
    for _ in range(300):
        for _, exc, call in calls:
            with pytest.raises(exc):
                call()
    grown = _rss_bytes() - rss
    # 1,800 failed calls: a leak of one pooled output (4 x 16 x 16 x 16 float32, 64 KB) per call would be 115 MB
    assert grown < 16 * 2**20, f"resident set grew {grown / 2**20:.1f} MB over 1,800 failed native calls"
    after = torch.ops.fusedops.native_conv_block_forward(*good)
    assert all(torch.equal(a, b_) for a, b_ in zip(before, after))


@pytest.mark.parametrize("backend", ["cpp", "reference"])
def test_a_module_that_raised_keeps_working(backend):
    torch.manual_seed(0)
    block = fusedops.FusedConvBlock(3, 8, 3, padding=1, backend=backend)
    linear = fusedops.FusedLinear(12, 5, activation="relu", backend="reference" if backend == "cpp" else backend)
    x, v = torch.randn(2, 3, 16, 16, requires_grad=True), torch.randn(7, 12)
    y0, z0 = block(x), linear(v)
    y0.sum().backward()
    g0 = block.weight.grad.clone()
    for bad_x, bad_v in [(torch.randn(2, 4, 16, 16), torch.randn(7, 11)), (torch.randn(2, 3, 1, 1), torch.randn(7)),
                         (torch.randn(2, 3, 16, 16).double(), torch.randn(7, 12).int())]:
        with pytest.raises(RuntimeError):
            block(bad_x)
        with pytest.raises(RuntimeError):
            linear(bad_v)
    block.weight.grad = None
    y1 = block(x)
    y1.sum().backward()
    assert torch.equal(y1, y0) and torch.equal(linear(v), z0)
    assert torch.equal(block.weight.grad, g0)
