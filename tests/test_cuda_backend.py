"""The "cuda" backend (CUDA kernels in fusedops._C): source rules checked everywhere, the
kernels themselves on a GPU (gpu-marked)."""

import functools
import pathlib
import re

import pytest
import torch

import fusedops
from tests import oracle
from tests.test_conv_block import CASES, _check, _make

ROOT = pathlib.Path(__file__).resolve().parents[1]
CUDA_DIR = ROOT / "csrc" / "cuda"
KERNEL_FILES = sorted(CUDA_DIR.glob("*.cu")) + sorted(CUDA_DIR.glob("*.cuh")) + [CUDA_DIR / "kernels.h"]
FORBIDDEN_OPS = ("conv", "pool", "relu", "threshold", "gelu", "silu", "im2col", "unfold", "col2im",
                 "aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear")


def test_cuda_kernel_sources_are_torch_free_and_vendor_free():
    """nvcc must compile them without torch; no cuBLAS/cuDNN behind the kernels."""
    assert len(KERNEL_FILES) >= 4
    for path in KERNEL_FILES:
        text = path.read_text()
        includes = re.findall(r"#include\s*[<\"]([^>\"]+)", text)
        torchy = [i for i in includes if i.split("/")[0] in ("ATen", "torch", "c10", "caffe2")]
        assert torchy == [], f"{path.name} includes {torchy}"
        vendor = [word for word in ("cublas", "cudnn", "cutlass") if word in text.lower()]
        assert vendor == [], f"{path.name} mentions {vendor}"


def test_every_kernel_launch_is_checked():
    """Each launch is followed by cudaGetLastError, and the bindings check every launcher's result."""
    for path in sorted(CUDA_DIR.glob("*.cu")):
        lines = path.read_text().splitlines()
        launches = [i for i, line in enumerate(lines) if "<<<" in line]
        assert launches, f"{path.name} launches no kernel"
        for i in launches:
            window = "\n".join(lines[i : i + 4])
            assert "cudaGetLastError" in window, f"{path.name}:{i + 1}: launch without a check"
    launchers = re.findall(r"^cudaError_t (\w+)\(", (CUDA_DIR / "kernels.h").read_text(), re.M)
    assert {"conv_block_forward", "conv_block_backward", "conv_block_jvp"} <= set(launchers)
    bindings = (CUDA_DIR / "bindings.cpp").read_text()
    calls = re.findall(r"cuda::(" + "|".join(launchers) + r")\(", bindings)
    checked = re.findall(r"C10_CUDA_CHECK\(cuda::(\w+)\(", bindings)
    assert sorted(calls) == sorted(launchers) and sorted(checked) == sorted(launchers)


def test_cuda_backend_says_why_it_cannot_run_here():
    if torch.cuda.is_available() and fusedops._native.WITH_CUDA:
        pytest.skip("this machine runs the cuda backend: its gpu-marked tests apply")
    reason = fusedops.backends._REGISTRY["cuda"].unavailable_reason()
    assert reason and "cuda" in reason.lower() and "cuda" not in fusedops.available_backends()


def _needs_cuda_backend():
    reason = fusedops.backends._REGISTRY["cuda"].unavailable_reason()
    if reason is not None:
        pytest.fail(f"a GPU machine must build and run the cuda backend: {reason}")


def _cuda(*tensors):
    return [None if t is None else t.cuda() for t in tensors]


