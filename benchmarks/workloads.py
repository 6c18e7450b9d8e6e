"""The benchmark workloads: layers of the tutorial CNNs, a VGG block, the ResNet stem, MLPs,
and whole tutorial models (the CIFAR tutorial CNN, a wider CIFAR CNN, the quickstart MLP):
their eval forward and their training step.

Each workload builds its eager PyTorch module (the baseline every provider is checked
against) and counts the FLOPs and the minimum bytes one forward moves (input, weight and
output once each: the fused ideal); ``train`` adds the backward's two GEMMs' FLOPs and
their bytes (read the input, weight, output gradient; write the input and weight gradients).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Workload:
    """One benchmark row family: ``op`` in {"conv_block", "linear", "train_step"}."""

    op: str
    layer: str
    build: Callable[[], nn.Module]  # eager baseline on CPU, float32
    input_shape: Callable[[int], Tuple[int, ...]]
    fwd_flops: Callable[[int], float]
    fwd_elems: Callable[[int], float]  # elements moved by one ideal forward (input + weight + output)
    input_grad: bool = True  # does training need the input gradient (False for a first layer)
    modes: Tuple[str, ...] = ("fwd", "train")

    def flops(self, batch: int, mode: str) -> float:
        f = self.fwd_flops(batch)
        return f * 3 if mode == "train" else f  # forward + input grad + weight grad

    def bytes(self, batch: int, mode: str, itemsize: int) -> float:
        b = self.fwd_elems(batch) * itemsize
        return b * 3 if mode == "train" else b


def conv_block_workload(
    layer: str,
    cin: int,
    cout: int,
    size: int,
    kernel: int = 3,
    stride: int = 1,
    padding: int = 1,
    pool: Optional[Tuple[int, int, int]] = (2, 2, 0),
) -> Workload:
    """Conv2d(cin, cout, kernel, stride, padding) + ReLU [+ MaxPool2d(k, s, p)] on size x size."""
    conv_out = (size + 2 * padding - kernel) // stride + 1
    pooled = conv_out if pool is None else (conv_out + 2 * pool[2] - pool[0]) // pool[1] + 1

    def build():
        layers = [nn.Conv2d(cin, cout, kernel, stride, padding), nn.ReLU()]
        if pool is not None:
            layers.append(nn.MaxPool2d(*pool))
        return nn.Sequential(*layers)

    return Workload(
        op="conv_block",
        layer=layer,
        build=build,
        input_shape=lambda n: (n, cin, size, size),
        fwd_flops=lambda n: 2.0 * n * cout * conv_out * conv_out * cin * kernel * kernel,
        fwd_elems=lambda n: n * cin * size * size + cout * cin * kernel * kernel + n * cout * pooled * pooled,
        input_grad=cin > 4,
    )


def linear_workload(layer: str, dims: Tuple[int, ...], activation: Optional[type], rows: int = 1) -> Workload:
    """A stack of Linear layers ``dims[0] -> dims[1] -> ...``, each but the last followed by
    ``activation``; the input has ``batch * rows`` rows."""

    def build():
        layers = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if activation is not None and (i < len(dims) - 2 or len(dims) == 2):
                layers.append(activation())
        return nn.Sequential(*layers)

    pairs = list(zip(dims[:-1], dims[1:]))
    return Workload(
        op="linear",
        layer=layer,
        build=build,
        input_shape=lambda n: (n * rows, dims[0]),
        fwd_flops=lambda n: sum(2.0 * n * rows * a * b for a, b in pairs),
        fwd_elems=lambda n: sum(n * rows * a + a * b + n * rows * b for a, b in pairs),
        input_grad=False,
    )


class CifarCNN(nn.Module):
    """The CNN of PyTorch's CIFAR-10 tutorial (conv 3->6->16 5x5, pools, three Linears)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class CifarWideCNN(nn.Module):
    """A CIFAR-10 CNN with wider layers (conv 3->32, 32->64 3x3, each ReLU + MaxPool2d(2), fc
    4096->128->10) and one shared nn.ReLU and one shared nn.MaxPool2d module."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(64 * 8 * 8, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = self.pool(self.relu(self.conv1(x)))
        x = self.pool(self.relu(self.conv2(x)))
        return self.fc2(self.relu(self.fc1(torch.flatten(x, 1))))


class QuickstartMLP(nn.Module):
    """The PyTorch quickstart tutorial's NeuralNetwork: Flatten, Linear 784-512-512-10, ReLUs."""

    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.linear_relu_stack = nn.Sequential(
            nn.Linear(28 * 28, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10),
        )

    def forward(self, x):
        return self.linear_relu_stack(self.flatten(x))


