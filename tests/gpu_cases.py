"""The cases of the gpu-marked suite, and which launcher configurations they reach.

Cases (each runs through ``tests/gpu_checks.py`` for a backend and a precision):

- ``CONV_GRID`` / ``LINEAR_GRID``: the CPU tests' argument grid (``tests/test_conv_block.py``
  ``CASES``; ``tests/test_linear.py`` shapes x activations x bias), in every precision;
- ``CONV_LAYOUTS`` / ``LINEAR_LAYOUTS``: channels_last, sliced (non-contiguous) and
  transposed inputs;
- ``CONV_CONFIGS`` / ``LINEAR_CONFIGS``: one case per configuration the launchers can choose
  (listed with each case), large ones included: multi-wave grids, second M tiles, several and
  empty split-K slices, grid-stride loops that run more than once, int16/int32 offsets.

What a case reaches is computed, not claimed:

- Triton: ``triton_required()`` lists every ``(kernel, precision, config)`` the launchers'
  config functions (``conv_block_configs``, ``linear_configs``, the tangent kernel's fixed
  blocks) can return, probed as ``make triton-check`` probes them; ``triton_reached(jobs)``
  runs each case's launching part on meta tensors with the kernels replaced by recorders
  (nothing is computed, so it runs anywhere) and collects the configs the launchers picked.
- CUDA: ``cuda_required()`` lists the choices of the launchers in ``csrc/cuda`` (which kernel,
  which template instance ``<element type, offset type>``, tiles, split-K slices, grid-stride
  loops); ``cuda_reached(case, precision)`` mirrors the launchers' arithmetic in Python, with
  the constants of ``CUDA_CONSTANTS`` (tests/test_gpu_configs.py checks them against the
  sources).

``coverage_gaps()`` is what no case reaches; tests/test_gpu_configs.py fails on any (on every
machine: the computation needs no GPU) and holds the review of the list.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import types
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

import pytest
import torch

from tests import gpu_checks
from tools.triton_check import KERNEL_CONFIGS, reachable_configs

PRECISIONS: Tuple[str, ...] = ("fp32", "tf32", "bf16", "fp16", "fp64")
GPU_BACKENDS: Tuple[str, ...] = ("triton", "cuda")
ACTIVATIONS = (None, "relu", "gelu", "gelu_tanh", "silu")


def _pair(k) -> Tuple[int, int]:
    return (k, k) if isinstance(k, int) else tuple(k)


@dataclasses.dataclass(frozen=True)
class ConvCase:
    """``conv_relu_maxpool2d`` of a random ``input`` (N, C, H, W) or (C, H, W) with
    ``out_channels`` filters of size ``kernel``; ``kwargs``: the op's keyword arguments
    (``bias=False`` for none) as sorted pairs."""

    name: str
    input: Tuple[int, ...]
    out_channels: int
    kernel: Union[int, Tuple[int, int]]
    kwargs: Tuple[Tuple[str, object], ...] = ()
    layout: str = "nchw"
    precisions: Tuple[str, ...] = PRECISIONS
    backends: Tuple[str, ...] = GPU_BACKENDS
    scale_weight: bool = False  # weight / sqrt(fan-in): deep reductions stay in every dtype's range
    jvp: bool = False  # also check the tangent op (double backward)
    purpose: str = ""
    input_grad: bool = True  # False: the input needs no gradient (a network's first layer)

    @property
    def id(self) -> str:
        return self.name if self.layout == "nchw" else f"{self.name}-{self.layout}"

    def inputs(self, device="cuda"):
        """float64 ``(x, w, b, op kwargs)``, fresh random values."""
        return gpu_checks.random_conv_inputs(self.input, self.out_channels, self.kernel, dict(self.kwargs), device,
                                             self.scale_weight)

    def check(self, backend: str, precision: str, pattern: str = "nan", device="cuda") -> None:
        """The whole check of tests/gpu_checks.py (and of the tangent op when ``jvp``)."""
        x, w, b, kwargs = self.inputs(device)
        prec = gpu_checks.PRECISIONS[precision]
        gpu_checks.check_conv_block(backend, x, w, b, kwargs, prec, self.layout, pattern, self.input_grad)
        if self.jvp:
            gpu_checks.check_conv_block_jvp(backend, x, w, b, kwargs, prec, self.layout, pattern)

    def run(self, backend: str, precision: str, pattern: str = "nan", device="cuda", inputs=None):
        """``(torch's Run, the backend's Run)`` of the check (tests/gpu_checks.py), on
        ``inputs`` (float64 ``(x, w, b, kwargs)``) or fresh ones; the tangent too when ``jvp``
        (its output is returned as the backend's Run's ``tangent``)."""
        x, w, b, kwargs = inputs or self.inputs(device)
        prec = gpu_checks.PRECISIONS[precision]
        x, w, b = (None if t is None else t.to(prec.dtype) for t in (x, w, b))
        x = gpu_checks.LAYOUTS[self.layout](x)
        with gpu_checks.tf32_flags(prec.tf32):
            theirs, ours, _, _ = gpu_checks.run_conv_block(backend, x, w, b, kwargs, pattern, self.input_grad)
            if self.jvp:
                ours.tangent = gpu_checks.run_conv_block_jvp(backend, x, w, b, kwargs, pattern)[0]
        return theirs, ours

    def launch(self, backend: str, precision: str, device="meta") -> None:
        """Only what launches the backend's kernels (the check's runs), e.g. on meta tensors."""
        self.run(backend, precision, device=device)

    def params(self):
        """The normalised ConvBlockParams."""
        return gpu_checks.params_of(self.input, self.kernel, dict(self.kwargs))


@dataclasses.dataclass(frozen=True)
class LinearCase:
    """``linear`` of a random ``input`` (any leading dims) to ``out_features``."""

    name: str
    input: Tuple[int, ...]
    out_features: int
    activation: Optional[str] = None
    bias: bool = True
    layout: str = "nchw"
    precisions: Tuple[str, ...] = PRECISIONS
    backends: Tuple[str, ...] = GPU_BACKENDS
    scale_weight: bool = False
    purpose: str = ""

    @property
    def id(self) -> str:
        return self.name if self.layout == "nchw" else f"{self.name}-{self.layout}"

    def inputs(self, device="cuda"):
        x = torch.randn(self.input, dtype=torch.float64, device=device)
        w = torch.randn(self.out_features, self.input[-1], dtype=torch.float64, device=device)
        if self.scale_weight:
            w /= max(1, self.input[-1]) ** 0.5
        b = torch.randn(self.out_features, dtype=torch.float64, device=device) if self.bias else None
        return x, w, b

    def check(self, backend: str, precision: str, pattern: str = "nan", device="cuda") -> None:
        x, w, b = self.inputs(device)
        gpu_checks.check_linear(backend, x, w, b, self.activation, gpu_checks.PRECISIONS[precision], self.layout,
                                pattern)

    def run(self, backend: str, precision: str, pattern: str = "nan", device="cuda", inputs=None):
        """``(torch's Run, the backend's Run)`` of the check, on ``inputs`` or fresh ones."""
        x, w, b = inputs or self.inputs(device)
        prec = gpu_checks.PRECISIONS[precision]
        x, w, b = (None if t is None else t.to(prec.dtype) for t in (x, w, b))
        x = gpu_checks.LAYOUTS[self.layout](x) if x.dim() >= 2 else x
        with gpu_checks.tf32_flags(prec.tf32):
            theirs, ours, _ = gpu_checks.run_linear(backend, x, w, b, self.activation, pattern)
        return theirs, ours

    def launch(self, backend: str, precision: str, device="meta") -> None:
        """Only what launches the backend's kernels (the check's runs), e.g. on meta tensors."""
        self.run(backend, precision, device=device)


def _conv(name, input, out_channels, kernel, layout="nchw", precisions=PRECISIONS, backends=GPU_BACKENDS,
          scale_weight=False, jvp=False, purpose="", input_grad=True, **kwargs) -> ConvCase:
    return ConvCase(name, tuple(input), out_channels, kernel, tuple(sorted(kwargs.items())), layout,
                    tuple(precisions), tuple(backends), scale_weight, jvp, purpose, input_grad)


def _grid() -> List[ConvCase]:
    from tests.test_conv_block import CASES

    # The tangent op on the three offset widths' first cases (int8, int16) runs here; int32 in CONV_CONFIGS.
    jvp = {"basic_2x2_pool", "pool_padding", "pool_large_window_int16", "groups2"}
    return [_conv(name, shape, cout, kernel, jvp=name in jvp, **kwargs) for name, shape, cout, kernel, kwargs in CASES]


CONV_GRID: List[ConvCase] = _grid()

CONV_LAYOUTS: List[ConvCase] = [
    dataclasses.replace(case, layout=layout, jvp=False)
    for case in CONV_GRID if case.name in ("odd_sizes_pad1", "groups2", "pool_padding", "basic_2x2_pool")
    for layout in ("channels_last", "sliced", "transposed")
]

# One case per launcher configuration. fwd: rows N*PH*PW, columns Cout/groups; dx: rows
# N*H*W, columns Cin/groups; dw: rows Cin/groups*KH*KW, columns Cout/groups (Triton,
# conv_block_configs: BLOCK_M 32 up to 4096 rows, else 64 (dw in bf16/fp16: always 64,
# conv_block_dw_configs); BLOCK_N 16/32/64 up to 16/32/more
# columns). CUDA: see cuda_conv_variants.
CONV_CONFIGS: List[ConvCase] = [
    _conv("deep 500->16 6x6", (2, 500, 6, 6), 16, 3, padding=1, scale_weight=True,
          purpose="Triton fwd 32x16, dx 32x64, dw 64x16 (4500 rows; 500 channels: the gather); CUDA: gemm, "
                  "second M tile of dx, one split-K slice"),
    _conv("deep 500->32 6x6", (2, 500, 6, 6), 32, 3, padding=1, scale_weight=True,
          purpose="Triton fwd 32x32, dw 64x32"),
    _conv("deep 500->96 6x6", (2, 500, 6, 6), 96, 3, padding=1, scale_weight=True,
          purpose="Triton fwd 32x64, dw 64x64 (two column tiles); CUDA: second M tile of forward and dw"),
    _conv("deep 512->16 6x6", (2, 512, 6, 6), 16, 3, padding=1, scale_weight=True,
          purpose="Triton dw over runs of channels 16x64 (output x input channels), 72 column tiles"),
    _conv("deep 512->32 6x6", (2, 512, 6, 6), 32, 3, padding=1, scale_weight=True,
          purpose="Triton dw over runs of channels 32x64"),
    _conv("first layer 3->32 28x28 b9, no input gradient", (9, 3, 28, 28), 32, 3, padding=1, input_grad=False,
          purpose="CUDA: the direct weight gradient (no un-pool), 9 splits; Triton: no input-gradient kernel"),
    _conv("first layer 1->8 no input gradient, pool 3/2 pad 1, dilation 2", (2, 1, 13, 12), 8, 3, padding=2,
          dilation=2, pool_kernel_size=3, pool_stride=2, pool_padding=1, input_grad=False, jvp=True,
          purpose="CUDA: the direct weight gradient through overlapping windows, one split"),
    _conv("first layer 2 groups of 2->6 no input gradient, no bias", (2, 4, 11, 12), 12, 3, padding=1, groups=2,
          bias=False, input_grad=False, purpose="CUDA: the direct weight gradient by group, no bias"),
    *[_conv(f"runs {cin}->{cout} 6x6 b3", (3, cin, 6, 6), cout, 3, padding=1,
            purpose=f"Triton dw over runs of channels {bm}x{bn}, dx over runs of output channels")
      for cin, cout, bm, bn in ((32, 16, 16, 32), (16, 32, 32, 16), (32, 32, 32, 32), (16, 64, 64, 16),
                                (32, 64, 64, 32), (64, 64, 64, 64))],
    _conv("wide 16->16 58x58 b5", (5, 16, 58, 58), 16, 3, padding=1,
          purpose="Triton fwd 64x16 (4205 rows), dx 64x16"),
    _conv("wide 24->24 58x58 b5", (5, 24, 58, 58), 24, 3, padding=1, purpose="Triton fwd 64x32, dx 64x32, dw 32x32"),
    _conv("wide 40->40 58x58 b5", (5, 40, 58, 58), 40, 3, padding=1, scale_weight=True,
          purpose="Triton fwd 64x64, dx 64x64, dw 32x64"),
    _conv("wide 16->96 34x34 b4", (4, 16, 34, 34), 96, 3, padding=1, precisions=("bf16", "fp16", "tf32"),
          purpose="Triton fwd tap rows 128x128 with 8 warps (1156 pooled outputs, 96 output channels)"),
    _conv("small 24->24 10x10", (2, 24, 10, 10), 24, 3, padding=1, purpose="Triton dx 32x32"),
    # The forward's tap loop on tensor cores (windows of 9 taps; 2, 4 and 8 take tap rows).
    *[_conv(f"pool 3x3 {c}->{c} {hw}x{hw} b{n}", (n, c, hw, hw), c, 3, padding=1, pool_kernel_size=3,
            precisions=("bf16", "fp16", "tf32"), purpose=f"Triton fwd tap loop {cfg} in tf32, bf16, fp16")
      for n, c, hw, cfg in ((2, 24, 10, "32x32"), (2, 40, 10, "32x64"), (12, 16, 58, "64x16"), (12, 24, 58, "64x32"),
                            (12, 40, 58, "64x64"))],
    _conv("multi-wave 32->64 56x56 b96", (96, 32, 56, 56), 64, 3, padding=1, precisions=("bf16", "fp32"),
          scale_weight=True,
          purpose="grids of 1176 programs/blocks (several waves); CUDA: 55 split-K slices"),
    _conv("empty split-K slices 3->16 99x171 b8", (8, 3, 99, 171), 16, 3, padding=1, jvp=True,
          purpose="CUDA: 264 split-K slices of 528 positions over 135432: the last ones empty; direct forward"),
    _conv("int16 offsets, gemm 6->4 pool 12x12/2", (1, 6, 16, 16), 4, 3, padding=1, pool_kernel_size=12,
          pool_stride=2, jvp=True, purpose="144-tap windows: int16 offsets through the CUDA gemm forward"),
    _conv("int32 offsets, direct 2->2 pool 182", (1, 2, 184, 184), 2, 3, pool_kernel_size=182, jvp=True,
          purpose="33124-tap window: int32 offsets, CUDA direct forward"),
    _conv("int32 offsets, gemm 6->4 pool 182", (1, 6, 184, 184), 4, 3, pool_kernel_size=182, jvp=True,
          scale_weight=True, purpose="int32 offsets through the CUDA gemm forward (6 channels: no runs in any type)"),
    _conv("runs 40->80 channels_last", (2, 40, 10, 9), 80, 3, padding=1, layout="channels_last",
          precisions=("bf16", "fp16", "tf32"),
          purpose="CUDA: the channel-run forward (k steps across kernel taps, a last step past K) and backward, "
                  "second M tile of each, dw over 6 column tiles"),
    _conv("runs 32->64 channels_last b4 18x18", (4, 32, 18, 18), 64, 3, padding=1, layout="channels_last",
          precisions=("bf16", "fp16", "tf32"), purpose="CUDA: the channel-run forward over six column tiles, backward"),
    _conv("runs 2 groups of 8->16 channels_last, pool 12x12/2", (1, 16, 16, 16), 32, 3, padding=1,
          groups=2, pool_kernel_size=12, pool_stride=2, layout="channels_last", precisions=("bf16", "fp16", "tf32"),
          purpose="CUDA: the channel-run forward and backward by group, int16 offsets"),
    _conv("runs 8->8 channels_last, pool 182", (1, 8, 184, 184), 8, 3, pool_kernel_size=182,
          layout="channels_last", precisions=("bf16", "fp16", "tf32"), scale_weight=True,
          purpose="CUDA: the channel-run forward and backward with int32 offsets"),
    _conv("runs backward 72->16 channels_last b6 32x32", (6, 72, 32, 32), 16, 3, padding=1, layout="channels_last",
          precisions=("bf16", "fp16", "tf32"), scale_weight=True,
          purpose="CUDA: the channel-run backward: a second channel tile of dx, several split-K slices of dw"),
    _conv("runs of 4 channels 12->20 channels_last", (2, 12, 9, 8), 20, 3, padding=1, layout="channels_last",
          precisions=("tf32", "bf16"),
          purpose="CUDA: TF32 runs of 4 channels where 16-bit types take the gemm (12 and 20 channels): k steps of "
                  "16 across kernel taps, a partial last step, the backward over runs"),
    _conv("runs stride 2 16->32 channels_last b3 17x16", (3, 16, 17, 16), 32, 3, stride=2, padding=1,
          layout="channels_last", precisions=("bf16", "fp16", "tf32"), backends=("cuda",),
          purpose="CUDA: the channel-run input gradient by stride phase: four phases of 9 or 8 rows, 2 or 1 taps "
                  "along each axis"),
    _conv("runs 1x1 stride 2 16->16 b2 10x9", (2, 16, 10, 9), 16, 1, stride=2, precisions=("bf16", "tf32"),
          backends=("cuda",),
          purpose="CUDA: stride phases no tap reads (odd rows and columns of a 1x1 stride-2 conv): a zero input "
                  "gradient there, written; NCHW input through the channels_last copy"),
    _conv("grid-stride 1->2 1024x1024 b17 no pool", (17, 1, 1024, 1024), 2, 3, padding=1, pool_kernel_size=None,
          precisions=("bf16", "fp32"), backends=("cuda",), jvp=True,
          purpose="CUDA: 17.8M outputs per channel: the direct forward's, the un-pool's and the tangent's "
                  "grid-stride loops run twice and more (65536 blocks of 256 threads per pass)"),
    _conv("grid-stride 1->4 1024x1024 b17 no pool", (17, 1, 1024, 1024), 4, 3, padding=1, pool_kernel_size=None,
          precisions=("bf16",), backends=("cuda",),
          purpose="CUDA: the patch kernel's grid-stride loop runs twice (17.8M outputs per channel)"),
    _conv("first layer 3->8, pool 2 strides 1 and 2, padding 1 and 0", (2, 3, 9, 10), 8, 3, padding=1,
          pool_kernel_size=2, pool_stride=(1, 2), pool_padding=(1, 0),
          purpose="CUDA: the patch kernel with each column's first and last window half outside the conv output, "
                  "and unequal pool strides and paddings along h and w"),
    _conv("first layer 3->8, 1x1 pool stride 2", (2, 3, 9, 10), 8, 3, padding=1, pool_kernel_size=1, pool_stride=2,
          purpose="CUDA: the patch kernel without a pool (a 1x1 window) at stride 2"),
    _conv("grid-stride 1024->2048 3x3 no pool", (1, 1024, 3, 3), 2048, 3, padding=1, pool_kernel_size=None,
          precisions=("bf16", "fp32"), scale_weight=True,
          purpose="CUDA: 18.9M weight elements: the split-K sum's grid-stride loop runs twice; 32 M tiles"),
]

LINEAR_GRID: List[LinearCase] = [
    LinearCase(f"{'x'.join(map(str, shape))}-{activation}-{'bias' if bias else 'nobias'}", shape, 9, activation, bias)
    for shape in ((5, 7), (3, 4, 7), (2, 3, 2, 7), (7,), (0, 7), (2, 0, 7))  # tests/test_linear.py SHAPES
    for activation in ACTIVATIONS
    for bias in (True, False)
]

LINEAR_LAYOUTS: List[LinearCase] = [
    LinearCase(f"6x7-{activation}", (6, 7), 5, activation, layout=layout)
    for activation in ("relu", "gelu") for layout in ("sliced", "transposed")
]

# Triton linear_configs: BLOCK_M 16/32/64 up to 16/256/more rows, BLOCK_N 16/32/64 up to
# 16/256/more out_features. CUDA: 64x64 tiles, split-K over the rows for dw.
LINEAR_CONFIGS: List[LinearCase] = [
    LinearCase(f"{m}x40->{n} {act}", (m, 40), n, act, purpose=f"Triton {bm}x{bn}")
    for (m, bm), (n, bn), act in [
        ((10, 16), (12, 16), "relu"), ((10, 16), (100, 32), "gelu"), ((10, 16), (300, 64), "silu"),
        ((200, 32), (12, 16), "gelu_tanh"), ((200, 32), (100, 32), None), ((200, 32), (300, 64), "relu"),
        ((1000, 64), (12, 16), "silu"), ((1000, 64), (100, 32), "gelu"), ((1000, 64), (300, 64), "relu"),
    ]
] + [
    LinearCase("empty split-K slices 135432x48->40 relu", (135432, 48), 40, "relu",
               purpose="CUDA: 264 split-K slices of 528 rows (544 over runs): the last ones empty; the forward "
                       "and input gradient over runs in 128-row blocks"),
    LinearCase("gradient runs 70x40->24 gelu", (70, 40), 24, "gelu",
               purpose="CUDA: both gradients over 16-byte runs (features multiples of 8) in one split-K slice: "
                       "a second row tile, a partial k step of the weight gradient"),
    LinearCase("runs of 4 features 70x36->20 relu", (70, 36), 20, "relu", precisions=("tf32", "bf16"),
               purpose="CUDA: TF32 over runs of 4 features where 16-bit types take the tile GEMMs"),
    LinearCase("grid-stride 16400x64->1024 gelu", (16400, 64), 1024, "gelu", precisions=("bf16", "fp32"),
               scale_weight=True, purpose="CUDA: 16.8M elements: activation-gradient grid-stride loop runs twice; "
                                              "the forward over runs in 128-row blocks, the weight gradient in "
                                              "128-feature blocks (bf16)"),
    LinearCase("grid-stride 64x4096->4100 silu", (64, 4096), 4100, "silu", precisions=("bf16", "fp32"),
               scale_weight=True, purpose="CUDA: 16.8M weight elements: the split-K sum's grid-stride loop runs twice"),
]

ALL_CASES: List[Union[ConvCase, LinearCase]] = (CONV_GRID + CONV_LAYOUTS + CONV_CONFIGS + LINEAR_GRID
                                                + LINEAR_LAYOUTS + LINEAR_CONFIGS)


def jobs(cases: Iterable, backend: Optional[str] = None) -> List[Tuple[str, str, object]]:
    """``(backend, precision, case)`` of every run of ``cases`` (of one backend, or both)."""
    return [(b, p, c) for c in cases for b in c.backends if backend in (None, b) for p in c.precisions]


def job_params(cases: Iterable, precisions: Optional[Iterable[str]] = None) -> list:
    """``jobs(cases)`` (those in ``precisions``, if given) as the ``backend,precision,case``
    parameters of a gpu test, each with the id ``backend-precision-case``."""
    return [pytest.param(b, p, c, id=f"{b}-{p}-{c.id}") for b, p, c in jobs(cases)
            if precisions is None or p in precisions]


# --- Triton: configs the launchers can pick, and those the cases reach ------------------------

# kernel -> (module, config function): make triton-check's list (tools/triton_check.py), and
# the tangent kernel, whose blocks are fixed (module constants).
TRITON_KERNELS = {
    **KERNEL_CONFIGS,
    "conv_block_jvp_kernel": ("fusedops.triton.conv_block_jvp", None),
}
CONFIG_KEYS = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "num_warps", "TAP_ROWS")
# kernel -> module: kernels with one fixed config that the launchers above call after theirs
# (the fixed-order sum of a split weight gradient's slices).
TRITON_HELPER_KERNELS = {"sum_slices_kernel": "fusedops.triton.reduce"}


def _config(kwargs) -> Tuple:
    return tuple(kwargs.get(k, 4 if k == "num_warps" else False if k == "TAP_ROWS" else None) for k in CONFIG_KEYS)


def triton_required() -> Set[Tuple[str, str, Tuple]]:
    """Every ``(kernel, precision, (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, TAP_ROWS))`` the
    launchers can pick: the config functions probed at and around every power of two (as ``make
    triton-check`` does), the tangent kernel's fixed blocks."""
    import importlib


    required = set()
    for kernel, (module, function) in TRITON_KERNELS.items():
        mod = importlib.import_module(module)
        for precision in PRECISIONS:
            spec = gpu_checks.PRECISIONS[precision]
            if function is None:
                configs = {_config({"BLOCK_M": mod.BLOCK_M, "BLOCK_K": mod.BLOCK_K})}
            else:
                configs = reachable_configs(getattr(mod, function), spec.dtype, spec.tf32)
            required |= {(kernel, precision, config) for config in configs}
    return required