@pytest.mark.gpu
@pytest.mark.parametrize("name,shape,cout,kernel,kwargs", CASES, ids=[c[0] for c in CASES])
def test_gpu_conv_block_matches_torch(name, shape, cout, kernel, kwargs):
    _needs_cuda_backend()
    x, w, b, kwargs = _make(shape, cout, kernel, kwargs)
    _check(*_cuda(x, w, b), kwargs, "cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("view", ["channels_last", "transposed"])
@pytest.mark.parametrize("channels", [3, 16])  # direct kernel, implicit-GEMM kernel
def test_gpu_conv_block_strided_inputs(view, channels):
    _needs_cuda_backend()
    x, w, b, kwargs = _make((2, channels, 9, 11), 8, 3, dict(padding=1))
    if view == "channels_last":
        _check(*_cuda(x, w, b), kwargs, "cuda", lambda t: t.contiguous(memory_format=torch.channels_last))
    else:
        _check(*_cuda(x.transpose(2, 3).contiguous(), w, b), kwargs, "cuda", lambda t: t.transpose(2, 3))


@pytest.mark.gpu
@pytest.mark.parametrize("activation", [None, "relu", "gelu", "gelu_tanh", "silu"], ids=str)
@pytest.mark.parametrize("shape", [(5, 7), (3, 4, 7), (7,), (0, 7), (130, 70)], ids=str)
def test_gpu_linear_matches_torch(activation, shape):
    _needs_cuda_backend()
    x = torch.randn(shape, dtype=torch.float64, device="cuda")
    w = torch.randn(9, shape[-1], dtype=torch.float64, device="cuda")
    b = torch.randn(9, dtype=torch.float64, device="cuda")
    ours = [oracle.leaf(t) for t in (x, w, b)]
    ref = [oracle.leaf(t) for t in (x, w, b)]
    out = fusedops.linear(*ours, activation=activation, backend="cuda")
    want = oracle.linear(*ref, activation=activation)
    torch.testing.assert_close(out, want)
    g = torch.randn_like(want)
    for got, exp in zip(oracle.grads(out, ours, g), oracle.grads(want, ref, g)):
        torch.testing.assert_close(got, exp)


@pytest.mark.gpu
def test_gpu_gradcheck_both_ops():
    _needs_cuda_backend()
    kw = dict(dtype=torch.float64, device="cuda", requires_grad=True)
    for channels, kwargs in [(3, dict(padding=1)), (8, dict(pool_kernel_size=3, pool_stride=2, pool_padding=1))]:
        x, w, b = torch.randn(2, channels, 7, 8, **kw), torch.randn(4, channels, 3, 3, **kw), torch.randn(4, **kw)
        conv = functools.partial(fusedops.conv_relu_maxpool2d, backend="cuda", **kwargs)
        assert torch.autograd.gradcheck(conv, (x, w, b))
    x, w, b = torch.randn(3, 4, 6, **kw), torch.randn(5, 6, **kw), torch.randn(5, **kw)
    for activation in ("relu", "gelu", "silu"):
        lin = functools.partial(fusedops.linear, activation=activation, backend="cuda")
        assert torch.autograd.gradcheck(lin, (x, w, b))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels", [3, 32])
def test_gpu_low_precision_within_twice_torch_error(dtype, channels):
    """DESIGN.md's rule: error vs the float64 oracle at most 2x torch's own at that precision
    (the kernels compute float32 in IEEE, so torch's TF32 is off for the comparison)."""
    _needs_cuda_backend()
    oracle.assert_gpu_error_at_most_twice_torch("cuda", dtype, in_channels=channels, tf32=False)


@pytest.mark.gpu
def test_gpu_kernels_do_the_work_and_are_deterministic():
    _needs_cuda_backend()
    x = torch.randn(4, 16, 12, 12, device="cuda", requires_grad=True)
    w = torch.randn(32, 16, 3, 3, device="cuda", requires_grad=True)
    lw = torch.randn(10, 32 * 36, device="cuda", requires_grad=True)

    def step():
        y = fusedops.conv_relu_maxpool2d(x, w, padding=1, pool_kernel_size=2, backend="cuda")
        out = fusedops.linear(y.flatten(1), lw, activation="gelu", backend="cuda")
        return torch.autograd.grad(out.square().sum(), (x, w, lw))

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        first = step()
    ops = {e.key for e in prof.key_averages()}
    assert "fusedops::native_conv_block_forward" in ops and "fusedops::native_linear_backward" in ops
    assert [op for op in ops if op.startswith("aten::") and any(f in op for f in FORBIDDEN_OPS)] == []
    for a, b in zip(first, step()):
        assert torch.equal(a, b)


@pytest.mark.gpu
def test_gpu_bad_inputs_get_clear_errors():
    _needs_cuda_backend()
    args = ([1, 1], [0, 0, 0, 0], [1, 1], 1, [2, 2], [2, 2], [0, 0], [1, 1], False)
    x = torch.randn(1, 3, 8, 8, device="cuda")
    with pytest.raises(RuntimeError, match="weight must be a CUDA tensor"):
        torch.ops.fusedops.native_conv_block_forward(x, torch.randn(2, 3, 3, 3), None, *args)
    with pytest.raises(RuntimeError, match="supports float32, float64, float16 and bfloat16"):
        torch.ops.fusedops.native_conv_block_forward(x.int(), torch.randn(2, 3, 3, 3, device="cuda").int(), None, *args)
    with pytest.raises(RuntimeError, match="bias must have shape"):
        torch.ops.fusedops.native_conv_block_forward(x, torch.randn(2, 3, 3, 3, device="cuda"),
                                                     torch.randn(3, device="cuda"), *args)
    with pytest.raises(RuntimeError, match="input has 4 features"):
        torch.ops.fusedops.native_linear_forward(torch.randn(2, 4, device="cuda"), torch.randn(3, 5, device="cuda"),
                                                 None, "relu")