def _layer_flops(build: Callable[[], nn.Module], shape: Tuple[int, ...]) -> float:
    """Forward FLOPs of one sample: 2 per multiply-add of every Conv2d and Linear."""
    total = [0.0]

    def count(m, inputs, out):
        if isinstance(m, nn.Conv2d):
            total[0] += 2.0 * out.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.Linear):
            total[0] += 2.0 * out.numel() * m.in_features

    model = build()
    for m in model.modules():
        m.register_forward_hook(count)
    with torch.no_grad():
        model(torch.zeros(1, *shape))
    return total[0]


def model_workload(layer: str, build: Callable[[], nn.Module], shape: Tuple[int, ...]) -> Workload:
    """A whole model: its eval forward and its training step (forward, backward, SGD)."""
    flops = _layer_flops(build, shape)
    params = sum(p.numel() for p in build().parameters())
    return Workload(
        op="train_step",
        layer=layer,
        build=build,
        input_shape=lambda n: (n, *shape),
        fwd_flops=lambda n: n * flops,
        fwd_elems=lambda n: n * math.prod(shape) + params + n * 10,
        input_grad=False,
        modes=("fwd", "train"),
    )


CIFAR_STEP = model_workload("cifar tutorial CNN (blitz LeNet)", CifarCNN, (3, 32, 32))
MODELS = [
    CIFAR_STEP,
    model_workload("cifar CNN 3->32->64, shared relu/pool", CifarWideCNN, (3, 32, 32)),
    model_workload("quickstart MLP 784-512-512-10", QuickstartMLP, (1, 28, 28)),
]

CONV_LAYERS = [
    conv_block_workload("mnist conv1 1->32 28x28", 1, 32, 28),
    conv_block_workload("mnist conv2 32->64 14x14", 32, 64, 14),
    conv_block_workload("cifar conv1 3->32 32x32", 3, 32, 32),
    conv_block_workload("cifar conv2 32->64 16x16", 32, 64, 16),
    conv_block_workload("lenet conv1 3->6 5x5 32x32", 3, 6, 32, kernel=5, padding=0),
    conv_block_workload("lenet conv2 6->16 5x5 14x14", 6, 16, 14, kernel=5, padding=0),
    conv_block_workload("vgg block 64->128 112x112", 64, 128, 112),
    conv_block_workload("resnet stem 3->64 7x7/2 224", 3, 64, 224, kernel=7, stride=2, padding=3, pool=(3, 2, 1)),
    conv_block_workload("mnist conv2 32->64 14x14 no-pool", 32, 64, 14, pool=None),
    conv_block_workload("cifar conv2 32->64 16x16 no-pool", 32, 64, 16, pool=None),
]
LINEAR_LAYERS = [
    linear_workload("mlp 784-512-512-10 relu", (784, 512, 512, 10), nn.ReLU),
    linear_workload("4096x4096 gelu", (4096, 4096), nn.GELU),
]
ALL = CONV_LAYERS + LINEAR_LAYERS + MODELS

# The default CPU run (`make bench` without a GPU) leaves out the two ImageNet-sized layers,
# whose eager forward alone takes seconds per batch of 64 on a 2-core machine.
CPU_DEFAULT = [w for w in ALL if not w.layer.startswith(("vgg", "resnet"))]
