"""Hypothesis profiles, strategies and oracles of the property tests (tests/test_properties.py).

Profiles (``FUSEDOPS_HYPOTHESIS_PROFILE``):

- ``ci`` (the default, what ``make test`` runs): a bounded number of examples per test,
  ``derandomize=True`` and no example database, so every run draws the same examples;
- ``fuzz`` (``make fuzz``): many more examples (``FUZZ_SCALE`` times each test's budget),
  random seeds, failures kept in the local ``.hypothesis/`` database (git-ignored). A
  failure found there goes into tests/test_properties.py as an explicit ``@example``.

A case is a frozen dataclass, so a failing example prints as code that an ``@example(...)``
decorator can hold. Its tensors are drawn from ``torch.Generator(seed)``: the case fixes them.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, reject, settings
from hypothesis import strategies as st
from torch import nn

from tests import oracle

PROFILE_VAR = "FUSEDOPS_HYPOTHESIS_PROFILE"
FUZZ_SCALE = int(os.environ.get("FUSEDOPS_FUZZ_SCALE", "25"))

_COMMON = dict(
    deadline=None,
    print_blob=True,
    # The backend fixture and conftest's autouse fixture are function-scoped: they hold no
    # state an example could leak into the next one.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                           HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
settings.register_profile("ci", derandomize=True, database=None, **_COMMON)
settings.register_profile("fuzz", derandomize=False, **_COMMON)
PROFILE = os.environ.get(PROFILE_VAR, "ci")
if PROFILE not in ("ci", "fuzz"):
    raise ValueError(f"{PROFILE_VAR} must be 'ci' or 'fuzz', got {PROFILE!r}")
settings.load_profile(PROFILE)


def budget(examples: int):
    """``@settings`` for a test drawing ``examples`` examples under ``ci`` (FUZZ_SCALE times
    as many under ``fuzz``)."""
    return settings(max_examples=examples * (FUZZ_SCALE if PROFILE == "fuzz" else 1))


DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16}
Pair = Union[int, Tuple[int, int]]

# ---------------------------------------------------------------------------------------------
# Tensor values and layouts
# ---------------------------------------------------------------------------------------------

# values: "normal" (randn), "ties" (small integers: exact sums, so pool windows hold exact ties
# and pre-activations exact zeros), "special" (randn with NaN, +-inf and denormals sprinkled in).
VALUE_KINDS = ("normal", "ties", "special")


def make_values(shape, dtype, kind, gen, *, integer_range=(-2, 3)):
    """A tensor of ``shape`` (float64 values, rounded to ``dtype`` and back) of value ``kind``."""
    if kind == "ties":
        t = torch.randint(*integer_range, shape, generator=gen).double()
    else:
        t = torch.randn(shape, generator=gen, dtype=torch.float64)
    if kind == "special" and t.numel():
        tiny = torch.finfo(dtype).tiny  # smallest normal: denormals lie below it
        specials = torch.tensor([float("nan"), float("inf"), float("-inf"), tiny / 4, -tiny / 8],
                                dtype=torch.float64)
        count = int(torch.randint(1, 4, (), generator=gen))
        where = torch.randint(0, t.numel(), (count,), generator=gen)
        which = torch.randint(0, len(specials), (count,), generator=gen)
        t.view(-1)[where] = specials[which]
    return t.to(dtype).double() if dtype != torch.float64 else t


def with_layout(t, layout, dtype):
    """A leaf tensor (requires grad) of dtype ``dtype`` equal to ``t`` with memory layout ``layout``:
    contiguous, channels_last (4-D only), sliced (every other element of a wider last dim),
    transposed (the last two dims swapped in memory), broadcast (the first dim of stride 0, when
    all its rows are equal: used only where ``t``'s rows were made equal)."""
    t = t.to(dtype)
    if layout == "channels_last" and t.dim() == 4:
        out = t.contiguous(memory_format=torch.channels_last)
    elif layout == "sliced" and t.dim() >= 1:
        base = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=dtype)
        base[..., ::2] = t
        out = base[..., ::2]
    elif layout == "transposed" and t.dim() >= 2:
        out = t.transpose(-1, -2).contiguous().transpose(-1, -2)
    elif layout == "broadcast" and t.dim() >= 2:
        out = t[:1].expand(t.shape)
    else:
        out = t.contiguous()
    return out.detach().requires_grad_(True)


