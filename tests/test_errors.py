"""Bad input raises a clear ValueError/TypeError/RuntimeError naming the argument."""

import pytest
import torch
from torch import nn

import fusedops
from tests import oracle

X = torch.randn(2, 3, 8, 8)
W = torch.randn(4, 3, 3, 3)
B = torch.randn(4)

# (id, args, kwargs, exception, words the message must contain)
CONV_BAD = [
    ("rank2_input", (torch.randn(3, 8), W), {}, ValueError, ["input", "2-D"]),
    ("rank5_input", (torch.randn(1, 2, 3, 8, 8), W), {}, ValueError, ["input", "5-D"]),
    ("weight_rank", (X, torch.randn(4, 3, 3)), {}, ValueError, ["weight", "3-D"]),
    ("channel_mismatch", (torch.randn(2, 4, 8, 8), W), {}, ValueError,
     ["input has 4 channels but weight expects 3 (groups=1)"]),
    ("dtype_mismatch", (X, W.double()), {}, TypeError, ["weight", "float64", "float32"]),
    ("int_input", (X.long(), W), {}, TypeError, ["input", "floating-point", "int64"]),
    ("int_weight", (X, W.int()), {}, TypeError, ["weight", "floating-point"]),
    ("bias_shape", (X, W, torch.randn(3)), {}, ValueError, ["bias", "(4,)"]),
    ("bias_dtype", (X, W, B.double()), {}, TypeError, ["bias", "float64"]),
    ("bias_type", (X, W, [1.0] * 4), {}, TypeError, ["bias"]),
    ("input_type", (X.numpy(), W), {}, TypeError, ["input", "Tensor"]),
    ("input_smaller_than_kernel", (torch.randn(1, 3, 2, 2), W), {}, ValueError,
     ["padded input size (2 x 2)", "kernel size (3 x 3)"]),
    ("pool_larger_than_conv", (torch.randn(1, 3, 4, 4), W), dict(pool_kernel_size=3), ValueError,
     ["pool", "too small"]),
    ("stride0", (X, W), dict(stride=0), ValueError, ["stride", "positive"]),
    ("stride_triple", (X, W), dict(stride=(1, 1, 1)), TypeError, ["stride"]),
    ("negative_padding", (X, W), dict(padding=-1), ValueError, ["padding"]),
    ("padding_word", (X, W), dict(padding="full"), ValueError, ["padding", "'same'"]),
    ("same_strided", (X, W), dict(padding="same", stride=2), ValueError, ["same", "strided"]),
    ("dilation0", (X, W), dict(dilation=0), ValueError, ["dilation"]),
    ("groups0", (X, W), dict(groups=0), ValueError, ["groups"]),
    ("groups_not_dividing_out", (torch.randn(2, 4, 8, 8), torch.randn(3, 2, 3, 3)), dict(groups=2),
     ValueError, ["groups=2"]),
    ("groups_not_dividing_in", (torch.randn(2, 3, 8, 8), torch.randn(4, 1, 3, 3)), dict(groups=2),
     ValueError, ["input has 3 channels", "groups=2"]),
    ("pool_padding_over_half", (X, W), dict(pool_kernel_size=2, pool_padding=2), ValueError,
     ["pool_padding", "half"]),
    ("pool_stride0", (X, W), dict(pool_stride=0), ValueError, ["pool_stride"]),
    ("pool_kernel0", (X, W), dict(pool_kernel_size=0), ValueError, ["pool_kernel_size"]),
    ("pool_dilation0", (X, W), dict(pool_dilation=0), ValueError, ["pool_dilation"]),
    ("pool_ceil_not_bool", (X, W), dict(pool_ceil_mode="yes"), TypeError, ["pool_ceil_mode"]),
    ("unknown_backend", (X, W), dict(backend="cudnn"), ValueError, ["cudnn", "reference"]),
]


@pytest.mark.parametrize("args,kwargs,exc,words", [c[1:] for c in CONV_BAD], ids=[c[0] for c in CONV_BAD])
def test_conv_block_bad_input(args, kwargs, exc, words):
    with pytest.raises(exc) as info:
        fusedops.conv_relu_maxpool2d(*args, **kwargs)
    for word in words:
        assert word in str(info.value)


TORCH_REJECTS = [c for c in CONV_BAD if c[0] not in ("unknown_backend", "pool_ceil_not_bool", "bias_type")]


@pytest.mark.parametrize("args,kwargs", [c[1:3] for c in TORCH_REJECTS], ids=[c[0] for c in TORCH_REJECTS])
def test_torch_rejects_the_same_inputs(args, kwargs):
    """Each bad input above is one torch's own composition rejects too (no stricter rules)."""
    with pytest.raises((RuntimeError, ValueError, TypeError, AttributeError)):
        oracle.conv_block(*args, **kwargs)


