"""Argument normalisation and validation shared by the functional ops and the modules.

Every helper takes the user's value and the argument's name, returns a normalised value
(ints, tuples) and raises ``TypeError``/``ValueError`` naming the argument and what was
expected: ``errors.InputTypeError``/``errors.InputValueError``, which are also
``RuntimeError``, as torch's own layers raise for the same values. Shape arithmetic follows torch's own
conv and pooling formulas exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional, Tuple, Union

import torch

from .errors import InputTypeError, InputValueError

IntPair = Tuple[int, int]
Padding4 = Tuple[int, int, int, int]  # (top, bottom, left, right)

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _is_int(value) -> bool:
    return isinstance(value, (int, torch.SymInt)) and not isinstance(value, bool)


def pair(value, name: str, *, minimum: int) -> IntPair:
    """Return ``value`` as an ``(h, w)`` pair of ints, each at least ``minimum``.

    Accepts an int or a sequence of one or two ints, as torch's ``_pair`` does.
    """
    if _is_int(value):
        out = (value, value)
    elif isinstance(value, Sequence) and not isinstance(value, str) and len(value) in (1, 2):
        if not all(_is_int(v) for v in value):
            raise InputTypeError(f"{name} must be an int or a pair of ints, got {value!r}")
        out = (value[0], value[0]) if len(value) == 1 else (value[0], value[1])
    else:
        raise InputTypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if out[0] < minimum or out[1] < minimum:
        expected = "positive" if minimum == 1 else f"at least {minimum}"
        raise InputValueError(f"{name} must be {expected}, got {value!r}")
    return (int(out[0]), int(out[1])) if all(isinstance(v, int) for v in out) else out


def conv_padding(
    padding: Union[str, int, Sequence[int]], kernel: IntPair, stride: IntPair, dilation: IntPair
) -> Padding4:
    """Resolve a conv ``padding`` argument to explicit ``(top, bottom, left, right)``.

    ``"valid"`` is no padding. ``"same"`` pads ``dilation * (kernel - 1)`` in total per
    dimension, the smaller half before, as ``F.conv2d`` does; it requires stride 1.
    """
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise InputValueError("padding='same' is not supported for strided convolutions")
            total_h = dilation[0] * (kernel[0] - 1)
            total_w = dilation[1] * (kernel[1] - 1)
            return (total_h // 2, total_h - total_h // 2, total_w // 2, total_w - total_w // 2)
        raise InputValueError(f"padding must be 'same', 'valid', an int or a pair of ints, got {padding!r}")
    ph, pw = pair(padding, "padding", minimum=0)
    return (ph, ph, pw, pw)


def conv_output_size(size: int, kernel: int, stride: int, pad_total: int, dilation: int) -> int:
    """Output length of a convolution along one dimension (torch's formula)."""
    return (size + pad_total - dilation * (kernel - 1) - 1) // stride + 1


def pool_output_size(
    size: int, kernel: int, stride: int, padding: int, dilation: int, ceil_mode: bool
) -> int:
    """Output length of max pooling along one dimension (torch's ``pooling_output_shape``).

    With ``ceil_mode`` the last window must start inside the input or its left padding.
    """
    numerator = size + 2 * padding - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)
    out = numerator // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def check_float_tensor(t, name: str, *, ref: Optional[torch.Tensor] = None) -> None:
    """Check that ``t`` is a floating-point tensor (and matches ``ref``'s dtype and device)."""
    if not isinstance(t, torch.Tensor):
        raise InputTypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise InputTypeError(
            f"{name} must be a floating-point tensor (float16, bfloat16, float32 or float64), "
            f"got dtype {t.dtype}"
        )
    if ref is not None:
        if t.dtype != ref.dtype:
            raise InputTypeError(f"{name} has dtype {t.dtype} but input has dtype {ref.dtype}")
        if t.device != ref.device:
            raise RuntimeError(f"{name} is on {t.device} but input is on {ref.device}")


def check_activation(activation, valid: Sequence[Optional[str]]) -> str:
    """Return the activation name ('' for none) or raise ``ValueError`` listing the valid ones."""
    if activation is None:
        return ""
    if not isinstance(activation, str) or activation not in valid:
        raise ValueError(f"activation must be one of {list(valid)}, got {activation!r}")
    return activation