class _Recorder:
    """Stands in for a Triton kernel: ``kernel[grid](*args, **kwargs)`` records and returns."""

    def __init__(self, name, sink, current):
        self.name, self.sink, self.current = name, sink, current

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.sink.append(types.SimpleNamespace(kernel=self.name, grid=tuple(grid), kwargs=kwargs,
                                                   job=self.current[0]))

        return launch


@contextlib.contextmanager
def meta_backend(name: str):
    """The backend ``name`` accepts meta tensors (its launchers allocate and pick configs as
    on a GPU; what runs the kernels must be replaced, e.g. by ``recording_triton_launches``)."""
    from fusedops import backends

    b = backends._REGISTRY[name]
    saved = b.__dict__.copy()
    b.devices = (*type(b).devices, "meta")
    b.unavailable_reason = lambda: None
    backends.clear_choice_cache()
    try:
        yield
    finally:
        for attr in ("devices", "unavailable_reason"):
            if attr in saved:
                setattr(b, attr, saved[attr])
            else:
                delattr(b, attr)
        backends.clear_choice_cache()


@contextlib.contextmanager
def recording_triton_launches(sink: List, current: List):
    """Within this context the Triton launchers record ``(kernel, grid, kwargs, current[0])``
    in ``sink`` instead of launching."""
    import importlib

    saved = []
    modules = {**{k: m for k, (m, _) in TRITON_KERNELS.items()}, **TRITON_HELPER_KERNELS}
    for kernel, module in modules.items():
        mod = importlib.import_module(module)
        saved.append((mod, kernel, getattr(mod, kernel)))
        setattr(mod, kernel, _Recorder(kernel, sink, current))
    try:
        yield
    finally:
        for mod, kernel, real in saved:
            setattr(mod, kernel, real)


