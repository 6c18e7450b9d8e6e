"""The shapes ``make triton-check`` compiles the Triton kernels for, run through the launchers.

Tensors are meta tensors: the launchers allocate their outputs and pick their configs as on a
GPU, nothing is computed, and batch-256 or 2^31-element problems cost no memory. Each case
runs the forward and then the backward launcher (all gradients).

The grid covers every block config the launchers' config functions can return (the check
verifies that, see ``tools/triton_check.py``), the tutorial CNN layers at batch 256, a VGG-sized
layer, the ResNet stem (7x7 stride 2 with a 3x3 stride-2 pool), 2x2/3x3/4x4/12x12 pools,
grouped and depthwise convs, no pool, channels_last, problems past 2^31 elements and past the
65,535 grid-y/z limit, and small, large and odd linear layers with every activation.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable, Dict, List, Tuple

import torch

DTYPES: Dict[str, Tuple[torch.dtype, bool]] = {
    # name: (dtype, TF32 allowed: torch.backends.cudnn.allow_tf32 and cuda.matmul.allow_tf32)
    "bf16": (torch.bfloat16, False),
    "fp16": (torch.float16, False),
    "tf32": (torch.float32, True),
    "fp32": (torch.float32, False),
    "fp64": (torch.float64, False),
}


@dataclasses.dataclass(frozen=True)
class ConvCase:
    """``conv_relu_maxpool2d`` on an ``input`` (N, C, H, W) with ``out_channels`` filters."""

    name: str
    input: Tuple[int, int, int, int]
    out_channels: int
    kernel_size: int
    kwargs: Tuple[Tuple[str, object], ...] = ()
    bias: bool = True
    channels_last: bool = False
    dtypes: Tuple[str, ...] = tuple(DTYPES)

    def run(self, dtype: torch.dtype) -> None:
        """The forward launcher, then the backward launcher for every gradient and the tangent
        launcher (double backward) with every tangent, on meta tensors."""
        from fusedops.functional import conv_block_params
        from fusedops.triton import conv_block, conv_block_jvp

        kwargs = dict(self.kwargs)
        p = conv_block_params(self.kernel_size, **kwargs)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        x = torch.empty(self.input, device="meta", dtype=dtype).contiguous(memory_format=fmt)
        cin_g = self.input[1] // kwargs.get("groups", 1)
        w = torch.empty(self.out_channels, cin_g, self.kernel_size, self.kernel_size, device="meta", dtype=dtype)
        b = torch.empty(self.out_channels, device="meta", dtype=dtype) if self.bias else None
        y, offsets = conv_block.forward(x, w, b, p)
        conv_block.backward(torch.empty_like(y), x, w, offsets, p, [True, True, self.bias])
        conv_block_jvp.jvp(x, w, offsets, torch.empty_like(x), torch.empty_like(w), b, p)


@dataclasses.dataclass(frozen=True)
class LinearCase:
    """``linear`` of ``rows`` (M) inputs with ``in_features`` (K) to ``out_features`` (N)."""

    name: str
    rows: int
    in_features: int
    out_features: int
    activation: str = ""
    bias: bool = True
    dtypes: Tuple[str, ...] = tuple(DTYPES)

    def run(self, dtype: torch.dtype) -> None:
        """The forward launcher, then the backward launcher for every gradient, on meta tensors."""
        from fusedops.triton import linear

        x = torch.empty(self.rows, self.in_features, device="meta", dtype=dtype)
        w = torch.empty(self.out_features, self.in_features, device="meta", dtype=dtype)
        b = torch.empty(self.out_features, device="meta", dtype=dtype) if self.bias else None
        y, saved = linear.forward(x, w, b, self.activation)
        linear.backward(torch.empty_like(y), x, w, saved, self.activation, [True, True, self.bias])


def _conv(name, input, out_channels, kernel_size, bias=True, channels_last=False, dtypes=tuple(DTYPES), **kwargs):
    return ConvCase(name, input, out_channels, kernel_size, tuple(sorted(kwargs.items())), bias, channels_last,
                    dtypes)


CASES: List[object] = [
    # The tutorial CNNs (MNIST, CIFAR-10) at batch 256.
    _conv("mnist conv1 1->32 28x28 b256", (256, 1, 28, 28), 32, 3, padding=1),
    _conv("mnist conv2 32->64 14x14 b256", (256, 32, 14, 14), 64, 3, padding=1),
    _conv("cifar conv1 3->32 32x32 b256", (256, 3, 32, 32), 32, 3, padding=1),
    _conv("cifar conv2 32->64 16x16 b256 channels_last", (256, 32, 16, 16), 64, 3, padding=1, channels_last=True),
    # Larger layers.
    _conv("vgg 64->128 112x112 b32", (32, 64, 112, 112), 128, 3, padding=1),
    _conv("vgg 512->512 14x14 b32", (32, 512, 14, 14), 512, 3, padding=1),
    _conv("resnet stem 3->64 7x7/2 224x224 pool 3x3/2 b32", (32, 3, 224, 224), 64, 7, stride=2, padding=3,
          pool_kernel_size=3, pool_stride=2, pool_padding=1),
    # Pool windows (the review's 64x32x56x56 layer), no pool, a 12x12 window (int16 offsets).
    _conv("pool 3x3 32->64 56x56 b64", (64, 32, 56, 56), 64, 3, padding=1, pool_kernel_size=3),
    _conv("pool 4x4 32->64 56x56 b64", (64, 32, 56, 56), 64, 3, padding=1, pool_kernel_size=4),
    _conv("pool 12x12/2 2->3 40x40 b2", (2, 2, 40, 40), 3, 3, pool_kernel_size=12, pool_stride=2),
    # The forward's tap loop on tensor cores (a 9-tap window; 2, 4 and 8 taps take tap rows).
    *[_conv(f"pool 3x3 {c}->{c} {hw}x{hw} b{n}", (n, c, hw, hw), c, 3, padding=1, pool_kernel_size=3,
            dtypes=("bf16", "fp16", "tf32")) for n, c, hw in ((2, 24, 10), (2, 40, 10), (12, 16, 58), (12, 24, 58))],
    _conv("no pool 32->64 16x16/2 b256", (256, 32, 16, 16), 64, 3, stride=2, padding=1, pool_kernel_size=None),
    # Groups: grouped, depthwise, and more groups than a grid's y/z dimension holds.
    _conv("groups 4 64->64 28x28 b64", (64, 64, 28, 28), 64, 3, padding=1, groups=4),
    _conv("depthwise 32 56x56 b64 dilation 2", (64, 32, 56, 56), 32, 3, padding=2, dilation=2, groups=32),
    _conv("groups 70000 depthwise 6x6 b1", (1, 70000, 6, 6), 70000, 3, groups=70000),
    # Many input channels per output channel (the weight gradient's large-K tiles).
    _conv("512->16 14x14 b8", (8, 512, 14, 14), 16, 3, padding=1),
    _conv("groups 2 1024->64 7x7 b8", (8, 1024, 7, 7), 64, 3, padding=1, groups=2),
    # The weight gradient's gather with K past 4096 (32-position steps) where the channels do not
    # come in runs of 16, and its runs of channels in every tile (output x input channels).
    _conv("deep gather 500->16 6x6 b2", (2, 500, 6, 6), 16, 3, padding=1),
    _conv("deep gather 500->24 6x6 b2", (2, 500, 6, 6), 24, 3, padding=1),
    _conv("deep gather 500->40 6x6 b2", (2, 500, 6, 6), 40, 3, padding=1),
    _conv("runs 32->16 9x9 b1", (1, 32, 9, 9), 16, 3, padding=1),
    _conv("runs 16->32 9x9 b1", (1, 16, 9, 9), 32, 3, padding=1),
    _conv("runs 32->32 9x9 b1", (1, 32, 9, 9), 32, 3, padding=1),
    _conv("runs 16->64 9x9 b1", (1, 16, 9, 9), 64, 3, padding=1),
    # Small problems (the small-tile configs), without bias.
    _conv("small 3->8 9x9 b1 no bias", (1, 3, 9, 9), 8, 3, bias=False, padding=1),
    _conv("small 20->40 9x9 b1", (1, 20, 9, 9), 40, 3, padding=1),
    _conv("small 40->24 9x9 b1", (1, 40, 9, 9), 24, 3, padding=1),
    _conv("small 16->96 9x9 b1", (1, 16, 9, 9), 96, 3, padding=1),
    # More than 2^31 elements (64-bit index math).
    _conv("2^31+ elements 1->4 512x512 b8200", (8200, 1, 512, 512), 4, 3, padding=1, dtypes=("bf16", "fp32")),
    # Linear layers.
    LinearCase("mlp 784->512 relu b256", 256, 784, 512, "relu"),
    LinearCase("mlp 512->10 b256", 256, 512, 10),
    LinearCase("lenet fc1 400->120 relu b16", 16, 400, 120, "relu"),
    LinearCase("lenet fc2 120->84 silu b128", 128, 120, 84, "silu"),
    LinearCase("lenet fc3 84->10 b16", 16, 84, 10),
    LinearCase("classifier 512->10 gelu b1024", 1024, 512, 10, "gelu"),
    LinearCase("mlp 512->512 gelu b16", 16, 512, 512, "gelu"),
    LinearCase("4096->4096 gelu_tanh b8192", 8192, 4096, 4096, "gelu_tanh"),
    LinearCase("odd 333->77 silu b1000 no bias", 1000, 333, 77, "silu", bias=False),
    LinearCase("single row 100->300 relu", 1, 100, 300, "relu"),
    LinearCase("in_features 2.5M (grid y/z split)", 64, 2_500_000, 16, dtypes=("bf16", "fp32")),
    LinearCase("2^31+ elements 65536->8 b40000", 40000, 65536, 8, "silu", dtypes=("bf16", "fp32")),
]


@contextlib.contextmanager
def precision(tf32: bool):
    """torch's TF32 switches for conv (cuDNN) and matmul, as the launchers read them."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def run_all(cases, on_case: Callable[[str, str], None]) -> None:
    """Run every case in each of its dtypes through the launchers; ``on_case(name, dtype)``
    is called before each."""
    for case in cases:
        for label in case.dtypes:
            dtype, tf32 = DTYPES[label]
            on_case(case.name, label)
            with precision(tf32):
                case.run(dtype)
