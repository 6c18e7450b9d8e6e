"""The Triton launchers' arguments: device guard, strided bias, index width, grid limits.

What a GPU launch would get wrong without these is checked here on CPU tensors: the launch
arguments themselves (recorded instead of launched, on meta tensors of any size), and the
kernels' 64-bit and split-grid paths under the interpreter, forced onto small problems
(``triton_cpu``: skipped where Triton compiles for a GPU instead, see tests/harness.py; the
same compiled for the GPU there, gpu-marked).
"""

import contextlib
import types

import pytest
import torch
import triton
import triton.language as tl

import fusedops
from fusedops.functional import conv_block_params
from fusedops.triton import _launch
from fusedops.triton import conv_block as conv_kernels
from fusedops.triton import forced_tiles as tiles
from fusedops.triton import linear as linear_kernels
from fusedops.triton import reduce as reduce_kernels

CONV_KERNELS = ("conv_block_fwd_kernel", "conv_block_dx_kernel", "conv_block_dw_kernel", "conv_block_dw_runs_kernel")
LINEAR_KERNELS = ("linear_fwd_kernel", "linear_dx_kernel", "linear_dw_kernel")
REDUCE_KERNELS = ("sum_slices_kernel",)


class _Recorder:
    """Stands in for a kernel: ``kernel[grid](*args, **kwargs)`` records the launch (and runs
    the real kernel when ``real`` is given)."""

    def __init__(self, name, launches, real=None, check=None):
        self.name, self.launches, self.real, self.check = name, launches, real, check

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            if self.check is not None:
                self.check(self.name)
            self.launches.append(types.SimpleNamespace(name=self.name, grid=tuple(grid), args=args, kwargs=kwargs))
            if self.real is not None:
                return self.real[grid](*args, **kwargs)
            return None

        return launch


def _record(monkeypatch, run=False, check=None):
    # On CUDA a launch goes to the compiled handle, not through ``kernel[grid]``: off here so
    # that the stand-ins see every launch (the direct path has tests of its own below).
    monkeypatch.setenv("FUSEDOPS_TRITON_FAST_LAUNCH", "0")
    launches = []
    for module, names in ((conv_kernels, CONV_KERNELS), (linear_kernels, LINEAR_KERNELS),
                          (reduce_kernels, REDUCE_KERNELS)):
        for name in names:
            real = getattr(module, name)
            monkeypatch.setattr(module, name, _Recorder(name, launches, real if run else None, check))
    return launches


def _conv_launches(x, w, b, **kwargs):
    p = conv_block_params(w.shape[-1], **kwargs)
    y, offsets = conv_kernels.forward(x, w, b, p)
    conv_kernels.backward(torch.empty_like(y), x, w, offsets, p, [True, True, b is not None])


def _linear_launches(x, w, b, activation=""):
    y, saved = linear_kernels.forward(x, w, b, activation)
    linear_kernels.backward(torch.empty_like(y), x, w, saved, activation, [True, True, b is not None])


# Under the interpreter here; compiled on a GPU (gpu-marked).
ON_DEVICES = pytest.mark.parametrize("backend,device", [pytest.param("triton", "cpu", marks=pytest.mark.triton_cpu),
                                                        pytest.param("triton", "cuda", marks=pytest.mark.gpu)])


# --- device guard -----------------------------------------------------------------------------


def test_on_device_enters_the_tensors_cuda_device():
    guard = _launch.on_device(types.SimpleNamespace(device=torch.device("cuda", 1)))
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1
    assert isinstance(_launch.on_device(torch.empty(1)), contextlib.nullcontext)


@pytest.mark.triton_cpu
def test_every_launch_runs_inside_the_inputs_device_guard(monkeypatch):
    guarded = []

    @contextlib.contextmanager
    def recording_guard(t):
        guarded.append(t.device)
        yield
        guarded.pop()

    def check(name):
        assert guarded, f"{name} launched outside on_device(input)"

    monkeypatch.setattr(_launch, "on_device", recording_guard)
    launches = _record(monkeypatch, run=True, check=check)
    monkeypatch.setattr(_launch, "MIN_SLICE_STEPS", 1)  # split the weight gradients' reductions
    _conv_launches(torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3), torch.randn(4), padding=1)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)  # runs of channels: TF32
    _conv_launches(torch.randn(2, 16, 6, 6), torch.randn(16, 16, 3, 3), torch.randn(16), padding=1)
    _linear_launches(torch.randn(50, 7), torch.randn(6, 7), torch.randn(6), "relu")
    assert sorted({ln.name for ln in launches}) == sorted(CONV_KERNELS + LINEAR_KERNELS + REDUCE_KERNELS)


# --- launch path: plans and direct launches of the compiled handle -------------------------------


class _FakeParam:
    def __init__(self, name, constexpr=False, default=None):
        self.name, self.is_constexpr, self.default = name, constexpr, default


class _FakeCompiled:
    """Stands in for Triton's CompiledKernel: records ``run`` calls."""

    def __init__(self, calls, alignment):
        self.calls, self.function, self.packed_metadata = calls, f"function{alignment}", "metadata"

    @property
    def run(self):
        return lambda *args: self.calls.append(args)


class _FakeKernel:
    """Stands in for a ``JITFunction`` ``k(a_ptr, b_ptr, n, s, A: constexpr, B: constexpr = 4)``."""

    __name__ = "fake_kernel"

    def __init__(self):
        self.params = [_FakeParam("a_ptr"), _FakeParam("b_ptr"), _FakeParam("n"), _FakeParam("s"),
                       _FakeParam("A", True), _FakeParam("B", True, 4)]
        self.warmups, self.runs, self.jit_launches = [], [], []

    def warmup(self, *args, grid, **kwargs):
        self.warmups.append((args, grid, kwargs))
        return _FakeCompiled(self.runs, args[0].data_ptr() % 16 == 0)

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.jit_launches.append((grid, args, kwargs))


class _FakeCudaTensor:
    def __init__(self, ptr, index=0):
        self.device, self._ptr = torch.device("cuda", index), ptr

    def data_ptr(self):
        return self._ptr


@pytest.fixture
def fake_cuda(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # compiled kernels, as on a GPU machine
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda index: 1000 + index, raising=False)
    monkeypatch.setattr(_launch, "on_device", lambda t: contextlib.nullcontext())


def test_direct_launch_passes_tensors_scalars_and_constexprs_in_signature_order(fake_cuda):
    kernel = _FakeKernel()
    launch = _launch.KernelLaunch(kernel, (3, 2, 1), (10, 7), {"A": 5, "num_warps": 4})
    a, b = _FakeCudaTensor(4096), _FakeCudaTensor(8192)
    launch.launch(a, b)
    launch.launch(a, b)
    assert len(kernel.warmups) == 1 and kernel.warmups[0] == ((a, b, 10, 7), (3, 2, 1), {"A": 5, "num_warps": 4})
    assert kernel.runs == [(3, 2, 1, 1000, "functionTrue", "metadata", None, None, None, a, b, 10, 7, 5, 4)] * 2
    assert kernel.jit_launches == []