LINEAR_BAD = [
    ("scalar_input", (torch.tensor(1.0), torch.randn(3, 1)), {}, ValueError, ["input", "0-D"]),
    ("feature_mismatch", (torch.randn(2, 5), torch.randn(3, 4)), {}, ValueError,
     ["input has 5 features", "weight expects 4"]),
    ("weight_rank", (torch.randn(2, 4), torch.randn(3, 4, 1)), {}, ValueError, ["weight", "3-D"]),
    ("bias_shape", (torch.randn(2, 4), torch.randn(3, 4), torch.randn(4)), {}, ValueError, ["bias", "(3,)"]),
    ("dtype_mismatch", (torch.randn(2, 4), torch.randn(3, 4).double()), {}, TypeError, ["weight"]),
    ("int_input", (torch.ones(2, 4, dtype=torch.int32), torch.randn(3, 4)), {}, TypeError, ["input"]),
    ("unknown_activation", (torch.randn(2, 4), torch.randn(3, 4)), dict(activation="tanh"), ValueError,
     ["activation", "'gelu_tanh'", "'silu'"]),
    ("unknown_backend", (torch.randn(2, 4), torch.randn(3, 4)), dict(backend="x"), ValueError,
     ["backend", "reference"]),
]


@pytest.mark.parametrize("args,kwargs,exc,words", [c[1:] for c in LINEAR_BAD], ids=[c[0] for c in LINEAR_BAD])
def test_linear_bad_input(args, kwargs, exc, words):
    with pytest.raises(exc) as info:
        fusedops.linear(*args, **kwargs)
    for word in words:
        assert word in str(info.value)


MODULE_BAD = [
    ("groups_in", lambda: fusedops.FusedConvBlock(3, 4, 3, groups=2), ValueError, ["in_channels", "groups"]),
    ("groups_out", lambda: fusedops.FusedConvBlock(4, 3, 3, groups=2), ValueError, ["out_channels"]),
    ("zero_channels", lambda: fusedops.FusedConvBlock(0, 3, 3), ValueError, ["in_channels"]),
    ("padding_mode", lambda: fusedops.FusedConvBlock(3, 4, 3, padding_mode="mirror"), ValueError,
     ["padding_mode", "'reflect'"]),
    ("kernel0", lambda: fusedops.FusedConvBlock(3, 4, 0), ValueError, ["kernel_size"]),
    ("same_strided", lambda: fusedops.FusedConvBlock(3, 4, 3, stride=2, padding="same"), ValueError, ["same"]),
    ("pool_padding", lambda: fusedops.FusedConvBlock(3, 4, 3, pool_kernel_size=3, pool_padding=2), ValueError,
     ["pool_padding"]),
    ("backend", lambda: fusedops.FusedConvBlock(3, 4, 3, backend="nope"), ValueError, ["backend"]),
    ("activation", lambda: fusedops.FusedLinear(3, 4, activation="tanh"), ValueError, ["activation"]),
    ("features", lambda: fusedops.FusedLinear(-1, 4), ValueError, ["in_features"]),
    ("from_not_conv", lambda: fusedops.FusedConvBlock.from_modules(nn.Linear(2, 2)), TypeError, ["nn.Conv2d"]),
    ("from_bad_pool", lambda: fusedops.FusedConvBlock.from_modules(nn.Conv2d(2, 2, 3), pool=nn.AvgPool2d(2)),
     TypeError, ["MaxPool2d"]),
    ("from_pool_indices",
     lambda: fusedops.FusedConvBlock.from_modules(nn.Conv2d(2, 2, 3), pool=nn.MaxPool2d(2, return_indices=True)),
     ValueError, ["return_indices"]),
    ("from_bad_act", lambda: fusedops.FusedLinear.from_modules(nn.Linear(2, 2), nn.Tanh()), TypeError,
     ["activation"]),
]


@pytest.mark.parametrize("make,exc,words", [c[1:] for c in MODULE_BAD], ids=[c[0] for c in MODULE_BAD])
def test_module_construction_validates(make, exc, words):
    with pytest.raises(exc) as info:
        make()
    for word in words:
        assert word in str(info.value)


def test_module_forward_wrong_channels():
    block = fusedops.FusedConvBlock(3, 4, 3)
    with pytest.raises(ValueError, match="input has 5 channels but weight expects 3"):
        block(torch.randn(1, 5, 8, 8))


# ---- catchable as torch's errors: what torch rejects with RuntimeError, fusedops does too ----


def _torch_error(fn):
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - any error torch raises is the point of comparison
        return exc
    raise AssertionError("torch accepted the input")


