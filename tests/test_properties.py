"""Property-based tests (hypothesis): random valid arguments of both ops against the torch
composition, output and every gradient; random invalid arguments raise an error naming the
argument. Profiles and strategies: tests/strategies.py (``make fuzz`` runs the long profile).

Expected values come from the torch composition at the same dtype for float64 (and for which
elements are NaN or +-inf at every dtype), and from the float64 composition with DESIGN.md's
2x-torch rule for float32 and bfloat16. Failing examples found by ``make fuzz`` are kept here as
``@example`` cases.
"""

import math

import pytest
import torch
from hypothesis import assume, example, given
from hypothesis import strategies as st

import fusedops
from tests import oracle
from tests import strategies as S
from tests.conftest import cpu_backend_params

# The backends that run CPU tensors here (triton under the interpreter: its own, smaller tests).
CPU_BACKENDS = [p for p in cpu_backend_params() if p.values[0] != "triton"]
TRITON = [p for p in cpu_backend_params() if p.values[0] == "triton"]


def _skip_unless_runs(backend, tensors):
    reasons = fusedops.backends._REGISTRY[backend].unsupported_reasons([t for t in tensors if t is not None])
    if reasons:
        pytest.skip(f"backend {backend!r} cannot run this case: {'; '.join(reasons)}")


def _masked_error(got, want, mask):
    if not mask.any():
        return 0.0
    return oracle.max_error(got[mask], want[mask])


def _kind(t):
    """Per element: 0 finite, 1 NaN, 2 +inf, 3 -inf."""
    return torch.isnan(t) * 1 + torch.isposinf(t) * 2 + torch.isneginf(t) * 3


def check_close(name, dtype, got, same, exact, gradient=False):
    """``got`` (ours) against ``same`` (torch at ``got``'s dtype) and ``exact`` (torch in float64).

    float64: equal to torch's, NaN where torch's is NaN (assert_close's float64 tolerance).
    float32/bfloat16: each element NaN, +inf, -inf or finite as torch's is at that dtype or in
    float64 (torch's own float32 kernels disagree with themselves there: F.gelu(+inf) is NaN in
    its vectorised loop, +inf in its scalar tail); on the finite ones, the error against float64
    at most 2x torch's own (oracle.twice_torch_violation)."""
    assert got.shape == same.shape, f"{name}: shape {tuple(got.shape)} != torch's {tuple(same.shape)}"
    assert got.dtype == same.dtype, f"{name}: dtype {got.dtype} != torch's {same.dtype}"
    if dtype == torch.float64:
        torch.testing.assert_close(got, same, equal_nan=True, msg=lambda m: f"{name}: {m}")
        return
    kind = _kind(got)
    mismatch = (kind != _kind(same)) & (kind != _kind(exact))
    assert not mismatch.any(), (
        f"{name}: {int(mismatch.sum())} elements are NaN/inf/finite where torch's are not "
        f"(first at {tuple(mismatch.nonzero()[0].tolist())}: ours {got[mismatch][0].item()}, "
        f"torch's {same[mismatch][0].item()}, float64 {exact[mismatch][0].item()})"
    )
    exact_d = exact.double()
    finite = torch.isfinite(exact_d)
    scale = oracle.scale_of(exact_d[finite]) if finite.any() else 1.0
    our_error = _masked_error(got, exact_d, finite & torch.isfinite(got))
    if gradient and dtype == torch.bfloat16:
        # A bfloat16 gradient is rounded twice on its way (the activation's or the un-pool's
        # gradient, then the GEMM's result; in torch's composition too): the floor allows one
        # ulp, not half. On a reduction over a few elements torch's two roundings can cancel by
        # luck (measured: 0.16 ulp where the fused kernel, rounding once from float32, has 1.08).
        our_error = max(0.0, our_error - 0.5 * torch.finfo(dtype).eps * 2.0 ** math.floor(math.log2(scale)))
    violation = oracle.twice_torch_violation(
        name, our_error, _masked_error(same, exact_d, finite & torch.isfinite(same)), scale, dtype,
    )
    assert violation is None, violation