def test_direct_launch_fetches_a_handle_per_pointer_alignment(fake_cuda):
    """Triton specialises a kernel on 16-byte pointer alignment: a misaligned view must not
    reuse the handle compiled for aligned pointers."""
    kernel = _FakeKernel()
    launch = _launch.KernelLaunch(kernel, (1, 1, 1), (10, 7), {"A": 5})
    launch.launch(_FakeCudaTensor(4096), _FakeCudaTensor(8192))
    launch.launch(_FakeCudaTensor(4100), _FakeCudaTensor(8192))
    launch.launch(_FakeCudaTensor(4112), _FakeCudaTensor(8192))
    assert len(kernel.warmups) == 2
    assert [r[4] for r in kernel.runs] == ["functionTrue", "functionFalse", "functionTrue"]


@pytest.mark.parametrize("reason", ["environment", "hook", "cpu", "interpreter"])
def test_launches_go_through_the_jit_where_the_direct_path_does_not_apply(fake_cuda, monkeypatch, reason):
    kernel = _FakeKernel()
    launch = _launch.KernelLaunch(kernel, (2, 1, 1), (10, 7), {"A": 5})
    tensors = (_FakeCudaTensor(4096), _FakeCudaTensor(8192))
    if reason == "environment":
        monkeypatch.setenv("FUSEDOPS_TRITON_FAST_LAUNCH", "0")
    elif reason == "interpreter":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    elif reason == "hook":
        hooks = triton.knobs.runtime.launch_enter_hook
        monkeypatch.setattr(hooks, "calls", [print])
    else:
        tensors = (torch.zeros(1), torch.zeros(1))
    launch.launch(*tensors)
    assert kernel.jit_launches == [((2, 1, 1), (*tensors, 10, 7), {"A": 5})]
    assert kernel.warmups == [] and kernel.runs == []


def test_plans_are_reused_per_problem_and_rebuilt_for_a_new_one(monkeypatch):
    builds = []
    real = conv_kernels._forward_plan
    monkeypatch.setattr(conv_kernels, "_forward_plan", lambda *a: builds.append(a) or real(*a))
    monkeypatch.setattr(_launch.KernelLaunch, "launch", lambda self, *tensors: None)
    x, w = torch.randn(2, 3, 8, 8, device="meta"), torch.randn(4, 3, 3, 3, device="meta")
    p = conv_block_params((3, 3), padding=1)
    for _ in range(3):
        conv_kernels.forward(x, w, None, p)
    assert len(builds) == 1
    conv_kernels.forward(x.contiguous(memory_format=torch.channels_last), w, None, p)  # new strides
    conv_kernels.forward(x, w, torch.randn(4, device="meta"), p)  # a bias
    conv_kernels.forward(x, w, None, conv_block_params((3, 3), padding=0))  # new parameters
    assert len(builds) == 4


@pytest.mark.gpu
def test_direct_launches_match_jit_launches_for_aligned_and_misaligned_inputs(monkeypatch):
    """On a GPU: the same problem through the compiled handle and through ``JITFunction.run``,
    with 16-byte aligned inputs and then a misaligned view of the same shape and strides
    (a handle specialised for aligned pointers must not be reused for it)."""
    f32 = dict(device="cuda", dtype=torch.float32)
    w, b = torch.randn(8, 4, 3, 3, **f32), torch.randn(8, **f32)
    aligned = torch.randn(2, 4, 10, 10, **f32)
    misaligned = torch.randn(aligned.numel() + 1, **f32)[1:].view(aligned.shape)
    misaligned.copy_(aligned)
    assert misaligned.data_ptr() % 16 and not aligned.data_ptr() % 16
    p = conv_block_params((3, 3), padding=1)
    g = torch.randn(2, 8, 5, 5, **f32)
    results = {}
    for mode in ("1", "0"):
        monkeypatch.setenv("FUSEDOPS_TRITON_FAST_LAUNCH", mode)
        for name, x in (("aligned", aligned), ("misaligned", misaligned)):
            y, off = conv_kernels.forward(x, w, b, p)
            results[mode, name] = (y, off, *conv_kernels.backward(g, x, w, off, p, [True, True, True]))
    for (mode, name), got in results.items():  # the same kernel for the same specialisation: equal bits
        for a, e in zip(got, results["0", name]):
            assert torch.equal(a, e), (mode, name)
    for a, e in zip(results["1", "misaligned"], results["1", "aligned"]):
        torch.testing.assert_close(a, e)


# --- strided bias -------------------------------------------------------------------------------


@ON_DEVICES
def test_conv_block_reads_a_strided_bias(backend, device):
    f64 = dict(dtype=torch.float64, device=device)
    x, w = torch.randn(2, 3, 9, 9, **f64), torch.randn(5, 3, 3, 3, **f64)
    b = torch.randn(10, **f64)[::2]  # stride 2
    b_ref = b.detach().clone().requires_grad_()
    b.requires_grad_()
    y = fusedops.conv_relu_maxpool2d(x, w, b, padding=1, backend=backend)
    want = fusedops.conv_relu_maxpool2d(x, w, b_ref, padding=1, backend="reference")
    torch.testing.assert_close(y, want)
    y.sum().backward()
    want.sum().backward()
    torch.testing.assert_close(b.grad, b_ref.grad)


@ON_DEVICES
def test_linear_reads_a_strided_bias(backend, device):
    f64 = dict(dtype=torch.float64, device=device)
    x, w = torch.randn(4, 7, **f64), torch.randn(6, 7, **f64)
    b = torch.randn(6, 3, **f64)[:, 1]  # stride 3
    torch.testing.assert_close(fusedops.linear(x, w, b, activation="gelu", backend=backend),
                               fusedops.linear(x, w, b, activation="gelu", backend="reference"))


# --- index width ---------------------------------------------------------------------------------


def test_index_dtype_switches_to_int64_at_2_to_the_31():
    assert _launch.index_dtype(2**31 - 1, 5) == tl.int32
    assert _launch.index_dtype(3, 2**31) == tl.int64
    t = torch.empty(300).as_strided((3, 4), (100, 1))
    assert _launch.extent(t) == 2 * 100 + 3 + 1
    assert _launch.extent(torch.empty(5, 0)) == 0


def test_launchers_pick_64_bit_indices_past_2_to_the_31_elements(monkeypatch):
    launches = _record(monkeypatch)
    meta = dict(device="meta", dtype=torch.float32)
    # 8200 x 1 x 512 x 512 > 2^31 input elements (the input-gradient rows N*H*W as well).
    _conv_launches(torch.empty(8200, 1, 512, 512, **meta), torch.empty(4, 1, 3, 3, **meta),
                   torch.empty(4, **meta), padding=1)
    _linear_launches(torch.empty(40000, 65536, **meta), torch.empty(8, 65536, **meta), torch.empty(8, **meta))
    launches[:] = [ln for ln in launches if ln.name in CONV_KERNELS + LINEAR_KERNELS]
    assert len(launches) == 6
    assert all(ln.kwargs["IDX"] == tl.int64 for ln in launches), [(ln.name, ln.kwargs["IDX"]) for ln in launches]
    launches.clear()
    _conv_launches(torch.empty(8, 1, 512, 512, **meta), torch.empty(4, 1, 3, 3, **meta), None, padding=1)
    _linear_launches(torch.empty(400, 655, **meta), torch.empty(8, 655, **meta), None)
    assert all(ln.kwargs["IDX"] == tl.int32 for ln in launches if ln.name in CONV_KERNELS + LINEAR_KERNELS)


