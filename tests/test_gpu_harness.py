"""The gpu-marked suite's machinery, proven here on CPU tensors so that a mistake in it cannot
waste a rare GPU run: the checks of tests/gpu_checks.py pass correct backends (``reference``,
``cpp``) and fail broken ones with the right message; the oracle helpers; the poisoning's
pure parts; the Triton prewarm's selection; the offsets and sanitize tests' checks."""

import dataclasses
import types

import pytest
import torch

from fusedops import backends
from tests import gpu_cases, gpu_checks, gpu_memory, oracle, triton_prewarm
from tests.test_gpu_offsets import NAN_CASES, TIE_CASES, check_nan_offsets, check_offsets_exactly, check_rounded_ties
from tests.test_gpu_sanitize import CONV as SANITIZE_CONV
from tests.test_gpu_sanitize import LINEAR as SANITIZE_LINEAR
from tests.test_gpu_sanitize import check_small_case

_BY_NAME = {c.id: c for c in gpu_cases.ALL_CASES}
CONV_CASES = [_BY_NAME[n] for n in ("basic_2x2_pool", "pool_padding", "pool_large_window_int16", "unbatched", "batch0",
                                    "no_pool_stride", "pool_ceil_pad", "groups2", "groups2-channels_last",
                                    "pool_padding-sliced", "odd_sizes_pad1-transposed")]
LINEAR_CASES = [_BY_NAME[n] for n in ("3x4x7-gelu-bias", "7-relu-nobias", "2x0x7-silu-bias", "5x7-gelu_tanh-nobias",
                                      "6x7-relu-sliced", "6x7-gelu-transposed", "10x40->300 silu")]
# Every precision on the reference; on cpp (no float16) the emulated-TF32 and bfloat16 paths.
CPU_PRECISIONS = {"reference": ("fp32", "tf32", "bf16", "fp16", "fp64"), "cpp": ("tf32", "bf16")}


def _cpu_params(cases):
    return [pytest.param(b, p, c, id=f"{b}-{p}-{c.id}") for b, ps in CPU_PRECISIONS.items() for p in ps for c in cases]


@pytest.mark.parametrize("backend,precision,case", _cpu_params(CONV_CASES + LINEAR_CASES))
def test_the_check_passes_a_correct_backend(monkeypatch, backend, precision, case):
    prec = gpu_checks.PRECISIONS[precision]
    if backend == "reference" and prec.dtype in (torch.float16, torch.bfloat16):
        # The reference pools torch's conv output rounded to 16 bits (torch's rule), where the
        # GPU kernels compare their float32 accumulators (tests/test_gpu_offsets.py): its
        # offsets may name any tap within a rounding of the max.
        monkeypatch.setitem(gpu_checks.PRECISIONS, precision, dataclasses.replace(prec, tap_tol=2.0**-7))
    case.check(backend, precision, device="cpu")


# --- a broken backend fails the check, saying what is wrong ---------------------------------------


class _Broken(backends.ReferenceBackend):
    """The reference backend with one defect."""

    name = "broken"
    devices = ("cpu",)

    def __init__(self, defect):
        self.defect = defect

    def conv_block_forward(self, input, weight, bias, params):
        out, offsets = super().conv_block_forward(input, weight, bias, params)
        if self.defect == "unwritten output":
            out = out.clone()
            out.view(-1)[3] = float("nan")  # what a poisoned, unwritten element reads
        elif self.defect == "unwritten offsets":
            offsets = offsets.clone()
            offsets.view(-1)[5] = 127  # 0x7F: the "big" poison
        elif self.defect == "offset not at the max":
            offsets = offsets.clone()
            flat = offsets.view(-1)
            i = int((flat >= 0).nonzero()[0])
            flat[i] = (int(flat[i]) + 1) % 4  # another tap of the 2x2 window
        return out, offsets

    def conv_block_backward(self, grad_output, input, weight, offsets, params, output_mask):
        # A GPU kernel skips an offset no window has; the reference would index out of bounds.
        offsets = gpu_checks._valid_routing(offsets, params)
        gi, gw, gb = super().conv_block_backward(grad_output, input, weight, offsets, params, output_mask)
        if self.defect == "weight gradient 1% off":
            gw = gw * 1.01
        return gi, gw, gb

    def linear_forward(self, input, weight, bias, activation):
        out, saved = super().linear_forward(input, weight, bias, activation)
        if self.defect == "relu mask flipped":
            saved = saved.clone()
            saved.view(-1)[0] = ~saved.view(-1)[0]
        return out, saved

    def linear_backward(self, grad_output, input, weight, saved, activation, output_mask):
        gi, gw, gb = super().linear_backward(grad_output, input, weight, saved, activation, output_mask)
        if self.defect == "bias gradient 1% off":
            gb = gb * 1.01
        return gi, gw, gb


