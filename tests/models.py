"""Models in the style of the PyTorch nn.Module tutorials, used by the fuse() tests."""

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.workloads import CifarCNN

# The CIFAR-10 tutorial CNN (layers as attributes, called one by one; one shared pool) is
# also a benchmark workload: one definition serves both.
TutorialNet = CifarCNN


def sequential_cnn():
    """A CNN built as one nn.Sequential (in-place ReLUs, a ceil-mode pool)."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2, 1, ceil_mode=True),
        nn.Flatten(), nn.Linear(16 * 9 * 9, 32), nn.GELU(), nn.Linear(32, 10),
    )


class FunctionalCNN(nn.Module):
    """F.relu / torch.relu / Tensor.relu_ in forward, F.max_pool2d, and a free nn.Parameter scale."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 4, 3)
        self.scale = nn.Parameter(torch.tensor(1.5))
        self.head = nn.Linear(4 * 6 * 6, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x), inplace=True), 2)
        x = torch.relu(self.conv2(x)) * self.scale
        x = self.conv3(x).relu_()
        return F.silu(self.head(x.flatten(1)))


class TutorialMLP(nn.Module):
    """The quickstart tutorial's NeuralNetwork: Flatten + Sequential(Linear, ReLU, ...)."""

    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.linear_relu_stack = nn.Sequential(
            nn.Linear(28 * 28, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10),
        )

    def forward(self, x):
        return self.linear_relu_stack(self.flatten(x))


class ResidualBlock(nn.Module):
    """conv -> BN -> ReLU -> conv -> BN, + identity, ReLU."""

    def __init__(self, channels=6):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + x)


class ResNetish(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.block = ResidualBlock(6)
        self.head = nn.Linear(6, 10)

    def forward(self, x):
        x = self.block(self.stem(x))
        return self.head(x.mean((2, 3)))


class RawLinear(nn.Module):
    """A custom layer holding raw nn.Parameters."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_out, n_in) / n_in**0.5)
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x):
        return x @ self.weight.t() + self.bias


class CustomLayerNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2))
        self.custom = RawLinear(4 * 3 * 3, 5)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.custom(self.features(x).flatten(1)))


class NoFusable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.act = nn.Tanh()

    def forward(self, x):
        return self.act(self.conv(x)).mean((2, 3))


class Untraceable(nn.Module):
    """Data-dependent control flow at the top (fx cannot trace it); fusable Sequential inside."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2))
        self.net = FunctionalCNN()

    def forward(self, x):
        if x.sum() > 0:
            return self.body(x).sum() + self.net(x).sum()
        return self.net(x).sum()
