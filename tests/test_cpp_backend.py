"""The "cpp" backend (C++ CPU kernels in fusedops._C): it does the work itself, checks its inputs."""

import platform

import pytest
import torch

import fusedops
from fusedops import backends
from fusedops.functional import conv_block_params
from fusedops.ops.conv_block import strictly_channels_last

FORBIDDEN = ("conv", "max_pool", "relu", "threshold", "im2col", "unfold", "col2im", "gelu", "silu", "pool")


@pytest.fixture(autouse=True)
def _needs_cpp():
    if "cpp" not in fusedops.available_backends():
        pytest.fail(f"the cpp backend must be built here: {backends._REGISTRY['cpp'].unavailable_reason()}")


def _aten_ops_of(fn):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()}


@pytest.mark.parametrize(
    "channels,kwargs",
    [
        (3, dict(padding=1)),
        (3, dict(pool_kernel_size=None)),
        (3, dict(pool_kernel_size=3, pool_stride=2)),
        (8, dict(padding=1)),  # Winograd path
    ],
)
def test_no_torch_conv_pool_or_activation_ops(channels, kwargs):
    x = torch.randn(2, channels, 10, 10, requires_grad=True)
    w = torch.randn(channels + 1, channels, 3, 3, requires_grad=True)
    b = torch.randn(channels + 1, requires_grad=True)

    def run():
        fusedops.conv_relu_maxpool2d(x, w, b, backend="cpp", **kwargs).sum().backward()

    ops = _aten_ops_of(run)
    assert "fusedops::native_conv_block_forward" in ops and "fusedops::native_conv_block_backward" in ops
    offending = [op for op in ops if op.startswith("aten::") and any(f in op for f in FORBIDDEN)]
    assert offending == [], offending
    # and the profile of the reference does show them, so the check can fail
    reference = _aten_ops_of(lambda: fusedops.conv_relu_maxpool2d(x, w, b, backend="reference", **kwargs))
    assert any("conv" in op for op in reference)


def _native_args(x, w, b=None, **kwargs):
    return (x, w, b, *conv_block_params(tuple(w.shape[-2:]), **kwargs))


@pytest.mark.parametrize(
    "args,exc,words",
    [
        (lambda: _native_args(torch.randn(1, 4, 8, 8), torch.randn(2, 3, 3, 3)), ValueError, "input has 4 channels"),
        (lambda: _native_args(torch.randn(1, 3, 8, 8), torch.randn(2, 3, 3, 3), torch.randn(3)), ValueError,
         r"bias must have shape \(2,\), got \[3\]"),  # the numbers too: see test_build's libstdc++ test
        (lambda: _native_args(torch.randn(3, 8, 8), torch.randn(2, 3, 3, 3)), ValueError, "input must be 4-D"),
        (lambda: _native_args(torch.randn(1, 3, 2, 2), torch.randn(2, 3, 3, 3)), ValueError,
         "smaller than the dilated kernel"),
        (lambda: _native_args(torch.randn(1, 3, 4, 4), torch.randn(2, 3, 3, 3), pool_kernel_size=3), ValueError,
         "too small for the pool"),
        (lambda: _native_args(torch.randn(1, 3, 8, 8).half(), torch.randn(2, 3, 3, 3).half()), TypeError,
         "float32, float64 and bfloat16"),
        (lambda: _native_args(torch.randn(1, 3, 8, 8), torch.randn(2, 3, 3, 3).double()), TypeError,
         "weight has dtype"),
    ],
    ids=["channels", "bias", "rank", "kernel", "pool", "dtype", "mixed"],
)
def test_native_forward_rejects_bad_input_with_clear_error(args, exc, words):
    with pytest.raises(exc, match=words):
        torch.ops.fusedops.native_conv_block_forward(*args())


def test_native_backward_checks_offsets_and_grad():
    x, w = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3)
    p = conv_block_params((3, 3))
    out, offsets = torch.ops.fusedops.native_conv_block_forward(x, w, None, *p)
    g = torch.randn_like(out)
    with pytest.raises(ValueError, match="offsets must have the shape"):
        torch.ops.fusedops.native_conv_block_backward(g, x, w, offsets[:1], *p[:8], [True, True, False])
    with pytest.raises(TypeError, match="offsets must have dtype"):
        torch.ops.fusedops.native_conv_block_backward(g, x, w, offsets.int(), *p[:8], [True, True, False])
    with pytest.raises(ValueError, match="grad_output must have shape"):
        torch.ops.fusedops.native_conv_block_backward(g[:, :2], x, w, offsets[:, :2], *p[:8], [True, True, False])


def test_native_backward_without_pool_checks_grad_size():
    """Without pooling the output is the conv output: a smaller grad_output is rejected (the
    kernel would read past it)."""
    x, w = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3)
    p = conv_block_params((3, 3), pool_kernel_size=None)
    out, offsets = torch.ops.fusedops.native_conv_block_forward(x, w, None, *p)
    g = torch.randn_like(out)
    with pytest.raises(ValueError, match="grad_output's spatial size"):
        torch.ops.fusedops.native_conv_block_backward(
            g[:, :, :-1], x, w, offsets[:, :, :-1], *p[:8], [True, True, False]
        )


