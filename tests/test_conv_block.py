"""conv_relu_maxpool2d: outputs and every gradient against the float64 torch composition."""

import pytest
import torch
import torch.nn.functional as F

import fusedops
from tests import oracle
from tests.conftest import skip_if_interpreted_bfloat16, skip_unless_backend_runs

# (name, input shape (N, C, H, W) or (C, H, W), out_channels, kernel, op kwargs)
CASES = [
    ("basic_2x2_pool", (2, 3, 8, 8), 4, 3, {}),
    ("odd_sizes_pad1", (3, 5, 11, 13), 7, 3, dict(padding=1)),
    ("stride2", (2, 3, 13, 11), 5, 3, dict(stride=2, padding=1)),
    ("stride_pair", (2, 2, 12, 15), 3, (3, 2), dict(stride=(1, 2), padding=(2, 1))),
    ("dilation", (2, 3, 14, 13), 4, 3, dict(dilation=2, padding=2)),
    ("dilation_pair", (1, 2, 15, 14), 3, 3, dict(dilation=(2, 1))),
    ("groups2", (2, 4, 9, 10), 6, 3, dict(groups=2, padding=1)),
    ("depthwise", (2, 5, 10, 9), 5, 3, dict(groups=5, padding=1)),
    ("no_bias", (2, 3, 8, 9), 4, 3, dict(bias=False)),
    ("same_odd_kernel", (2, 3, 9, 10), 4, 3, dict(padding="same")),
    ("same_even_kernel", (2, 3, 9, 10), 4, (2, 4), dict(padding="same")),
    ("same_dilated", (2, 3, 11, 10), 4, 2, dict(padding="same", dilation=(3, 2))),
    ("valid", (2, 3, 9, 10), 4, 3, dict(padding="valid")),
    ("kernel_1x1", (2, 6, 7, 9), 5, 1, {}),
    ("kernel_5x5_pad2", (2, 3, 12, 11), 4, 5, dict(padding=2)),
    ("no_pool", (2, 3, 7, 9), 4, 3, dict(pool_kernel_size=None, padding=1)),
    ("no_pool_stride", (2, 3, 9, 9), 4, 3, dict(pool_kernel_size=None, stride=2)),
    ("pool3_stride2_overlap", (2, 3, 13, 13), 4, 3, dict(padding=1, pool_kernel_size=3, pool_stride=2)),
    ("pool3_s1_overlap", (2, 2, 9, 8), 3, 3, dict(pool_kernel_size=3, pool_stride=1)),
    ("pool_rect", (2, 3, 12, 15), 4, 3, dict(pool_kernel_size=(2, 3), pool_stride=(1, 2))),
    ("pool_padding", (2, 3, 10, 9), 4, 3, dict(pool_kernel_size=3, pool_stride=2, pool_padding=1)),
    ("pool_dilation", (2, 3, 14, 13), 4, 3, dict(pool_kernel_size=2, pool_dilation=2, pool_stride=1)),
    ("pool_ceil", (2, 3, 12, 11), 4, 3, dict(pool_kernel_size=2, pool_ceil_mode=True)),
    ("pool_ceil_pad", (2, 3, 12, 12), 4, 3,
     dict(pool_kernel_size=3, pool_stride=2, pool_padding=1, pool_ceil_mode=True)),
    ("resnet_stem_like", (1, 3, 23, 21), 8, 7,
     dict(stride=2, padding=3, pool_kernel_size=3, pool_stride=2, pool_padding=1)),
    ("pool_large_window_int16", (1, 2, 14, 14), 3, 1, dict(pool_kernel_size=12, pool_stride=2)),
    # 3x3 stride-1 convs with >= 8 channels per group: the cpp backend's Winograd path
    ("winograd_odd_sizes", (3, 8, 9, 11), 8, 3, dict(padding=1)),
    ("winograd_pad_pair_overlap", (2, 8, 10, 7), 16, 3, dict(padding=(2, 0), pool_kernel_size=3, pool_stride=2)),
    ("winograd_pad3_no_pool", (2, 8, 6, 5), 8, 3, dict(padding=3, pool_kernel_size=None)),
    ("winograd_groups_same_ceil", (2, 16, 9, 8), 16, 3, dict(groups=2, padding="same", pool_ceil_mode=True)),
    ("winograd_valid_9_images", (9, 8, 12, 6), 8, 3, dict(padding="valid")),
    ("winograd_two_tile_batches", (1, 8, 26, 22), 8, 3, dict(padding=1)),  # 143 tiles: 2 GEMM batches
    ("unbatched", (3, 9, 8), 4, 3, dict(padding=1)),
    ("batch0", (0, 3, 8, 8), 4, 3, {}),
]


