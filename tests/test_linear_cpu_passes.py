"""The cpp linear's own passes (csrc/cpu/linear.cpp): the forward adds the bias in the
activation's pass (through addmm without an activation), and the backward sums the bias
gradient in the dz pass, over tiles of
columns and row chunks whose number depends on the row count. Each case runs against the torch
composition, with row counts on both sides of the old 32-row in-pass limit and of the pass's
grain, so one tile, several column blocks and several row chunks all run."""

import math

import numpy as np
import pytest
import torch

import fusedops
from fusedops import backends
from tests import oracle

ACTS = [None, "relu", "gelu", "gelu_tanh", "silu"]
# Leading dims of the input: rows 1, 31, 33 (around the old limit), 257 and 5000 (several row
# chunks and, with 300 columns, several tasks of the forward's pass), and 5000 as a 3-D input.
LEADING = [(1,), (31,), (33,), (257,), (5000,), (4, 1250)]
IN_FEATURES, OUT_FEATURES = 8, 300  # two column blocks of 150


@pytest.fixture(autouse=True)
def _needs_cpp():
    if "cpp" not in fusedops.available_backends():
        pytest.fail(f"the cpp backend must be built here: {backends._REGISTRY['cpp'].unavailable_reason()}")
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _tensors(leading, dtype, bias, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*leading, IN_FEATURES, generator=gen, dtype=torch.float64).to(dtype)
    w = (torch.randn(OUT_FEATURES, IN_FEATURES, generator=gen, dtype=torch.float64) / 3).to(dtype)
    b = torch.randn(OUT_FEATURES, generator=gen, dtype=torch.float64).to(dtype) if bias else None
    g = torch.randn(*leading, OUT_FEATURES, generator=gen, dtype=torch.float64).to(dtype)
    return x, w, b, g


def _outputs(fn, x, w, b, g):
    """Output and the gradients of x, w, b (None for no bias) of fn(x, w, b) under dy = g."""
    leaves = [oracle.leaf(t) if t is not None else None for t in (x, w, b)]
    out = fn(*leaves)
    return [out.detach()] + oracle.grads(out, leaves, g)


def _check(got, want, exact, dtype, what):
    names = ("output", "grad of input", "grad of weight", "grad of bias")
    for name, o, r, e in zip(names, got, want, exact):
        if r is None:
            assert o is None, f"{what}: {name}"
            continue
        if dtype == torch.float64:
            torch.testing.assert_close(o, r, msg=lambda m, name=name: f"{what}: {name}: {m}")
        else:  # float32: at most twice torch's own float32 error against the float64 result
            ours, theirs = oracle.max_error(o, e), oracle.max_error(r, e)
            bound = 2 * theirs + 1e-6 * e.abs().max().item()
            assert ours <= bound, f"{what}: {name}: error {ours} against torch's {theirs}"