@pytest.mark.parametrize("args,kwargs", [c[1:3] for c in TORCH_REJECTS], ids=[c[0] for c in TORCH_REJECTS])
def test_conv_block_error_is_a_runtime_error_where_torchs_is(args, kwargs):
    expected = _torch_error(lambda: oracle.conv_block(*args, **kwargs))
    with pytest.raises((ValueError, TypeError)) as info:
        fusedops.conv_relu_maxpool2d(*args, **kwargs)
    if isinstance(expected, RuntimeError):
        assert isinstance(info.value, RuntimeError), f"torch raises {expected!r}, fusedops {info.value!r}"
    assert isinstance(info.value, (fusedops.errors.InputValueError, fusedops.errors.InputTypeError))


@pytest.mark.parametrize("args,kwargs", [c[1:3] for c in LINEAR_BAD if "unknown" not in c[0]],
                         ids=[c[0] for c in LINEAR_BAD if "unknown" not in c[0]])
def test_linear_error_is_a_runtime_error_as_torchs_is(args, kwargs):
    assert isinstance(_torch_error(lambda: oracle.linear(*args, **kwargs)), RuntimeError)
    with pytest.raises(RuntimeError) as info:
        fusedops.linear(*args, **kwargs)
    assert isinstance(info.value, (ValueError, TypeError))


# Inputs a module's forward rejects: (id, input, words of the message).
CONV_FORWARD_BAD = [
    ("channels", torch.randn(1, 5, 8, 8), ["input has 5 channels but weight expects 3"]),
    ("rank2", torch.randn(3, 8), ["input", "2-D"]),
    ("rank5", torch.randn(1, 1, 3, 8, 8), ["input", "5-D"]),
    ("dtype", torch.randn(1, 3, 8, 8, dtype=torch.float64), ["dtype", "input"]),
    ("int", torch.ones(1, 3, 8, 8, dtype=torch.long), ["input"]),
    ("smaller_than_kernel", torch.randn(1, 3, 2, 2), ["padded input size (2 x 2)", "(3 x 3)"]),
    ("pool_output_empty", torch.randn(1, 3, 3, 3), ["too small"]),
]
LINEAR_FORWARD_BAD = [
    ("features", torch.randn(2, 5), ["input has 5 features", "weight expects 3"]),
    ("scalar", torch.tensor(1.0), ["input", "1 dimension"]),
    ("dtype", torch.randn(2, 3, dtype=torch.float64), ["dtype", "input"]),
    ("int", torch.ones(2, 3, dtype=torch.int32), ["input"]),
]


@pytest.mark.parametrize("name,x,words", CONV_FORWARD_BAD, ids=[c[0] for c in CONV_FORWARD_BAD])
@pytest.mark.parametrize("choice", ["auto", "reference", "cpp"])
def test_module_forward_errors_are_caught_as_nn_conv2ds_are(choice, name, x, words):
    """Code written for nn.Conv2d (``except RuntimeError``) catches the fused block's errors, on
    the native one-call path (C++ checks) as on the Python one."""
    if choice != "auto" and choice not in fusedops.available_backends():
        pytest.skip(f"backend {choice!r} unavailable here")
    eager = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2))
    assert isinstance(_torch_error(lambda: eager(x)), RuntimeError)
    block = fusedops.FusedConvBlock.from_modules(*eager, backend=None if choice == "auto" else choice)
    with pytest.raises(RuntimeError) as info:
        block(x)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("name,x,words", LINEAR_FORWARD_BAD, ids=[c[0] for c in LINEAR_FORWARD_BAD])
@pytest.mark.parametrize("choice", ["auto", "reference", "cpp"])
def test_module_forward_errors_are_caught_as_nn_linears_are(choice, name, x, words):
    if choice != "auto" and choice not in fusedops.available_backends():
        pytest.skip(f"backend {choice!r} unavailable here")
    eager = nn.Linear(3, 4)
    assert isinstance(_torch_error(lambda: eager(x)), RuntimeError)
    lin = fusedops.FusedLinear.from_modules(eager, nn.ReLU(), backend=None if choice == "auto" else choice)
    with pytest.raises(RuntimeError) as info:
        lin(x)
    for word in words:
        assert word in str(info.value)


def _assert_refused_after_good_calls(module, good, bad, words):
    """``module`` runs ``good`` with a graph and without, then refuses ``bad`` with a
    RuntimeError whose message has each of ``words``."""
    module(good).sum().backward()
    with torch.no_grad():
        module(good)
        with pytest.raises(RuntimeError) as info:
            module(bad)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("name,x,words", CONV_FORWARD_BAD, ids=[c[0] for c in CONV_FORWARD_BAD])
