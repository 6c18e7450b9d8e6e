"""Models in the style of the PyTorch nn.Module tutorials, used by the fuse() tests."""

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.workloads import CifarCNN

# The CIFAR-10 tutorial CNN (layers as attributes, called one by one; one shared pool) is
# also a benchmark workload: one definition serves both.
TutorialNet = CifarCNN


class SharedActivationCNN(nn.Module):
    """CIFAR-tutorial layout with one shared nn.ReLU and one shared nn.MaxPool2d module, used
    after every layer (as the PyTorch CIFAR tutorial's variants do)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(16 * 5 * 5, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = self.pool(self.relu(self.conv1(x)))
        x = self.pool(self.relu(self.conv2(x)))
        return self.fc2(self.relu(self.fc1(torch.flatten(x, 1))))


class LeNet(nn.Module):
    """The 60-minute blitz's LeNet: F.relu and F.max_pool2d in forward(), a num_flat helper."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), (2, 2))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)

    def num_flat_features(self, x):
        return x[0].numel()


def mnist_sequential_cnn():
    """The PyTorch MNIST example's CNN written as one nn.Sequential (dropout included)."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.25),
        nn.Flatten(), nn.Linear(16 * 12 * 12, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 10),
    )


class BasicBlock(nn.Module):
    """ResNet's basic block: conv-BN-ReLU-conv-BN + identity, ReLU (no-bias convs)."""

    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + x)


class ResNetStyle(nn.Module):
    """A torchvision-style ResNet: a Sequential stem (conv, BN, ReLU, pool), a Sequential of
    basic blocks, global pooling and an ``fc`` head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        self.layer1 = nn.Sequential(BasicBlock(8), BasicBlock(8))
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.layer1(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class TemperatureClassifier(nn.Module):
    """Custom nn.Parameters, a buffer, a plain attribute, an extra method and F.dropout that
    follows self.training."""

    def __init__(self, num_classes=5):
        super().__init__()
        self.num_classes = num_classes
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.proj = nn.Linear(6 * 4 * 4, 16)
        self.out = nn.Linear(16, num_classes)
        self.temperature = nn.Parameter(torch.tensor(2.0))
        self.class_bias = nn.Parameter(torch.zeros(num_classes))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, x):
        h = F.gelu(self.proj(torch.flatten(F.max_pool2d(F.relu(self.conv(x)), 2), 1)))
        h = F.dropout(h, 0.5, training=self.training)
        return self.out(h) / self.temperature + self.class_bias

    def predict(self, x):
        return self(x).argmax(-1)


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


# Every model family of the fuse() tests: (factory, one sample's input shape). The tests run
# them at batch 2; benchmarks/fuse_models.py times each, original against fuse(), at batch 64.
FUSE_MODELS = {
    "cifar_tutorial": (TutorialNet, (3, 32, 32)),
    "shared_relu_pool": (SharedActivationCNN, (3, 32, 32)),
    "mnist_sequential": (mnist_sequential_cnn, (1, 28, 28)),
    "lenet_functional": (LeNet, (1, 32, 32)),
    "sequential_cnn": (sequential_cnn, (3, 32, 32)),
    "functional_relu_free_param": (FunctionalCNN, (3, 16, 16)),
    "mlp": (TutorialMLP, (1, 28, 28)),
    "residual_bn": (ResNetish, (3, 8, 8)),
    "resnet_style": (ResNetStyle, (3, 16, 16)),
    "custom_params_methods": (TemperatureClassifier, (3, 8, 8)),
    "custom_raw_params": (CustomLayerNet, (3, 8, 8)),
    "no_fusable": (NoFusable, (3, 8, 8)),
}