def triton_launches(job_list: Sequence[Tuple[str, str, object]]) -> List:
    """The launches of the triton jobs of ``job_list``, recorded on meta tensors."""
    sink: List = []
    current = [None]
    with meta_backend("triton"), recording_triton_launches(sink, current):
        for backend, precision, case in job_list:
            if backend != "triton":
                continue
            current[0] = (precision, case)
            case.launch("triton", precision, "meta")
    return sink


def triton_reached(job_list) -> Dict[Tuple[str, str, Tuple], List[str]]:
    """``(kernel, precision, config) -> [case ids]`` over the triton jobs of ``job_list``."""
    reached: Dict[Tuple[str, str, Tuple], List[str]] = {}
    for ln in triton_launches(job_list):
        precision, case = ln.job
        reached.setdefault((ln.kernel, precision, _config(ln.kwargs)), []).append(case.id)
    return reached


# --- CUDA: the launchers' choices, mirrored ---------------------------------------------------

# Constants of csrc/cuda the launchers decide with (tests/test_gpu_configs.py reads them from
# the sources): tile sizes and threads (tile_loaders.h), the runs' bytes and runs per k step
# (run_loaders.h; RUN_LEN below from common.cuh run_len), the direct kernel's limits
# (conv_block_kernels.cuh), split-K (common.cuh reduction_splits: ~2 blocks per SM of an H100, slices of
# at least 512), the grid-stride grids (tile_gemm.cuh grid_for: at most 65536 blocks).
CUDA_CONSTANTS = {
    "kBM": 64, "kBN": 64, "kBK": 16, "kThreads": 256, "kRunBytes": 16, "kRunsPerStep": 4, "kDirectMaxChannels": 4,
    "kDirectWideChannels": 8, "kDirectWideMin": 4, "kDirectMaxSmem": 48 * 1024, "kDirectGradKernel": 3,
    "kDirectGradMaxChannels": 3, "kPatchKernel": 3,
    "split_blocks": 264, "min_chunk": 512, "grid_stride_blocks": 65536, "grid_z": 65535, "max_serial_sum": 1024,
}
# tf32: float32 with TF32 allowed, which the bindings launch as the kernels' Tf32 variant.
CUDA_TYPES = {"fp32": "float", "tf32": "tf32", "fp64": "double", "fp16": "half", "bf16": "bfloat16"}
OFFSET_TYPES = {torch.int8: "int8", torch.int16: "int16", torch.int32: "int32"}
# Elements of a 16-byte run of the types the run engine takes (common.cuh run_len): the
# tensor-core types.
RUN_LEN = {"bf16": 8, "fp16": 8, "tf32": 4}
RUN_TYPES = {CUDA_TYPES[p] for p in RUN_LEN}  # their kernel template arguments
# Blocks of one wave: 132 SMs (H100 SXM) x 8 resident 256-thread blocks.
ONE_WAVE = 132 * 8


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _runs(precision: str, *counts: int) -> bool:
    """Whether ``precision`` takes the run engine and each of ``counts`` is whole runs."""
    return precision in RUN_LEN and all(n % RUN_LEN[precision] == 0 for n in counts)