@pytest.mark.parametrize("activation", ACTS, ids=str)
@pytest.mark.parametrize("leading", LEADING, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_matches_torch_across_row_counts(activation, leading, dtype, bias):
    x, w, b, g = _tensors(leading, dtype, bias)
    got = _outputs(lambda x, w, b: fusedops.linear(x, w, b, activation=activation, backend="cpp"), x, w, b, g)
    want = _outputs(lambda x, w, b: oracle.linear(x, w, b, activation=activation), x, w, b, g)
    wide = [t.double() if t is not None else None for t in (x, w, b, g)]
    exact = _outputs(lambda x, w, b: oracle.linear(x, w, b, activation=activation), *wide)
    _check(got, want, exact, dtype, f"{activation} {leading} {dtype}")


@pytest.mark.parametrize("activation", ["relu", "gelu", "gelu_tanh", "silu"])
@pytest.mark.parametrize("leading", [(31,), (257,), (4, 1250)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_expanded_output_gradient(activation, leading, dtype):
    # The gradient of a sum arrives with all strides 0; the pass reads it through its strides.
    x, w, b, _ = _tensors(leading, dtype, bias=True)
    g = torch.tensor(0.75, dtype=dtype).expand(*leading, OUT_FEATURES)
    y, saved = torch.ops.fusedops.native_linear_forward(x, w, b, activation)
    got = torch.ops.fusedops.native_linear_backward(g, x, w, saved, activation, [True, True, True])
    want = _outputs(lambda x, w, b: oracle.linear(x, w, b, activation=activation), x, w, b, g.contiguous())
    wide = [t.double() for t in (x, w, b, g)]
    exact = _outputs(lambda x, w, b: oracle.linear(x, w, b, activation=activation), *wide)
    _check([y, *got], want, exact, dtype, f"{activation} {leading} {dtype} expanded")


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "silu"])
@pytest.mark.parametrize("rows", [40, 5000], ids=["one task", "several tasks"])
def test_saved_pre_activation_includes_the_bias(activation, rows):
    x, w, b, _ = _tensors((rows,), torch.float64, bias=True)
    _, saved = torch.ops.fusedops.native_linear_forward(x, w, b, activation)
    torch.testing.assert_close(saved, torch.nn.functional.linear(x, w, b))


@pytest.mark.parametrize("activation", ["relu", "silu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("shape", [(33, 300), (5000, 300), (20000, 7)], ids=str)
def test_bias_gradient_does_not_depend_on_the_thread_count(activation, dtype, shape):
    rows, n = shape
    gen = torch.Generator().manual_seed(3)
    x, w = torch.randn(rows, 4, generator=gen, dtype=dtype), torch.randn(n, 4, generator=gen, dtype=dtype)
    g = torch.randn(rows, n, generator=gen, dtype=dtype)
    _, saved = torch.ops.fusedops.native_linear_forward(x, w, None, activation)
    sums = []
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        sums.append(torch.ops.fusedops.native_linear_backward(g, x, w, saved, activation, [False, False, True])[2])
    for s in sums[1:]:
        assert torch.equal(s, sums[0])


def _relu_bias_gradient(g):
    """The bias gradient of a relu layer that is on everywhere: the column sums of g."""
    rows, n = g.shape
    x, w = torch.zeros(rows, 1, dtype=g.dtype), torch.zeros(n, 1, dtype=g.dtype)
    on = torch.ones(rows, n, dtype=torch.bool)
    return torch.ops.fusedops.native_linear_backward(g, x, w, on, "relu", [False, False, True])[2]


@pytest.mark.parametrize("dtype,numpy_dtype", [(torch.float32, np.float32), (torch.float64, np.float64)], ids=str)
def test_bias_gradient_error_does_not_grow_with_rows(dtype, numpy_dtype):
    # 100000 rows of values near 1 (sum near 1e5): a plain row-order sum loses about an ulp of
    # the running sum at each row; the pass's sum must stay within an ulp of the exact sum.
    rows, n = 100000, 16
    gen = torch.Generator().manual_seed(4)
    g = (1 + 0.1 * torch.rand(rows, n, generator=gen, dtype=torch.float64)).to(dtype)
    got = _relu_bias_gradient(g).double()
    exact = torch.tensor([math.fsum(col) for col in g.double().t().tolist()], dtype=torch.float64)
    naive = torch.from_numpy(np.cumsum(g.numpy(), axis=0, dtype=numpy_dtype)[-1]).double()
    ulp = torch.finfo(dtype).eps * exact.abs()  # an ulp of the sum, at most
    assert ((naive - exact).abs() > 10 * ulp).any(), "the case no longer tells a plain sum apart"
    assert ((got - exact).abs() <= ulp).all(), ((got - exact).abs() / ulp).max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("rows", [40, 5000])
def test_bias_gradient_of_non_finite_columns_is_torchs(dtype, rows):
    g = torch.randn(rows, 4, dtype=dtype)
    g[rows // 2, 0] = float("inf")  # inf, not the NaN a compensated sum would make of it
    g[rows // 3, 1] = float("nan")
    g[1, 2], g[rows - 1, 2] = float("inf"), float("-inf")
    got = _relu_bias_gradient(g)
    torch.testing.assert_close(got, g.sum(0), equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("strided", [False, True], ids=["contiguous dy", "strided dy"])
def test_relu_gradient_is_exactly_zero_where_the_mask_is_off(dtype, strided):
    """The dz pass selects by bits: dy where the saved mask is on, exactly 0 where it is off,
    NaN and infinite dy included (as torch's threshold_backward), over rows long enough for the
    vector loop and a tail (37 columns), read contiguously and through a column stride. The
    non-finite values sit where the mask is off only, so every gradient is finite and equal to
    the composition's; one NaN or inf let through would spread over its row and column."""
    rows, n = 70, 37
    gen = torch.Generator().manual_seed(5)
    on = torch.rand(rows, n, generator=gen) < 0.5
    g = torch.randn(rows, n, generator=gen, dtype=dtype)
    bad = torch.tensor([float("nan"), float("inf"), float("-inf")], dtype=dtype)[torch.arange(rows * n) % 3]
    g = torch.where(~on & (torch.rand(rows, n, generator=gen) < 0.3), bad.view(rows, n), g)
    assert not g[~on].isfinite().all() and g[on].isfinite().all()
    if strided:
        g = torch.stack([g, torch.full_like(g, float("nan"))], dim=-1).flatten(1)[:, ::2]
        assert g.stride() == (2 * n, 2)
    x, w = torch.eye(rows, dtype=dtype), torch.randn(n, rows, generator=gen, dtype=dtype)
    gi, gw, gb = torch.ops.fusedops.native_linear_backward(g, x, w, on, "relu", [True, True, True])
    dz = torch.where(on, g, 0)
    assert torch.equal(gw, dz.t())  # dz itself: with x the identity, every product is exact
    for name, got, want in (("input", gi, dz @ w), ("bias", gb, dz.sum(0))):
        assert got.isfinite().all(), name
        torch.testing.assert_close(got, want, msg=lambda m, name=name: f"grad of {name}: {m}")


def test_relu_gradient_takes_any_nonzero_mask_byte_as_on():
    """A bool mask made by viewing bytes (2, 255, ...) as bool: every nonzero byte is on."""
    g = torch.linspace(-1, 1, 4 * 40).view(4, 40)
    raw = torch.tensor([0, 1, 2, 3, 128, 255, 0, 7], dtype=torch.uint8).repeat(20).view(4, 40)
    on = raw.view(torch.bool)
    x = torch.eye(4)
    gw = torch.ops.fusedops.native_linear_backward(g, x, torch.zeros(40, 4), on, "relu", [False, True, False])[1]
    assert torch.equal(gw, torch.where(raw != 0, g, 0).t())