def test_weight_gradient_slice_ends_past_2_to_the_31_take_64_bit_indices(monkeypatch):
    # 2^31 - 64 conv positions, every tensor under 2^31 elements: the last reduction slice's end
    # (its start + the slice length) passes 2^31, and would wrap in int32 (its slice skipped).
    launches = _record(monkeypatch)
    meta = dict(device="meta", dtype=torch.float32)
    x = torch.empty(64, 1, 18631, 1801, **meta)
    assert x.numel() == 2**31 - 64
    _conv_launches(x, torch.empty(1, 1, 3, 3, **meta), torch.empty(1, **meta), padding=1, pool_kernel_size=None)
    (dw,) = [ln for ln in launches if ln.name == "conv_block_dw_kernel"]
    assert dw.kwargs["IDX"] == tl.int64
    # The same with 8x fewer images stays in int32.
    launches.clear()
    _conv_launches(torch.empty(8, 1, 18631, 1801, **meta), torch.empty(1, 1, 3, 3, **meta), torch.empty(1, **meta),
                   padding=1, pool_kernel_size=None)
    (dw,) = [ln for ln in launches if ln.name == "conv_block_dw_kernel"]
    assert dw.kwargs["IDX"] == tl.int32


def test_input_gradient_of_an_expanded_batch_counts_its_dense_extent(monkeypatch):
    # x expanded over 2^14 images addresses 2^18 elements, but grad_input is dense: 2^32.
    launches = _record(monkeypatch)
    meta = dict(device="meta", dtype=torch.float32)
    x = torch.empty(1, 64, 64, 64, **meta).expand(2**14, 64, 64, 64)
    _conv_launches(x, torch.empty(16, 64, 3, 3, **meta), None, padding=1)
    (dx,) = [ln for ln in launches if ln.name == "conv_block_dx_kernel"]
    assert dx.kwargs["IDX"] == tl.int64


# --- grid limits ---------------------------------------------------------------------------------


def _assert_grids_within_limits(launches):
    for ln in launches:
        x, y, z = ln.grid
        assert 1 <= x <= 2**31 - 1 and 1 <= y <= 65535 and 1 <= z <= 65535, (ln.name, ln.grid)


def test_grids_stay_within_cuda_limits_for_many_groups_and_features(monkeypatch):
    launches = _record(monkeypatch)
    meta = dict(device="meta", dtype=torch.float32)
    _conv_launches(torch.empty(1, 70000, 6, 6, **meta), torch.empty(70000, 1, 3, 3, **meta),
                   torch.empty(70000, **meta), groups=70000)
    _linear_launches(torch.empty(64, 2_500_000, **meta), torch.empty(16, 2_500_000, **meta), None)
    _linear_launches(torch.empty(8, 16, **meta), torch.empty(4_200_000, 16, **meta), None)
    assert len([ln for ln in launches if ln.name in CONV_KERNELS + LINEAR_KERNELS]) == 9
    _assert_grids_within_limits(launches)
    assert max(ln.grid[2] for ln in launches) > 1  # the split was needed


def test_split_grid_refuses_what_no_grid_holds():
    assert _launch.split_grid(5, 70000) == (5, 65535, 2)
    with pytest.raises(RuntimeError, match="grid limits"):
        _launch.split_grid(5, 65535 * 65535 + 1)


# --- the kernels' 64-bit and split-grid paths, computed ----------------------------------------


@pytest.fixture(params=["int64 indices", "split grid", "split reduction"])
def forced_path(request, monkeypatch):
    """Run small problems through the path large ones take: int64 index math, grids whose
    y dimension holds 2 programs (so group and column tiles spill into z), or weight
    gradients whose reduction is split into slices (one BLOCK step each, as many as fit)."""
    if request.param == "int64 indices":
        monkeypatch.setattr(_launch, "INT32_LIMIT", 1)
    elif request.param == "split grid":
        monkeypatch.setattr(_launch, "GRID_YZ_MAX", 2)
    else:
        monkeypatch.setattr(_launch, "MIN_SLICE_STEPS", 1)
        monkeypatch.setattr(_launch, "INTERPRETER_SMS", 1000)
    return request.param


def _check_forced_path(forced_path, launches, split_z):
    """The launches took the forced path: ``split_z`` says which main launches must spill into z."""
    main = [ln for ln in launches if ln.name in CONV_KERNELS + LINEAR_KERNELS]
    if forced_path == "int64 indices":
        assert all(ln.kwargs["IDX"] == tl.int64 for ln in main)
    elif forced_path == "split grid":
        assert [ln.grid[2] > 1 for ln in main] == split_z
    else:  # each weight gradient split, its partial sums (weight, bias) added by sum_slices
        assert [ln.kwargs.get("SPLIT") for ln in main] == [None, None, True]
        assert [ln.name for ln in launches[len(main):]] == ["sum_slices_kernel"] * 2


@ON_DEVICES
@pytest.mark.parametrize("kwargs", [dict(padding=1, groups=3), dict(pool_kernel_size=3, pool_stride=2, pool_padding=1),
                                    dict(pool_kernel_size=None, stride=2)], ids=["groups", "overlap", "nopool"])
