"""The reference's window offsets against their definition, window by window.

The reference turns ``max_pool2d``'s flat indices into offsets through per-geometry tables
(``fusedops/ops/conv_block.py``, ``_pool_tables``); a table keyed by a tap's distance from its
window's origin names two taps at once when a window row is wider than the conv plane (a
pool with padding or ``ceil_mode`` over a plane 1-2 elements wide). Checked here on every
small geometry against a scan of each window: the row-major position of its first maximum
of ``relu(conv)`` among the taps inside the plane, -1 where that maximum is <= 0.
"""

import itertools

import pytest
import torch

from fusedops.functional import conv_block_params
from fusedops.ops.conv_block import reference_backward, reference_forward


def _scanned_offsets(plane: torch.Tensor, p) -> torch.Tensor:
    """Offsets of one (H, W) conv plane, window by window."""
    (pkh, pkw), (sh, sw), (pt, pl), (dh, dw) = p.pool_kernel_size, p.pool_stride, p.pool_padding, p.pool_dilation
    h, w = plane.shape
    out_h, out_w = p.output_hw((h, w), (1, 1))
    act = plane.clamp_min(0)
    offsets = torch.full((out_h, out_w), -1, dtype=torch.int64)
    for ph, pw in itertools.product(range(out_h), range(out_w)):
        best, where = None, -1
        for kh, kw in itertools.product(range(pkh), range(pkw)):
            r, c = ph * sh - pt + kh * dh, pw * sw - pl + kw * dw
            if 0 <= r < h and 0 <= c < w and (best is None or act[r, c] > best):
                best, where = act[r, c], kh * pkw + kw
        if best is not None and best > 0:
            offsets[ph, pw] = where
    return offsets


def _params(k, s, pad, d, ceil):
    return conv_block_params(1, pool_kernel_size=k, pool_stride=s, pool_padding=pad, pool_dilation=d,
                             pool_ceil_mode=ceil)


def _has_output(h, w, *pool) -> bool:
    try:
        return min(_params(*pool).output_hw((h, w), (1, 1))) >= 1
    except ValueError:  # a window larger than the padded plane
        return False


# Every small geometry with a pooled output: planes 1-5 wide and high, windows 2-3, strides
# 1-2, padding 0-1, dilation 1-2, floor and ceil.
GEOMETRIES = [
    (h, w, *pool)
    for h, w in itertools.product((1, 2, 3, 5), (1, 2, 3, 5))
    for pool in itertools.product((2, 3), (1, 2), (0, 1), (1, 2), (False, True))
    if _has_output(h, w, *pool)
]


@pytest.mark.parametrize("h,w,k,s,pad,d,ceil", GEOMETRIES)
def test_reference_offsets_match_a_scan_of_each_window(h, w, k, s, pad, d, ceil):
    p = _params(k, s, pad, d, ceil)
    x = torch.randn(2, 3, h, w, dtype=torch.float64)
    weight = torch.eye(3, dtype=torch.float64).view(3, 3, 1, 1)  # conv output = input
    out, offsets = reference_forward(x, weight, None, p)
    want = torch.stack([torch.stack([_scanned_offsets(x[n, c], p) for c in range(3)]) for n in range(2)])
    assert torch.equal(offsets.long(), want)
    # and back: each window's gradient lands on the tap its offset names (torch's own
    # max_pool2d backward is no oracle here: it writes out of bounds for windows wholly in padding)
    grad = torch.randn_like(out)
    grad_input = reference_backward(grad, x, weight, offsets, p, [True, False, False])[0]
    torch.testing.assert_close(grad_input, _scattered(grad, want, (h, w), p))


def _scattered(grad: torch.Tensor, offsets: torch.Tensor, hw, p) -> torch.Tensor:
    """``dc``: each window's ``grad`` added at the tap its offset names."""
    (_, pkw), (sh, sw), (pt, pl), (dh, dw) = p.pool_kernel_size, p.pool_stride, p.pool_padding, p.pool_dilation
    out = grad.new_zeros(*grad.shape[:2], *hw)
    for n, c, ph, pw in itertools.product(*map(range, grad.shape)):
        o = int(offsets[n, c, ph, pw])
        if o >= 0:
            out[n, c, ph * sh - pt + o // pkw * dh, pw * sw - pl + o % pkw * dw] += grad[n, c, ph, pw]
    return out


@pytest.mark.gpu
def test_tables_first_needed_inside_a_cuda_graph_capture_are_not_cached():
    """A capture only records the ops that fill the tables: cached, they would hold memory no
    op has written when an eager call uses them before the graph's first replay."""
    from fusedops.ops import conv_block

    x = torch.randn(2, 3, 8, 8, device="cuda")
    weight = torch.eye(3, device="cuda").view(3, 3, 1, 1)
    p, warm = _params(2, 2, 0, 1, False), _params(2, 1, 0, 1, False)
    conv_block._cached_pool_tables.cache_clear()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        reference_forward(x, weight, None, warm)  # warms cuDNN up, with other tables
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = reference_forward(x, weight, None, p)
    eager = reference_forward(x, weight, None, p)  # before the first replay
    want = torch.stack([torch.stack([_scanned_offsets(x[n, c].cpu(), p) for c in range(3)]) for n in range(2)])
    assert torch.equal(eager[1].long().cpu(), want)
    graph.replay()
    assert torch.equal(captured[1].long().cpu(), want)
