"""Fail unless ``fusedops._C`` is loaded with a CUDA kernel for every native op.

Run by ``tools/cuda_build_check.sh`` with the CUDA build of torch it built against; needs no
GPU (it reads the dispatcher's registrations, it launches nothing).
"""

from __future__ import annotations

import argparse
import os
import sys


def native_ops(torch) -> list:
    """Every ``fusedops::native_*`` op the extension registered (its schemas)."""
    return sorted(name for name in torch._C._dispatch_get_all_op_names() if name.startswith("fusedops::native_"))


def one_call_op(torch, op: str) -> bool:
    """Whether ``op`` is one of the one-call ops (``native_conv_block``, ``native_linear``):
    device-generic kernels (autograd in C++, the forward through the kernel ops) rather than a
    CPU and a CUDA kernel of their own."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(op, "CompositeExplicitAutograd")


def missing_kernels(torch, ops, keys=("CPU", "CUDA")) -> list:
    """``"op (KEY)"`` for each op in ``ops`` without a kernel for a dispatch key in ``keys`` (for
    a one-call op: without its Autograd kernel)."""
    return [f"{op} ({key})" for op in ops for key in (("Autograd",) if one_call_op(torch, op) else keys)
            if not torch._C._dispatch_has_kernel_for_dispatch_key(op, key)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--expect-package", help="the fusedops package directory that must be the one imported")
    args = parser.parse_args(argv)

    import torch

    import fusedops
    from fusedops import _native

    where = os.path.dirname(os.path.abspath(fusedops.__file__))
    if args.expect_package and where != os.path.abspath(args.expect_package):
        print(f"check_cuda_kernels: imported fusedops from {where}, expected {args.expect_package}", file=sys.stderr)
        return 1
    if not _native.loaded():
        print(f"check_cuda_kernels: FAILED: {_native.LOAD_ERROR}", file=sys.stderr)
        return 1
    if not _native.WITH_CUDA:
        print("check_cuda_kernels: FAILED: fusedops._C was built without its CUDA kernels", file=sys.stderr)
        return 1
    ops = native_ops(torch)
    if not ops:
        print("check_cuda_kernels: FAILED: fusedops._C registered no fusedops::native_* op", file=sys.stderr)
        return 1
    missing = missing_kernels(torch, ops)
    if missing:
        print(f"check_cuda_kernels: FAILED: no kernel for {', '.join(missing)}", file=sys.stderr)
        return 1
    print(f"check_cuda_kernels: fusedops._C ({_native._C.__file__}) loaded under torch {torch.__version__} "
          f"(CUDA {torch.version.cuda}); kernels registered (CPU and CUDA; Autograd for the one-call ops) for "
          f"{len(ops)} ops: "
          + ", ".join(op.split("::")[1] for op in ops))
    return 0


if __name__ == "__main__":
    sys.exit(main())