def _run_bk(precision: str) -> int:
    """k per step of the run engine (run_loaders.h kRunBK)."""
    return CUDA_CONSTANTS["kRunsPerStep"] * RUN_LEN[precision]


def _phase_has_taps(r: int, stride: int, dilation: int, pad: int, kernel: int) -> bool:
    """Whether some tap of a conv axis reads the inputs r + stride*q (run_loaders.h axis_phase):
    (r + pad - kk*dilation) divisible by the stride for a tap kk < kernel (the remainders repeat
    within ``stride`` taps)."""
    return any((r + pad - kk * dilation) % stride == 0 for kk in range(min(kernel, stride)))


def _run_rows(coutg: int) -> int:
    """conv_block_kernels.cuh run_rows: output channels a block of the run kernels' conv forward and
    weight gradient takes, 128 where that pads Cout/groups to no more rows than blocks of 64 do."""
    bm = CUDA_CONSTANTS["kBM"]
    return 2 * bm if coutg > bm and _cdiv(coutg, 2 * bm) * 2 == _cdiv(coutg, bm) else bm


def _splits(reduction: int, tiles: int, most: int) -> int:
    c = CUDA_CONSTANTS
    splits = min(_cdiv(c["split_blocks"], max(tiles, 1)), _cdiv(reduction, c["min_chunk"]))
    return max(1, min(max(splits, 1), most))