def test_native_jvp_checks_its_arguments():
    x, w = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3)
    p = conv_block_params((3, 3))
    _, offsets = torch.ops.fusedops.native_conv_block_forward(x, w, None, *p)
    jvp = torch.ops.fusedops.native_conv_block_jvp
    with pytest.raises(ValueError, match="input_tangent must have shape"):
        jvp(x, w, offsets, x[:1], None, None, *p[:8])
    with pytest.raises(ValueError, match="weight_tangent must have shape"):
        jvp(x, w, offsets, None, w[:, :2], None, *p[:8])
    with pytest.raises(ValueError, match="bias_tangent must have shape"):
        jvp(x, w, offsets, None, None, torch.randn(3), *p[:8])
    with pytest.raises(TypeError, match="bias_tangent has dtype"):
        jvp(x, w, offsets, None, None, torch.randn(4).double(), *p[:8])
    with pytest.raises(TypeError, match="offsets must have dtype"):
        jvp(x, w, offsets.int(), x, None, None, *p[:8])
    with pytest.raises(ValueError, match="offsets must have shape"):
        jvp(x, w, offsets[:, :2], x, None, None, *p[:8])


def test_poisoned_outputs_are_all_written():
    """Every output element comes from the kernel: freed NaN-filled blocks, which the allocator
    tends to hand back for the outputs, never show through (and the values equal the reference)."""
    x, w, b = torch.randn(3, 5, 13, 11), torch.randn(6, 5, 3, 3), torch.randn(6)
    p = conv_block_params((3, 3), padding=1, pool_kernel_size=3, pool_stride=2, pool_ceil_mode=True)
    for _ in range(3):  # the allocator hands back the NaN-filled blocks
        junk = torch.full((3 * 6 * 7 * 6 * 4,), float("nan"))
        del junk
        out, offsets = torch.ops.fusedops.native_conv_block_forward(x, w, b, *p)
        assert not out.isnan().any()
        ref, ref_off = torch.ops.fusedops.conv_block_forward(x, w, b, *p, "reference")
        torch.testing.assert_close(out, ref)
        assert torch.equal(offsets, ref_off)


@pytest.mark.parametrize("activation", ["relu", "gelu", "gelu_tanh", "silu"])
def test_linear_runs_no_torch_activation_op(activation):
    x, w, b = torch.randn(5, 6, requires_grad=True), torch.randn(7, 6, requires_grad=True), torch.randn(7)

    def run():
        fusedops.linear(x, w, b, activation=activation, backend="cpp").sum().backward()

    ops = _aten_ops_of(run)
    assert "fusedops::native_linear_forward" in ops and "fusedops::native_linear_backward" in ops
    offending = [op for op in ops if op.startswith("aten::") and any(f in op for f in FORBIDDEN)]
    assert offending == [], offending


@pytest.mark.parametrize("activation", ["relu", "gelu", "silu"])
@pytest.mark.parametrize("layout", ["expanded", "transposed", "sliced"])
def test_linear_backward_reads_a_strided_output_gradient(activation, layout):
    # The gradient of a sum arrives expanded (all strides 0); the activation's pass reads it
    # through its strides into a contiguous dz. Each layout must give exactly the gradients of
    # its contiguous copy. (Without an activation dy goes to BLAS as it is, whose summation
    # order may depend on the strides.)
    torch.manual_seed(0)
    x, w = torch.randn(2, 5, 6, dtype=torch.float64), torch.randn(7, 6, dtype=torch.float64)
    _, saved = torch.ops.fusedops.native_linear_forward(x, w, None, activation)
    if layout == "expanded":
        dy = torch.tensor(1.5, dtype=torch.float64).expand(2, 5, 7)
    elif layout == "transposed":
        dy = torch.randn(2, 7, 5, dtype=torch.float64).transpose(1, 2)
    else:
        dy = torch.randn(2, 5, 14, dtype=torch.float64)[..., ::2]
    assert not dy.is_contiguous()
    got = torch.ops.fusedops.native_linear_backward(dy, x, w, saved, activation, [True, True, True])
    want = torch.ops.fusedops.native_linear_backward(dy.contiguous(), x, w, saved, activation, [True, True, True])
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r, rtol=0, atol=0)


def test_native_linear_rejects_bad_input_with_clear_error():
    with pytest.raises(ValueError, match="input has 5 features"):
        torch.ops.fusedops.native_linear_forward(torch.randn(2, 5), torch.randn(3, 4), None, "")
    with pytest.raises(ValueError, match="activation must be one of"):
        torch.ops.fusedops.native_linear_forward(torch.randn(2, 4), torch.randn(3, 4), None, "tanh")
    with pytest.raises(TypeError, match="saved has dtype"):
        torch.ops.fusedops.native_linear_backward(torch.randn(2, 3), torch.randn(2, 4), torch.randn(3, 4),
                                                  torch.randn(2, 3), "relu", [True, True, False])


