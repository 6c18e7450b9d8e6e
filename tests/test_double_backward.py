"""Second and higher derivatives of both ops on every backend.

A recorded backward runs the backward ops through differentiable Functions
(fusedops/ops/*_autograd.py) whose gradients are built from the backward op and the block's
tangent op ``conv_block_jvp``, so gradients of gradients run the chosen backend's kernels.
Checked here: the tangent op against torch's own forward-mode derivative, gradgradcheck in
float64, a WGAN-GP gradient penalty through fused models equal to eager's, third
derivatives, and no "autograd kernel was not registered" warning.
"""

import copy
import os
import warnings

import pytest
import torch

import fusedops
from fusedops.functional import conv_block_params
from tests import models, oracle
from tests.conftest import skip_unless_backend_has
from tests.test_gradcheck import CONV_SETTINGS


def _interpreted(backend):
    return backend == "triton" and os.environ.get("TRITON_INTERPRET") == "1"


def _conv_inputs(setting, device="cpu"):
    kwargs = CONV_SETTINGS[setting]
    kh = 2 if setting == "same_even" else 3
    c, hw = (8, (5, 6)) if setting == "winograd" else (4, (6, 7))
    make = lambda *s: torch.randn(*s, dtype=torch.float64, device=device, requires_grad=True)  # noqa: E731
    return (make(2, c, *hw), make(c, c // kwargs.get("groups", 1), kh, 3), make(c)), kwargs


def _linear_inputs():
    """float64 ``(x, w, b)`` of a 3-D input's linear layer, all requiring grad."""
    make = lambda *s: torch.randn(*s, dtype=torch.float64, requires_grad=True)  # noqa: E731
    return make(2, 3, 5), make(4, 5), make(4)


@pytest.mark.parametrize("setting", list(CONV_SETTINGS), ids=str)
def test_conv_block_gradgradcheck(backend, setting):
    (x, w, b), kwargs = _conv_inputs(setting)

    def fn(x, w, b):
        return fusedops.conv_relu_maxpool2d(x, w, b, backend=backend, **kwargs)

    # Triton's CPU interpreter runs each kernel slowly: gradgradcheck's fast mode checks
    # random projections of the same Jacobians.
    assert torch.autograd.gradgradcheck(fn, (x, w, b), fast_mode=_interpreted(backend))


@pytest.mark.parametrize("activation", [None, "relu", "gelu", "gelu_tanh", "silu"], ids=str)
def test_linear_gradgradcheck(backend, activation):
    skip_unless_backend_has(backend, "linear")
    x, w, b = _linear_inputs()

    def fn(x, w, b):
        return fusedops.linear(x, w, b, activation=activation, backend=backend)

    assert torch.autograd.gradgradcheck(fn, (x, w, b), fast_mode=_interpreted(backend))


def test_second_derivative_of_activations_matches_autograd():
    from fusedops.ops.linear import activation_derivative, activation_second_derivative

    z = torch.linspace(-6, 6, 241, dtype=torch.float64, requires_grad=True)
    for name in ("gelu", "gelu_tanh", "silu"):
        (want,) = torch.autograd.grad(oracle.ACTIVATIONS[name](z).sum(), z, create_graph=True)
        (want2,) = torch.autograd.grad(want.sum(), z)
        torch.testing.assert_close(activation_derivative(z, name), want)
        torch.testing.assert_close(activation_second_derivative(z, name), want2)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("tangents", ["input", "weight", "bias", "all"])
@pytest.mark.parametrize("setting", ["pool2", "pool3_overlap", "no_pool", "strided_grouped"])
def test_conv_block_jvp_is_torch_forward_mode_derivative(backend, setting, tangents, layout):
    """The tangent op equals torch.func.jvp of F.max_pool2d(F.relu(F.conv2d(...)))."""
    (x, w, b), kwargs = _conv_inputs(setting)
    x, w, b = (t.detach() for t in (x, w, b))
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    tx, tw, tb = torch.randn_like(x), torch.randn_like(w), torch.randn_like(b)
    tx, tw, tb = (t if tangents in (name, "all") else torch.zeros_like(t)
                  for t, name in ((tx, "input"), (tw, "weight"), (tb, "bias")))
    _, want = torch.func.jvp(lambda x, w, b: oracle.conv_block(x, w, b, **kwargs), (x, w, b), (tx, tw, tb))

    p = conv_block_params(tuple(w.shape[-2:]), **kwargs)
    out, offsets = torch.ops.fusedops.conv_block_forward(x, w, b, *p, backend)
    given = [t if tangents in (name, "all") else None for t, name in ((tx, "input"), (tw, "weight"), (tb, "bias"))]
    got = torch.ops.fusedops.conv_block_jvp(x, w, offsets, *given, *p[:8], backend)
    layout = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    assert got.shape == want.shape and got.is_contiguous(memory_format=layout)
    assert out.is_contiguous(memory_format=layout)
    torch.testing.assert_close(got, want)


def _penalty_grads(model, x):
    """WGAN-GP: ``(||d out.sum() / dx|| - 1)^2`` backpropagated to every parameter."""
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(x).sum(), x, create_graph=True)
    penalty = (g.flatten(1).norm(dim=1) - 1).square().mean()
    params = dict(model.named_parameters())
    return dict(zip(params, torch.autograd.grad(penalty, list(params.values()), allow_unused=True)))


def _assert_same_grads(got, want):
    """Equal gradients; a parameter the penalty does not reach (None in eager, e.g. the last
    layer's bias) gets None or zeros, never a value."""
    assert got.keys() == want.keys()
    assert any(g is not None for g in want.values())
    for name in want:
        if want[name] is None:
            assert got[name] is None or torch.count_nonzero(got[name]) == 0, name
        else:
            assert got[name] is not None, f"{name}: no gradient, eager has one"
            torch.testing.assert_close(got[name], want[name], msg=name)


@pytest.mark.parametrize("model_name", ["cifar_attributes", "functional_cnn", "sequential_cnn", "mlp"])
def test_gradient_penalty_through_fused_model_equals_eager(backend, model_name):
    factory, shape = {
        "cifar_attributes": (models.TutorialNet, (2, 3, 32, 32)),
        "functional_cnn": (models.FunctionalCNN, (2, 3, 16, 16)),
        "sequential_cnn": (models.sequential_cnn, (2, 3, 32, 32)),
        "mlp": (models.TutorialMLP, (3, 1, 28, 28)),
    }[model_name]
    if _interpreted(backend) and model_name in ("cifar_attributes", "sequential_cnn"):
        pytest.skip("Triton's CPU interpreter is too slow for this model; functional_cnn covers triton here")
    eager = factory().double()
    fused = fusedops.fuse(copy.deepcopy(eager), backend=backend)
    assert any(isinstance(m, (fusedops.FusedConvBlock, fusedops.FusedLinear)) for m in fused.modules())
    x = torch.randn(shape, dtype=torch.float64)
    want = _penalty_grads(eager, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "an autograd kernel was not registered"
        got = _penalty_grads(fused, x)
    _assert_same_grads(got, want)


def _third_derivative_check(backend, op, device="cpu"):
    """gradgradcheck of the gradient itself: third derivatives (fast mode: random projections)."""
    make = lambda *s: torch.randn(*s, dtype=torch.float64, device=device, requires_grad=True)  # noqa: E731
    if op == "conv_block":
        inputs = (make(1, 2, 5, 6), make(2, 2, 3, 3), make(2))
        block = lambda x, w, b: fusedops.conv_relu_maxpool2d(x, w, b, padding=1, backend=backend)  # noqa: E731
    else:
        inputs = (make(3, 5), make(4, 5), make(4))
        block = lambda x, w, b: fusedops.linear(x, w, b, activation="gelu", backend=backend)  # noqa: E731

    def gradient(x, w, b):
        return torch.autograd.grad(block(x, w, b).square().sum(), (x, w, b), create_graph=True)

    assert torch.autograd.gradgradcheck(gradient, inputs, fast_mode=True)


@pytest.mark.parametrize("op", ["conv_block", "linear_gelu"])
def test_third_derivative(backend, op):
    if _interpreted(backend):
        pytest.skip("Triton's CPU interpreter is too slow for third derivatives; the gpu-marked suite runs them")
    _third_derivative_check(backend, op)


def test_first_order_backward_records_nothing():
    """Without create_graph the backward ops run below autograd: no graph, no grad_fn."""
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    gx, gw = torch.autograd.grad(fusedops.conv_relu_maxpool2d(x, w, padding=1).sum(), (x, w))
    lin_w = torch.randn(5, 3 * 8 * 8, requires_grad=True)
    lx, lw = torch.autograd.grad(fusedops.linear(x.flatten(1), lin_w, activation="gelu").sum(), (x, lin_w))
    assert not any(g.requires_grad or g.grad_fn is not None for g in (gx, gw, lx, lw))


@pytest.mark.gpu
@pytest.mark.parametrize("gpu_backend", ["triton", "cuda"])
@pytest.mark.parametrize("setting", list(CONV_SETTINGS), ids=str)
def test_conv_block_gradgradcheck_gpu(gpu_backend, setting):
    (x, w, b), kwargs = _conv_inputs(setting, device="cuda")

    def fn(x, w, b):
        return fusedops.conv_relu_maxpool2d(x, w, b, backend=gpu_backend, **kwargs)

    assert torch.autograd.gradgradcheck(fn, (x, w, b))


@pytest.mark.gpu
@pytest.mark.parametrize("gpu_backend", ["triton", "cuda"])
@pytest.mark.parametrize("activation", [None, "relu", "gelu", "gelu_tanh", "silu"], ids=str)
def test_linear_gradgradcheck_gpu(gpu_backend, activation):
    make = lambda *s: torch.randn(*s, dtype=torch.float64, device="cuda", requires_grad=True)  # noqa: E731
    x, w, b = make(2, 3, 5), make(4, 5), make(4)

    def fn(x, w, b):
        return fusedops.linear(x, w, b, activation=activation, backend=gpu_backend)

    assert torch.autograd.gradgradcheck(fn, (x, w, b))


@pytest.mark.gpu
@pytest.mark.parametrize("gpu_backend", ["triton", "cuda"])
def test_gradient_penalty_on_gpu_equals_eager(gpu_backend):
    eager = models.TutorialNet().double().cuda()
    fused = fusedops.fuse(copy.deepcopy(eager), backend=gpu_backend)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, device="cuda")
    _assert_same_grads(_penalty_grads(fused, x), _penalty_grads(eager, x))


@pytest.mark.gpu
@pytest.mark.parametrize("gpu_backend", ["triton", "cuda"])
@pytest.mark.parametrize("op", ["conv_block", "linear_gelu"])
def test_third_derivative_gpu(gpu_backend, op):
    _third_derivative_check(gpu_backend, op, device="cuda")
