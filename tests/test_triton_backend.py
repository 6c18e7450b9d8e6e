"""The "triton" backend: its kernels do the work, and write every output element, here on CPU
tensors under the interpreter (``triton_cpu``); on a GPU the gpu-marked suite
(tests/test_gpu_*.py) checks the same and more."""

import pytest
import torch

import fusedops
from fusedops.functional import conv_block_params

FORBIDDEN = ("conv", "pool", "relu", "threshold", "gelu", "silu", "sigmoid", "tanh", "im2col", "unfold", "col2im",
             "mm", "matmul", "linear", "dot", "einsum")


@pytest.fixture(autouse=True)
def _needs_triton():
    if "triton" not in fusedops.available_backends():
        pytest.fail("triton must be available here (tests/conftest.py sets TRITON_INTERPRET=1 without a GPU)")


def _aten_ops(fn):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages() if e.key.startswith("aten::")}


@pytest.mark.parametrize("backend,device", [pytest.param("triton", "cpu", marks=pytest.mark.triton_cpu),
                                            pytest.param("triton", "cuda", marks=pytest.mark.gpu)])
def test_no_torch_compute_ops_in_forward_and_backward(backend, device):
    make = lambda *shape: torch.randn(*shape, device=device, requires_grad=True)  # noqa: E731
    x, w, b, lx, lw = make(2, 3, 9, 9), make(4, 3, 3, 3), make(4), make(5, 6), make(7, 6)

    def run():
        y = fusedops.conv_relu_maxpool2d(x, w, b, padding=1, backend=backend)
        z = fusedops.linear(lx, lw, activation="gelu", backend=backend)
        (y.sum() + z.sum()).backward()

    offending = [op for op in _aten_ops(run) if any(f in op for f in FORBIDDEN)]
    assert offending == [], offending
    reference = _aten_ops(lambda: fusedops.linear(lx, lw, activation="gelu", backend="reference"))
    assert any(any(f in op for f in FORBIDDEN) for op in reference)  # the check can fail


def _poisoning(monkeypatch, module):
    """Make the launchers' output allocations start as NaN (floats) or 77 (integers)."""
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def poison(t):
        return t.fill_(float("nan") if t.is_floating_point() else 77) if t.numel() else t

    monkeypatch.setattr(module.torch, "empty", lambda *a, **k: poison(real_empty(*a, **k)))
    monkeypatch.setattr(module.torch, "empty_like", lambda *a, **k: poison(real_empty_like(*a, **k)))


@pytest.mark.triton_cpu
@pytest.mark.parametrize(
    "kwargs",
    [dict(padding=1), dict(pool_kernel_size=None, stride=2), dict(pool_kernel_size=3, pool_stride=2, pool_padding=1,
                                                                   pool_ceil_mode=True), dict(groups=3)],
    ids=["pool2", "nopool", "overlap_ceil", "groups"],
)
def test_poisoned_conv_block_outputs_are_all_written(monkeypatch, kwargs):
    from fusedops.triton import conv_block as kernels

    x = torch.randn(2, 6, 9, 8, dtype=torch.float64)
    w = torch.randn(6, 6 // kwargs.get("groups", 1), 3, 3, dtype=torch.float64)
    b = torch.randn(6, dtype=torch.float64)
    p = conv_block_params((3, 3), **kwargs)
    ref_out, ref_off = torch.ops.fusedops.conv_block_forward(x, w, b, *p, "reference")
    g = torch.randn_like(ref_out)
    ref_grads = torch.ops.fusedops.conv_block_backward(g, x, w, ref_off, *p[:8], [True, True, True], "reference")
    _poisoning(monkeypatch, kernels)
    out, off = kernels.forward(x, w, b, p)
    torch.testing.assert_close(out, ref_out)
    assert torch.equal(off, ref_off)
    for got, want in zip(kernels.backward(g, x, w, ref_off, p, [True, True, True]), ref_grads):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("activation", ["", "relu", "gelu", "gelu_tanh", "silu"])
@pytest.mark.triton_cpu
def test_poisoned_linear_outputs_are_all_written(monkeypatch, activation):
    from fusedops.triton import linear as kernels

    x, w, b = (torch.randn(3, 5, 17, dtype=torch.float64), torch.randn(19, 17, dtype=torch.float64),
               torch.randn(19, dtype=torch.float64))
    ref_out, ref_saved = torch.ops.fusedops.linear_forward(x, w, b, activation, "reference")
    g = torch.randn_like(ref_out)
    ref_grads = torch.ops.fusedops.linear_backward(g, x, w, ref_saved, activation, [True, True, True], "reference")
    _poisoning(monkeypatch, kernels)
    out, saved = kernels.forward(x, w, b, activation)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(saved, ref_saved)
    for got, want in zip(kernels.backward(g, x, w, saved, activation, [True, True, True]), ref_grads):
        torch.testing.assert_close(got, want)


def test_triton_is_not_chosen_automatically_until_timed_on_a_gpu():
    from fusedops import backends

    x, w = torch.randn(1, 3, 6, 6), torch.randn(2, 3, 3, 3)
    facts = backends.conv_facts(w, conv_block_params((3, 3)))
    assert backends.select("", [x, w], "conv_relu_maxpool2d", facts).name != "triton"
    assert not backends._REGISTRY["triton"].auto_eligible("conv_relu_maxpool2d", facts)
    assert not backends._REGISTRY["triton"].auto_eligible("linear", {})