def test_conv_block_kernels_on_the_forced_path(monkeypatch, forced_path, kwargs, backend, device):
    launches = _record(monkeypatch, run=True)
    f64 = dict(dtype=torch.float64, device=device)
    x = torch.randn(2, 6, 9, 8, **f64)
    w = torch.randn(72, 6 // kwargs.get("groups", 1), 3, 3, **f64)
    b = torch.randn(72, **f64)
    p = conv_block_params((3, 3), **kwargs)
    out, off = conv_kernels.forward(x, w, b, p)
    ref_out, ref_off = torch.ops.fusedops.conv_block_forward(x, w, b, *p, "reference")
    torch.testing.assert_close(out, ref_out)
    assert torch.equal(off, ref_off)
    g = torch.randn_like(out)
    got = conv_kernels.backward(g, x, w, off, p, [True, True, True])
    want = torch.ops.fusedops.conv_block_backward(g, x, w, ref_off, *p[:8], [True, True, True], "reference")
    for a, b_ in zip(got, want):
        torch.testing.assert_close(a, b_)
    # split grid: every launch with more than 2 column tiles x groups spreads over z
    _check_forced_path(forced_path, launches, [True, kwargs.get("groups", 1) > 1, True])


@ON_DEVICES
def test_linear_kernels_on_the_forced_path(monkeypatch, forced_path, backend, device):
    launches = _record(monkeypatch, run=True)
    f64 = dict(dtype=torch.float64, device=device)
    x, w, b = torch.randn(70, 50, **f64), torch.randn(70, 50, **f64), torch.randn(70, **f64)
    out, saved = linear_kernels.forward(x, w, b, "silu")
    ref_out, ref_saved = torch.ops.fusedops.linear_forward(x, w, b, "silu", "reference")
    torch.testing.assert_close(out, ref_out)
    g = torch.randn_like(out)
    got = linear_kernels.backward(g, x, w, saved, "silu", [True, True, True])
    want = torch.ops.fusedops.linear_backward(g, x, w, ref_saved, "silu", [True, True, True], "reference")
    for a, b_ in zip(got, want):
        torch.testing.assert_close(a, b_)
    _check_forced_path(forced_path, launches, [True, True, True])


# --- the forward's runs of channels ------------------------------------------------------------


def _ints(shape, low, high, scale=1.0, seed=0):
    """Small integers times ``scale``: exact in bfloat16 and TF32 and in any summation order."""
    return torch.randint(low, high, shape, generator=torch.Generator().manual_seed(seed)).float() * scale


def _moved(x, device, dtype):
    """``x`` on ``device`` in ``dtype`` with its layout kept: ``.to`` makes an expanded tensor
    dense, so the dims it expands are moved as one element and expanded again there."""
    base = x
    for d in range(x.dim()):
        if x.stride(d) == 0 and x.size(d) > 1:
            base = base.narrow(d, 0, 1)
    return base.to(device=device, dtype=dtype).expand(x.shape)


def _run_case_tensors(make_x, cout, kernel, groups, dtype, device):
    """``x`` from ``make_x`` (moved with its layout), and a weight and bias of small integers
    times quarters (exact in every precision and summation order) for ``cout`` filters of size
    ``kernel``."""
    x = _moved(make_x(), device, dtype)
    w = _ints((cout, x.shape[1] // groups, *kernel), -2, 3, 0.25, seed=1).to(device=device, dtype=dtype)
    b = _ints((cout,), -8, 9, 0.25, seed=2).to(device=device, dtype=dtype)
    return x, w, b


# (input, out channels, kernel, conv-block kwargs, dtype, read from a channels_last copy)
_RUN_CASES = {
    "pool2 nchw": (lambda: _ints((2, 32, 11, 10), -3, 4), 24, (3, 3), dict(padding=1), torch.float32, True),
    "pool2 channels_last": (lambda: _ints((2, 32, 11, 10), -3, 4).to(memory_format=torch.channels_last), 24, (3, 3),
                            dict(padding=1), torch.float32, False),
    "groups, stride, dilation, overlapping pool": (
        lambda: _ints((2, 64, 11, 10), -3, 4), 24, (3, 3),
        dict(groups=2, stride=2, dilation=2, padding=(2, 1), pool_kernel_size=3, pool_stride=2, pool_padding=1),
        torch.float32, True),
    "2x3 kernel, stride (2, 1), dilation (1, 2), pool (2, 3)/(1, 2)": (
        lambda: _ints((2, 16, 13, 14), -3, 4).to(memory_format=torch.channels_last), 8, (2, 3),
        dict(stride=(2, 1), dilation=(1, 2), padding=1, pool_kernel_size=(2, 3), pool_stride=(1, 2)),
        torch.float32, False),
    "48 channels: three runs a tap, bfloat16": (lambda: _ints((2, 48, 9, 9), -3, 4), 16, (3, 3), dict(padding=1),
                                                torch.bfloat16, True),
    "4356 rows: 32-channel steps": (lambda: _ints((4, 64, 66, 66), -3, 4), 8, (3, 3), dict(padding=1),
                                    torch.float32, True),
    "a channel slice of channels_last": (
        lambda: _ints((2, 40, 9, 9), -3, 4).to(memory_format=torch.channels_last)[:, 4:36], 8, (3, 3),
        dict(padding=1), torch.float32, False),
    "an expanded batch: strided runs": (lambda: _ints((1, 32, 9, 9), -3, 4).expand(3, 32, 9, 9), 8, (3, 3),
                                        dict(padding=1), torch.float32, False),
}


@ON_DEVICES
@pytest.mark.parametrize("case", list(_RUN_CASES))
def test_conv_block_forward_steps_over_runs_of_channels(monkeypatch, case, backend, device):
    """Channels per group a multiple of BLOCK_K, tensor-core precisions (float32 as TF32,
    bfloat16): the forward's K loop takes (kh, kw, ci) steps of BLOCK_K channels, with the
    weight permuted to (Cout, KH, KW, Cg) and a dense NCHW input read from a channels_last copy
    (other layouts in place, through their strides). Small integers and quarters are exact in
    any precision and summation order, so the result is exactly the reference's (ties
    included) and the per-element gather's (``CHANNEL_RUNS=0``)."""
    make_x, cout, kernel, kwargs, dtype, copied = _RUN_CASES[case]
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    launches = _record(monkeypatch, run=True)
    groups = kwargs.get("groups", 1)
    x, w, b = _run_case_tensors(make_x, cout, kernel, groups, dtype, device)
    p = conv_block_params(kernel, **kwargs)
    out, off = conv_kernels.forward(x, w, b, p)
    ref_out, ref_off = torch.ops.fusedops.conv_block_forward(x.double(), w.double(), b.double(), *p, "reference")
    assert torch.equal(out.double(), ref_out) and torch.equal(off, ref_off)
    assert (off >= 0).any() and (off == -1).any()  # both sides of the ReLU
    monkeypatch.setenv("FUSEDOPS_TRITON_CHANNEL_RUNS", "0")
    gathered, gathered_off = conv_kernels.forward(x, w, b, p)
    assert torch.equal(gathered, out) and torch.equal(gathered_off, off)
    fwd = [ln for ln in launches if ln.name == "conv_block_fwd_kernel"]
    assert [ln.kwargs["CG_RUN"] for ln in fwd] == [x.shape[1] // groups, 0]
    if case == "4356 rows: 32-channel steps":
        assert fwd[0].kwargs["BLOCK_K"] == 32
    read = fwd[0].args[0]
    if copied:
        assert read.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous(
            memory_format=torch.channels_last)
    else:
        assert read is x  # in place
    assert fwd[0].args[1].is_contiguous() and torch.equal(fwd[0].args[1], w.permute(0, 2, 3, 1))


# (input, out channels, kernel, conv-block kwargs, dtype, output gradient (in y's layout, or a
# sum's: expanded), which of dy, offsets, x are read from channels_last copies)
_BACKWARD_RUN_CASES = {
    "nchw: channels_last copies": (lambda: _ints((2, 32, 11, 10), -3, 4), 32, (3, 3), dict(padding=1),
                                   torch.float32, "ints", (True, True, True)),
    "channels_last in place, 64 output channels": (
        lambda: _ints((2, 32, 11, 10), -3, 4).to(memory_format=torch.channels_last), 64, (3, 3), dict(padding=1),
        torch.float32, "ints", (False, False, False)),
    "groups, stride, dilation, overlapping pool": (
        lambda: _ints((2, 64, 11, 10), -3, 4), 64, (3, 3),
        dict(groups=2, stride=2, dilation=2, padding=(2, 1), pool_kernel_size=3, pool_stride=2, pool_padding=1),
        torch.float32, "ints", (True, True, True)),
    "2x3 kernel, stride (2, 1), dilation (1, 2), pool (2, 3)/(1, 2)": (
        lambda: _ints((2, 16, 13, 14), -3, 4).to(memory_format=torch.channels_last), 16, (2, 3),
        dict(stride=(2, 1), dilation=(1, 2), padding=1, pool_kernel_size=(2, 3), pool_stride=(1, 2)),
        torch.float32, "ints", (False, False, False)),
    "48 channels: 16-channel columns, bfloat16": (lambda: _ints((2, 48, 9, 9), -3, 4), 32, (3, 3), dict(padding=1),
                                                   torch.bfloat16, "ints", (True, True, True)),
    "a sum's gradient: expanded, read in place": (lambda: _ints((2, 16, 9, 9), -3, 4), 16, (3, 3), dict(padding=1),
                                                   torch.float32, "expanded", (False, True, True)),
    "an expanded batch: strided runs": (lambda: _ints((1, 32, 9, 9), -3, 4).expand(3, 32, 9, 9), 16, (3, 3),
                                        dict(padding=1), torch.float32, "ints", (True, True, False)),
}


@ON_DEVICES
@pytest.mark.parametrize("case", list(_BACKWARD_RUN_CASES))
def test_conv_block_backward_steps_over_runs_of_channels(monkeypatch, case, backend, device):
    """Both channel counts per group multiples of 16, tensor-core precisions: the input
    gradient steps over (kh, kw, co) runs of output channels (``CO_RUN``, the weight permuted
    to (Cout, KH, KW, Cg), as in the forward) and the weight gradient runs ``conv_block_dw_runs_kernel`` (output
    x input channels at one kernel tap), both rebuilding dc from runs of dy and the offsets;
    dense NCHW dy, offsets and x are read from channels_last copies, other layouts (an
    expanded gradient or batch) in place. Exact against the reference and the gathers."""
    make_x, cout, kernel, kwargs, dtype, grad, copied = _BACKWARD_RUN_CASES[case]
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    launches = _record(monkeypatch, run=True)
    groups = kwargs.get("groups", 1)
    x, w, b = _run_case_tensors(make_x, cout, kernel, groups, dtype, device)
    p = conv_block_params(kernel, **kwargs)
    y, off = conv_kernels.forward(x, w, b, p)
    if grad == "expanded":
        g = torch.tensor(0.5, device=device, dtype=dtype).expand(y.shape)
    else:
        fmt = fusedops.ops.conv_block.output_memory_format(x)
        g = _ints(y.shape, -4, 5, 0.5, seed=3).to(device=device, dtype=dtype, memory_format=fmt)
    launches.clear()
    got = conv_kernels.backward(g, x, w, off, p, [True, True, True])
    want = torch.ops.fusedops.conv_block_backward(g.double(), x.double(), w.double(), off, *p[:8],
                                                  [True, True, True], "reference")
    for name, a, r in zip(("input", "weight", "bias"), got, want):
        assert torch.equal(a.double(), r), name
    assert got[0].is_contiguous(memory_format=fusedops.ops.conv_block.output_memory_format(x))
    (dx,) = [ln for ln in launches if ln.name == "conv_block_dx_kernel"]
    (dw,) = [ln for ln in launches if ln.name.startswith("conv_block_dw")]
    assert dx.kwargs["CO_RUN"] == cout // groups and dw.name == "conv_block_dw_runs_kernel"
    assert dw.kwargs["CI_RUN"] == x.shape[1] // groups
    assert dx.args[2].is_contiguous() and torch.equal(dx.args[2], w.permute(0, 2, 3, 1))
    read_g, read_o, read_x = dw.args[:3]
    assert dx.args[0] is read_g and dx.args[1] is read_o
    for read, given, copy in zip((read_g, read_o, read_x), (g, off, x), copied):
        if copy:
            assert read.is_contiguous(memory_format=torch.channels_last) and torch.equal(read, given)
            assert not given.is_contiguous(memory_format=torch.channels_last)
        else:
            assert read is given
    launches.clear()
    monkeypatch.setenv("FUSEDOPS_TRITON_CHANNEL_RUNS", "0")
    gathered = conv_kernels.backward(g, x, w, off, p, [True, True, True])
    for a, r in zip(got, gathered):
        assert torch.equal(a, r)
    assert [ln.kwargs.get("CO_RUN") for ln in launches if ln.name == "conv_block_dx_kernel"] == [0]
    assert [ln.name for ln in launches if ln.name.startswith("conv_block_dw")] == ["conv_block_dw_kernel"]


@ON_DEVICES
def test_runs_of_channels_read_a_channels_last_weight_in_place(monkeypatch, backend, device):
    """The forward and the input gradient read the weight as (Cout, KH, KW, Cg): for a
    channels_last weight (``model.to(memory_format=torch.channels_last)``) that is the weight
    itself, so neither kernel gets a copy; the results (two groups) are exactly the reference's."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    launches = _record(monkeypatch, run=True)
    make_x = lambda: _ints((2, 64, 10, 10), -3, 4).to(memory_format=torch.channels_last)  # noqa: E731
    x, w, b = _run_case_tensors(make_x, 32, (3, 3), 2, torch.float32, device)
    w = w.contiguous(memory_format=torch.channels_last)
    p = conv_block_params(3, padding=1, groups=2)
    y, off = conv_kernels.forward(x, w, b, p)
    g = _ints(y.shape, -4, 5, 0.5, seed=3).to(device=device).contiguous(memory_format=torch.channels_last)
    got = conv_kernels.backward(g, x, w, off, p, [True, True, True])
    ref_y, ref_off = torch.ops.fusedops.conv_block_forward(x.double(), w.double(), b.double(), *p, "reference")
    want = torch.ops.fusedops.conv_block_backward(g.double(), x.double(), w.double(), ref_off, *p[:8],
                                                  [True, True, True], "reference")
    assert torch.equal(y.double(), ref_y) and torch.equal(off, ref_off)
    for name, a, r in zip(("input", "weight", "bias"), got, want):
        assert torch.equal(a.double(), r), name
    (fwd,) = [ln for ln in launches if ln.name == "conv_block_fwd_kernel"]
    (dx,) = [ln for ln in launches if ln.name == "conv_block_dx_kernel"]
    assert fwd.kwargs["CG_RUN"] == 32 and dx.kwargs["CO_RUN"] == 16
    assert fwd.args[1].data_ptr() == w.data_ptr() and dx.args[2].data_ptr() == w.data_ptr()


def _config(launch):
    return {k: launch.kwargs[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "num_warps")}


@ON_DEVICES
@pytest.mark.parametrize("runs", [True, False], ids=["runs of channels", "gathers"])
def test_forced_tiles_reach_the_kernels_and_compute_the_op(monkeypatch, runs, backend, device):
    """Inside ``forced_tiles`` each kernel gets the forced config (not the one its launcher
    picks, also with the runs of channels off), the results stay exactly the reference's;
    outside, the launchers' own configs come back (the plans are keyed by the forced ones)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    if not runs:
        monkeypatch.setenv("FUSEDOPS_TRITON_CHANNEL_RUNS", "0")
    launches = _record(monkeypatch, run=True)
    x, w, b = _run_case_tensors(lambda: _ints((2, 32, 9, 8), -3, 4), 32, (3, 3), 1, torch.float32, device)
    p = conv_block_params(3, padding=1)
    forced = dict(fwd=dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=32, num_warps=2),
                  dx=dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=16, num_warps=2),
                  dw=dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, num_warps=1))

    def run():
        launches.clear()
        y, off = conv_kernels.forward(x, w, b, p)
        g = _ints(y.shape, -4, 5, 0.5, seed=3).to(device=device)
        grads = conv_kernels.backward(g, x, w, off, p, [True, True, True])
        want = torch.ops.fusedops.conv_block_backward(g.double(), x.double(), w.double(), off, *p[:8],
                                                      [True, True, True], "reference")
        ref_y, ref_off = torch.ops.fusedops.conv_block_forward(x.double(), w.double(), b.double(), *p, "reference")
        assert torch.equal(y.double(), ref_y) and torch.equal(off, ref_off)
        for name, a, r in zip(("input", "weight", "bias"), grads, want):
            assert torch.equal(a.double(), r), name
        return {ln.name: _config(ln) for ln in launches if ln.name.startswith("conv_block")}

    default = run()
    with tiles.forced_tiles(**forced):
        got = run()
    dw_name = "conv_block_dw_runs_kernel" if runs else "conv_block_dw_kernel"
    assert got == {"conv_block_fwd_kernel": forced["fwd"], "conv_block_dx_kernel": forced["dx"],
                   dw_name: forced["dw"]}
    assert all(default[name] != config for name, config in got.items())  # the case tells them apart
    assert run() == default


@pytest.mark.triton_cpu
@pytest.mark.parametrize("config,message", [
    (dict(BLOCK_M=48, BLOCK_N=16, BLOCK_K=16, num_warps=4), "BLOCK_M must be a power of two >= 16"),
    (dict(BLOCK_M=64, BLOCK_N=8, BLOCK_K=16, num_warps=4), "BLOCK_N must be a power of two >= 16"),
    (dict(BLOCK_M=64, BLOCK_N=16, BLOCK_K=16, num_warps=3), "num_warps must be 1, 2, 4, 8 or 16"),
    (dict(BLOCK_M=64, BLOCK_N=16, BLOCK_K=16), "exactly BLOCK_M, BLOCK_N, BLOCK_K and num_warps"),
])
def test_forced_tiles_refuse_configs_no_kernel_runs(config, message):
    with pytest.raises(ValueError, match=message):
        with tiles.forced_tiles(dx=config):
            pass
    assert tiles.current() is tiles.NONE


@pytest.mark.triton_cpu
def test_forced_weight_gradient_tiles_must_divide_the_channel_runs(monkeypatch):
    """The runs kernel has whole tiles only: a forced BLOCK_M that does not divide a group's
    output channels (48) is refused with what it needs, before any launch."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    launches = _record(monkeypatch, run=True)
    x, w = _ints((1, 16, 6, 6), -3, 4), _ints((48, 16, 3, 3), -2, 3, 0.25, seed=1)
    p = conv_block_params(3, padding=1)
    y, off = conv_kernels.forward(x, w, None, p)
    launches.clear()
    with tiles.forced_tiles(dw=dict(BLOCK_M=32, BLOCK_N=16, BLOCK_K=16, num_warps=4)):
        with pytest.raises(ValueError, match="BLOCK_M dividing the 48 output and BLOCK_N dividing the 16 input"):
            conv_kernels.backward(torch.ones_like(y), x, w, off, p, [False, True, False])
    assert launches == []


@pytest.mark.triton_cpu
@pytest.mark.parametrize("mask", [(True, False, False), (False, True, False), (False, False, True)])
def test_backward_over_runs_of_channels_for_each_gradient_alone(monkeypatch, mask):
    """One gradient asked at a time: only its kernel runs (and decides the copies), exact."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    launches = _record(monkeypatch, run=True)
    x, w, b = _ints((2, 16, 9, 9), -3, 4), _ints((32, 16, 3, 3), -2, 3, 0.25, seed=1), _ints((32,), -8, 9, 0.25, 2)
    p = conv_block_params(3, padding=1)
    y, off = conv_kernels.forward(x, w, b, p)
    g = _ints(y.shape, -4, 5, 0.5, seed=3)
    launches.clear()
    got = conv_kernels.backward(g, x, w, off, p, list(mask))
    want = torch.ops.fusedops.conv_block_backward(g.double(), x.double(), w.double(), off, *p[:8], list(mask),
                                                  "reference")
    for asked, a, r in zip(mask, got, want):
        assert torch.equal(a.double(), r) if asked else a.numel() == 0
    names = [ln.name for ln in launches if ln.name.startswith("conv_block_d")]
    assert names == (["conv_block_dx_kernel"] if mask[0] else ["conv_block_dw_runs_kernel"])


@pytest.mark.triton_cpu
def test_backward_mixes_runs_and_gathers(monkeypatch):
    """24 input and 16 output channels: the input gradient steps over runs of output channels,
    the weight gradient gathers (24 is no multiple of 16), both reading the same copies."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    launches = _record(monkeypatch, run=True)
    x, w = _ints((2, 24, 9, 9), -3, 4), _ints((16, 24, 3, 3), -2, 3, 0.25, seed=1)
    p = conv_block_params(3, padding=1, pool_kernel_size=3, pool_stride=2, pool_padding=1)
    y, off = conv_kernels.forward(x, w, None, p)
    g = _ints(y.shape, -4, 5, 0.5, seed=3)
    launches.clear()
    got = conv_kernels.backward(g, x, w, off, p, [True, True, False])
    want = torch.ops.fusedops.conv_block_backward(g.double(), x.double(), w.double(), off, *p[:8],
                                                  [True, True, False], "reference")
    assert torch.equal(got[0].double(), want[0]) and torch.equal(got[1].double(), want[1])
    (dx,) = [ln for ln in launches if ln.name == "conv_block_dx_kernel"]
    (dw,) = [ln for ln in launches if ln.name.startswith("conv_block_dw")]
    assert dx.kwargs["CO_RUN"] == 16 and dw.name == "conv_block_dw_kernel"
    assert dw.args[0] is dx.args[0] and dw.args[0].is_contiguous(memory_format=torch.channels_last)
    assert dw.args[2] is x  # the gather reads x in place


@pytest.mark.triton_cpu
def test_backward_with_no_channels_in_a_group(monkeypatch):
    """Cout = 0 and Cin = 0 through the raw ops: no weight-gradient tiles over runs of zero
    channels (no program may index past an empty tensor); with no input channels the conv is
    its bias, so each channel's bias gradient counts the pooled outputs where the bias is > 0."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    assert conv_kernels.conv_block_dw_runs_configs(16, 0, torch.bfloat16) is None
    assert conv_kernels.conv_block_dw_runs_configs(0, 16, torch.bfloat16) is None
    p = conv_block_params(3, padding=1)
    x, w, b = torch.ones(1, 16, 4, 4), torch.zeros(0, 16, 3, 3), torch.zeros(0)
    y, off = torch.ops.fusedops.conv_block_forward(x, w, b, *p, "triton")
    grads = torch.ops.fusedops.conv_block_backward(torch.zeros_like(y), x, w, off, *p[:8], [True, True, True],
                                                   "triton")
    assert [tuple(t.shape) for t in grads] == [(1, 16, 4, 4), (0, 16, 3, 3), (0,)]
    assert torch.equal(grads[0], torch.zeros(1, 16, 4, 4))
    x, w, b = torch.ones(1, 0, 4, 4), torch.zeros(16, 0, 3, 3), torch.arange(16.0) - 4
    y, off = torch.ops.fusedops.conv_block_forward(x, w, b, *p, "triton")
    _, _, db = torch.ops.fusedops.conv_block_backward(torch.ones_like(y), x, w, off, *p[:8], [False, True, True],
                                                      "triton")
    assert torch.equal(db, torch.where(b > 0, 4.0, 0.0))


def test_weight_gradient_runs_need_whole_tiles_of_both_channel_counts(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    configs = conv_kernels.conv_block_dw_runs_configs
    assert configs(64, 128, torch.bfloat16) == {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "num_warps": 4}
    assert configs(32, 64, torch.float32) == {"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 16, "num_warps": 4}
    assert configs(64, 64, torch.float32)["num_warps"] == 8
    assert configs(48, 16, torch.float16)["BLOCK_N"] == 16
    assert configs(24, 64, torch.bfloat16) is None and configs(64, 24, torch.bfloat16) is None
    assert configs(64, 64, torch.float64) is None
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert configs(64, 64, torch.float32) is None  # IEEE float32: the gather
    assert configs(64, 64, torch.bfloat16) is not None


def test_channel_runs_need_whole_blocks_of_channels_and_tensor_cores():
    assert conv_kernels.channel_run(torch.bfloat16, "ieee", 64, 32) == 64
    assert conv_kernels.channel_run(torch.float32, "tf32", 48, 16) == 48
    assert conv_kernels.channel_run(torch.float32, "ieee", 48, 16) == 0  # FMA units: the gather
    assert conv_kernels.channel_run(torch.bfloat16, "ieee", 48, 32) == 0  # a step would straddle two taps
    assert conv_kernels.channel_run(torch.float16, "ieee", 3, 16) == 0
    assert conv_kernels.channel_run(torch.float64, "ieee", 64, 16) == 0


# --- the forward's tap rows ---------------------------------------------------------------------

# (input, out channels, conv-block kwargs, forced BLOCK_M, BLOCK_K): tap-row tiles hold every
# pool tap of BLOCK_M // taps pooled outputs.
_TAP_ROW_CASES = {
    "MaxPool2d(2): 16 outputs a 64-row tile": (lambda: _ints((2, 4, 10, 9), -3, 4), 12, dict(padding=1), 64, 16),
    "overlapping 2x2 windows with padding": (
        lambda: _ints((2, 4, 7, 9), -3, 4), 12, dict(padding=1, pool_kernel_size=2, pool_stride=1, pool_padding=1),
        64, 16),
    "1x2 windows: 2 taps": (lambda: _ints((2, 4, 7, 9), -3, 4), 12, dict(padding=1, pool_kernel_size=(1, 2)), 64, 16),
    "no pool: 1 tap": (lambda: _ints((2, 4, 7, 9), -3, 4), 12, dict(padding=1, pool_kernel_size=None), 64, 16),
    "2x4 windows: 8 taps, 8 outputs a tile": (lambda: _ints((2, 4, 9, 13), -3, 4), 12,
                                              dict(padding=1, pool_kernel_size=(2, 4)), 64, 16),
    "4x4 windows: 16 taps, 128 rows": (lambda: _ints((2, 4, 13, 13), -3, 4), 12,
                                       dict(padding=1, pool_kernel_size=4), 128, 16),
    "groups, stride, dilation, no bias": (lambda: _ints((2, 8, 13, 12), -3, 4), 12,
                                          dict(groups=2, stride=2, dilation=2, padding=2), 64, 16),
    "runs of channels from a channels_last input": (
        lambda: _ints((2, 32, 10, 9), -3, 4).to(memory_format=torch.channels_last), 24, dict(padding=1), 64, 16),
    "NaN inputs": (lambda: _ints((2, 4, 10, 9), -3, 4).index_put_((torch.tensor([0, 1]), torch.tensor([1, 0]),
                                                                   torch.tensor([3, 0]), torch.tensor([4, 0])),
                                                                  torch.tensor(float("nan"))),
                   12, dict(padding=1), 64, 16),
    "ties: a constant input": (lambda: torch.ones(2, 4, 10, 9), 12, dict(padding=1), 64, 16),
}


@ON_DEVICES
@pytest.mark.parametrize("case", list(_TAP_ROW_CASES))
def test_conv_block_forward_tap_rows_match_the_tap_loop_and_the_reference(monkeypatch, case, backend, device):
    """The tap-rows forward (every pool tap of a tile's outputs in its rows, the max taken at
    the end) gives exactly the reference's output and offsets, and the tap loop's: ties to the
    first tap, NaN propagated (the last NaN tap), padded taps never taken, any power-of-two
    window."""
    runs = "runs of channels" in case  # TF32 (exact on small integers and quarters), else IEEE float32
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", runs)
    make_x, cout, kwargs, block_m, block_k = _TAP_ROW_CASES[case]
    groups = kwargs.get("groups", 1)
    x, w, b = _run_case_tensors(make_x, cout, (3, 3), groups, torch.float32, device)
    if groups > 1:
        b = None
    p = conv_block_params(3, **kwargs)
    launches = _record(monkeypatch, run=True)
    loop = dict(BLOCK_M=block_m, BLOCK_N=16, BLOCK_K=block_k, num_warps=4)
    with tiles.forced_tiles(fwd=dict(loop, TAP_ROWS=True)):
        y, off = conv_kernels.forward(x, w, b, p)
    with tiles.forced_tiles(fwd=loop):
        loop_y, loop_off = conv_kernels.forward(x, w, b, p)
    assert [ln.kwargs.get("TAP_ROWS", False) for ln in launches] == [True, False]
    assert (launches[0].kwargs["CG_RUN"] > 0) == runs
    b64 = b.double() if b is not None else None
    ref_y, ref_off = torch.ops.fusedops.conv_block_forward(x.double(), w.double(), b64, *p, "reference")
    assert torch.equal(off, ref_off) and torch.equal(off, loop_off)
    assert torch.equal(y.isnan(), ref_y.isnan()) and torch.equal(y.double().nan_to_num(), ref_y.nan_to_num())
    assert torch.equal(y.isnan(), loop_y.isnan()) and torch.equal(y.nan_to_num(), loop_y.nan_to_num())
    if "NaN" in case:
        assert y.isnan().any()
    if "ties" in case:  # inner windows hold four equal conv values: the first tap is the max
        inner, positive = off[:, :, 1:-1, 1:-1], y[:, :, 1:-1, 1:-1] > 0
        assert positive.any() and (inner[positive] == 0).all()


@ON_DEVICES
@pytest.mark.parametrize("path", ["int64 indices", "split grid"])
def test_conv_block_forward_tap_rows_on_the_forced_path(monkeypatch, path, backend, device):
    """Tap rows through int64 index math and a grid whose groups x column tiles spill into z."""
    if path == "int64 indices":
        monkeypatch.setattr(_launch, "INT32_LIMIT", 1)
    else:
        monkeypatch.setattr(_launch, "GRID_YZ_MAX", 2)
    launches = _record(monkeypatch, run=True)
    f64 = dict(dtype=torch.float64, device=device)
    x, w, b = torch.randn(2, 6, 9, 8, **f64), torch.randn(48, 2, 3, 3, **f64), torch.randn(48, **f64)
    p = conv_block_params((3, 3), padding=1, groups=3)
    with tiles.forced_tiles(fwd=dict(BLOCK_M=32, BLOCK_N=16, BLOCK_K=16, num_warps=4, TAP_ROWS=True)):
        out, off = conv_kernels.forward(x, w, b, p)
    ref_out, ref_off = torch.ops.fusedops.conv_block_forward(x, w, b, *p, "reference")
    torch.testing.assert_close(out, ref_out)
    assert torch.equal(off, ref_off)
    (fwd,) = launches
    assert fwd.kwargs["TAP_ROWS"]
    assert fwd.kwargs["IDX"] == tl.int64 if path == "int64 indices" else fwd.grid[2] > 1


def test_forward_takes_tap_rows_where_the_products_run_on_tensor_cores(monkeypatch):
    """The launcher's own forward config: tap rows (128-row tiles, 8 warps at 128 x 128, as a
    plain conv's GEMM) for 16-bit inputs and TF32 with a window of 2, 4 or 8 taps; the tap loop
    for the FMA units (IEEE float32, float64), other windows and no pool."""
    configs = conv_kernels.conv_block_fwd_configs
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    assert configs(50176, 128, torch.bfloat16, 4) == dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=32, num_warps=8,
                                                         TAP_ROWS=True)
    assert configs(12544, 64, torch.float32, 4) == dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=32, num_warps=4,
                                                       TAP_ROWS=True)
    assert configs(100, 24, torch.float16, 4) == dict(BLOCK_M=64, BLOCK_N=32, BLOCK_K=16, num_warps=4, TAP_ROWS=True)
    assert configs(100, 24, torch.float16, 8)["TAP_ROWS"] and configs(100, 24, torch.float16, 2)["TAP_ROWS"]
    for args in ((100, 24, torch.float16, 1), (100, 24, torch.float16, 9), (100, 24, torch.float16, 16),
                 (100, 24, torch.float64, 4)):
        assert configs(*args) == conv_kernels.conv_block_configs(*args[:3])
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert configs(12544, 64, torch.float32, 4) == conv_kernels.conv_block_configs(12544, 64, torch.float32)
    # The grid covers the pooled outputs BLOCK_M // taps at a time.
    x = torch.empty(64, 64, 112, 112, device="meta", dtype=torch.bfloat16)
    w = torch.empty(128, 64, 3, 3, device="meta", dtype=torch.bfloat16)
    launch = conv_kernels._forward_plan(x, w, None, conv_block_params(3, padding=1), tiles.NONE).launch
    assert launch.kwargs["TAP_ROWS"] and launch.grid[0] == 64 * 56 * 56 // 32


@pytest.mark.triton_cpu
@pytest.mark.parametrize("kwargs,config,message", [
    (dict(pool_kernel_size=3), dict(BLOCK_M=64, BLOCK_N=16, BLOCK_K=16, num_warps=4, TAP_ROWS=True),
     "TAP_ROWS needs a power-of-two pool window of at most BLOCK_M / 8 taps, got 9 taps"),
    (dict(pool_kernel_size=(2, 4)), dict(BLOCK_M=32, BLOCK_N=16, BLOCK_K=16, num_warps=4, TAP_ROWS=True),
     "got 8 taps with BLOCK_M=32"),
])
def test_forced_tap_rows_need_a_window_that_fits(kwargs, config, message):
    x, w = _ints((1, 4, 9, 9), -3, 4), _ints((8, 4, 3, 3), -2, 3)
    with tiles.forced_tiles(fwd=config):
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            conv_kernels.forward(x, w, None, conv_block_params(3, **kwargs))


def test_forced_tiles_take_tap_rows_for_the_forward_only():
    config = dict(BLOCK_M=64, BLOCK_N=16, BLOCK_K=16, num_warps=4)
    with pytest.raises(ValueError, match="dx config must have exactly"):
        with tiles.forced_tiles(dx=dict(config, TAP_ROWS=True)):
            pass
    with pytest.raises(ValueError, match="TAP_ROWS must be a bool"):
        with tiles.forced_tiles(fwd=dict(config, TAP_ROWS=1)):
            pass
    with tiles.forced_tiles(fwd=dict(config, TAP_ROWS=True)):
        assert tiles.current().configs["fwd"]["TAP_ROWS"] is True
    assert tiles.current() is tiles.NONE


# --- blocked summation ---------------------------------------------------------------------------


def test_only_ieee_float32_reductions_are_chunked():
    assert _launch.chunk_length(4608, 32, torch.float32, "ieee") == 64  # ~sqrt(4608), whole blocks
    assert _launch.chunk_length(20, 32, torch.float32, "ieee") == 32  # at least one block
    assert _launch.chunk_length(4608, 32, torch.float32, "tf32") == 4608  # one chunk
    assert _launch.chunk_length(4600, 32, torch.bfloat16, "ieee") == 4608
    assert _launch.chunk_length(4600, 16, torch.float64, "ieee") == 4608


@ON_DEVICES
def test_chunked_float32_reductions_compute_the_op(monkeypatch, backend, device):
    """IEEE float32 (TF32 off): every K loop runs in several chunks, the weight gradient in
    several slices; the results are the op's."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    assert conv_kernels._precision(torch.float32) == "ieee"
    assert _launch.chunk_length(40 * 9, 16, torch.float32, "ieee") < 40 * 9
    f32 = dict(dtype=torch.float32, device=device)
    x, w, b = torch.randn(3, 40, 7, 7, **f32), torch.randn(24, 40, 3, 3, **f32), torch.randn(24, **f32)
    p = conv_block_params((3, 3), padding=1)
    out, off = conv_kernels.forward(x, w, b, p)
    ref_out, ref_off = torch.ops.fusedops.conv_block_forward(x.double(), w.double(), b.double(), *p, "reference")
    torch.testing.assert_close(out.double(), ref_out, rtol=1e-5, atol=1e-4)
    g = torch.randn_like(out)
    got = conv_kernels.backward(g, x, w, off, p, [True, True, True])
    want = torch.ops.fusedops.conv_block_backward(g.double(), x.double(), w.double(), off, *p[:8], [True] * 3,
                                                  "reference")
    for a, b_ in zip(got, want):
        torch.testing.assert_close(a.double(), b_, rtol=1e-5, atol=1e-4)
    x, w = torch.randn(300, 200, **f32), torch.randn(50, 200, **f32)
    assert linear_kernels._precision(torch.float32) == "ieee"
    assert _launch.chunk_length(200, 32, torch.float32, "ieee") < 200
    y, saved = linear_kernels.forward(x, w, None, "relu")
    torch.testing.assert_close(y.double(), torch.relu(x.double() @ w.double().T), rtol=1e-5, atol=1e-4)
    g = torch.randn_like(y)
    dx, dw, _ = linear_kernels.backward(g, x, w, saved, "relu", [True, True, False])
    dz = g.double() * (saved.double())
    torch.testing.assert_close(dx.double(), dz @ w.double(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(dw.double(), dz.T @ x.double(), rtol=1e-5, atol=1e-4)
