"""The exceptions fusedops raises for bad input, catchable as torch's layers' errors are.

torch's own layers reject a bad input (a wrong channel count, a wrong number of dims, a dtype
mismatch, an input smaller than the kernel, a zero stride, ...) with ``RuntimeError``; fusedops
names the argument and what it expected, as a ``ValueError`` or ``TypeError``. The two classes
here are both, so code written for ``nn.Conv2d`` (``except RuntimeError``) and code written
for Python's conventions (``except ValueError``) both catch them::

    try:
        block(x)
    except RuntimeError:  # as for nn.Sequential(nn.Conv2d(...), nn.ReLU(), nn.MaxPool2d(2))
        ...

Every check of an op's tensors and arguments raises one of them, in Python and in the compiled
ops (``TORCH_CHECK_VALUE`` / ``TORCH_CHECK_TYPE`` arrive as ``ValueError`` / ``TypeError``
and are re-raised as these, message unchanged). Names of backends and activations keep
raising a plain ``ValueError``, and a backend that cannot run the inputs a plain
``RuntimeError``.
"""

from __future__ import annotations

__all__ = ["InputTypeError", "InputValueError", "from_native"]


class InputValueError(ValueError, RuntimeError):
    """A tensor's shape or an argument's value that the op cannot take (torch raises
    ``RuntimeError`` for the same input)."""


class InputTypeError(TypeError, RuntimeError):
    """A tensor's dtype or an argument's type that the op cannot take (torch raises
    ``RuntimeError`` for the same input)."""


def from_native(exc: Exception) -> Exception:
    """The fusedops error for ``exc``, a ``ValueError`` or ``TypeError`` raised by a compiled op
    (a failed ``TORCH_CHECK_VALUE`` / ``TORCH_CHECK_TYPE``): same message, also a ``RuntimeError``."""
    if isinstance(exc, RuntimeError):
        return exc
    cls = InputValueError if isinstance(exc, ValueError) else InputTypeError
    return cls(*exc.args)
