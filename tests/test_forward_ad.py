"""Forward-mode AD through both ops on every backend, and the backward under compiled autograd.

Forward mode (``torch.autograd.forward_ad``, ``torch.func.jvp`` on the native path): the
output's tangent is the block's tangent op at the forward's offsets, or ``act'(z)`` times the
pre-activation's tangent for the linear layer. Checked against numerical derivatives
(gradcheck's forward-AD mode) and against forward mode through the torch layers the ops
replace, also differentiated once more (reverse over forward). Compiled autograd traces the
native ops' backward nodes and must give eager's gradients.
"""

import warnings

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch import nn

import fusedops
from tests.conftest import skip_unless_backend_has
from tests.test_double_backward import _conv_inputs, _interpreted, _linear_inputs
from tests.test_gradcheck import CONV_SETTINGS

NATIVE_CPU = "cpp"  # the native (C++ autograd) backend on CPU tensors


def _torch_block(block: fusedops.FusedConvBlock) -> nn.Sequential:
    """The Conv2d -> ReLU -> MaxPool2d chain with ``block``'s weights (shared, not copied)."""
    conv = nn.Conv2d(block.in_channels, block.out_channels, block.kernel_size, padding=block.padding,
                     dtype=block.weight.dtype)
    conv.weight, conv.bias = block.weight, block.bias
    return nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(2))


def _torch_linear(layer: fusedops.FusedLinear, activation: str) -> nn.Sequential:
    lin = nn.Linear(layer.in_features, layer.out_features, dtype=layer.weight.dtype)
    lin.weight, lin.bias = layer.weight, layer.bias
    act = {"relu": nn.ReLU(), "gelu": nn.GELU(), "silu": nn.SiLU(), None: nn.Identity()}[activation]
    return nn.Sequential(lin, act)


def _tangent(module, x, tx, params_tangents=None):
    """The output's tangent of ``module`` at ``x`` in direction ``tx`` (and of its parameters)."""
    with fwAD.dual_level():
        saved = {}
        for name, t in (params_tangents or {}).items():
            saved[name] = getattr(module, name)
            # A dual parameter replaces the Parameter for this call (torch's documented recipe).
            delattr(module, name)
            setattr(module, name, fwAD.make_dual(saved[name], t))
        try:
            out = module(fwAD.make_dual(x, tx))
            primal, tangent = fwAD.unpack_dual(out)
        finally:
            for name, p in saved.items():
                delattr(module, name)
                module.register_parameter(name, p)
    return primal, tangent


@pytest.mark.parametrize("setting", list(CONV_SETTINGS), ids=str)
def test_conv_block_forward_ad_gradcheck(backend, setting):
    (x, w, b), kwargs = _conv_inputs(setting)

    def fn(x, w, b):
        return fusedops.conv_relu_maxpool2d(x, w, b, backend=backend, **kwargs)

    assert torch.autograd.gradcheck(fn, (x, w, b), check_forward_ad=True, check_backward_ad=False,
                                    check_undefined_grad=False, fast_mode=_interpreted(backend))


@pytest.mark.parametrize("activation", [None, "relu", "gelu", "gelu_tanh", "silu"], ids=str)
def test_linear_forward_ad_gradcheck(backend, activation):
    skip_unless_backend_has(backend, "linear")
    x, w, b = _linear_inputs()

    def fn(x, w, b):
        return fusedops.linear(x, w, b, activation=activation, backend=backend)

    assert torch.autograd.gradcheck(fn, (x, w, b), check_forward_ad=True, check_backward_ad=False,
                                    check_undefined_grad=False, fast_mode=_interpreted(backend))


@pytest.mark.parametrize("grad_mode", [True, False], ids=["grad", "no_grad"])
@pytest.mark.parametrize("unbatched", [False, True], ids=["batched", "unbatched"])
def test_conv_block_module_tangent_equals_torch_layers(backend, grad_mode, unbatched):
    block = fusedops.FusedConvBlock(3, 5, 3, padding=1, backend=backend).double()
    eager = _torch_block(block)
    x = torch.randn(*(() if unbatched else (2,)), 3, 8, 8, dtype=torch.float64)
    tx = torch.randn_like(x)
    tw, tb = torch.randn_like(block.weight), torch.randn_like(block.bias)
    with torch.set_grad_enabled(grad_mode):
        out, tangent = _tangent(block, x, tx, {"weight": tw, "bias": tb})
        want_out, want = _tangent(eager[0], x, tx, {"weight": tw, "bias": tb})
        want_out, want = _tangent(nn.Sequential(eager[1], eager[2]), want_out, want)
    torch.testing.assert_close(out, want_out)
    assert tangent is not None, "the fused output lost its tangent"
    torch.testing.assert_close(tangent, want)