# ---------------------------------------------------------------------------------------------
# Conv block cases
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ConvCase:
    """One call of the conv block: ``conv_relu_maxpool2d`` (api="functional") or a
    ``FusedConvBlock`` (api="module", which adds ``padding_mode``)."""

    batch: Optional[int]  # None: unbatched (C, H, W) input
    groups: int
    in_per_group: int
    out_per_group: int
    size: Tuple[int, int]
    kernel: Tuple[int, int]
    stride: Pair = 1
    padding: Union[str, Pair] = 0
    dilation: Pair = 1
    bias: bool = True
    pool_kernel_size: Optional[Pair] = 2
    pool_stride: Optional[Pair] = None
    pool_padding: Pair = 0
    pool_dilation: Pair = 1
    pool_ceil_mode: bool = False
    dtype: str = "float64"
    layout: str = "contiguous"
    weight_layout: str = "contiguous"
    values: str = "normal"
    api: str = "functional"
    padding_mode: str = "zeros"
    seed: int = 0

    @property
    def in_channels(self):
        return self.groups * self.in_per_group

    @property
    def out_channels(self):
        return self.groups * self.out_per_group

    def conv_kwargs(self):
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)

    def pool_kwargs(self):
        return dict(pool_kernel_size=self.pool_kernel_size, pool_stride=self.pool_stride,
                    pool_padding=self.pool_padding, pool_dilation=self.pool_dilation,
                    pool_ceil_mode=self.pool_ceil_mode)

    def input_shape(self):
        chw = (self.in_channels, *self.size)
        return chw if self.batch is None else (self.batch, *chw)

    def weight_shape(self):
        return (self.out_channels, self.in_per_group, *self.kernel)


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _padding4(case):
    """(top, bottom, left, right) of the conv padding, as torch resolves it."""
    if case.padding == "valid":
        return (0, 0, 0, 0)
    if case.padding == "same":
        total = [d * (k - 1) for d, k in zip(_pair(case.dilation), case.kernel)]
        return (total[0] // 2, total[0] - total[0] // 2, total[1] // 2, total[1] - total[1] // 2)
    ph, pw = _pair(case.padding)
    return (ph, ph, pw, pw)


def conv_output_size(case):
    """The conv output (H, W), or None where torch rejects the geometry."""
    top, bottom, left, right = _padding4(case)
    out = []
    for size, pad, k, s, d in zip(case.size, (top + bottom, left + right), case.kernel, _pair(case.stride),
                                  _pair(case.dilation)):
        if size + pad < d * (k - 1) + 1:
            return None
        out.append((size + pad - d * (k - 1) - 1) // s + 1)
    return tuple(out)


def pool_output_size(case, conv_hw):
    """The pooled (H, W) per torch's pooling_output_shape (0 or less: rejected)."""
    k, d, p = _pair(case.pool_kernel_size), _pair(case.pool_dilation), _pair(case.pool_padding)
    s = k if case.pool_stride is None else _pair(case.pool_stride)
    out = []
    for n, ki, si, pi, di in zip(conv_hw, k, s, p, d):
        num = n + 2 * pi - di * (ki - 1) - 1 + (si - 1 if case.pool_ceil_mode else 0)
        o = num // si + 1
        if case.pool_ceil_mode and (o - 1) * si >= n + pi:
            o -= 1
        out.append(o)
    return tuple(out)


def is_valid_conv_case(case) -> bool:
    conv_hw = conv_output_size(case)
    if conv_hw is None:
        return False
    if case.api == "module" and case.padding_mode in ("reflect", "circular"):
        top, bottom, left, right = _padding4(case)
        h, w = case.size
        # reflect needs padding < size; circular padding <= size
        limit = (lambda p, n: p < n) if case.padding_mode == "reflect" else (lambda p, n: p <= n)
        if not all(limit(p, h) for p in (top, bottom)) or not all(limit(p, w) for p in (left, right)):
            return False
    if case.pool_kernel_size is None:
        return True
    return min(pool_output_size(case, conv_hw)) >= 1


def _pair_of(elements):
    return st.one_of(elements, st.tuples(elements, elements))


@st.composite
def conv_cases(draw, dtypes=("float64", "float32", "bfloat16"), apis=("functional", "module"),
               layouts=("contiguous", "channels_last", "sliced", "transposed")):
    """A valid ConvCase: every conv and pool argument, shapes, dtypes, layouts and values."""
    api = draw(st.sampled_from(apis))
    groups = draw(st.integers(1, 3))
    # One case in four is a 3x3 stride-1 conv with >= 8 input and output channels per group: the cpp backend's
    # Winograd path (csrc/cpu/winograd.h); the others have few channels (its direct path).
    winograd = draw(st.integers(0, 3)) == 0
    if winograd:
        kernel, stride, dilation = (3, 3), 1, 1
        in_per_group, out_per_group = draw(st.integers(8, 10)), draw(st.integers(8, 10))
    else:
        kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
        stride = draw(_pair_of(st.integers(1, 3)))
        dilation = draw(_pair_of(st.integers(1, 3)))
        in_per_group, out_per_group = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    padding_kind = draw(st.sampled_from(["int", "pair", "same", "valid"]))
    if padding_kind == "same" and _pair(stride) != (1, 1):
        padding_kind = "int"
    padding = {"int": lambda: draw(st.integers(0, 3)),
               "pair": lambda: (draw(st.integers(0, 3)), draw(st.integers(0, 3))),
               "same": lambda: "same", "valid": lambda: "valid"}[padding_kind]()
    pooled = draw(st.booleans()) or draw(st.booleans())  # 3 in 4 cases pool
    pool = dict(pool_kernel_size=None)
    if pooled:
        pk = draw(_pair_of(st.integers(1, 4)))
        pool = dict(
            pool_kernel_size=pk,
            pool_stride=draw(st.one_of(st.none(), _pair_of(st.integers(1, 3)))),
            pool_padding=(draw(st.integers(0, _pair(pk)[0] // 2)), draw(st.integers(0, _pair(pk)[1] // 2))),
            pool_dilation=draw(_pair_of(st.integers(1, 2))),
            pool_ceil_mode=draw(st.booleans()),
        )
    # Sizes just large enough for the dilated kernel and the pool window, plus a few.
    size = tuple(
        max(1, _pair(dilation)[i] * (kernel[i] - 1) + 1) + draw(st.integers(-2, 9)) for i in range(2)
    )
    size = tuple(max(1, s) for s in size)
    dtype = draw(st.sampled_from(dtypes))
    case = ConvCase(
        batch=draw(st.one_of(st.none(), st.integers(0, 3))),
        groups=groups,
        in_per_group=in_per_group,
        out_per_group=out_per_group,
        size=size,
        kernel=kernel,
        stride=stride,
        padding=padding,
        dilation=dilation,
        bias=draw(st.booleans()),
        dtype=dtype,
        layout=draw(st.sampled_from(layouts)),
        weight_layout=draw(st.sampled_from(("contiguous", "channels_last", "transposed"))),
        values=draw(st.sampled_from(VALUE_KINDS if dtype != "bfloat16" else ("normal", "ties"))),
        api=api,
        padding_mode=draw(st.sampled_from(("zeros", "reflect", "replicate", "circular"))) if api == "module"
        else "zeros",
        seed=draw(st.integers(0, 2**16)),
        **pool,
    )
    for _ in range(4):  # instead of rejecting: enlarge the input until torch accepts it
        if is_valid_conv_case(case):
            return case
        case = dataclasses.replace(case, size=tuple(s + 8 for s in case.size))
    reject()


def conv_tensors(case):
    """The case's float64 values: input, weight, bias (None without bias), grad_output shape later."""
    gen = torch.Generator().manual_seed(case.seed)
    dtype = DTYPES[case.dtype]
    x = make_values(case.input_shape(), dtype, case.values, gen)
    w = make_values(case.weight_shape(), dtype, case.values if case.values != "special" else "normal", gen,
                    integer_range=(-1, 2))
    b = make_values((case.out_channels,), dtype, case.values if case.values != "special" else "normal", gen) \
        if case.bias else None
    return x, w, b, gen


def _torch_conv(case, x, w, b):
    """The conv as torch's nn.Conv2d computes it (F.pad first for the non-zeros padding modes)."""
    if case.padding_mode == "zeros":
        return F.conv2d(x, w, b, **case.conv_kwargs())
    conv = nn.Conv2d(case.in_channels, case.out_channels, case.kernel, padding_mode=case.padding_mode,
                     device="meta", **case.conv_kwargs())
    return conv._conv_forward(x, w, b)


def torch_conv_block(case, x, w, b):
    """max_pool2d(relu(conv2d)) with torch's ops, and a tensor to differentiate for the gradients.

    torch's max_pool2d backward mishandles windows lying wholly in the pool padding (their
    output is -inf; its backward writes out of bounds, tests/test_conv_block.py): where the
    output has a -inf, the gradient graph pads the ReLU output explicitly with -inf instead,
    which gives the same output and passes no gradient through such a window."""
    y = F.relu(_torch_conv(case, x, w, b))
    if case.pool_kernel_size is None:
        return y, y
    out = F.max_pool2d(y, **{k[5:]: v for k, v in case.pool_kwargs().items()})
    if not torch.isneginf(out).any():
        return out, out
    k, s = _pair(case.pool_kernel_size), _pair(case.pool_stride or case.pool_kernel_size)
    p, d = _pair(case.pool_padding), _pair(case.pool_dilation)
    oh, ow = out.shape[-2:]
    extra = [max(0, (o - 1) * si + di * (ki - 1) + 1 - (n + 2 * pi))
             for o, si, di, ki, n, pi in zip((oh, ow), s, d, k, y.shape[-2:], p)]
    padded = F.pad(y, (p[1], p[1] + extra[1], p[0], p[0] + extra[0]), value=float("-inf"))
    graph = F.max_pool2d(padded, k, s, 0, d)[..., :oh, :ow]
    return out, graph


def fused_conv_block(case, x, w, b, backend):
    """The fused block's output for the case (functional or module api), and the leaves its
    gradients are taken of: input, weight, bias (the module's parameters for the module api)."""
    import fusedops

    if case.api == "functional":
        out = fusedops.conv_relu_maxpool2d(x, w, b, **case.conv_kwargs(), **case.pool_kwargs(), backend=backend)
        return out, [x, w, b]
    block = fusedops.FusedConvBlock(
        case.in_channels, case.out_channels, case.kernel, bias=case.bias, padding_mode=case.padding_mode,
        dtype=w.dtype, backend=backend, **case.conv_kwargs(), **case.pool_kwargs(),
    )
    block.weight = nn.Parameter(w, requires_grad=True)
    if case.bias:
        block.bias = nn.Parameter(b, requires_grad=True)
    return block(x), [x, block.weight, block.bias]


# ---------------------------------------------------------------------------------------------
# Linear cases
# ---------------------------------------------------------------------------------------------

ACTIVATIONS = (None, "relu", "gelu", "gelu_tanh", "silu")


@dataclasses.dataclass(frozen=True)
class LinearCase:
    lead: Tuple[int, ...]  # leading dims of the input (none: 1-D input)
    in_features: int
    out_features: int
    bias: bool = True
    activation: Optional[str] = None
    dtype: str = "float64"
    layout: str = "contiguous"
    weight_layout: str = "contiguous"
    values: str = "normal"
    api: str = "functional"
    seed: int = 0


@st.composite
def linear_cases(draw, dtypes=("float64", "float32", "bfloat16"), apis=("functional", "module")):
    dtype = draw(st.sampled_from(dtypes))
    return LinearCase(
        lead=tuple(draw(st.lists(st.integers(0, 5), max_size=3))),
        in_features=draw(st.integers(0, 12) | st.integers(1, 40)),
        out_features=draw(st.integers(0, 12) | st.integers(1, 40)),
        bias=draw(st.booleans()),
        activation=draw(st.sampled_from(ACTIVATIONS)),
        dtype=dtype,
        layout=draw(st.sampled_from(("contiguous", "sliced", "transposed", "broadcast"))),
        weight_layout=draw(st.sampled_from(("contiguous", "sliced", "transposed"))),
        values=draw(st.sampled_from(VALUE_KINDS if dtype != "bfloat16" else ("normal", "ties"))),
        api=draw(st.sampled_from(apis)),
        seed=draw(st.integers(0, 2**16)),
    )


def linear_tensors(case):
    gen = torch.Generator().manual_seed(case.seed)
    dtype = DTYPES[case.dtype]
    x = make_values((*case.lead, case.in_features), dtype, case.values, gen)
    if case.layout == "broadcast" and x.dim() >= 2:
        x = x[:1].expand(x.shape).clone()  # equal rows: the layout reads one row for all
    w = make_values((case.out_features, case.in_features), dtype,
                    case.values if case.values != "special" else "normal", gen, integer_range=(-1, 2))
    b = make_values((case.out_features,), dtype, case.values if case.values != "special" else "normal", gen) \
        if case.bias else None
    return x, w, b, gen


def fused_linear(case, x, w, b, backend):
    import fusedops

    if case.api == "functional":
        return fusedops.linear(x, w, b, activation=case.activation, backend=backend), [x, w, b]
    lin = fusedops.FusedLinear(case.in_features, case.out_features, bias=case.bias, dtype=w.dtype,
                               activation=case.activation, backend=backend)
    lin.weight = nn.Parameter(w, requires_grad=True)
    if case.bias:
        lin.bias = nn.Parameter(b, requires_grad=True)
    return lin(x), [x, lin.weight, lin.bias]


def torch_linear(case, x, w, b):
    return oracle.linear(x, w, b, activation=case.activation)