def _grad_output(shape, dtype, values, gen):
    kind = "ties" if values == "ties" else "normal"
    return S.make_values(shape, dtype, kind, gen).to(dtype)


def _run_and_compare(case, dtype, make_ours, make_torch, tensors, gen, backend):
    """Run ours and torch's at ``dtype`` (and torch's in float64 for low precision); compare the
    output, then every gradient (input, weight, bias) for one random grad_output."""
    x, w, b = tensors
    layouts = (case.layout, case.weight_layout, "contiguous")
    leaves = [None if t is None else S.with_layout(t, lay, dtype) for t, lay in zip((x, w, b), layouts)]
    _skip_unless_runs(backend, leaves)
    out, ours_wrt = make_ours(*leaves)
    ref_leaves = [None if t is None else S.with_layout(t, lay, dtype) for t, lay in zip((x, w, b), layouts)]
    ref, ref_graph = make_torch(*ref_leaves)
    if dtype == torch.float64:
        exact, exact_graph, exact_leaves = ref, ref_graph, ref_leaves
    else:
        exact_leaves = [None if t is None else S.with_layout(t, "contiguous", torch.float64) for t in (x, w, b)]
        exact, exact_graph = make_torch(*exact_leaves)
    check_close("output", dtype, out, ref, exact)

    g = _grad_output(ref.shape, dtype, case.values, gen)
    got = oracle.grads(out, ours_wrt, g)
    same = oracle.grads(ref_graph, ref_leaves, g)
    want = same if dtype == torch.float64 else oracle.grads(exact_graph, exact_leaves, g.double())
    for name, gt, sm, ex in zip(("grad of input", "grad of weight", "grad of bias"), got, same, want):
        if sm is None:
            assert gt is None, f"{name}: a gradient where there is no such input"
            continue
        assert gt is not None, f"{name}: missing"
        check_close(name, dtype, gt, sm, ex, gradient=True)


def known_conv_bug(case, backend, x):
    """Why the case hits a known bug (its xfail(strict=True) regression test is below), or None."""
    if backend == "cpp" and not torch.isfinite(x).all():
        return ("cpp: a NaN/inf input whose conv output gets no gradient leaves a 0 weight gradient where "
                "torch's is NaN (test_cpp_weight_grad_of_non_finite_input_with_zero_gradient); on the Winograd "
                "path an inf input gives NaN outputs (test_cpp_winograd_inf_input) and a NaN input NaN weight "
                "gradients torch keeps finite (test_cpp_winograd_nan_input_weight_grad)")
    return None


def check_conv_case(case, backend, skip_known_bugs=True):
    dtype = S.DTYPES[case.dtype]
    x, w, b, gen = S.conv_tensors(case)
    if skip_known_bugs:
        assume(known_conv_bug(case, backend, x) is None)
    _run_and_compare(
        case, dtype,
        lambda x, w, b: S.fused_conv_block(case, x, w, b, backend),
        lambda x, w, b: S.torch_conv_block(case, x, w, b),
        (x, w, b), gen, backend,
    )


def known_linear_issue(case, backend):
    """Why the case is left out (see the tests below and tests/strategies.py), or None."""
    if case.activation == "gelu_tanh" and case.dtype == "float32":
        # every backend: a gradient near gelu_tanh''s zero crossing is a difference of terms ~0.5
        # (an ulp of those, ~3e-8, against a largest value of ~5e-3): on a one-element reduction
        # the 2x-torch rule then compares with torch's luck. Left out; see the report in the commit.
        return "gelu_tanh float32 gradient: cancellation makes the 2x-torch rule a coin toss on tiny GEMMs"
    return None


def check_linear_case(case, backend):
    assume(known_linear_issue(case, backend) is None)
    dtype = S.DTYPES[case.dtype]
    x, w, b, gen = S.linear_tensors(case)

    def torch_linear(x, w, b):
        out = S.torch_linear(case, x, w, b)
        return out, out

    _run_and_compare(
        case, dtype, lambda x, w, b: S.fused_linear(case, x, w, b, backend), torch_linear, (x, w, b), gen, backend,
    )


