"""The native path: a fused module whose backend is compiled runs as one registered op.

``fusedops::native_conv_block`` and ``fusedops::native_linear`` carry their autograd in C++
(csrc/conv_block_op.cpp, csrc/linear_op.cpp): a module's forward is one dispatcher call and
its backward runs without Python. Checked here with the profiler, opcheck, gradcheck and the
choices the modules make and cache.
"""

import pytest
import torch
from torch import nn

import fusedops
from fusedops import backends
from fusedops.functional import conv_block_params


@pytest.fixture(autouse=True)
def _needs_cpp():
    if "cpp" not in fusedops.available_backends():
        pytest.fail(f"the cpp backend must be built here: {backends._REGISTRY['cpp'].unavailable_reason()}")


def _op_counts(fn):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key: e.count for e in prof.key_averages()}


def _fused_ops(counts):
    return {k: v for k, v in counts.items() if k.startswith("fusedops::")}


@pytest.mark.parametrize("backend", ["cpp", None], ids=["named", "auto"])
def test_conv_block_module_is_one_native_op_forward_and_backward(backend):
    block = fusedops.FusedConvBlock(3, 8, 3, padding=1, backend=backend)  # 3 input channels: cpp is chosen
    x = torch.randn(2, 3, 12, 12, requires_grad=True)

    def step():
        for _ in range(3):
            block(x).sum().backward()

    counts = _op_counts(step)
    ops = _fused_ops(counts)
    assert ops == {"fusedops::native_conv_block": 3, "fusedops::native_conv_block_forward": 3,
                   "fusedops::native_conv_block_backward": 3}, ops
    assert counts.get("FusedConvBlockBackward") == 3, counts  # the one C++ backward node
    with torch.no_grad():
        ops = _fused_ops(_op_counts(lambda: block(x)))
    assert ops == {"fusedops::native_conv_block": 1, "fusedops::native_conv_block_forward": 1}, ops


def test_linear_module_is_one_native_op():
    lin = fusedops.FusedLinear(6, 5, activation="gelu", backend="cpp")
    x = torch.randn(4, 6, requires_grad=True)
    counts = _op_counts(lambda: lin(x).sum().backward())
    ops = _fused_ops(counts)
    assert ops == {"fusedops::native_linear": 1, "fusedops::native_linear_forward": 1,
                   "fusedops::native_linear_backward": 1}, ops
    assert counts.get("FusedLinearBackward") == 1, counts


def test_python_backends_show_up_differently():
    """The checks above can fail: the reference backend runs torch's ops from Python (in eager
    mode its methods are called directly, without a registered-op hop)."""
    block = fusedops.FusedConvBlock(3, 8, 3, padding=1, backend="reference")
    ops = _op_counts(lambda: block(torch.randn(2, 3, 8, 8, requires_grad=True)).sum().backward())
    assert _fused_ops(ops) == {} and "aten::convolution" in ops


def test_native_path_equals_reference_in_every_layout():
    block = fusedops.FusedConvBlock(3, 5, 3, padding=1, pool_kernel_size=3, pool_stride=2, backend="cpp").double()
    ref = fusedops.FusedConvBlock(3, 5, 3, padding=1, pool_kernel_size=3, pool_stride=2, backend="reference").double()
    ref.load_state_dict(block.state_dict())
    d = torch.float64
    for x in (torch.randn(2, 3, 9, 8, dtype=d), torch.randn(3, 9, 8, dtype=d), torch.randn(0, 3, 9, 8, dtype=d),
              torch.randn(2, 3, 9, 8, dtype=d).contiguous(memory_format=torch.channels_last),
              torch.randn(2, 3, 9, 16, dtype=d)[..., ::2]):
        x = x.requires_grad_(True)
        xr = x.detach().clone(memory_format=torch.preserve_format).requires_grad_(True)
        out, want = block(x), ref(xr)
        torch.testing.assert_close(out, want)
        assert out.is_contiguous(memory_format=torch.channels_last) == want.is_contiguous(
            memory_format=torch.channels_last)
        out.square().sum().backward()
        want.square().sum().backward()
        torch.testing.assert_close(x.grad, xr.grad)
    for p, q in zip(block.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad)


def _native_conv_block(geometry):
    return lambda x, w, b: torch.ops.fusedops.native_conv_block(x, w, b, geometry)


