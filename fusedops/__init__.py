"""fusedops: fused Conv2d + ReLU + MaxPool2d and Linear + activation for PyTorch.

Public API (see the README): :func:`conv_relu_maxpool2d`, :func:`linear`,
:class:`FusedConvBlock`, :class:`FusedLinear`, :func:`fuse`, :func:`available_backends`.
"""

import torch  # noqa: F401  (loads libtorch before the compiled extension)

from . import _native  # noqa: F401  (loads fusedops._C when it was built)
from .backends import available_backends
from .functional import conv_relu_maxpool2d, linear
from .fuse import fuse
from .modules import FusedConvBlock, FusedLinear

__version__ = "0.1.0"

__all__ = [
    "FusedConvBlock",
    "FusedLinear",
    "available_backends",
    "conv_relu_maxpool2d",
    "fuse",
    "linear",
]