@pytest.mark.parametrize("defect,message", [
    ("unwritten output", "output: non-finite values"),
    ("unwritten offsets", "offsets: 1 of .* invalid values"),
    ("offset not at the max", "taps that are not the window's max"),
    ("weight gradient 1% off", r"grad weight: error .* > 2 x torch's"),
])
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp64"])
def test_the_check_fails_a_broken_conv_backend(monkeypatch, defect, message, precision):
    monkeypatch.setitem(backends._REGISTRY, "broken", _Broken(defect))
    backends.clear_choice_cache()
    case = _BY_NAME["basic_2x2_pool"]
    if precision == "fp64" and "offset" in defect:
        message = "offsets"
    elif precision == "fp64":
        message = "output" if "output" in defect else "grad weight"
    with pytest.raises(AssertionError, match=message):
        case.check("broken", precision, device="cpu")


@pytest.mark.parametrize("defect,message", [("relu mask flipped", "relu mask: 1 of"),
                                            ("bias gradient 1% off", "grad bias")])
def test_the_check_fails_a_broken_linear_backend(monkeypatch, defect, message):
    monkeypatch.setitem(backends._REGISTRY, "broken", _Broken(defect))
    backends.clear_choice_cache()
    x = torch.randn(6, 7, dtype=torch.float64)
    w = torch.randn(5, 7, dtype=torch.float64)
    x[0] = 0.5 * w[0] / w[0].square().sum()  # row 0, feature 0: z = 0.5 + b, clear of 0 and known sign
    b = torch.zeros(5, dtype=torch.float64)
    with pytest.raises(AssertionError, match=message):
        gpu_checks.check_linear("broken", x, w, b, "relu", gpu_checks.PRECISIONS["fp32"])


def test_the_tangent_check_fails_a_wrong_tangent(monkeypatch):
    broken = _Broken("none")
    broken.conv_block_jvp = lambda *a: backends.ReferenceBackend.conv_block_jvp(broken, *a) * 1.01
    monkeypatch.setitem(backends._REGISTRY, "broken", broken)
    x, w, b, kwargs = _BY_NAME["basic_2x2_pool"].inputs("cpu")
    gpu_checks.check_conv_block_jvp("reference", x, w, b, kwargs, gpu_checks.PRECISIONS["bf16"])
    with pytest.raises(AssertionError, match="tangent"):
        gpu_checks.check_conv_block_jvp("broken", x, w, b, kwargs, gpu_checks.PRECISIONS["bf16"])


# --- the other gpu tests' checks, on CPU backends -----------------------------------------------