def test_native_ops_pass_opcheck_and_gradcheck():
    p = conv_block_params((3, 3), padding=1)
    for channels_last in (False, True):
        x = torch.randn(2, 3, 7, 8, dtype=torch.float64)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        w, b = torch.randn(4, 3, 3, 3, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
        args = [t.requires_grad_(True) for t in (x, w, b)]
        torch.library.opcheck(torch.ops.fusedops.native_conv_block.default, (*args, p.native_args()))
        assert torch.autograd.gradcheck(_native_conv_block(p.native_args()), args)
    for act in ("", "relu", "gelu", "gelu_tanh", "silu"):
        args = [torch.randn(*s, dtype=torch.float64, requires_grad=True) for s in ((3, 5), (4, 5), (4,))]
        torch.library.opcheck(torch.ops.fusedops.native_linear.default, (*args, act))
        assert torch.autograd.gradcheck(lambda x, w, b, a=act: torch.ops.fusedops.native_linear(x, w, b, a), args)


def test_module_errors_come_from_the_native_checks_with_python_types():
    block = fusedops.FusedConvBlock(3, 4, 3, backend="cpp")
    with pytest.raises(ValueError, match="input has 5 channels but weight expects 3"):
        block(torch.randn(1, 5, 8, 8))
    with pytest.raises(TypeError, match="weight has dtype"):
        block(torch.randn(1, 3, 8, 8).double())
    with pytest.raises(TypeError, match="input must be a torch.Tensor"):
        block([1.0])
    lin = fusedops.FusedLinear(4, 3, backend="cpp")
    with pytest.raises(ValueError, match="input has 5 features"):
        lin(torch.randn(2, 5))


def test_changed_attributes_are_used_as_nn_conv2d_uses_them():
    block = fusedops.FusedConvBlock(3, 4, 3, backend="cpp")
    conv = nn.Conv2d(3, 4, 3)
    conv.load_state_dict(block.state_dict())
    x = torch.randn(1, 3, 16, 16)
    for name, value in (("stride", (2, 2)), ("padding", (1, 1)), ("padding_mode", "reflect")):
        setattr(block, name, value)
        setattr(conv, name, value)
        if name == "padding_mode":  # nn.Conv2d derives its F.pad padding at construction
            conv._reversed_padding_repeated_twice = (1, 1, 1, 1)
        torch.testing.assert_close(block(x), nn.functional.max_pool2d(torch.relu(conv(x)), 2))


def test_backend_choice_follows_the_environment_variable(monkeypatch):
    block = fusedops.FusedConvBlock(3, 4, 3)
    x = torch.randn(1, 3, 8, 8)
    assert "fusedops::native_conv_block" in _op_counts(lambda: block(x))
    monkeypatch.setenv(backends.ENV_VAR, "reference")
    ops = _op_counts(lambda: block(x))
    assert "fusedops::native_conv_block" not in ops and "aten::convolution" in ops
    monkeypatch.delenv(backends.ENV_VAR)
    assert "fusedops::native_conv_block" in _op_counts(lambda: block(x))


def test_double_backward_on_the_native_path():
    block = fusedops.FusedConvBlock(2, 3, 3, padding=1, backend="cpp").double()
    lin = fusedops.FusedLinear(3 * 3 * 3, 2, activation="silu", backend="cpp").double()

    def model(x):
        return lin(block(x).flatten(1))

    x = torch.randn(2, 2, 6, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(model, (x,))


class _Doubled(nn.Module):
    def forward(self, w):
        return 2 * w


@pytest.mark.parametrize("make", [
    lambda: fusedops.FusedConvBlock(3, 4, 3, padding=1),
    lambda: fusedops.FusedLinear(5, 4, activation="relu"),
], ids=["conv_block", "linear"])
def test_modules_read_parametrised_and_swapped_parameters(make):
    """The forward reads weight and bias from ``_parameters`` for speed; a parametrised weight
    (a property, not in ``_parameters``) and ``torch.func.functional_call`` must still be used."""
    module = make()
    x = torch.randn(2, 3, 8, 8) if isinstance(module, fusedops.FusedConvBlock) else torch.randn(2, 5)
    plain = make()
    plain.load_state_dict(module.state_dict())
    with torch.no_grad():
        plain.weight.mul_(2)
    torch.nn.utils.parametrize.register_parametrization(module, "weight", _Doubled())
    torch.testing.assert_close(module(x), plain(x))
    swapped = {"weight": torch.randn_like(plain.weight), "bias": torch.randn_like(plain.bias)}
    expected = make()
    expected.load_state_dict(swapped)
    torch.testing.assert_close(torch.func.functional_call(plain, swapped, (x,)), expected(x))


def test_environment_reader_follows_os_environ(monkeypatch):
    from fusedops._env import EnvVar

    var = EnvVar("FUSEDOPS_TEST_VARIABLE")
    monkeypatch.delenv(var.name, raising=False)
    assert var.get() == ""
    monkeypatch.setenv(var.name, "cpp")
    assert var.get() == "cpp"
    os_environ = __import__("os").environ
    os_environ[var.name] = "reference"
    assert var.get() == "reference"
    del os_environ[var.name]
    assert var.get() == ""


@pytest.mark.parametrize("kind", ["conv_block", "linear"])
def test_repeat_calls_skip_the_choice_and_whatever_it_depends_on_brings_it_back(monkeypatch, kind):
    """A module's call that the last native call's choice covers goes straight to the op
    (ChoiceMemo.native_again); a change of dtype, autocast, grad need or FUSEDOPS_BACKEND goes
    through the choice again and gets what that call needs (float16 on the CPU: the reference)."""
    from fusedops import modules

    slow = []
    name = "run_conv_block" if kind == "conv_block" else "run_linear"
    real = getattr(modules, name)
    monkeypatch.setattr(modules, name, lambda *a, **k: slow.append(1) or real(*a, **k))
    if kind == "conv_block":
        module = fusedops.FusedConvBlock(3, 4, 3, padding=1)
        x = torch.randn(2, 3, 8, 8)
    else:
        module = fusedops.FusedLinear(5, 4, activation="relu")
        x = torch.randn(2, 5)
    want = module(x)
    assert len(slow) == 1
    for _ in range(3):
        torch.testing.assert_close(module(x), want)
    assert len(slow) == 1, "repeat calls went through the choice"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert module(x).dtype == torch.bfloat16
    assert len(slow) == 2
    leaf = x.clone().requires_grad_(True)
    module(leaf).sum().backward()
    assert leaf.grad is not None and leaf.grad.abs().sum() > 0
    module.double()  # the same Parameter objects, now float64
    assert module(x.double()).dtype == torch.float64
    module.half()  # float16: cpp has no kernel, the choice is the reference
    ops = _op_counts(lambda: module(x.half()))
    assert not _fused_ops(ops), ops
    module.double()
    monkeypatch.setenv(backends.ENV_VAR, "reference")
    calls = len(slow)
    ops = _op_counts(lambda: module(x.double()))
    assert len(slow) == calls + 1 and not _fused_ops(ops), ops


@pytest.mark.parametrize("kind", ["conv_block", "linear"])
def test_repeat_calls_take_the_typed_entry_unless_torch_function_overrides(monkeypatch, kind):
    """The repeat-call path calls the op's typed entry (fusedops._C), which skips
    __torch_function__; a TorchFunctionMode or a weight subclass with __torch_function__ must
    still see the call, so then the module goes through torch.ops."""
    from torch.overrides import TorchFunctionMode

    from fusedops import modules

    typed = []
    name = "_typed_conv_block" if kind == "conv_block" else "_typed_linear"
    real = getattr(modules, name)
    monkeypatch.setattr(modules, name, lambda *a: typed.append(1) or real(*a))
    if kind == "conv_block":
        module, x = fusedops.FusedConvBlock(3, 4, 3, padding=1), torch.randn(2, 3, 8, 8)
    else:
        module, x = fusedops.FusedLinear(5, 4, activation="relu"), torch.randn(2, 5)
    want = module(x)
    torch.testing.assert_close(module(x), want)
    assert len(typed) == 1, "a repeat call did not take the typed entry"

    class Recorder(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.seen.append(str(func))
            return func(*args, **(kwargs or {}))

    with Recorder() as mode:
        torch.testing.assert_close(module(x), want)
    assert len(typed) == 1, "the typed entry ran under a TorchFunctionMode"
    assert any(f"fusedops.native_{kind}" in f for f in mode.seen), mode.seen

    class Logged(torch.Tensor):
        calls = 0

        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            cls.calls += 1
            return super().__torch_function__(func, types, args, kwargs or {})

    weight = module.weight
    del module.weight
    module.weight = weight.detach().as_subclass(Logged)
    module(x)
    assert len(typed) == 1 and Logged.calls > 0, "a weight's __torch_function__ was skipped"