def test_automatic_choice_takes_cpp_only_where_it_wins(monkeypatch):
    monkeypatch.setattr(backends, "onednn_has_bfloat16", lambda: True)  # the bf16 rule measured there
    monkeypatch.setattr(backends, "cpu_has_avx512", lambda: False)  # the no-pool rule's CPU
    monkeypatch.setattr(backends, "cpu_vector_rows", lambda: True)
    small = (torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3))
    wide = (torch.randn(2, 32, 8, 8), torch.randn(4, 32, 5, 5))  # 4 output channels: no Winograd; K = 800
    short_k = (torch.randn(2, 6, 14, 14), torch.randn(16, 6, 5, 5))  # the CIFAR tutorial's conv2: K = 150
    winograd = (torch.randn(2, 32, 8, 8), torch.randn(64, 32, 3, 3))
    pooled, unpooled = conv_block_params((3, 3)), conv_block_params((3, 3), pool_kernel_size=None)
    strided = conv_block_params((3, 3), stride=2)
    op = "conv_relu_maxpool2d"
    assert backends.select("", small, op, backends.conv_facts(small[1], pooled)).name == "cpp"
    assert backends.select("", wide, op, backends.conv_facts(wide[1], pooled)).name == "reference"
    assert backends.select("", winograd, op, backends.conv_facts(winograd[1], pooled)).name == "cpp"
    assert backends.select("", short_k, op, backends.conv_facts(short_k[1], pooled)).name == "cpp"
    # strided: the im2col path, K = 288
    assert backends.select("", winograd, op, backends.conv_facts(winograd[1], strided)).name == "cpp"
    assert backends.select("", wide, op, backends.conv_facts(wide[1], strided)).name == "reference"
    low = [t.bfloat16() for t in short_k]
    assert backends.select("", low, op, backends.conv_facts(low[1], pooled)).name == "reference"
    # no pool: 3x3 stride-1 layers on NCHW float inputs only, training and forward alike here
    for graph in (True, False):
        for x, w in (winograd, small):
            assert backends.select("", (x, w), op, backends.conv_facts(w, unpooled, x, graph)).name == "cpp"
    unpooled_strided = conv_block_params((3, 3), stride=2, pool_kernel_size=None)
    assert backends.select("", winograd, op, backends.conv_facts(winograd[1], unpooled_strided)).name == "reference"
    assert backends.select("", wide, op, backends.conv_facts(wide[1], unpooled)).name == "reference"  # 5x5
    grouped = (torch.randn(2, 32, 8, 8), torch.randn(64, 16, 3, 3))
    unpooled_grouped = conv_block_params((3, 3), groups=2, pool_kernel_size=None)
    assert backends.select("", grouped, op, backends.conv_facts(grouped[1], unpooled_grouped)).name == "reference"
    cl = [winograd[0].contiguous(memory_format=torch.channels_last), winograd[1]]
    assert backends.select("", cl, op, backends.conv_facts(cl[1], unpooled, cl[0])).name == "reference"
    low = [t.bfloat16() for t in winograd]
    assert backends.select("", low, op, backends.conv_facts(low[1], unpooled)).name == "reference"
    # no pool on an AVX-512 CPU: oneDNN's NCHW conv beats the Winograd layers' forward alone
    monkeypatch.setattr(backends, "cpu_has_avx512", lambda: True)
    backends.clear_choice_cache()
    x, w = winograd
    assert backends.select("", winograd, op, backends.conv_facts(w, unpooled, x, graph=False)).name == "reference"
    assert backends.select("", winograd, op, backends.conv_facts(w, unpooled, x, graph=True)).name == "cpp"
    x, w = small
    assert backends.select("", small, op, backends.conv_facts(w, unpooled, x, graph=False)).name == "cpp"
    narrow = (torch.randn(2, 32, 8, 8), torch.randn(4, 32, 3, 3))  # not Winograd (4 outputs), 32 inputs: im2col
    assert backends.select("", narrow, op, backends.conv_facts(narrow[1], unpooled, graph=False)).name == "reference"
    assert backends.select("", narrow, op, backends.conv_facts(narrow[1], unpooled, graph=True)).name == "cpp"
    assert backends.select("", winograd, op, backends.conv_facts(winograd[1], pooled)).name == "cpp"
    # without the vector rows (no AVX2, or a build without the clones) the reference runs them all
    monkeypatch.setattr(backends, "cpu_vector_rows", lambda: False)
    backends.clear_choice_cache()
    assert backends.select("", small, op, backends.conv_facts(small[1], unpooled)).name == "reference"
    assert backends.select("", winograd, op, backends.conv_facts(winograd[1], pooled)).name == "cpp"
    monkeypatch.setattr(backends, "cpu_has_avx512", lambda: False)
    backends.clear_choice_cache()
    low = [t.bfloat16() for t in small]
    assert backends.select("", low, op, backends.conv_facts(low[1], pooled)).name == "cpp"
    low = [t.bfloat16() for t in winograd]
    assert backends.select("", low, op, backends.conv_facts(low[1], pooled)).name == "cpp"
    low = [t.half() for t in small]
    assert backends.select("", low, op, backends.conv_facts(low[1], pooled)).name == "reference"
    # linear: the same BLAS as eager through one C++ autograd node, measured at eager speed
    assert backends.select("", [torch.randn(2, 3), torch.randn(4, 3)], "linear").name == "cpp"