@pytest.mark.parametrize("case", TIE_CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("backend,precision", [("cpp", "bf16"), ("reference", "fp64")])
def test_the_offsets_check(backend, precision, case):
    check_offsets_exactly(backend, precision, case, "cpu")


# Not cpp on gemm_groups_overlap: its Winograd path (8 channels a group) turns an infinite input
# into NaN, a known bug (tests/test_properties.py::test_cpp_winograd_inf_input).
@pytest.mark.parametrize("backend,precision,case", [
    (b, "fp32", c) for b in ("cpp", "reference") for c in NAN_CASES if (b, c.name) != ("cpp", "gemm_groups_overlap")],
    ids=lambda v: getattr(v, "id", v))
def test_the_nan_offsets_check(backend, precision, case):
    check_nan_offsets(backend, precision, case, "cpu")


def test_the_rounded_ties_check():
    """cpp pools bfloat16 through its float32 kernels: the GPU kernels' rule; the reference
    backend pools torch's rounded conv output: torch's rule, which the check rejects."""
    check_rounded_ties("cpp", "bf16", "cpu")
    check_rounded_ties("reference", "fp32", "cpu")
    with pytest.raises(AssertionError, match="larger accumulated value"):
        check_rounded_ties("reference", "bf16", "cpu")


@pytest.mark.parametrize("case", SANITIZE_CONV + SANITIZE_LINEAR, ids=lambda c: c.id)
@pytest.mark.parametrize("backend,precision", [("cpp", "fp32"), ("reference", "bf16")])
def test_the_sanitize_tests_check(backend, precision, case):
    check_small_case(backend, precision, case, "cpu")


def test_every_case_launches_on_meta_tensors():
    """Each case's launching part runs for both backends' Python side (the Triton launchers
    recorded, not run): no case can fail for a typo in its arguments."""
    launches = gpu_cases.triton_launches(gpu_cases.jobs(gpu_cases.ALL_CASES, "triton"))
    kernels = {ln.kernel for ln in launches}
    assert kernels == set(gpu_cases.TRITON_KERNELS) | set(gpu_cases.TRITON_HELPER_KERNELS)
    assert all(ln.grid and min(ln.grid) >= 1 for ln in launches)


# --- oracle helpers -----------------------------------------------------------------------------


def test_max_error_counts_nan_and_mismatched_infinities_as_infinite():
    a = torch.tensor([1.0, float("inf"), -float("inf"), 2.0])
    assert oracle.max_error(a, a.clone()) == 0.0
    assert oracle.max_error(torch.tensor([1.0, float("nan")]), torch.tensor([1.0, 2.0])) == float("inf")
    assert oracle.max_error(torch.tensor([float("inf")]), torch.tensor([1.0])) == float("inf")
    assert oracle.max_error(torch.tensor([1.5], dtype=torch.bfloat16), torch.tensor([1.0])) == 0.5
    assert oracle.max_error(torch.empty(0, 3), torch.empty(0, 3)) == 0.0
    with pytest.raises(AssertionError, match="shape"):
        oracle.max_error(torch.zeros(2), torch.zeros(3))


def test_scale_and_the_twice_torch_rule():
    assert oracle.scale_of(torch.tensor([-3.0, float("inf"), 2.0])) == 3.0
    assert oracle.scale_of(torch.empty(0)) == 1.0
    assert oracle.scale_of(torch.tensor([float("nan")])) == 1.0
    assert oracle.twice_torch_violation("y", 2e-3, 1e-3, 1.0) is None
    assert "2.1x torch" in oracle.twice_torch_violation("y", 2.1e-3, 1e-3, 1.0)
    assert oracle.twice_torch_violation("y", 5e-7, 0.0, 1.0) is None  # below the float32 floor
    # A bf16 result correctly rounded at 6260 (bf16 values 32 apart there) passes whatever
    # torch's luck on a 2-element gradient; a whole ulp off does not.
    assert oracle.twice_torch_violation("db", 15.7, 5.92, 6260.0, torch.bfloat16) is None
    assert "5.4x torch" in oracle.twice_torch_violation("db", 32.0, 5.92, 6260.0, torch.bfloat16)
    assert "non-finite" in oracle.twice_torch_violation("y", float("inf"), 1e-3, 1.0)
    assert oracle.twice_torch_violations({"a": (1.0, 1.0, 1.0), "b": (3.0, 1.0, 1.0)}) == [
        oracle.twice_torch_violation("b", 3.0, 1.0, 1.0)]


def test_tf32_operand_clears_the_low_13_mantissa_bits():
    t = torch.tensor([1.0 + 2.0**-10, 1.0 + 2.0**-11, -3.0 - 2.0**-20])
    assert oracle.tf32_operand(t).tolist() == [1.0 + 2.0**-10, 1.0, -3.0]
    h = torch.tensor([1.5], dtype=torch.bfloat16)
    assert oracle.tf32_operand(h) is h and oracle.tf32_operand(None) is None


def test_window_taps_match_max_pool():
    conv = torch.randn(2, 3, 9, 8, dtype=torch.float64)
    for kwargs in (dict(), dict(pool_kernel_size=3, pool_stride=2, pool_padding=1, pool_ceil_mode=True),
                   dict(pool_kernel_size=(2, 3), pool_stride=(1, 2), pool_dilation=(2, 1))):
        p = gpu_checks.params_of((2, 3, 9, 8), 1, kwargs)
        taps = gpu_checks.window_taps(conv, p)
        want = torch.nn.functional.max_pool2d(conv, p.pool_kernel_size, p.pool_stride, p.pool_padding,
                                              p.pool_dilation, p.pool_ceil_mode)
        torch.testing.assert_close(taps.max(dim=2).values, want)


# --- poisoning ----------------------------------------------------------------------------------


def _snapshot():
    blocks = lambda *specs: [dict(size=s, state=st) for s, st in specs]  # noqa: E731
    return [
        dict(device=0, stream=7, segment_type="small", segment_pool_id=(0, 0),
             blocks=blocks((512, "active_allocated"), (1536, "inactive"), (2 << 20, "inactive"))),
        dict(device=0, stream=7, segment_type="large", segment_pool_id=(0, 0),
             blocks=blocks((4 << 20, "inactive"), (6 << 20, "active_pending_free"), (3 << 20, "inactive"))),
        dict(device=1, stream=7, segment_type="large", blocks=blocks((8 << 20, "inactive"))),
        dict(device=0, stream=9, segment_type="large", blocks=blocks((8 << 20, "inactive"))),
        dict(device=0, stream=7, segment_type="large", segment_pool_id=(1, 2), blocks=blocks((8 << 20, "inactive"))),
    ]


def test_free_block_requests_take_every_free_block_of_the_device_and_stream():
    small_limit = gpu_memory.SMALL_POOL_LIMIT
    assert gpu_memory.free_block_requests(_snapshot(), 0, 7) == [1536, small_limit, 4 << 20, 3 << 20]
    assert sorted(gpu_memory.free_block_requests(_snapshot(), 0)) == sorted(
        [1536, small_limit, 4 << 20, 3 << 20, 8 << 20])
    assert gpu_memory.free_block_requests(_snapshot(), 1, 7) == [8 << 20]
    assert gpu_memory.free_block_requests([], 0) == []


def test_reserve_and_sizes():
    assert gpu_memory.reserve_requests([0, 100]) == [gpu_memory.SMALL_POOL_LIMIT] * 8 + [100, 100]
    assert gpu_memory.nbytes(torch.empty(3, 4), None, torch.empty(5, dtype=torch.int8)) == [48, 5]


def test_poisoning_says_why_it_cannot_run():
    assert "PYTORCH_NO_CUDA_MEMORY_CACHING" in gpu_memory.disabled_reason({"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"})
    assert "expandable" in gpu_memory.disabled_reason({"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"})
    assert gpu_memory.disabled_reason({}) is None
    done, why = gpu_memory.poison(gpu_memory.NAN, [64], "cpu")
    assert not done and "cpu" in why
    assert gpu_memory.poison(gpu_memory.NAN, [64], "meta")[0] is False


def test_the_patterns_catch_an_unwritten_element_of_every_dtype():
    """0xFF is NaN in every float dtype; 0x7F is an impossible offset in int8/int16, huge or NaN in floats."""
    for byte in (gpu_memory.NAN, gpu_memory.BIG):
        raw = torch.full((8,), byte, dtype=torch.uint8)
        for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            v = raw.view(dtype)[0].double()
            assert v.isnan() or v.abs() > 1e30
    assert raw.view(torch.int8)[0] == 127 and raw.view(torch.int16)[0] == 32639


# --- the Triton prewarm's selection -------------------------------------------------------------


def _item(params, gpu=True, skip=False):
    marks = {"gpu": gpu, "skip": skip}
    return types.SimpleNamespace(callspec=types.SimpleNamespace(params=params),
                                 get_closest_marker=lambda name: object() if marks.get(name) else None)


def test_prewarm_takes_the_selected_triton_cases():
    case = gpu_cases.CONV_GRID[0]
    items = [_item(dict(backend="triton", precision="bf16", case=case)),
             _item(dict(backend="cuda", precision="bf16", case=case)),
             _item(dict(backend="triton", precision="fp32", case=case), skip=True),
             _item(dict(backend="triton", precision="fp32", case=case), gpu=False),
             _item(dict(backend="triton", precision="fp32", case="not a case")),
             types.SimpleNamespace(get_closest_marker=lambda name: None)]
    assert triton_prewarm.jobs_of_items(items) == [("triton", "bf16", case)]
    assert triton_prewarm.enabled_reason({"FUSEDOPS_TRITON_PREWARM": "0"})
    assert triton_prewarm.enabled_reason({"TRITON_INTERPRET": "1"})
    assert triton_prewarm.enabled_reason({}) is None