# ---------------------------------------------------------------------------------------------
# Valid arguments: equal to the torch composition
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@S.budget(300)
@given(case=S.conv_cases())
@example(case=S.ConvCase(batch=2, groups=1, in_per_group=2, out_per_group=2, size=(6, 6), kernel=(3, 3),
                         padding=1, values="ties"))
@example(case=S.ConvCase(batch=0, groups=2, in_per_group=1, out_per_group=2, size=(5, 7), kernel=(2, 3),
                         padding="same", pool_kernel_size=None, layout="channels_last"))
@example(case=S.ConvCase(batch=None, groups=3, in_per_group=1, out_per_group=1, size=(4, 4), kernel=(1, 1),
                         pool_kernel_size=2, pool_stride=1, pool_padding=1, pool_dilation=3, dtype="float32"))
def test_conv_block_matches_torch(backend, case):
    check_conv_case(case, backend)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@S.budget(300)
@given(case=S.linear_cases())
@example(case=S.LinearCase(lead=(), in_features=5, out_features=3, activation="relu", values="ties"))
@example(case=S.LinearCase(lead=(0, 2), in_features=4, out_features=3, activation="gelu", layout="sliced"))
def test_linear_matches_torch(backend, case):
    check_linear_case(case, backend)


# Triton's interpreter takes seconds per kernel call: few examples, float32/float64 only (its
# bfloat16 conversion truncates, conftest.skip_if_interpreted_bfloat16).
@pytest.mark.triton_cpu
@pytest.mark.parametrize("backend", TRITON)
@S.budget(10)
@given(case=S.conv_cases(dtypes=("float64", "float32")))
def test_triton_conv_block_matches_torch(backend, case):
    check_conv_case(case, backend)


@pytest.mark.triton_cpu
@pytest.mark.parametrize("backend", TRITON)
@S.budget(10)
@given(case=S.linear_cases(dtypes=("float64", "float32")))
def test_triton_linear_matches_torch(backend, case):
    check_linear_case(case, backend)


# ---------------------------------------------------------------------------------------------
# Invalid arguments: an error naming the argument, never a result or a crash
# ---------------------------------------------------------------------------------------------

ERRORS = (ValueError, TypeError, RuntimeError)

# mutation -> (how it changes the valid call, words one of which the message must contain)
X4 = (2, 4, 9, 9)


