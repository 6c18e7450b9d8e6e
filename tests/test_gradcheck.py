"""torch.autograd.gradcheck in float64 of both ops' hand-written backward passes."""

import pytest
import torch

import fusedops
from tests.conftest import skip_unless_backend_has


def _gradcheck(fn, inputs, backend):
    """Full gradcheck; for Triton on CPU (its interpreter runs a kernel per call, slowly)
    gradcheck's fast mode, which checks random projections of the same Jacobians."""
    fast = backend == "triton" and inputs[0].device.type == "cpu"
    return torch.autograd.gradcheck(fn, inputs, fast_mode=fast)

CONV_SETTINGS = {
    "pool2": dict(padding=1),
    "pool3_overlap": dict(padding=1, pool_kernel_size=3, pool_stride=2, pool_padding=1),
    "no_pool": dict(pool_kernel_size=None),
    "ceil_dilated": dict(pool_kernel_size=2, pool_dilation=2, pool_stride=1, pool_ceil_mode=True),
    "strided_grouped": dict(stride=2, padding=1, groups=2),
    "same_even": dict(padding="same"),
    "winograd": dict(padding=(2, 1)),  # 8 channels: the cpp backend's Winograd path
}


@pytest.mark.parametrize("setting", list(CONV_SETTINGS), ids=str)
def test_conv_block_gradcheck(backend, setting):
    kwargs = CONV_SETTINGS[setting]
    kh = 2 if setting == "same_even" else 3
    c, hw = (8, (5, 6)) if setting == "winograd" else (4, (7, 8))
    x = torch.randn(2, c, *hw, dtype=torch.float64, requires_grad=True)
    w = torch.randn(c, c // kwargs.get("groups", 1), kh, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(c, dtype=torch.float64, requires_grad=True)

    def fn(x, w, b):
        return fusedops.conv_relu_maxpool2d(x, w, b, backend=backend, **kwargs)

    assert _gradcheck(fn, (x, w, b), backend)


@pytest.mark.parametrize("activation", [None, "relu", "gelu", "gelu_tanh", "silu"], ids=str)
def test_linear_gradcheck(backend, activation):
    skip_unless_backend_has(backend, "linear")
    x = torch.randn(3, 4, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True)

    def fn(x, w, b):
        return fusedops.linear(x, w, b, activation=activation, backend=backend)

    assert _gradcheck(fn, (x, w, b), backend)


def test_backward_is_hand_written(backend):
    """The graph holds one fusedops node per fused op (the Python Function, or the hand-written
    C++ node of the native backends), not torch's conv/pool/activation nodes."""
    x = torch.randn(1, 2, 6, 6, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, requires_grad=True)
    out = fusedops.conv_relu_maxpool2d(x, w, backend=backend)
    lin = fusedops.linear(torch.randn(2, 3), torch.randn(4, 3, requires_grad=True), activation="gelu", backend=backend)
    native = fusedops.backends._REGISTRY[backend].native
    for y, function, node in ((out, "ConvReluMaxPool2dFunctionBackward", "FusedConvBlockBackward"),
                              (lin, "LinearFunctionBackward", "FusedLinearBackward")):
        name = y.grad_fn.name()
        assert (name == node if native else type(y.grad_fn).__name__ == function), name
        leaves = [type(f).__name__ for f, _ in y.grad_fn.next_functions if f is not None]
        assert leaves == ["AccumulateGrad"] * (2 if y is out else 1), leaves
