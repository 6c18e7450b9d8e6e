"""The benchmark workloads: layers of the tutorial CNNs, a VGG block, the ResNet stem, MLPs,
and the tutorial CIFAR CNN's whole training step.

Each workload builds its eager PyTorch module (the baseline every provider is checked
against) and counts the FLOPs and the minimum bytes one forward moves (input, weight and
output once each: the fused ideal); ``train`` adds the backward's two GEMMs' FLOPs and
their bytes (read the input, weight, output gradient; write the input and weight gradients).
"""

from __future__ import annotations

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


def _cifar_flops(n: int) -> float:
    convs = 2.0 * n * (6 * 28 * 28 * 3 * 25 + 16 * 10 * 10 * 6 * 25)
    fcs = 2.0 * n * (400 * 120 + 120 * 84 + 84 * 10)
    return convs + fcs


CIFAR_STEP = Workload(
    op="train_step",
    layer="cifar tutorial CNN (fwd+bwd+SGD)",
    build=CifarCNN,
    input_shape=lambda n: (n, 3, 32, 32),
    fwd_flops=_cifar_flops,
    fwd_elems=lambda n: n * 3 * 32 * 32 + 62006 + n * 10,
    input_grad=False,
    modes=("train",),
)

CONV_LAYERS = [
    conv_block_workload("mnist conv1 1->32 28x28", 1, 32, 28),
    conv_block_workload("mnist conv2 32->64 14x14", 32, 64, 14),
    conv_block_workload("cifar conv1 3->32 32x32", 3, 32, 32),
    conv_block_workload("cifar conv2 32->64 16x16", 32, 64, 16),
    conv_block_workload("vgg block 64->128 112x112", 64, 128, 112),
    conv_block_workload("resnet stem 3->64 7x7/2 224", 3, 64, 224, kernel=7, stride=2, padding=3, pool=(3, 2, 1)),
    conv_block_workload("mnist conv2 32->64 14x14 no-pool", 32, 64, 14, pool=None),
    conv_block_workload("cifar conv2 32->64 16x16 no-pool", 32, 64, 16, pool=None),
]
LINEAR_LAYERS = [
    linear_workload("mlp 784-512-512-10 relu", (784, 512, 512, 10), nn.ReLU),
    linear_workload("4096x4096 gelu", (4096, 4096), nn.GELU),
]
ALL = CONV_LAYERS + LINEAR_LAYERS + [CIFAR_STEP]

# The default CPU run (`make bench` without a GPU) leaves out the two ImageNet-sized layers,
# whose eager forward alone takes seconds per batch of 64 on a 2-core machine.
CPU_DEFAULT = [w for w in ALL if not w.layer.startswith(("vgg", "resnet"))]