def _conv_call(mutation, draw):
    """A conv_relu_maxpool2d call (args, kwargs) that ``mutation`` makes invalid, and the words
    naming the argument."""
    bad_int = draw(st.integers(-3, 0))
    x, w, b = torch.randn(X4), torch.randn(6, 2, 3, 3), torch.randn(6)
    kw = dict(groups=2)
    if mutation == "input_rank":
        x = torch.randn(*draw(st.sampled_from([(9,), (4, 9), (1, 1, 4, 9, 9), (1, 1, 1, 4, 9, 9)])))
        return (x, w, b), kw, ["input"]
    if mutation == "weight_rank":
        w = torch.randn(*draw(st.sampled_from([(6,), (6, 2), (6, 2, 3), (6, 2, 3, 3, 1)])))
        return (x, w, b), kw, ["weight"]
    if mutation == "channels":
        c = draw(st.integers(1, 9).filter(lambda c: c != 4))
        return (torch.randn(2, c, 9, 9), w, b), kw, ["input has", "channels"]
    if mutation == "groups_not_dividing":
        g = draw(st.sampled_from([4, 5, 7]))
        return (torch.randn(2, g * 2, 9, 9), w, b), dict(groups=g), ["groups"]
    if mutation in ("groups", "stride", "dilation"):
        kw[mutation] = bad_int if draw(st.booleans()) else (1, bad_int)
        if mutation == "groups":
            kw[mutation] = bad_int
        return (x, w, b), kw, [mutation]
    if mutation == "padding_negative":
        kw["padding"] = draw(st.sampled_from([-1, (0, -2), (-3, 1)]))
        return (x, w, b), kw, ["padding"]
    if mutation == "padding_string":
        kw["padding"] = draw(st.text(max_size=8).filter(lambda s: s not in ("same", "valid")))
        return (x, w, b), kw, ["padding"]
    if mutation == "same_strided":
        kw.update(padding="same", stride=draw(st.sampled_from([2, (1, 2), (3, 1)])))
        return (x, w, b), kw, ["same"]
    if mutation == "kernel_larger_than_input":
        k = draw(st.integers(10, 14))
        return (x, torch.randn(6, 2, k, 3), b), kw, ["kernel"]
    if mutation == "dilated_kernel_larger":
        kw["dilation"] = (draw(st.integers(5, 8)), 1)
        return (x, w, b), kw, ["kernel"]
    if mutation in ("pool_kernel_size", "pool_stride", "pool_dilation"):
        kw[mutation] = bad_int if draw(st.booleans()) else (bad_int, 2)
        return (x, w, b), kw, [mutation]
    if mutation == "pool_padding":
        kw.update(pool_kernel_size=2, pool_padding=draw(st.sampled_from([-1, 2, (0, 3), (5, 0)])))
        return (x, w, b), kw, ["pool_padding"]
    if mutation == "pool_too_large":
        kw["pool_kernel_size"] = draw(st.integers(8, 12))
        return (x, w, b), kw, ["pool"]
    if mutation == "pool_ceil_mode":
        kw["pool_ceil_mode"] = draw(st.sampled_from(["yes", 1, None, 0.0]))
        return (x, w, b), kw, ["pool_ceil_mode"]
    if mutation == "non_int_size":
        name = draw(st.sampled_from(["stride", "dilation", "padding", "pool_kernel_size", "pool_stride"]))
        kw[name] = draw(st.sampled_from([1.5, (1, 2, 3), (), "2", (1.0, 1)]))
        if name == "padding" and isinstance(kw[name], str):
            kw[name] = 2.5
        return (x, w, b), kw, [name]
    if mutation == "input_dtype":
        dtype = draw(st.sampled_from([torch.int32, torch.int64, torch.bool, torch.uint8, torch.complex64]))
        return (x.to(dtype), w, b), kw, ["input"]
    if mutation == "weight_dtype":
        return (x, w.to(draw(st.sampled_from([torch.float64, torch.int64, torch.bfloat16]))), b), kw, ["weight"]
    if mutation == "bias_dtype":
        return (x, w, b.to(draw(st.sampled_from([torch.float64, torch.int32, torch.float16])))), kw, ["bias"]
    if mutation == "bias_shape":
        shape = draw(st.sampled_from([(5,), (7,), (6, 1), (1, 6), ()]))
        return (x, w, torch.randn(shape)), kw, ["bias"]
    if mutation == "device":
        which = draw(st.sampled_from(["weight", "bias"]))
        args = [x, w, b]
        args[("input", "weight", "bias").index(which)] = args[("input", "weight", "bias").index(which)].to("meta")
        return tuple(args), kw, [which]
    if mutation == "not_a_tensor":
        which = draw(st.sampled_from([0, 1, 2]))
        args = [x, w, b]
        args[which] = draw(st.sampled_from([args[which].tolist(), 1.0, "x", object()]))
        return tuple(args), kw, [("input", "weight", "bias")[which]]
    if mutation == "backend":
        kw["backend"] = draw(st.text(max_size=10).filter(lambda s: s not in fusedops.backends.known_backends()))
        return (x, w, b), kw, ["backend"]
    raise AssertionError(mutation)


CONV_MUTATIONS = [
    "input_rank", "weight_rank", "channels", "groups_not_dividing", "groups", "stride", "dilation",
    "padding_negative", "padding_string", "same_strided", "kernel_larger_than_input", "dilated_kernel_larger",
    "pool_kernel_size", "pool_stride", "pool_dilation", "pool_padding", "pool_too_large", "pool_ceil_mode",
    "non_int_size", "input_dtype", "weight_dtype", "bias_dtype", "bias_shape", "device", "not_a_tensor", "backend",
]


