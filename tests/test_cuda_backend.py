"""The "cuda" backend (CUDA kernels in fusedops._C): source rules checked everywhere, the
kernels themselves on a GPU (gpu-marked; the correctness grid of both GPU backends is in
tests/test_gpu_*.py)."""

import functools
import pathlib
import re

import pytest
import torch

import fusedops
from tests.conftest import require_gpu_backend

ROOT = pathlib.Path(__file__).resolve().parents[1]
CUDA_DIR = ROOT / "csrc" / "cuda"
KERNEL_FILES = sorted(CUDA_DIR.glob("*.cu")) + sorted(CUDA_DIR.glob("*.cuh")) + sorted(CUDA_DIR.glob("*.h"))
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


def _tutorial_facts(cin, cout, dtype=torch.bfloat16, **kwargs):
    from fusedops.functional import conv_block_params

    weight = torch.empty(cout, cin // kwargs.get("groups", 1), 3, 3, dtype=dtype)
    return fusedops.backends.conv_facts(weight, conv_block_params((3, 3), **{"padding": 1, **kwargs}))


def test_automatic_choice_takes_cuda_where_an_h200_timed_it_faster():
    """The rule of benchmarks/results/cuda-nvidia-h200/eighth-run.md: bfloat16 conv blocks of
    the tutorial layers' kind (3x3 stride 1, MaxPool2d(2), ungrouped, <= 32 -> 64 channels),
    measured faster than eager and than the reference; not the VGG block (64->128, measured
    slower in training), nor what was not timed (other dtypes, pools, kernels, groups)."""
    cuda = fusedops.backends._REGISTRY["cuda"]
    op = "conv_relu_maxpool2d"
    for cin, cout in ((1, 32), (3, 32), (32, 64)):
        assert cuda.auto_eligible(op, _tutorial_facts(cin, cout)), (cin, cout)
        assert cuda.auto_eligible(op + " backward", _tutorial_facts(cin, cout))
    assert not cuda.auto_eligible(op, _tutorial_facts(64, 128))  # the VGG block
    assert not cuda.auto_eligible(op, _tutorial_facts(32, 128))
    assert not cuda.auto_eligible(op, _tutorial_facts(64, 64))
    for dtype in (torch.float16, torch.float32, torch.float64):
        assert not cuda.auto_eligible(op, _tutorial_facts(32, 64, dtype))
    assert not cuda.auto_eligible(op, _tutorial_facts(32, 64, pool_kernel_size=3, pool_stride=2))
    assert not cuda.auto_eligible(op, _tutorial_facts(32, 64, pool_kernel_size=1))  # no pool
    assert not cuda.auto_eligible(op, _tutorial_facts(32, 64, stride=2))
    assert not cuda.auto_eligible(op, _tutorial_facts(32, 64, groups=2))
    assert not cuda.auto_eligible("linear", {"dtype": torch.bfloat16})


@pytest.mark.gpu
def test_gpu_automatic_choice_runs_a_tutorial_layer_on_cuda():
    _needs_cuda_backend()
    x = torch.randn(2, 32, 16, 16, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(64, 32, 3, 3, device="cuda", dtype=torch.bfloat16)
    facts = fusedops.backends.conv_facts(w, fusedops.functional.conv_block_params((3, 3), padding=1), x)
    assert fusedops.backends.select("", [x, w], "conv_relu_maxpool2d", facts).name == "cuda"
    assert fusedops.backends.select("", [x.float(), w.float()], "conv_relu_maxpool2d",
                                    fusedops.backends.conv_facts(w.float(), fusedops.functional.conv_block_params(
                                        (3, 3), padding=1), x)).name == "reference"


def _needs_cuda_backend():
    require_gpu_backend("cuda")


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
def test_gpu_kernels_do_the_work():
    """The fused ops run fusedops' CUDA kernels, not torch's conv/pool/activation/GEMM ops.
    (Correctness, determinism and devices: tests/test_gpu_*.py.)"""
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
    assert all(g.isfinite().all() for g in first)


def _cuda_kernels(fn):
    """What fn() returns, and the names of the CUDA kernels it launched (profiler, demangled)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        out = fn()
        torch.cuda.synchronize()
    return out, {e.key for e in prof.key_averages()}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_gpu_channel_runs_in_every_layout_and_switched_off(monkeypatch, dtype, layout):
    """A 16-bit or TF32 conv block with whole runs of channels runs the channel-run kernels
    (forward and backward) whatever the input's layout (an NCHW input through a channels_last
    copy) and returns the input gradient in the input's layout; FUSEDOPS_CUDA_CHANNEL_RUNS=0
    takes the tile kernels instead. Small integers make every product and sum exact in both
    (whatever their order), so the two must agree bit for bit, the pool's ties included."""
    _needs_cuda_backend()
    from tests.gpu_checks import tf32_flags

    gen = torch.Generator(device="cuda").manual_seed(0)

    def ints(*shape, high=3):
        return torch.randint(-high, high + 1, shape, device="cuda", generator=gen).to(dtype)

    x = ints(4, 16, 12, 12)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    w, gy = ints(32, 16, 3, 3, high=2).requires_grad_(), ints(4, 32, 6, 6, high=2)

    def step():
        y = fusedops.conv_relu_maxpool2d(x, w, padding=1, pool_kernel_size=2, backend="cuda")
        # and the input gradient alone (the weight frozen), which reads no copy of x
        frozen = fusedops.conv_relu_maxpool2d(x, w.detach(), padding=1, pool_kernel_size=2, backend="cuda")
        return (y, *torch.autograd.grad(y, (x, w), gy), *torch.autograd.grad(frozen, x, gy))

    with tf32_flags(True):
        runs, launched = _cuda_kernels(step)
        monkeypatch.setenv("FUSEDOPS_CUDA_CHANNEL_RUNS", "0")
        tiles, launched_off = _cuda_kernels(step)
    names = " ".join(launched)
    assert "conv_pool_runs_kernel" in names and "conv_grads_runs_kernel" in names, sorted(launched)
    off = " ".join(launched_off)
    assert "conv_pool_gemm_kernel" in off and "conv_grads_kernel" in off and "runs_kernel" not in off, \
        sorted(launched_off)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    assert all(t.is_contiguous(memory_format=fmt) for t in (runs[1], runs[3], tiles[1], tiles[3]))
    assert torch.equal(runs[3], runs[1])
    for what, a, b in zip(("y", "dx", "dw", "dx alone"), runs, tiles):
        assert torch.equal(a, b), f"{what}: runs and tiles differ at {(a != b).nonzero()[:5].tolist()}"


@pytest.mark.gpu
def test_gpu_bad_inputs_get_clear_errors():
    _needs_cuda_backend()
    args = ([1, 1], [0, 0, 0, 0], [1, 1], 1, [2, 2], [2, 2], [0, 0], [1, 1], False)
    x = torch.randn(1, 3, 8, 8, device="cuda")
    with pytest.raises(RuntimeError, match="weight must be a CUDA tensor"):
        torch.ops.fusedops.native_conv_block_forward(x, torch.randn(2, 3, 3, 3), None, *args)
    with pytest.raises(TypeError, match="supports float32, float64, float16 and bfloat16"):
        torch.ops.fusedops.native_conv_block_forward(x.int(), torch.randn(2, 3, 3, 3, device="cuda").int(), None, *args)
    # A wrong shape is a ValueError, as on the CPU backend (tests/test_cpp_backend.py).
    with pytest.raises(ValueError, match=r"bias must have shape \(2,\), got \[3\]"):
        torch.ops.fusedops.native_conv_block_forward(x, torch.randn(2, 3, 3, 3, device="cuda"),
                                                     torch.randn(3, device="cuda"), *args)
    # Far-side padding counts too: rows reached at 2^32 (stride 65536 over 2^32 bottom padding).
    one = torch.ones(1, 1, 1, 1, device="cuda")
    with pytest.raises(ValueError, match="padded, stay below 2"):
        torch.ops.fusedops.native_conv_block_forward(one, one, None, [65536, 1], [0, 2**32, 0, 0], [1, 1], 1,
                                                     [], [1, 1], [0, 0], [1, 1], False)
    with pytest.raises(ValueError, match="input has 4 features"):
        torch.ops.fusedops.native_linear_forward(torch.randn(2, 4, device="cuda"), torch.randn(3, 5, device="cuda"),
                                                 None, "relu")