@pytest.mark.parametrize("choice", ["auto", "reference", "cpp"])
def test_module_refuses_a_bad_input_after_good_calls(choice, name, x, words):
    """A module skips the tensor checks on a call like its last checked one (ChoiceMemo): a
    bad input after good calls, with and without a graph, is still refused as the first call."""
    if choice != "auto" and choice not in fusedops.available_backends():
        pytest.skip(f"backend {choice!r} unavailable here")
    block = fusedops.FusedConvBlock(3, 4, 3, backend=None if choice == "auto" else choice)
    good = torch.randn(1, 3, 8, 8)
    _assert_refused_after_good_calls(block, good, x, words)
    with pytest.raises(RuntimeError):
        block(x)
    assert block(good).shape == (1, 4, 3, 3)


@pytest.mark.parametrize("name,x,words", LINEAR_FORWARD_BAD, ids=[c[0] for c in LINEAR_FORWARD_BAD])
@pytest.mark.parametrize("choice", ["auto", "reference", "cpp"])
def test_linear_module_refuses_a_bad_input_after_good_calls(choice, name, x, words):
    if choice != "auto" and choice not in fusedops.available_backends():
        pytest.skip(f"backend {choice!r} unavailable here")
    lin = fusedops.FusedLinear(3, 4, activation="relu", backend=None if choice == "auto" else choice)
    _assert_refused_after_good_calls(lin, torch.randn(2, 3), x, words)


@pytest.mark.parametrize("choice", ["auto", "reference", "cpp"])
def test_module_checks_a_replaced_weight_and_bias_after_good_calls(choice):
    if choice != "auto" and choice not in fusedops.available_backends():
        pytest.skip(f"backend {choice!r} unavailable here")
    block = fusedops.FusedConvBlock(3, 4, 3, backend=None if choice == "auto" else choice)
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        block(x)
        block.weight = nn.Parameter(torch.randn(4, 5, 3, 3))
        with pytest.raises(RuntimeError, match="input has 3 channels but weight expects 5"):
            block(x)
        block.weight = nn.Parameter(torch.randn(4, 3, 3, 3, dtype=torch.float64))
        with pytest.raises(RuntimeError, match="dtype"):
            block(x)
        block.weight = nn.Parameter(torch.randn(4, 3, 3, 3))
        block(x)
        block.bias = nn.Parameter(torch.randn(5))
        with pytest.raises(RuntimeError, match="bias"):
            block(x)


def test_error_classes_are_value_or_type_and_runtime_errors():
    errors = fusedops.errors
    assert issubclass(errors.InputValueError, ValueError) and issubclass(errors.InputValueError, RuntimeError)
    assert issubclass(errors.InputTypeError, TypeError) and issubclass(errors.InputTypeError, RuntimeError)
    converted = errors.from_native(ValueError("input has 5 channels"))
    assert type(converted) is errors.InputValueError and str(converted) == "input has 5 channels"
    assert type(errors.from_native(TypeError("dtype"))) is errors.InputTypeError
    already = RuntimeError("device")
    assert errors.from_native(already) is already


def _unavailable_backends():
    names = [n for n in fusedops.backends.known_backends() if n not in fusedops.available_backends()]
    return names or [pytest.param("cuda", marks=pytest.mark.skip(reason="every backend is available here"))]


@pytest.mark.parametrize("name", _unavailable_backends())
@pytest.mark.parametrize("make", [
    lambda b: fusedops.FusedConvBlock(3, 4, 3, backend=b),
    lambda b: fusedops.FusedLinear(3, 4, backend=b),
    lambda b: fusedops.FusedConvBlock.from_modules(nn.Conv2d(3, 4, 3), backend=b),
    lambda b: fusedops.FusedLinear.from_modules(nn.Linear(3, 4), backend=b),
    lambda b: fusedops.fuse(nn.Sequential(nn.Linear(3, 4), nn.ReLU()), backend=b),
], ids=["FusedConvBlock", "FusedLinear", "FusedConvBlock.from_modules", "FusedLinear.from_modules", "fuse"])
def test_backend_unavailable_here_is_refused_at_construction(make, name):
    reason = fusedops.backends._REGISTRY[name].unavailable_reason()
    with pytest.raises(RuntimeError, match=f"backend '{name}' is not available here") as info:
        make(name)
    assert reason in str(info.value) and str(fusedops.available_backends()) in str(info.value)


def test_backend_set_later_is_checked_as_at_construction():
    block, lin = fusedops.FusedConvBlock(3, 4, 3), fusedops.FusedLinear(3, 4)
    for module in (block, lin):
        with pytest.raises(ValueError, match="unknown backend 'nope'"):
            module.backend = "nope"
        module.backend = "reference"
        assert module.backend == "reference"
        missing = [n for n in fusedops.backends.known_backends() if n not in fusedops.available_backends()]
        for name in missing:
            with pytest.raises(RuntimeError, match=f"backend '{name}' is not available here"):
                module.backend = name
            assert module.backend == "reference"