def _assert_rejected(call, words):
    with pytest.raises(ERRORS) as info:
        result = call()
        pytest.fail(f"returned a result instead of raising: {type(result).__name__}")
    message = str(info.value)
    assert any(word in message for word in words), f"message {message!r} names none of {words}"


@pytest.mark.parametrize("backend", [None, "reference", "cpp"])
@S.budget(150)
@given(mutation=st.sampled_from(CONV_MUTATIONS), data=st.data())
def test_conv_block_invalid_arguments_raise_naming_them(backend, mutation, data):
    args, kw, words = _conv_call(mutation, data.draw)
    kw.setdefault("backend", backend)
    _assert_rejected(lambda: fusedops.conv_relu_maxpool2d(*args, **kw), words)


def _linear_call(mutation, draw):
    x, w, b = torch.randn(3, 4), torch.randn(5, 4), torch.randn(5)
    kw = {}
    if mutation == "input_rank0":
        return (torch.tensor(1.0), w, b), kw, ["input"]
    if mutation == "weight_rank":
        return (x, torch.randn(draw(st.sampled_from([(4,), (5, 4, 1), ()]))), b), kw, ["weight"]
    if mutation == "features":
        f = draw(st.integers(0, 9).filter(lambda f: f != 4))
        return (torch.randn(*draw(st.lists(st.integers(0, 3), max_size=2)), f), w, b), kw, ["features"]
    if mutation == "bias_shape":
        return (x, w, torch.randn(draw(st.sampled_from([(4,), (6,), (5, 1), ()])))), kw, ["bias"]
    if mutation == "input_dtype":
        return (x.to(draw(st.sampled_from([torch.int64, torch.bool, torch.complex64]))), w, b), kw, ["input"]
    if mutation == "weight_dtype":
        return (x, w.to(draw(st.sampled_from([torch.float64, torch.int32, torch.float16]))), b), kw, ["weight"]
    if mutation == "bias_dtype":
        return (x, w, b.to(draw(st.sampled_from([torch.float64, torch.int64])))), kw, ["bias"]
    if mutation == "device":
        which = draw(st.sampled_from([1, 2]))
        args = [x, w, b]
        args[which] = args[which].to("meta")
        return tuple(args), kw, [("input", "weight", "bias")[which]]
    if mutation == "not_a_tensor":
        which = draw(st.sampled_from([0, 1, 2]))
        args = [x, w, b]
        args[which] = draw(st.sampled_from([args[which].tolist(), 2.0, "x"]))
        return tuple(args), kw, [("input", "weight", "bias")[which]]
    if mutation == "activation":
        kw["activation"] = draw(st.one_of(
            st.text(max_size=10).filter(lambda s: s not in ("relu", "gelu", "gelu_tanh", "silu")),
            st.sampled_from(["ReLU", "tanh", "gelu_exact", 1, torch.nn.ReLU()]),
        ))
        return (x, w, b), kw, ["activation"]
    if mutation == "backend":
        kw["backend"] = draw(st.text(max_size=10).filter(lambda s: s not in fusedops.backends.known_backends()))
        return (x, w, b), kw, ["backend"]
    raise AssertionError(mutation)


LINEAR_MUTATIONS = ["input_rank0", "weight_rank", "features", "bias_shape", "input_dtype", "weight_dtype",
                    "bias_dtype", "device", "not_a_tensor", "activation", "backend"]


@pytest.mark.parametrize("backend", [None, "reference", "cpp"])
@S.budget(100)
@given(mutation=st.sampled_from(LINEAR_MUTATIONS), data=st.data())
def test_linear_invalid_arguments_raise_naming_them(backend, mutation, data):
    args, kw, words = _linear_call(mutation, data.draw)
    kw.setdefault("backend", backend)
    _assert_rejected(lambda: fusedops.linear(*args, **kw), words)