def _split_labels(kernel: str, reduction: int, splits: int, step: int = CUDA_CONSTANTS["kBK"]) -> Set[str]:
    chunk = _cdiv(_cdiv(reduction, splits), step) * step
    labels = {f"{kernel}: {'one split-K slice' if splits == 1 else 'several split-K slices'}"}
    if (splits - 1) * chunk >= reduction:
        labels.add(f"{kernel}: an empty split-K slice")
    return labels


def _channel_sum_splits(count: int, channels: int) -> int:
    """tile_gemm.cuh channel_sum_splits: blocks per channel of the conv bias gradient."""
    c = CUDA_CONSTANTS
    splits = max(1, min(_cdiv(c["split_blocks"], max(channels, 1)), _cdiv(count, c["kThreads"] * 16)))
    splits = max(splits, _cdiv(count, c["kThreads"] * c["max_serial_sum"]))
    return min(splits, c["grid_z"])


def _grid_stride(kernel: str, count: int) -> Set[str]:
    passes = _cdiv(count, CUDA_CONSTANTS["grid_stride_blocks"] * CUDA_CONSTANTS["kThreads"])
    return {f"{kernel}: grid-stride loop runs twice or more"} if passes >= 2 else set()


def cuda_conv_variants(case: ConvCase, precision: str) -> Set[str]:
    """What the CUDA launchers launch for ``case`` (forward, every gradient, and the tangent
    when ``case.jvp``), as labels of ``cuda_required()``."""
    c = CUDA_CONSTANTS
    p = case.params()
    shape = case.input if len(case.input) == 4 else (1, *case.input)
    n, cin, h, w = shape
    kh, kw = _pair(case.kernel)
    groups = p.groups
    cout, cg = case.out_channels, cin // groups
    coutg, k = cout // groups, cg * kh * kw
    oh, ow = p.conv_output_hw((h, w), (kh, kw))
    ph, pw = p.output_hw((h, w), (kh, kw))
    if n * cout * ph * pw == 0:
        return set()
    t, off = CUDA_TYPES[precision], OFFSET_TYPES[p.offsets_dtype()]
    q = n * ph * pw
    out = set()
    # conv_forward_channel_runs: 16-bit or TF32 with Cin/groups a multiple of a run (8 / 4 channels)
    # and more than the direct kernel's, an image's offsets within 32 bits (image_offsets_fit:
    # a dense image of fewer than 2^31 elements), sm_80+; an input without channel runs in place
    # (NCHW, sliced, transposed) read from a channels_last copy (bindings.cpp conv_input).
    forward_runs = _runs(precision, cg) and cg > c["kDirectMaxChannels"] and cin * h * w < 2**31
    # conv_block_kernels.cuh direct_channels. Its 32-bit checks (an image's span, the rows and columns a
    # window reaches) pass for dense inputs of fewer than 2^31 elements per image with small
    # paddings, which every case here is: they are mirrored by that bound alone.
    filter_bytes = k * (8 if precision == "fp64" else 4)
    wide = c["kDirectWideChannels"]
    co = wide if coutg >= c["kDirectWideMin"] and filter_bytes * wide <= c["kDirectMaxSmem"] else 1
    if (cg <= c["kDirectMaxChannels"] and filter_bytes * co <= c["kDirectMaxSmem"]
            and groups * _cdiv(coutg, co) <= 65535 and cin * h * w < 2**31):
        # conv_block_kernels.cuh conv_patch_pool: the patch kernel for a 3x3 conv of stride 1 and dilation
        # 1 with a 2x2 pool of dilation 1 or none, 8 channels a thread, float accumulators.
        ones, window = (1, 1), tuple(p.pool_kernel_size) if p.has_pool else (1, 1)
        conv3x3 = (kh, kw) == (c["kPatchKernel"],) * 2 and tuple(p.stride) == ones and tuple(p.dilation) == ones
        side = 1 if window == ones else 2 if window == (2, 2) and tuple(p.pool_dilation) == ones else 0
        if conv3x3 and side and co == wide and precision != "fp64":
            out.add(f"conv forward patch<{t}>: {'a 2x2 pool' if side == 2 else 'no pool'}")
            if coutg % co:
                out.add("conv forward patch: a partial chunk of output channels")
            out |= _grid_stride("conv forward patch", q)
        else:
            out.add(f"conv forward direct<{t},{off}>")
            out.add(f"conv forward direct: {co} output channel{'s' if co > 1 else ''} a thread")
            if coutg % co:
                out.add("conv forward direct: a partial chunk of output channels")
            out |= _grid_stride("conv forward direct", q)
    elif forward_runs:
        out.add(f"conv forward runs<{t},{off}>")
        rows = _run_rows(coutg)
        if rows > c["kBM"]:
            out.add("conv forward runs: 128-row tiles")
        if coutg > rows:
            out.add("conv forward runs: second M tile")
        if q > c["kBN"]:
            out.add("conv forward runs: several column tiles")
        if groups > 1:
            out.add("conv forward runs: groups")
    else:
        out.add(f"conv forward gemm<{t},{off}>")
        blocks = _cdiv(q, c["kBN"]) * _cdiv(coutg, c["kBM"]) * groups
        if coutg > c["kBM"]:
            out.add("conv forward gemm: second M tile")
        if groups > 1:
            out.add("conv forward gemm: groups")
        if blocks > ONE_WAVE:
            out.add("conv forward gemm: several waves")
    bias = dict(case.kwargs).get("bias", True)
    # conv_block_kernels.cuh direct_weight_grad_splits: no input gradient, 3x3, <= 3 input channels per group.
    if (not case.input_grad and cg <= c["kDirectGradMaxChannels"] and (kh, kw) == (c["kDirectGradKernel"],) * 2
            and 0 < cout <= 65535):
        out.add(f"conv weight grad direct<{t}>")
        if _splits(q, cout, 65535) > 1:
            out.add("conv weight grad direct: several splits")
        out.add(f"conv sum partials<{t}>")
        out |= _grid_stride("conv sum partials", cout * k + (cout if bias else 0))
        if case.jvp:
            out.add(f"conv jvp<{t},{off}>")
            out |= _grid_stride("conv jvp", n * cout * ph * pw)
        return out
    # The backward: the un-pool, one conv_grads_kernel launch (input, weight and bias gradient
    # blocks), the sum of the weight and bias gradients' split partial sums. Over channel runs
    # (conv_backward_channel_runs: where the forward runs over them, with Cout/groups a multiple
    # of a run and an image of the conv-output gradient below 2^31 elements; the bindings choose
    # it when an input or weight gradient is wanted, as every case here wants) the un-pool writes
    # channels_last and conv_grads_runs_kernel runs, its input gradient by stride phase
    # (run_loaders.h axis_phase).
    runs = forward_runs and _runs(precision, coutg) and oh * ow * cout < 2**31
    name = " runs" if runs else ""
    out.add(f"conv grads{name}<{t},{off}>")
    if bias:
        out.add(f"conv bias grad<{t},{off}>")
    out.add(f"conv unpool{' channels_last' if runs else ''}<{t},{off}>")
    # conv_block_kernels.cuh unpool_runs_kernel: a run of channels a thread
    out |= _grid_stride("conv unpool", n * cout * oh * ow // (RUN_LEN[precision] if runs else 1))
    if case.input_grad:
        out.add(f"conv input grad{name}<{t}>")
        if cg > c["kBM"]:
            out.add(f"conv input grad{name}: second {'N' if runs else 'M'} tile")
        # run_loaders.h input_grad_phase_grid: min(stride, size) phases along each axis.
        top, _, left, _ = p.padding
        axes = list(zip(p.stride, p.dilation, (top, left), (kh, kw), (h, w)))
        if runs and math.prod(min(st, size) for st, _, _, _, size in axes) > 1:
            out.add("conv input grad runs: stride phases")
            if any(not _phase_has_taps(r, st, d, pad, kk) for st, d, pad, kk, size in axes
                   for r in range(min(st, size))):
                out.add("conv input grad runs: a stride phase without taps")
    out.add(f"conv weight grad{name}<{t}>")
    dw_rows = _run_rows(coutg) if runs else c["kBM"]
    if dw_rows > c["kBM"]:
        out.add("conv weight grad runs: 128-row tiles")
    if coutg > dw_rows:
        out.add(f"conv weight grad{name}: second M tile")
    tiles = _cdiv(coutg, dw_rows) * _cdiv(k, c["kBN"]) * groups
    positions = n * oh * ow
    out |= _split_labels(f"conv weight grad{name}", positions, _splits(positions, tiles, c["grid_z"] // groups),
                         _run_bk(precision) if runs else c["kBK"])
    out.add(f"conv sum partials<{t}>")
    bias_parts = cout if bias and _channel_sum_splits(n * ph * pw, cout) > 1 else 0
    out |= _grid_stride("conv sum partials", cout * k + bias_parts)
    if case.jvp:
        out.add(f"conv jvp<{t},{off}>")
        out |= _grid_stride("conv jvp", n * cout * ph * pw)
    return out


def _linear_rows(rows: int, cols: int) -> int:
    """linear.cu linear_rows: 128-row blocks where their grid still has split_blocks (264) of
    them and pads at most rows / 16 more rows than 64-row blocks; else 64."""
    c = CUDA_CONSTANTS
    wide = _cdiv(rows, 2 * c["kBM"])
    fills = wide * _cdiv(cols, c["kBN"]) >= c["split_blocks"]
    return 2 * c["kBM"] if fills and wide * 2 * c["kBM"] - _cdiv(rows, c["kBM"]) * c["kBM"] <= rows // 16 else c["kBM"]


def _weight_grad_rows(rows: int, in_f: int, out_f: int) -> int:
    """linear.cu weight_grad_rows: 128 output features a block of the weight gradient over runs
    where that pads out_f no more than 64 do and the 128-row grid with its splits still has
    split_blocks (264) blocks; else 64."""
    c = CUDA_CONSTANTS
    wide = 2 * c["kBM"]
    if out_f <= c["kBM"] or _cdiv(out_f, wide) * wide != _cdiv(out_f, c["kBM"]) * c["kBM"]:
        return c["kBM"]
    tiles = _cdiv(out_f, wide) * _cdiv(in_f, c["kBN"])
    return wide if tiles * _splits(rows, tiles, 1 << 62) >= c["split_blocks"] else c["kBM"]


def cuda_linear_variants(case: LinearCase, precision: str) -> Set[str]:
    """What the CUDA launchers launch for ``case`` (forward and every gradient)."""
    c = CUDA_CONSTANTS
    rows, in_f, out_f = math.prod(case.input[:-1]), case.input[-1], case.out_features
    if rows * out_f == 0:
        return set()
    t = CUDA_TYPES[precision]
    # linear.cu linear_forward: 16-byte runs for 16-bit or TF32 rows of a multiple of a run (sm_80+;
    # x and w contiguous, as the bindings pass them, so 16-byte aligned).
    runs = _runs(precision, in_f)
    # linear_backward: both GEMMs over runs where out features are a multiple of a run too (dz and
    # the workspace's activation gradient 16-byte aligned alike).
    grad_runs = runs and _runs(precision, out_f)
    grads = " runs" if grad_runs else ""
    out = {f"linear forward{' runs' if runs else ''}<{t}>", f"linear input grad{grads}<{t}>",
           f"linear weight grad{grads}<{t}>", f"linear sum partials<{t}>"}
    if runs and _linear_rows(rows, out_f) > c["kBM"]:
        out.add("linear forward runs: 128-row tiles")
    if grad_runs and _linear_rows(rows, in_f) > c["kBM"]:
        out.add("linear input grad runs: 128-row tiles")
    if rows > c["kBM"] and out_f > c["kBN"]:
        out.add("linear forward: second M and N tiles")
    if case.activation is not None:
        out.add(f"linear activation grad<{t}> {'relu' if case.activation == 'relu' else 'smooth'}")
        out |= _grid_stride("linear activation grad", rows * out_f)
    if case.bias:
        out.add(f"linear column sum<{t}>")
    dw_rows = _weight_grad_rows(rows, in_f, out_f) if grad_runs else c["kBM"]
    if dw_rows > c["kBM"]:
        out.add("linear weight grad runs: 128-row tiles")
    tiles = _cdiv(out_f, dw_rows) * _cdiv(in_f, c["kBN"])
    out |= _split_labels(f"linear weight grad{grads}", rows, _splits(rows, tiles, 1 << 62),
                         _run_bk(precision) if grad_runs else c["kBK"])
    out |= _grid_stride("linear sum partials", out_f * in_f)
    return out


def cuda_reached(job_list) -> Dict[str, List[str]]:
    """``label -> [case ids]`` over the cuda jobs of ``job_list``."""
    reached: Dict[str, List[str]] = {}
    for backend, precision, case in job_list:
        if backend != "cuda":
            continue
        labels = cuda_conv_variants(case, precision) if isinstance(case, ConvCase) else \
            cuda_linear_variants(case, precision)
        for label in labels:
            reached.setdefault(label, []).append(f"{case.id} [{precision}]")
    return reached


def cuda_required() -> Set[str]:
    """Every choice of the CUDA launchers: each kernel's template instances (element type x
    offset type), and the tiles, split-K and grid-stride paths named in csrc/cuda."""
    types_ = sorted(set(CUDA_TYPES.values()))
    offs = sorted(OFFSET_TYPES.values())
    out = set()
    for t in types_:
        for off in offs:
            if t in RUN_TYPES:
                out |= {f"conv forward runs<{t},{off}>", f"conv grads runs<{t},{off}>",
                        f"conv unpool channels_last<{t},{off}>"}
            out |= {f"conv forward direct<{t},{off}>", f"conv forward gemm<{t},{off}>", f"conv grads<{t},{off}>",
                    f"conv bias grad<{t},{off}>",
                    f"conv unpool<{t},{off}>", f"conv jvp<{t},{off}>"}
        if t in RUN_TYPES:
            out |= {f"linear forward runs<{t}>", f"linear input grad runs<{t}>", f"linear weight grad runs<{t}>",
                    f"conv input grad runs<{t}>", f"conv weight grad runs<{t}>"}
        if t != "double":  # the patch kernel: float accumulators, int8 offsets (windows of 1 or 4 taps)
            out |= {f"conv forward patch<{t}>: a 2x2 pool", f"conv forward patch<{t}>: no pool"}
        out |= {f"conv input grad<{t}>", f"conv weight grad<{t}>", f"conv weight grad direct<{t}>",
                f"conv sum partials<{t}>",
                f"linear forward<{t}>", f"linear input grad<{t}>", f"linear weight grad<{t}>",
                f"linear sum partials<{t}>", f"linear column sum<{t}>", f"linear activation grad<{t}> relu",
                f"linear activation grad<{t}> smooth"}
    out |= {
        "conv forward direct: grid-stride loop runs twice or more", "conv forward direct: 8 output channels a thread",
        "conv forward direct: 1 output channel a thread", "conv forward direct: a partial chunk of output channels",
        "conv forward patch: a partial chunk of output channels",
        "conv forward patch: grid-stride loop runs twice or more",
        "conv forward gemm: second M tile",
        "conv forward gemm: groups", "conv forward gemm: several waves", "conv forward runs: second M tile",
        "conv forward runs: 128-row tiles", "conv forward runs: several column tiles", "conv forward runs: groups",
        "conv unpool: grid-stride loop runs twice or more", "conv input grad: second M tile",
        "conv weight grad: second M tile", "conv weight grad: one split-K slice",
        "conv weight grad: several split-K slices", "conv weight grad: an empty split-K slice",
        "conv weight grad direct: several splits",
        "conv input grad runs: second N tile", "conv input grad runs: stride phases",
        "conv input grad runs: a stride phase without taps",
        "conv weight grad runs: second M tile", "conv weight grad runs: 128-row tiles",
        "conv weight grad runs: one split-K slice", "conv weight grad runs: several split-K slices",
        "conv sum partials: grid-stride loop runs twice or more", "conv jvp: grid-stride loop runs twice or more",
        "linear forward: second M and N tiles", "linear forward runs: 128-row tiles",
        "linear input grad runs: 128-row tiles", "linear weight grad runs: 128-row tiles",
        "linear activation grad: grid-stride loop runs twice or more",
        "linear weight grad: one split-K slice", "linear weight grad: several split-K slices",
        "linear weight grad: an empty split-K slice", "linear sum partials: grid-stride loop runs twice or more",
        "linear weight grad runs: one split-K slice", "linear weight grad runs: several split-K slices",
        "linear weight grad runs: an empty split-K slice",
    }
    return out


def coverage_gaps(job_list=None) -> List[str]:
    """Every launcher configuration (Triton) or choice (CUDA) no job of ``job_list`` (default:
    every case of the suite) reaches."""
    job_list = jobs(ALL_CASES) if job_list is None else job_list
    reached = triton_reached(job_list)
    gaps = [f"triton {kernel} {precision} {dict(zip(CONFIG_KEYS, config))}"
            for kernel, precision, config in sorted(triton_required(), key=repr) if (kernel, precision, config)
            not in reached]
    cuda = cuda_reached(job_list)
    gaps += [f"cuda {label}" for label in sorted(cuda_required()) if label not in cuda]
    return gaps


def coverage_table(job_list=None) -> List[str]:
    """Markdown lines: every required config/choice and the first cases that reach it."""
    job_list = jobs(ALL_CASES) if job_list is None else job_list
    reached = triton_reached(job_list)
    lines = ["| backend | kernel / choice | config | precisions | first cases |", "| --- | --- | --- | --- | --- |"]
    by_config: Dict[Tuple[str, Tuple], Dict[str, List[str]]] = {}
    for kernel, precision, config in triton_required():
        by_config.setdefault((kernel, config), {})[precision] = reached.get((kernel, precision, config), [])
    for (kernel, config), per in sorted(by_config.items(), key=repr):
        cfg = "x".join(str(v) for v in config[:3] if v is not None) + f" w{config[3]}" + (" taps" if config[4] else "")
        done = [p for p in PRECISIONS if per.get(p)]
        cases = sorted({c for p in done for c in per[p]}, key=lambda c: (len(c), c))[:2]
        lines.append(f"| triton | {kernel} | {cfg} | {','.join(done) or 'NONE'} | {'; '.join(cases)} |")
    cuda = cuda_reached(job_list)
    for label in sorted(cuda_required()):
        cases = sorted({c.split(' [')[0] for c in cuda.get(label, [])}, key=lambda c: (len(c), c))[:2]
        lines.append(f"| cuda | {label} | | | {'; '.join(cases) or 'NONE'} |")
    return lines


if __name__ == "__main__":
    print("\n".join(coverage_table()))
