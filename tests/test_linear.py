"""linear: outputs and every gradient against the float64 torch composition."""

import pytest
import torch

import fusedops
from tests import oracle
from tests.conftest import skip_if_interpreted_bfloat16, skip_unless_backend_has, skip_unless_backend_runs


@pytest.fixture(autouse=True)
def _backend_has_linear(backend):
    skip_unless_backend_has(backend, "linear")


ACTS = [None, "relu", "gelu", "gelu_tanh", "silu"]
SHAPES = [(5, 7), (3, 4, 7), (2, 3, 2, 7), (7,), (0, 7), (2, 0, 7)]


@pytest.mark.parametrize("activation", ACTS, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_matches_torch(backend, activation, shape, bias):
    x = torch.randn(shape, dtype=torch.float64)
    w = torch.randn(9, 7, dtype=torch.float64)
    b = torch.randn(9, dtype=torch.float64) if bias else None
    xs, ws = oracle.leaf(x), oracle.leaf(w)
    bs = oracle.leaf(b) if bias else None
    xr, wr = oracle.leaf(x), oracle.leaf(w)
    br = oracle.leaf(b) if bias else None
    out = fusedops.linear(xs, ws, bs, activation=activation, backend=backend)
    ref = oracle.linear(xr, wr, br, activation=activation)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(ref)
    for name, got, want in zip(("input", "weight", "bias"), oracle.grads(out, [xs, ws, bs], g),
                               oracle.grads(ref, [xr, wr, br], g)):
        if want is None:
            assert got is None
        else:
            torch.testing.assert_close(got, want, msg=lambda m, name=name: f"grad of {name}: {m}")


def test_non_contiguous_input(backend):
    base = torch.randn(6, 14, dtype=torch.float64)
    w = torch.randn(5, 7, dtype=torch.float64)
    xs, xr = oracle.leaf(base), oracle.leaf(base)
    out = fusedops.linear(xs[:, ::2], w, activation="gelu", backend=backend)
    ref = oracle.linear(xr[:, ::2], w, activation="gelu")
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(ref)
    torch.testing.assert_close(oracle.grads(out, [xs], g)[0], oracle.grads(ref, [xr], g)[0])


def test_relu_nan_and_zero_like_torch(backend):
    x = torch.tensor([[1.0, float("nan")], [0.0, -1.0]], dtype=torch.float64)
    w = torch.eye(2, dtype=torch.float64)
    xs, xr = oracle.leaf(x), oracle.leaf(x)
    out = fusedops.linear(xs, w, activation="relu", backend=backend)
    ref = oracle.linear(xr, w, activation="relu")
    torch.testing.assert_close(out, ref, equal_nan=True)
    g = torch.ones_like(ref)
    torch.testing.assert_close(oracle.grads(out, [xs], g)[0], oracle.grads(ref, [xr], g)[0], equal_nan=True)


@pytest.mark.parametrize("activation", ACTS, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_error_at_most_twice_torch(backend, activation, dtype):
    x = torch.randn(33, 64, dtype=torch.float64)
    w = torch.randn(48, 64, dtype=torch.float64) / 8
    b = torch.randn(48, dtype=torch.float64)
    exact = oracle.linear(x, w, b, activation=activation)
    low = [t.to(dtype) for t in (x, w, b)]
    skip_unless_backend_runs(backend, *low)
    skip_if_interpreted_bfloat16(backend, dtype)
    ours = fusedops.linear(*low, activation=activation, backend=backend).double()
    theirs = oracle.linear(*low, activation=activation).double()
    torch_err = (theirs - exact).abs().max().item()
    assert (ours - exact).abs().max().item() <= 2 * torch_err + 1e-6 * exact.abs().max().item()