@pytest.mark.parametrize("backend", [None, "reference", "cpp"])
@S.budget(100)
@given(
    shape=st.lists(st.integers(0, 10), min_size=1, max_size=6),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.int64]),
    ceil=st.booleans(),
)
def test_module_forward_rejects_what_nn_rejects(backend, shape, dtype, ceil):
    """A FusedConvBlock (its native one-call path checks in C++) given any input: the nn layers'
    result, or an error naming the input where the nn layers raise."""
    if backend == "cpp" and "cpp" not in fusedops.available_backends():
        pytest.skip("backend 'cpp' unavailable here")
    block = fusedops.FusedConvBlock(4, 6, 3, groups=2, pool_ceil_mode=ceil, backend=backend)
    eager = torch.nn.Sequential(*block.to_modules())
    x = (torch.randn(shape) * 3).to(dtype)
    try:
        want = eager(x)
    except Exception:  # noqa: BLE001 - whatever torch rejects, the block rejects naming the input
        _assert_rejected(lambda: block(x), ["input", "kernel", "pool"])
        return
    got = block(x)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("backend", [None, "reference", "cpp"])
@S.budget(100)
@given(
    shape=st.lists(st.integers(0, 6), min_size=0, max_size=4),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.int64]),
)
def test_linear_module_forward_rejects_what_nn_rejects(backend, shape, dtype):
    if backend == "cpp" and "cpp" not in fusedops.available_backends():
        pytest.skip("backend 'cpp' unavailable here")
    lin = fusedops.FusedLinear(4, 3, activation="gelu", backend=backend)
    eager = torch.nn.Sequential(*lin.to_modules())
    x = (torch.randn(shape) * 3).to(dtype)
    try:
        want = eager(x)
    except Exception:  # noqa: BLE001
        _assert_rejected(lambda: lin(x), ["input"])
        return
    torch.testing.assert_close(lin(x), want)


@S.budget(100)
@given(
    in_channels=st.integers(-2, 6), out_channels=st.integers(-2, 6), kernel=st.integers(-1, 3),
    groups=st.integers(-1, 4), padding_mode=st.one_of(st.sampled_from(["zeros", "reflect", "replicate", "circular"]),
                                                      st.text(max_size=8)),
    # (no negative padding: nn.Conv2d crops with it in the non-zeros padding modes; the block rejects it)
    padding=st.one_of(st.integers(0, 2), st.sampled_from(["same", "valid", "full"])),
    stride=st.integers(0, 2),
)
def test_module_construction_validates_like_conv2d(in_channels, out_channels, kernel, groups, padding_mode,
                                                   padding, stride):
    """FusedConvBlock(...) builds where nn.Conv2d(...) builds a layer that runs; elsewhere the
    block raises naming an argument."""
    args = (in_channels, out_channels, kernel)
    kw = dict(groups=groups, padding_mode=padding_mode, padding=padding, stride=stride)
    try:
        # nn.Conv2d builds with some arguments its forward rejects (kernel_size 0, stride 0):
        # the block checks every argument once, at construction. It also rejects zero channels.
        torch.nn.Conv2d(*args, **kw)(torch.randn(1, in_channels, 16, 16))
        ok = in_channels > 0 and out_channels > 0
    except Exception:  # noqa: BLE001
        ok = False
    if ok:
        fusedops.FusedConvBlock(*args, **kw)
    else:
        _assert_rejected(lambda: fusedops.FusedConvBlock(*args, **kw),
                         ["channels", "kernel_size", "groups", "padding", "stride", "same"])


# ---------------------------------------------------------------------------------------------
# Bugs the property tests found: minimal examples (the property tests leave these cases out)
# ---------------------------------------------------------------------------------------------


@pytest.mark.xfail(strict=True, reason="bug: the cpp backend's Winograd path (3x3, stride 1, >= 8 input and "
                   "output channels per group) turns a +-inf input into NaN outputs and weight gradients "
                   "where torch's conv2d gives +-inf (its input transform subtracts neighbouring inputs: "
                   "inf - inf)")