def test_automatic_choice_leaves_channels_last_forwards_to_onednn(monkeypatch):
    """A strictly channels_last input without a graph to record (no_grad, eval) goes to the
    reference (oneDNN's channels_last conv), except on the first layers' direct path (<= 4
    input channels per group, stride-1 columns); training keeps cpp, except bf16 Winograd
    layers (on a CPU where oneDNN has bf16 kernels)."""
    monkeypatch.setattr(backends, "onednn_has_bfloat16", lambda: True)
    op = "conv_relu_maxpool2d"
    pooled = conv_block_params((3, 3))

    def choice(x, w, graph, params=pooled):
        return backends.select("", (x, w), op, backends.conv_facts(w, params, x, graph)).name

    cl = torch.channels_last
    first = (torch.randn(2, 3, 8, 8).contiguous(memory_format=cl), torch.randn(4, 3, 3, 3))
    winograd = (torch.randn(2, 32, 8, 8).contiguous(memory_format=cl), torch.randn(64, 32, 3, 3))
    low = [t.bfloat16() for t in winograd]
    assert [choice(*first, False), choice(*first, True)] == ["cpp", "cpp"]
    assert choice(*[t.bfloat16() for t in first], False) == "cpp"
    strided = conv_block_params((3, 3), stride=(1, 2))  # strided columns: im2col, not the direct path
    assert [choice(*first, False, strided), choice(*first, True, strided)] == ["reference", "cpp"]
    assert [choice(*winograd, False), choice(*winograd, True)] == ["reference", "cpp"]
    assert [choice(*low, False), choice(*low, True)] == ["reference", "reference"]
    # NCHW inputs, and one-channel inputs (channels_last and NCHW at once), keep cpp.
    assert choice(winograd[0].contiguous(), winograd[1], False) == "cpp"
    single = torch.randn(2, 1, 8, 8).contiguous(memory_format=cl)
    assert strictly_channels_last(winograd[0]) and not strictly_channels_last(single)
    assert choice(single, torch.randn(4, 1, 3, 3), False) == "cpp"


def test_a_module_chooses_per_layout_and_graph():
    m = fusedops.FusedConvBlock(32, 64, 3, padding=1)
    x = torch.randn(2, 32, 8, 8)
    chosen = lambda: sorted({b.name for b in m._choices.entries.values()})  # noqa: E731
    with torch.no_grad():
        want = m(x)
        got = m(x.contiguous(memory_format=torch.channels_last))
    assert chosen() == ["cpp", "reference"]
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, want)
    m._choices.entries.clear()
    m(x.contiguous(memory_format=torch.channels_last)).sum().backward()
    assert chosen() == ["cpp"]


def test_automatic_choice_takes_cpp_for_every_bfloat16_conv_block_where_onednn_has_no_bf16(monkeypatch):
    """Without native oneDNN bf16 kernels the reference's bf16 conv is oneDNN's reference
    implementation (an AVX2-only CPU) or its emulation (AVX-512 without BF16), slower than the
    float32 kernels on copies: every bf16 conv block, pooled or not, either layout, graph or
    not, takes cpp; other dtypes keep their rules."""
    monkeypatch.setattr(backends, "onednn_has_bfloat16", lambda: False)
    op = "conv_relu_maxpool2d"
    cl = torch.channels_last
    shapes = [((2, 32, 8, 8), (4, 32, 5, 5)), ((2, 32, 8, 8), (64, 32, 3, 3)), ((2, 6, 14, 14), (16, 6, 5, 5))]
    for x_shape, w_shape in shapes:
        for params in (conv_block_params((3, 3)), conv_block_params((3, 3), pool_kernel_size=None)):
            for layout in (torch.contiguous_format, cl):
                x = torch.randn(x_shape).contiguous(memory_format=layout)
                w = torch.randn(w_shape)
                for graph in (False, True):
                    low = [x.bfloat16(), w.bfloat16()]
                    facts = backends.conv_facts(low[1], params, low[0], graph)
                    assert backends.select("", low, op, facts).name == "cpp", (x_shape, w_shape, params, layout, graph)
    wide = (torch.randn(2, 32, 8, 8), torch.randn(4, 32, 5, 5))  # float32 keeps the measured K rule
    assert backends.select("", wide, op, backends.conv_facts(wide[1], conv_block_params((3, 3)))).name == "reference"


