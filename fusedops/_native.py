"""Loads the compiled extension ``fusedops._C`` when it was built.

``import fusedops`` never fails because of the extension: when it is missing or does not
load, ``LOAD_ERROR`` says why, and the backends that need it report that reason.
"""

from __future__ import annotations

from typing import Optional

import torch

from .ops import conv_block, linear

LOAD_ERROR: Optional[str] = None
WITH_CUDA = False

try:
    from . import _C  # noqa: F401  (loading it registers the fusedops::native_* schemas)

    WITH_CUDA = bool(_C.WITH_CUDA)
except ImportError as exc:  # not built, or built against another torch
    LOAD_ERROR = f"fusedops._C is not available ({exc})"


def loaded() -> bool:
    """Whether the compiled extension is loaded."""
    return LOAD_ERROR is None


if loaded():
    torch.library.register_fake("fusedops::native_conv_block_forward", conv_block.fake_forward)
    torch.library.register_fake("fusedops::native_conv_block_backward", conv_block.fake_backward)
    torch.library.register_fake("fusedops::native_conv_block_jvp", conv_block.fake_jvp)
    torch.library.register_fake("fusedops::native_linear_forward", linear.fake_forward)
    torch.library.register_fake("fusedops::native_linear_backward", linear.fake_backward)
    # The one-call ops with their autograd in C++ (csrc/conv_block_op.cpp, csrc/linear_op.cpp).
    torch.library.register_fake("fusedops::native_conv_block", conv_block.fake_native_conv_block)
    torch.library.register_fake("fusedops::native_linear", linear.fake_native_linear)