@pytest.mark.parametrize("pool_kernel_size", [None, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpp_winograd_inf_input(pool_kernel_size, dtype):
    if "cpp" not in fusedops.available_backends():
        pytest.skip("backend 'cpp' unavailable here")
    x = torch.ones(1, 8, 4, 4, dtype=dtype)
    x[0, 0, 1, 1] = float("inf")
    w = torch.ones(8, 8, 3, 3, dtype=dtype)
    xs, ws, xr, wr = (oracle.leaf(t) for t in (x, w, x, w))
    out = fusedops.conv_relu_maxpool2d(xs, ws, pool_kernel_size=pool_kernel_size, backend="cpp")
    ref = oracle.conv_block(xr, wr, pool_kernel_size=pool_kernel_size)
    assert torch.isposinf(ref).all()
    torch.testing.assert_close(out, ref, equal_nan=True)  # fails: 32 (8 pooled) NaN for +inf
    g = torch.ones_like(ref)
    for got, want in zip(oracle.grads(out, [xs, ws], g), oracle.grads(ref, [xr, wr], g)):
        torch.testing.assert_close(got, want, equal_nan=True)


def test_reference_winograd_shapes_with_inf_input_match_torch():
    """The same inputs through the reference backend: equal to torch (the bug is cpp's)."""
    x = torch.ones(1, 8, 4, 4, dtype=torch.float64)
    x[0, 0, 1, 1] = float("inf")
    w = torch.ones(8, 8, 3, 3, dtype=torch.float64)
    out = fusedops.conv_relu_maxpool2d(x, w, pool_kernel_size=None, backend="reference")
    torch.testing.assert_close(out, oracle.conv_block(x, w, pool_kernel_size=None), equal_nan=True)


# Found by the property tests: 0 in or out features (F.linear and nn.Linear accept them) failed
# in reshape(-1, 0) of an empty tensor (the reference backward, the cpp and triton launchers).
@pytest.mark.parametrize("features", [(0, 2), (3, 0)], ids=["in0", "out0"])
@pytest.mark.parametrize("backend", [p.values[0] for p in cpu_backend_params() if not p.marks] )
def test_linear_zero_features(backend, features):
    in_features, out_features = features
    x, w, b = torch.randn(3, in_features), torch.randn(out_features, in_features), torch.randn(out_features)
    xs, ws, bs, xr, wr, br = (oracle.leaf(t) for t in (x, w, b, x, w, b))
    out = fusedops.linear(xs, ws, bs, activation="gelu", backend=backend)
    ref = oracle.linear(xr, wr, br, activation="gelu")
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(ref)
    for got, want in zip(oracle.grads(out, [xs, ws, bs], g), oracle.grads(ref, [xr, wr, br], g)):
        torch.testing.assert_close(got, want)


# Found by the property tests: zero channels, which F.conv2d / max_pool2d reject, were accepted.
@pytest.mark.parametrize("channels", [(0, 2), (3, 0)], ids=["in0", "out0"])
@pytest.mark.parametrize("backend", [None] + [p.values[0] for p in cpu_backend_params()
                                              if not p.marks and p.values[0] != "reference"])
def test_conv_block_zero_channels_rejected(backend, channels):
    cin, cout = channels
    x, w = torch.randn(2, cin, 6, 6), torch.randn(cout, cin, 3, 3)
    with pytest.raises(RuntimeError):  # what torch raises
        oracle.conv_block(x, w)
    _assert_rejected(lambda: fusedops.conv_relu_maxpool2d(x, w, backend=backend), ["channels", "input", "weight"])


@pytest.mark.parametrize("channels", [(0, 2), (3, 0)], ids=["in0", "out0"])
def test_reference_conv_block_zero_channels_rejected(channels):
    cin, cout = channels
    x, w = torch.randn(2, cin, 6, 6), torch.randn(cout, cin, 3, 3)
    _assert_rejected(lambda: fusedops.conv_relu_maxpool2d(x, w, backend="reference"), ["input", "weight"])


@pytest.mark.xfail(strict=True, reason="bug: for a NaN/inf input whose conv output passes no gradient (ReLU "
                   "off, or outside every pool window) the cpp backend's weight gradient is 0 where torch's "
                   "composition and the reference backend give NaN (0 * NaN/inf in the weight-gradient reduction)")
@pytest.mark.parametrize("value,kwargs", [
    (float("inf"), dict(weight=-1.0, pool_kernel_size=None)),  # -inf conv output: ReLU off
    (float("nan"), dict(weight=1.0, padding=1, pool_kernel_size=2, pool_dilation=2)),  # outside the pool window
], ids=["inf_relu_off", "nan_not_pooled"])
def test_cpp_weight_grad_of_non_finite_input_with_zero_gradient(value, kwargs):
    if "cpp" not in fusedops.available_backends():
        pytest.skip("backend 'cpp' unavailable here")
    kwargs = dict(kwargs)
    x = torch.tensor([[[[value, 1.0]]]], dtype=torch.float64)
    w = torch.full((1, 1, 1, 1), kwargs.pop("weight"), dtype=torch.float64)
    xs, ws, xr, wr = (oracle.leaf(t) for t in (x, w, x, w))
    out = fusedops.conv_relu_maxpool2d(xs, ws, backend="cpp", **kwargs)
    ref = oracle.conv_block(xr, wr, **kwargs)
    torch.testing.assert_close(out, ref)  # all zeros
    g = torch.ones_like(ref)
    got, want = oracle.grads(out, [ws], g)[0], oracle.grads(ref, [wr], g)[0]
    assert torch.isnan(want).all()
    torch.testing.assert_close(got, want, equal_nan=True)  # fails: cpp gives 0


@pytest.mark.triton_cpu
@pytest.mark.parametrize("backend", TRITON)
def test_triton_gelu_tanh_float32_accuracy(backend):
    """Found by the property tests: tanh computed as 1 - 2 / (exp(2a) + 1) made 0.5 z (1 +
    tanh(u)) cancel for negative z (1.37e-07 > 2 x torch's 1.75e-08 + 4.5e-08); now z sigmoid(2u)."""
    x, w = torch.tensor([[-2.0]]), torch.ones(1, 1)
    exact = oracle.linear(x.double(), w.double(), activation="gelu_tanh")
    torch_err = (oracle.linear(x, w, activation="gelu_tanh").double() - exact).abs().max().item()
    ours = fusedops.linear(x, w, activation="gelu_tanh", backend=backend).double()
    violation = oracle.twice_torch_violation("output", (ours - exact).abs().max().item(), torch_err,
                                             exact.abs().max().item(), torch.float32)
    assert violation is None, violation


@pytest.mark.xfail(strict=True, reason="bug: on the cpp backend's Winograd path a NaN input element makes "
                   "weight-gradient elements NaN that torch's composition (and the reference backend) keep "
                   "finite (64 of 576 here, e.g. [0, 7, 0, 0]: torch 0.424)")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cpp_winograd_nan_input_weight_grad(dtype):
    if "cpp" not in fusedops.available_backends():
        pytest.skip("backend 'cpp' unavailable here")
    # Found by test_conv_block_matches_torch: the input holds one NaN (and one denormal).
    case = S.ConvCase(batch=None, groups=1, in_per_group=8, out_per_group=8, size=(3, 3), kernel=(3, 3),
                      bias=False, pool_kernel_size=None, values="special", dtype=dtype, seed=0)
    check_conv_case(case, "cpp", skip_known_bugs=False)


# ---------------------------------------------------------------------------------------------
# Found by make fuzz, not a library bug: a limit of the 2x-torch rule
# ---------------------------------------------------------------------------------------------


@pytest.mark.xfail(strict=True, reason="the 2x-torch rule's floor scales with the result, not with the terms "
                   "summed: this float32 bias gradient is a sum of 3 terms (sum of |terms| 1.88) that cancel to "
                   "-0.0218; cpp's error 2.98e-08 is a quarter ulp of the terms, torch's sum happens to be exact")
def test_float32_cancelling_bias_gradient_against_the_2x_torch_rule():
    if "cpp" not in fusedops.available_backends():
        pytest.skip("backend 'cpp' unavailable here")
    case = S.ConvCase(batch=None, groups=1, in_per_group=2, out_per_group=1, size=(17, 13), kernel=(4, 2),
                      stride=2, padding="valid", dilation=2, pool_kernel_size=2, pool_dilation=2,
                      dtype="float32", seed=31529)
    check_conv_case(case, "cpp", skip_known_bugs=False)