def test_onednn_bfloat16_probe_asks_for_native_bf16_instructions():
    """On x86 the probe is the CPU's AVX-512 BF16 or AMX (oneDNN's emulated bf16 on other AVX-512
    CPUs does not count); elsewhere oneDNN's own answer."""
    if platform.machine().lower() in ("x86_64", "amd64") and hasattr(torch.cpu, "_is_avx512_bf16_supported"):
        want = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    else:
        probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
        want = bool(probe()) if probe is not None else True
    assert backends.onednn_has_bfloat16() is bool(want)


def test_onednn_bfloat16_probe_off_x86_and_on_errors(monkeypatch):
    """Off x86 the probe is oneDNN's own answer; a probe that raises counts as bf16 present (the
    rule measured on such a CPU stands)."""
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False, raising=False)
    backends.onednn_has_bfloat16.cache_clear()
    try:
        assert backends.onednn_has_bfloat16() is False
        monkeypatch.setattr(platform, "machine", lambda: "x86_64")
        for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
            monkeypatch.setattr(torch.cpu, name, lambda: False, raising=False)
        backends.onednn_has_bfloat16.cache_clear()
        assert backends.onednn_has_bfloat16() is False
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
        backends.onednn_has_bfloat16.cache_clear()
        assert backends.onednn_has_bfloat16() is True

        def broken():
            raise RuntimeError("no cpuinfo")
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", broken)
        backends.onednn_has_bfloat16.cache_clear()
        assert backends.onednn_has_bfloat16() is True
    finally:
        monkeypatch.undo()
        backends.onednn_has_bfloat16.cache_clear()


def test_cpu_avx512_probe_matches_torch():
    probe = getattr(torch.cpu, "_is_avx512_supported", None)
    assert backends.cpu_has_avx512() is (bool(probe()) if probe is not None else True)