@pytest.mark.parametrize("activation", [None, "relu", "gelu", "silu"], ids=str)
def test_linear_module_tangent_equals_torch_layers(backend, activation):
    skip_unless_backend_has(backend, "linear")
    layer = fusedops.FusedLinear(6, 4, activation=activation, backend=backend).double()
    eager = _torch_linear(layer, activation)
    x = torch.randn(3, 6, dtype=torch.float64)
    tx, tw, tb = torch.randn_like(x), torch.randn_like(layer.weight), torch.randn_like(layer.bias)
    out, tangent = _tangent(layer, x, tx, {"weight": tw, "bias": tb})
    want_out, want = _tangent(eager[0], x, tx, {"weight": tw, "bias": tb})
    want_out, want = _tangent(eager[1], want_out, want)
    torch.testing.assert_close(out, want_out)
    assert tangent is not None, "the fused output lost its tangent"
    torch.testing.assert_close(tangent, want)


@pytest.mark.parametrize("op", ["conv", "linear_relu", "linear_gelu"])
def test_reverse_over_forward_equals_torch_layers(backend, op):
    """The gradient of a tangent (a Jacobian-vector product differentiated by backward) with
    respect to the input, the weight and the input's direction: the tangent's own graph."""
    if op == "conv":
        fused = fusedops.FusedConvBlock(3, 4, 3, padding=1, backend=backend).double()
        eager = _torch_block(fused)
        x = torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    else:
        skip_unless_backend_has(backend, "linear")
        activation = op.split("_")[1]
        fused = fusedops.FusedLinear(5, 4, activation=activation, backend=backend).double()
        eager = _torch_linear(fused, activation)
        x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    tx = torch.randn_like(x, requires_grad=True)

    def grads(module):
        _, tangent = _tangent(module, x, tx)
        v = torch.ones_like(tangent) + torch.arange(tangent.numel(), dtype=tangent.dtype).view_as(tangent) / 7
        return torch.autograd.grad((tangent * v).sum(), (x, fused.weight, tx), allow_unused=True)

    got, want = grads(fused), grads(eager)
    for name, g, e in zip(("input", "weight", "input tangent"), got, want):
        if e is None or not e.any():
            assert g is None or not g.any(), name
        else:
            assert g is not None, f"no gradient for the {name}"
            torch.testing.assert_close(g, e, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("op", ["conv", "linear"])
def test_torch_func_jvp_on_the_native_path(op):
    if op == "conv":
        fused = fusedops.FusedConvBlock(3, 4, 3, padding=1, backend=NATIVE_CPU).double()
        eager = _torch_block(fused)
        x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    else:
        fused = fusedops.FusedLinear(5, 4, activation="gelu", backend=NATIVE_CPU).double()
        eager = _torch_linear(fused, "gelu")
        x = torch.randn(3, 5, dtype=torch.float64)
    tx = torch.randn_like(x)
    out, tangent = torch.func.jvp(fused, (x,), (tx,))
    want_out, want = torch.func.jvp(eager, (x,), (tx,))
    torch.testing.assert_close(out, want_out)
    torch.testing.assert_close(tangent, want)


def test_jacfwd_and_vmap_on_the_native_path():
    """jacfwd (vmap over jvp) equals eager's Jacobian; vmap (torch's per-sample fallback)
    equals a loop over the samples."""
    fused = fusedops.FusedConvBlock(2, 3, 3, padding=1, backend=NATIVE_CPU).double()
    eager = _torch_block(fused)
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(torch.func.jacfwd(fused)(x), torch.func.jacfwd(eager)(x))
    xs = torch.randn(3, 1, 2, 4, 4, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no batching rule": the fallback is what is checked
        batched = torch.func.vmap(fused)(xs)
    torch.testing.assert_close(batched, torch.stack([eager(sample) for sample in xs]))


@pytest.mark.parametrize("op", ["conv", "linear"])
def test_torch_func_jvp_on_the_python_path_raises(op):
    """The Python Functions (reference, triton) support forward mode through forward_ad only:
    torch.func.jvp says so rather than returning a zero tangent."""
    if op == "conv":
        fused = fusedops.FusedConvBlock(3, 4, 3, padding=1, backend="reference").double()
        x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    else:
        fused = fusedops.FusedLinear(5, 4, activation="relu", backend="reference").double()
        x = torch.randn(3, 5, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="setup_context"):
        torch.func.jvp(fused, (x,), (torch.randn_like(x),))


@pytest.mark.parametrize("hooks", [False, True], ids=["plain", "saved_tensor_hooks"])
@pytest.mark.parametrize("op", ["conv", "linear_relu", "linear_gelu"])
def test_compiled_autograd_gives_eager_gradients(backend, op, hooks):
    torch._dynamo.reset()
    if op == "conv":
        fused = fusedops.FusedConvBlock(3, 4, 3, padding=1, backend=backend)
        x = torch.randn(2, 3, 8, 8, requires_grad=True)
        backward_op = "native_conv_block_backward"
    else:
        skip_unless_backend_has(backend, "linear")
        fused = fusedops.FusedLinear(6, 4, activation=op.split("_")[1], backend=backend)
        x = torch.randn(3, 6, requires_grad=True)
        backward_op = "native_linear_backward"
    params = [x, fused.weight, fused.bias]

    def step():
        with torch.autograd.graph.saved_tensors_hooks(torch.clone, torch.clone) if hooks else _null():
            out = fused(x)
        return torch.autograd.grad(out.square().sum(), params)

    want = step()
    graphs = []

    def compiler(gm):
        graphs.append(gm)
        return gm

    with torch._dynamo.compiled_autograd._enable(compiler):
        got = step()
    assert graphs, "compiled autograd compiled nothing"
    for g, e in zip(got, want):
        torch.testing.assert_close(g, e)
    if backend == NATIVE_CPU:  # the native node is traced: its backward op is in the graph
        assert backward_op in "\n".join(str(gm.graph) for gm in graphs)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _fused_op(kind, backend):
    """``(f, x)``: a float64 function of the input through ``kind`` on ``backend``, and an input."""
    if kind == "conv":
        w, b = torch.randn(3, 2, 3, 3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
        x = torch.randn(1, 2, 6, 6, dtype=torch.float64)
        return (lambda x: fusedops.conv_relu_maxpool2d(x, w, b, padding=1, backend=backend)), x
    w, b = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    x = torch.randn(3, 5, dtype=torch.float64)
    return (lambda x: fusedops.linear(x, w, b, activation="gelu", backend=backend)), x


@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_forward_over_reverse_raises(backend, kind):
    """A tangent of a gradient (a Hessian-vector product by forward over reverse) would come
    back without the backward's own derivative: the backward raises instead."""
    if kind == "linear":
        skip_unless_backend_has(backend, "linear")
    f, x = _fused_op(kind, backend)
    with fwAD.dual_level():
        dual = fwAD.make_dual(x.clone().requires_grad_(True), torch.randn_like(x))
        loss = f(dual).pow(3).sum()
        with pytest.raises(NotImplementedError, match="forward over reverse"):
            torch.autograd.grad(loss, dual)


@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_nested_forward_mode_on_the_native_path_raises(kind):
    """jacfwd of jacfwd reaches the kernel ops with tangents of the outer level: an error, not
    the zero second derivative they would give without derivatives of their own."""
    f, x = _fused_op(kind, NATIVE_CPU)
    torch.func.jacfwd(f)(x)  # first order works
    with pytest.raises(NotImplementedError, match="forward AD"):
        torch.func.jacfwd(torch.func.jacfwd(f))(x)


@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_compiled_autograd_of_a_recorded_native_backward_raises(kind):
    """Compiled autograd traces the native backward's kernel ops, which have no derivatives:
    with create_graph=True the native nodes raise rather than return a graph-less gradient."""
    torch._dynamo.reset()
    f, x = _fused_op(kind, NATIVE_CPU)
    x.requires_grad_(True)
    out = f(x)
    with torch._dynamo.compiled_autograd._enable(lambda gm: gm):
        with pytest.raises(NotImplementedError, match="create_graph=True"):
            torch.autograd.grad(out.square().sum(), x, create_graph=True)
