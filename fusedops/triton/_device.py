"""``@triton.jit`` helpers the kernels share."""

import triton
import triton.language as tl


@triton.jit
def matmul_tile(a, b, PRECISION: tl.constexpr, FMA: tl.constexpr):
    """``a (M, K) @ b (K, N)`` of two register tiles: ``tl.dot`` (tensor cores, ``PRECISION``
    "ieee" or "tf32"), or with ``FMA`` a broadcast multiply and sum over K on the FMA units
    (see ``_launch.use_fma``)."""
    if FMA:
        return tl.sum(a[:, :, None] * b[None, :, :], axis=1)
    else:
        return tl.dot(a, b, input_precision=PRECISION)