@pytest.mark.parametrize("channels", [3, 16])  # direct path, Winograd path
def test_bfloat16_runs_the_float32_kernels_and_rounds(channels):
    """bf16 (CPU autocast) goes through the float32 kernels: outputs and gradients equal the
    float32 results on the same bf16 values, rounded to bf16."""
    x = torch.randn(2, channels, 9, 8).bfloat16()
    w = torch.randn(16, channels, 3, 3).bfloat16()
    b = torch.randn(16).bfloat16()
    low = [t.clone().requires_grad_() for t in (x, w, b)]
    ref = [t.float().requires_grad_() for t in (x, w, b)]
    out = fusedops.conv_relu_maxpool2d(*low, padding=1, backend="cpp")
    want = fusedops.conv_relu_maxpool2d(*ref, padding=1, backend="cpp")
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, want.bfloat16(), atol=0, rtol=0)
    g = torch.randn(out.shape).bfloat16()
    out.backward(g)
    want.backward(g.float())
    for got, exp in zip(low, ref):
        assert got.grad.dtype == torch.bfloat16
        torch.testing.assert_close(got.grad, exp.grad.bfloat16(), atol=0, rtol=0)
    lx, lw = torch.randn(5, 7).bfloat16().requires_grad_(), torch.randn(4, 7).bfloat16().requires_grad_()
    fx, fw = lx.detach().float().requires_grad_(), lw.detach().float().requires_grad_()
    y = fusedops.linear(lx, lw, activation="gelu", backend="cpp")
    z = fusedops.linear(fx, fw, activation="gelu", backend="cpp")
    torch.testing.assert_close(y, z.bfloat16(), atol=0, rtol=0)
    y.sum().backward()
    z.sum().backward()
    # the saved pre-activation is rounded to bf16, so the gradients agree to bf16 precision
    torch.testing.assert_close(lx.grad, fx.grad.bfloat16(), atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(lw.grad, fw.grad.bfloat16(), atol=1e-2, rtol=1e-2)


# Each case takes another path through the forward and backward kernels (csrc/cpu/conv_block_*.cpp):
# im2col (> 16 input channels per group, or strided columns): conv rows shorter or longer than
# kLongRow (32: padded-copy or span-copy gather), products below or above kSmallGemm (2^15
# multiply-adds: register-tiled loops or BLAS), tile edges of the small GEMM (rows not a
# multiple of 4, columns not a multiple of its vector pair), the MaxPool2d(2) row kernel and
# the general pool epilogue; the direct convolution (csrc/cpu/direct_conv.h: <= 16 input
# channels per group, stride-1 columns), pooled in registers for MaxPool2d(2) or through a band
# tile for other pools and no pool, with channel counts that leave part of a register tile,
# rows shorter than one column tile and rows whose last tile overlaps its neighbour; strided
# and channels_last input. The backward of every case is the im2col path's.
KERNEL_PATHS = {
    # im2col: more than 16 input channels per group (direct_conv::kMaxChannels), or strided columns
    "short rows, tile edges": ((1, 17, 5, 7), 5, dict(padding=1)),  # 5 x 35 x 153: the small GEMM
    "short rows, stride, dilation": ((2, 2, 13, 11), 6, dict(stride=2, dilation=2, padding=(2, 1))),
    "short rows, asymmetric pool": ((1, 17, 12, 12), 4, dict(pool_kernel_size=(3, 2), pool_stride=(2, 1))),
    "long rows, small gemm": ((1, 17, 2, 40), 2, dict(padding=1)),  # 2 x 80 x 153
    "long rows, blas": ((2, 17, 20, 36), 7, dict(padding=1)),
    "short rows, blas, bands, groups": ((2, 51, 29, 29), 9, dict(padding=2, groups=3)),  # OW 31: 3 bands
    "short rows, blas, bands": ((1, 17, 40, 30), 5, {}),  # 3 bands of up to 14 conv rows x 28
    "strided columns, blas, bands": ((1, 17, 61, 61), 5, dict(stride=2)),  # 3 bands, OW 30
    "ceil mode": ((1, 17, 9, 9), 4, dict(pool_ceil_mode=True)),
    "no pool": ((1, 17, 8, 34), 5, dict(pool_kernel_size=None, padding=1)),
    # one pooled row per band, 16 bands summed into one weight and bias gradient
    "many bands": ((1, 64, 66, 66), 4, dict(stride=2, padding=1)),
    "direct, pooled, short rows, channel tile edge": ((2, 3, 9, 7), 5, dict(padding=1)),
    "direct, pooled, overlapping last tile": ((1, 2, 10, 38), 6, dict(padding=1)),
    "direct, pooled, row stride, dilation, groups": ((2, 4, 13, 21), 6, dict(stride=(2, 1), dilation=2,
                                                                             padding=(2, 1), groups=2)),
    "direct, asymmetric pool, short rows": ((1, 3, 12, 12), 4, dict(pool_kernel_size=(3, 2), pool_stride=(2, 1))),
    "direct, ceil mode": ((1, 3, 9, 9), 4, dict(pool_ceil_mode=True)),
    "direct, 6 channels, pooled": ((2, 6, 9, 7), 5, dict(padding=1)),
    "direct, 16 channels, asymmetric pool": ((1, 16, 12, 11), 5, dict(padding=1, pool_kernel_size=(3, 2))),
    "direct, no pool, overlapping last tile": ((1, 3, 8, 34), 5, dict(pool_kernel_size=None, padding=1)),
    # Winograd (3x3, stride 1, >= 8 channels): the input, the un-pooled gradient and the input
    # gradient staged channels innermost and the pooled outputs written back, by 8 x 8 block
    # transposes (float), with channel and position counts off the block size, whole blocks,
    # groups, conv outputs that pooling leaves uncovered, and bands that start below the first row.
    "winograd, pooled, block remainders": ((2, 13, 14, 14), 11, dict(padding=1)),
    "winograd, pooled, whole blocks": ((3, 16, 16, 16), 24, dict(padding=1)),
    "winograd, pooled, groups, odd sizes": ((2, 32, 11, 13), 16, dict(padding=1, groups=2)),
    "winograd, pooled, several bands": ((1, 16, 70, 70), 9, dict(padding=1)),
    "winograd, no pool": ((1, 9, 11, 13), 10, dict(pool_kernel_size=None, padding=1)),
}


def _input_in_layout(shape, dtype, layout):
    """A random input of `shape`: contiguous, channels_last, or every other column of a wider one."""
    if layout == "sliced":
        return torch.randn(*shape[:-1], 2 * shape[-1], dtype=dtype)[..., ::2]
    x = torch.randn(shape, dtype=dtype)
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", list(KERNEL_PATHS))
def test_every_kernel_path_matches_the_reference(case, dtype, layout):
    shape, out_channels, kwargs = KERNEL_PATHS[case]
    groups = kwargs.get("groups", 1)
    x = _input_in_layout(shape, dtype, layout)
    w = torch.randn(out_channels, shape[1] // groups, 3, 3, dtype=dtype)
    b = torch.randn(out_channels, dtype=dtype)
    results = {}
    for backend in ("cpp", "reference"):
        xs, ws, bs = (t.detach().clone(memory_format=torch.preserve_format).requires_grad_() for t in (x, w, b))
        out = fusedops.conv_relu_maxpool2d(xs, ws, bs, backend=backend, **kwargs)
        out.backward(torch.linspace(-1, 1, out.numel(), dtype=dtype).view_as(out))
        results[backend] = (out, xs.grad, ws.grad, bs.grad)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else {}
    for got, want in zip(results["cpp"], results["reference"]):
        torch.testing.assert_close(got, want, **tol)


@pytest.fixture(params=[3, 4], ids=["3-channel tile", "4-channel tile"])
def direct_tile(request):
    """Pins the direct convolution's register tile to 3 or 4 output channels (direct_conv.h: 4
    where the AVX-512 clones run, 3 on AVX2), so that both tiles run on any CPU."""
    fusedops._C._set_cpu_direct_tile_channels(request.param)
    yield request.param
    fusedops._C._set_cpu_direct_tile_channels(0)


def test_direct_tile_setting_rejects_other_widths():
    with pytest.raises(ValueError, match="got 5"):
        fusedops._C._set_cpu_direct_tile_channels(5)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("out_channels", [1, 3, 4, 7])
@pytest.mark.parametrize("case", [case for case in KERNEL_PATHS if case.startswith("direct")])
def test_direct_convolution_tiles_match_the_reference(case, out_channels, dtype, layout, direct_tile):
    """Either register tile, with output channel counts below, at and off both tile widths (the
    last tile partly outside the weights' padding)."""
    if not fusedops._C._cpu_direct_conv_available():
        pytest.skip("no direct convolution on this CPU or build (it needs AVX2 and FMA, and GCC 12's clones)")
    shape, _, kwargs = KERNEL_PATHS[case]
    groups = kwargs.get("groups", 1)
    out_channels *= groups
    x = _input_in_layout(shape, dtype, layout)
    w = torch.randn(out_channels, shape[1] // groups, 3, 3, dtype=dtype)
    b = torch.randn(out_channels, dtype=dtype)
    results = {}
    for backend in ("cpp", "reference"):
        xs = x.detach().clone(memory_format=torch.preserve_format).requires_grad_()
        out = fusedops.conv_relu_maxpool2d(xs, w, b, backend=backend, **kwargs)
        out.backward(torch.linspace(-1, 1, out.numel(), dtype=dtype).view_as(out))  # through the offsets
        results[backend] = (out, xs.grad)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else {}
    for got, want in zip(results["cpp"], results["reference"]):
        torch.testing.assert_close(got, want, **tol)


# First layers (direct path, MaxPool2d(2)) whose input needs no gradient take the weight gradient
# from each pooled gradient at its max's patch (direct_conv::weight_grad_pool2x2): kernel rows
# copied as vectors (stride-1 taps, KW up to a vector) or tap by tap, K over one or several
# chunks of 8 vectors, groups, row stride and dilation, channel counts off the vector width.
FIRST_LAYERS = {
    "3x3, 32 channels": ((2, 1, 12, 14), (32, 1, 3, 3), dict(padding=1)),
    "3 channels, odd sizes": ((2, 3, 9, 7), (5, 3, 3, 3), dict(padding=1)),
    "groups, row stride, dilation": ((2, 4, 13, 21), (6, 2, 3, 3), dict(stride=(2, 1), dilation=2, padding=(2, 1),
                                                                        groups=2)),
    "7x7, several chunks of K": ((1, 4, 12, 11), (3, 4, 7, 7), dict(padding=3)),
    "1x9, rows wider than a vector": ((2, 2, 6, 20), (4, 2, 1, 9), dict(padding=(0, 4))),
    "no bias": ((2, 3, 10, 10), (7, 3, 3, 3), dict(padding=1, bias=False)),
    "one pooled column": ((2, 3, 8, 3), (5, 3, 3, 3), dict(padding=1)),  # no pair of columns to split
}


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", list(FIRST_LAYERS))
def test_first_layer_weight_gradient_matches_the_reference(case, dtype, layout):
    shape, wshape, kwargs = FIRST_LAYERS[case]
    x = _input_in_layout(shape, dtype, layout)
    kwargs = dict(kwargs)
    w, b = torch.randn(wshape, dtype=dtype), torch.randn(wshape[0], dtype=dtype) if kwargs.pop("bias", True) else None
    results = {}
    for backend in ("cpp", "reference"):
        ws, bs = w.clone().requires_grad_(), None if b is None else b.clone().requires_grad_()
        out = fusedops.conv_relu_maxpool2d(x, ws, bs, backend=backend, **kwargs)
        out.backward(torch.linspace(-1, 1, out.numel(), dtype=dtype).view_as(out))
        results[backend] = (out, ws.grad) + (() if bs is None else (bs.grad,))
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else {}
    for got, want in zip(results["cpp"], results["reference"]):
        torch.testing.assert_close(got, want, **tol)


@pytest.mark.parametrize("in_channels", [1, 17])  # direct convolution, im2col path
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pool_row_kernel_ties_nan_and_relu_off_in_vector_lanes_and_tail(dtype, in_channels, direct_tile):
    """The MaxPool2d(2) kernels run 8 (float) or 4 (double) windows per vector step: the forward
    in the direct convolution's registers (1 input channel: the last step overlaps the one before)
    or in pool2x2_row (17 input channels, im2col: the last windows from a padded copy), the
    backward in unpool2x2_row. Small integers through a 1x1 conv whose five output channels each
    pick channel 0 and add their own bias (0, -1, 1, 0.5, -2: ties and ReLU-off windows shifted,
    and partial channel tiles) put ties, all-negative windows (ReLU off) and NaN in both; eager's
    conv, ReLU and max_pool2d are the oracle, forward and gradient (ties to the first tap in
    row-major order, NaN taken; distinct pooled gradients, so a wrong tap shows)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(-2, 3, (2, in_channels, 6, 38), generator=gen).to(dtype)  # 19 windows per pooled row
    x[0, 0, 1, 7] = float("nan")  # a vector lane
    x[1, 0, 4, 30] = float("nan")  # window 15: a vector lane of the second (float) / fourth (double) step
    x[0, 0, 2, 36] = float("nan")  # window 18: the last windows (padded copy, or the overlapping step)
    w = torch.zeros(5, in_channels, 1, 1, dtype=dtype)
    w[:, 0] = 1
    b = torch.tensor([0, -1, 1, 0.5, -2], dtype=dtype)
    xs, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = fusedops.conv_relu_maxpool2d(xs, w, b, backend="cpp")
    ref = torch.max_pool2d(torch.relu(torch.nn.functional.conv2d(xe, w, b)), 2)
    torch.testing.assert_close(out, ref, equal_nan=True, atol=0, rtol=0)
    assert out.isnan().sum() == 3 * 5 and (out == 0).any()
    g = torch.arange(1, out.numel() + 1, dtype=dtype).view_as(out)
    out.backward(g)
    ref.backward(g)
    torch.testing.assert_close(xs.grad, xe.grad, atol=0, rtol=0)


@pytest.mark.parametrize("grad_layout", ["contiguous", "channels_last", "batch expanded", "row expanded",
                                         "padded rows"])
# direct convolution (1 -> 10), Winograd (9 -> 10), im2col (17 -> 4: over the direct path's 16
# input channels, under Winograd's 8 outputs)
@pytest.mark.parametrize("in_channels, out_channels", [(1, 10), (9, 10), (17, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_no_pool_rows_relu_nan_and_inf_in_vector_lanes_and_tail(dtype, in_channels, out_channels, grad_layout):
    """Without a pool the forward writes each output row and its offsets (relu_rows::bias_relu_row,
    8 float or 4 double lanes per step, then a scalar tail) and the backward masks each gradient
    row (relu_grad_row; a strided gradient row is gathered lane by lane); rows that follow each
    other in memory run as one. Rows of 19 conv columns put lanes and a tail in both; 50 rows
    make several bands. A 3x3 conv of small integers whose output channels pick channel 0 at
    the centre tap and add their own bias makes positive, zero and negative outputs and NaN;
    the gradient holds NaN and Inf where the ReLU is on and where it is off. Eager's conv and
    ReLU are the oracle: NaN outputs pass their gradient, a zero or negative output zeroes it,
    NaN and Inf included, and the bias gradient sums what passed."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(-2, 3, (2, in_channels, 50, 19), generator=gen).to(dtype)
    x[0, 0, 1, 3] = float("nan")  # vector lanes (the conv spreads it to its 3x3 neighbours)
    x[1, 0, 4, 17] = float("nan")  # the tail
    w = torch.zeros(out_channels, in_channels, 3, 3, dtype=dtype)
    w[:, 0, 1, 1] = 1
    b = torch.tensor([0, -1, 1, 0.5, -2, 0, 1, -1, 2, -0.5], dtype=dtype)[:out_channels]
    xs, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
    bs, be = b.clone().requires_grad_(), b.clone().requires_grad_()
    out = fusedops.conv_relu_maxpool2d(xs, w, bs, padding=1, pool_kernel_size=None, backend="cpp")
    ref = torch.relu(torch.nn.functional.conv2d(xe, w, be, padding=1))
    torch.testing.assert_close(out, ref, equal_nan=True, atol=0, rtol=0)
    assert out.isnan().any() and (out == 0).any() and (out > 0).any()
    # small integers: every partial sum of the bias gradient is exact in float32, in any order
    g = (torch.arange(out.numel()) % 13 + 1).to(dtype).view_as(out)
    g[0, 1, 1, 3] = float("nan")  # at the NaN output: passes
    g[0, 3, 2, 5] = float("inf")
    g[1, -1, 33, 18] = float("nan")
    g[0, 0, 0, 0] = float("-inf")
    off = (ref == 0).nonzero()
    assert len(off) > 3
    for i in (0, len(off) // 2, -1):  # where the ReLU is off: zeroed
        g[tuple(off[i])] = float("nan") if i else float("inf")
    if grad_layout == "channels_last":
        g = g.contiguous(memory_format=torch.channels_last)
    elif grad_layout == "batch expanded":  # every image's gradient the same, stride 0 along the batch
        g = g[:1].expand_as(g)
    elif grad_layout == "row expanded":  # column 3's value along each row (stride 0), its NaN too
        g = g[..., 3:4].expand_as(g)
    elif grad_layout == "padded rows":  # gaps of NaN between rows: each row its own run
        wide = torch.full((*g.shape[:-1], g.shape[-1] + 3), float("nan"), dtype=dtype)
        wide[..., : g.shape[-1]] = g
        g = wide[..., : g.shape[-1]]
    out.backward(g)
    ref.backward(g)
    for got, want in ((xs.grad, xe.grad), (bs.grad, be.grad)):
        torch.testing.assert_close(got, want, equal_nan=True)
