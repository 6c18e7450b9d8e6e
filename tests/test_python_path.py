"""The Python path: a fused module whose backend runs through its autograd Function (the
reference here; triton on a GPU) takes its last choice straight from its memo on a repeat call
(``ChoiceMemo.python_again``), and anything that choice or the skipped checks depend on sends
the call through the functional layer again.
"""

import pytest
import torch

import fusedops
from fusedops import backends, modules


def _counting(monkeypatch, kind):
    """Make the module's functional-layer entry (the slow path) count its calls."""
    slow = []
    name = "run_conv_block" if kind == "conv_block" else "run_linear"
    real = getattr(modules, name)
    monkeypatch.setattr(modules, name, lambda *a, **k: slow.append(1) or real(*a, **k))
    return slow


def _module_and_input(kind, backend="reference"):
    torch.manual_seed(0)
    if kind == "conv_block":
        return fusedops.FusedConvBlock(3, 4, 3, padding=1, backend=backend), torch.randn(2, 3, 8, 8)
    return fusedops.FusedLinear(5, 4, activation="relu", backend=backend), torch.randn(2, 5)


def _eager(module, kind, x):
    """The same function from torch's own layers, on the module's parameters."""
    if kind == "conv_block":
        y = torch.nn.functional.conv2d(x, module.weight, module.bias, padding=1)
        return torch.nn.functional.max_pool2d(torch.relu(y), 2)
    return torch.relu(torch.nn.functional.linear(x, module.weight, module.bias))


@pytest.mark.parametrize("kind", ["conv_block", "linear"])
def test_repeat_calls_skip_the_functional_layer_and_stay_exact(monkeypatch, kind):
    slow = _counting(monkeypatch, kind)
    module, x = _module_and_input(kind)
    with torch.no_grad():
        want = _eager(module, kind, x)
    for _ in range(3):
        with torch.no_grad():
            torch.testing.assert_close(module(x), want)
    assert len(slow) == 1, "repeat no_grad calls went through the functional layer"
    # Gradients through the repeat path: the graph is a fact of the conv block's choice (one
    # more slow call there), and the linear's Function decides it on every call.
    for _ in range(3):
        leaf = x.clone().requires_grad_(True)
        module.zero_grad()
        module(leaf).sum().backward()
        ref_leaf = x.clone().requires_grad_(True)
        grads = torch.autograd.grad(_eager(module, kind, ref_leaf).sum(), (ref_leaf, module.weight, module.bias))
        for got, expected in zip((leaf.grad, module.weight.grad, module.bias.grad), grads):
            torch.testing.assert_close(got, expected)
    assert len(slow) == (2 if kind == "conv_block" else 1), len(slow)


@pytest.mark.parametrize("kind", ["conv_block", "linear"])
def test_what_the_choice_depends_on_sends_the_call_back_through_the_functional_layer(monkeypatch, kind):
    slow = _counting(monkeypatch, kind)
    module, x = _module_and_input(kind)
    module(x)
    module(x)
    assert len(slow) == 1

    def slow_call(fn):
        before = len(slow)
        out = fn()
        assert len(slow) == before + 1, "this call should have gone through the functional layer"
        return out

    def fast_call(fn):
        before = len(slow)
        out = fn()
        assert len(slow) == before, "this repeat call should have skipped the functional layer"
        return out

    bigger = torch.randn(3, *x.shape[1:])  # another shape: the checks' verdict may differ
    torch.testing.assert_close(slow_call(lambda: module(bigger)), _eager(module, kind, bigger))
    fast_call(lambda: module(bigger))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast casts first
        assert slow_call(lambda: module(bigger)).dtype == torch.bfloat16
    slow_call(lambda: module(bigger))  # the float32 call again after the bfloat16 one
    fast_call(lambda: module(bigger))
    monkeypatch.setenv(backends.ENV_VAR, "cpp")  # the environment is read by the choice...
    slow_call(lambda: module(bigger))
    fast_call(lambda: module(bigger))
    monkeypatch.delenv(backends.ENV_VAR)
    slow_call(lambda: module(bigger))
    module.double()  # ...and so are the tensors' dtypes
    assert slow_call(lambda: module(bigger.double())).dtype == torch.float64
    if kind == "conv_block":  # and the input's layout
        cl = bigger.double().contiguous(memory_format=torch.channels_last)
        out = slow_call(lambda: module(cl))
        assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("kind", ["conv_block", "linear"])
def test_bad_input_after_repeat_calls_is_still_refused(kind):
    module, x = _module_and_input(kind)
    module(x)
    module(x)
    wrong = x[:, :-1] if kind == "linear" else x[:, :2]  # one input channel / feature short
    with pytest.raises(ValueError, match="input"):
        module(wrong)
    with pytest.raises(TypeError):
        module(x.to(torch.int64))


@pytest.mark.parametrize("kind", ["conv_block", "linear"])
def test_a_compiled_module_does_not_guard_on_the_memo(kind):
    """The memo is eager-mode state: a traced call reads none of it, so eager calls of the same
    module, a cleared choice cache or another FUSEDOPS_BACKEND recompile nothing."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    module, x = _module_and_input(kind)
    compiled = torch.compile(module, backend="eager")
    want = _eager(module, kind, x)
    torch.testing.assert_close(compiled(x), want)
    for _ in range(4):
        backends.clear_choice_cache()
        module(x)
        with torch.no_grad():
            module(x)
        torch.testing.assert_close(compiled(x), want)
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])


def test_a_choice_is_remembered_with_the_environment_it_was_made_in(monkeypatch):
    """FUSEDOPS_BACKEND changed while a call's tensors are checked (by another thread, say):
    the call ran on the choice made before, and the next call chooses again."""
    from fusedops import functional

    module, x = fusedops.FusedConvBlock(3, 4, 3, padding=1, pool_kernel_size=None), torch.randn(2, 3, 8, 8)
    monkeypatch.setenv(backends.ENV_VAR, "reference")
    real = functional._check_once

    def check_then_switch(*args, **kwargs):
        real(*args, **kwargs)
        monkeypatch.setenv(backends.ENV_VAR, "cpp")

    monkeypatch.setattr(functional, "_check_once", check_then_switch)
    with torch.no_grad():
        module(x)
    monkeypatch.setattr(functional, "_check_once", real)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        with torch.no_grad():
            module(x)
    counts = {e.key for e in prof.key_averages()}
    assert "fusedops::native_conv_block" in counts, sorted(counts)