def _make(shape, out_channels, kernel, kwargs, dtype=torch.float64):
    kwargs = dict(kwargs)
    bias = kwargs.pop("bias", True)
    groups = kwargs.get("groups", 1)
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    x = torch.randn(shape, dtype=dtype)
    w = torch.randn(out_channels, shape[-3] // groups, kh, kw, dtype=dtype)
    b = torch.randn(out_channels, dtype=dtype) if bias else None
    return x, w, b, kwargs


def _check(x, w, b, kwargs, backend, x_view=lambda t: t):
    """Forward and all gradients of the fused op equal the torch composition (float64)."""
    xs, ws = oracle.leaf(x), oracle.leaf(w)
    bs = oracle.leaf(b) if b is not None else None
    xr, wr = oracle.leaf(x), oracle.leaf(w)
    br = oracle.leaf(b) if b is not None else None
    out = fusedops.conv_relu_maxpool2d(x_view(xs), ws, bs, backend=backend, **kwargs)
    ref = oracle.conv_block(x_view(xr), wr, br, **kwargs)
    torch.testing.assert_close(out, ref)
    assert out.dtype == ref.dtype and out.shape == ref.shape
    grad_output = torch.randn_like(ref)
    got = oracle.grads(out, [xs, ws, bs], grad_output)
    want = oracle.grads(ref, [xr, wr, br], grad_output)
    for name, g, e in zip(("input", "weight", "bias"), got, want):
        if e is None:
            assert g is None
            continue
        torch.testing.assert_close(g, e, msg=lambda m, name=name: f"grad of {name}: {m}")


@pytest.mark.parametrize("name,shape,cout,kernel,kwargs", CASES, ids=[c[0] for c in CASES])
def test_matches_torch(backend, name, shape, cout, kernel, kwargs):
    x, w, b, kwargs = _make(shape, cout, kernel, kwargs)
    _check(x, w, b, kwargs, backend)


def test_channels_last_input(backend):
    x, w, b, _ = _make((2, 5, 10, 11), 6, 3, {})
    x = x.contiguous(memory_format=torch.channels_last)
    _check(x, w, b, dict(padding=1), backend)


@pytest.mark.parametrize("pool", [2, None])
def test_channels_last_input_keeps_its_layout_and_offsets(backend, pool):
    # The layout in which each backend computes its offsets (the reference: its comparison in
    # memory order) must not change them: ReLU-off positions and window taps as for NCHW input.
    x, w, b, _ = _make((2, 5, 10, 11), 6, 3, {})
    p = fusedops.functional.conv_block_params(3, padding=1, pool_kernel_size=pool)
    want_y, want_o = torch.ops.fusedops.conv_block_forward(x, w, b, *p, backend)
    cl = x.contiguous(memory_format=torch.channels_last)
    y, o = torch.ops.fusedops.conv_block_forward(cl, w, b, *p, backend)
    assert y.is_contiguous(memory_format=torch.channels_last) and o.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(o, want_o) and (o == -1).any() and (o != -1).any()
    torch.testing.assert_close(y, want_y)
    if pool is None:
        _check(cl, w, b, dict(padding=1, pool_kernel_size=None), backend)


def test_non_contiguous_input(backend):
    x, w, b, _ = _make((2, 3, 10, 22), 4, 3, {})
    _check(x, w, b, dict(padding=1), backend, x_view=lambda t: t[..., ::2])


def test_ties_go_to_first_element(backend):
    # Equal maxima inside each window: the gradient must go to the first one (row-major),
    # as torch's max_pool2d picks it. A 1x1 identity conv keeps the input values.
    x = torch.tensor([[[[1.0, 3.0, 2.0, 2.0], [3.0, 3.0, 2.0, 2.0]]]], dtype=torch.float64)
    w = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    _check(x, w, None, {}, backend)
    xs = oracle.leaf(x)
    fusedops.conv_relu_maxpool2d(xs, w, backend=backend).sum().backward()
    expected = torch.tensor([[[[0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]]]], dtype=torch.float64)
    torch.testing.assert_close(xs.grad, expected)


def test_nan_propagates(backend):
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    x[0, 0, 1, 1] = float("nan")
    x[0, 1, 4, 5] = float("nan")
    w = torch.randn(3, 2, 1, 1, dtype=torch.float64)
    out = fusedops.conv_relu_maxpool2d(x, w, backend=backend)
    ref = oracle.conv_block(x, w)
    torch.testing.assert_close(out, ref, equal_nan=True)
    assert out.isnan().sum() == ref.isnan().sum() > 0


def test_nan_conv_output_passes_its_gradient_without_a_pool(backend):
    """A NaN conv output has its ReLU on (torch's relu keeps NaN and its backward passes the
    gradient there): a 1x1 filter keeps the NaN at one position, where every output channel
    is NaN, and the input gradient there is the filter's column sums, not 0."""
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    x[0, 0, 2, 2] = float("nan")
    w = torch.randn(3, 2, 1, 1, dtype=torch.float64)
    xs, xr = oracle.leaf(x), oracle.leaf(x)
    out = fusedops.conv_relu_maxpool2d(xs, w, pool_kernel_size=None, backend=backend)
    ref = torch.relu(torch.nn.functional.conv2d(xr, w))
    torch.testing.assert_close(out, ref, equal_nan=True)
    out.backward(torch.ones_like(out))
    ref.backward(torch.ones_like(ref))
    torch.testing.assert_close(xs.grad, xr.grad, equal_nan=True)
    assert (xr.grad[0, :, 2, 2] != 0).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_ties_and_nan_with_a_3x3_identity_filter(backend, dtype):
    """Same rules where the cpp backend pools on its Winograd tiles (3x3, 8 channels, pool 2):
    an identity filter keeps the small integer inputs exact, so windows hold many ties."""
    x = torch.randint(0, 3, (2, 8, 6, 8), dtype=torch.int64).to(dtype)
    w = torch.zeros(8, 8, 3, 3, dtype=dtype)
    w[torch.arange(8), torch.arange(8), 1, 1] = 1.0
    _check(x, w, None, dict(padding=1), backend)
    x[0, 3, 2, 5] = float("nan")
    out = fusedops.conv_relu_maxpool2d(x, w, padding=1, backend=backend)
    ref = oracle.conv_block(x, w, padding=1)
    torch.testing.assert_close(out, ref, equal_nan=True)
    assert out.isnan().sum() == ref.isnan().sum() > 0


def test_pool_window_wholly_in_padding(backend):
    # Conv output 2x2; pool kernel 2 with dilation 3 and padding 1 puts the one window's
    # taps at rows/cols -1 and 2: all padding. torch gives -inf there.
    x, w, b, _ = _make((2, 3, 4, 4), 4, 3, {})
    kwargs = dict(pool_kernel_size=2, pool_stride=1, pool_padding=1, pool_dilation=3)
    xs, ws, bs = oracle.leaf(x), oracle.leaf(w), oracle.leaf(b)
    out = fusedops.conv_relu_maxpool2d(xs, ws, bs, backend=backend, **kwargs)
    ref = oracle.conv_block(x, w, b, **kwargs)
    torch.testing.assert_close(out, ref)
    assert torch.isneginf(out).all()
    # torch's own max_pool2d backward writes out of bounds here, so the oracle for the
    # gradient pads explicitly with -inf: a window of padding then passes no gradient on.
    out.backward(torch.randn_like(out))
    for t in (xs, ws, bs):
        torch.testing.assert_close(t.grad, torch.zeros_like(t))


def test_explicit_minus_inf_padding_oracle_matches_overlapping_pool(backend):
    # Independent oracle of the un-pool: pad the ReLU output with -inf instead of pool padding.
    x, w, b, _ = _make((2, 3, 9, 9), 4, 3, {})
    kwargs = dict(padding=1, pool_kernel_size=3, pool_stride=2, pool_padding=1)
    xs, xr = oracle.leaf(x), oracle.leaf(x)
    out = fusedops.conv_relu_maxpool2d(xs, w, b, backend=backend, **kwargs)
    y = F.pad(F.relu(F.conv2d(xr, w, b, padding=1)), (1, 1, 1, 1), value=float("-inf"))
    ref = F.max_pool2d(y, 3, 2)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(ref)
    torch.testing.assert_close(oracle.grads(out, [xs], g)[0], oracle.grads(ref, [xr], g)[0])


@pytest.mark.parametrize("needs", [(True, False, False), (False, True, False), (False, False, True)])
def test_only_requested_gradients(backend, needs):
    x, w, b, _ = _make((2, 3, 8, 8), 4, 3, {})
    xs, ws, bs = (oracle.leaf(t, n) for t, n in zip((x, w, b), needs))
    out = fusedops.conv_relu_maxpool2d(xs, ws, bs, padding=1, backend=backend)
    out.sum().backward()
    ref_inputs = [oracle.leaf(t, n) for t, n in zip((x, w, b), needs)]
    oracle.conv_block(*ref_inputs, padding=1).sum().backward()
    for t, r, n in zip((xs, ws, bs), ref_inputs, needs):
        assert (t.grad is not None) == n
        if n:
            torch.testing.assert_close(t.grad, r.grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_error_at_most_twice_torch(backend, dtype):
    """Error vs the float64 oracle is at most 2x torch's own error at the same precision."""
    x, w, b, _ = _make((4, 8, 12, 12), 16, 3, {})
    kwargs = dict(padding=1)
    exact = oracle.conv_block(x, w, b, **kwargs)
    low = [t.to(dtype) for t in (x, w, b)]
    skip_unless_backend_runs(backend, *low)
    skip_if_interpreted_bfloat16(backend, dtype)
    ours = fusedops.conv_relu_maxpool2d(*low, backend=backend, **kwargs).double()
    theirs = oracle.conv_block(*low, **kwargs).double()
    torch_err = (theirs - exact).abs().max().item()
    our_err = (ours - exact).abs().max().item()
    assert our_err <= 2 * torch_err + 1e-6 * exact.abs().max().item()
