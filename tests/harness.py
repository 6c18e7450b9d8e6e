"""What the test run may execute on this machine: the decisions tests/conftest.py applies.

A pure function of the machine (whether a CUDA device is present) and the environment, so
that a test can make the decisions of a CUDA machine on a CPU-only one:

- Without a CUDA device, Triton kernels run on CPU tensors under Triton's interpreter
  (``TRITON_INTERPRET=1``, set before triton is imported) and gpu-marked tests are skipped.
- With a CUDA device, Triton compiles for the GPU and cannot run CPU tensors: the tests that
  run Triton kernels on CPU tensors are skipped with that reason, unless the run sets
  ``TRITON_INTERPRET=1`` itself (``TRITON_INTERPRET=1 pytest -m "not gpu"``); then the
  gpu-marked Triton tests are skipped instead, since their kernels would be interpreted,
  not compiled for the GPU.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Optional

INTERPRET_VAR = "TRITON_INTERPRET"


@dataclasses.dataclass(frozen=True)
class Decisions:
    """The run's decisions; each ``*_skip`` is the skip reason, or None when the tests run."""

    set_interpret: bool  # set TRITON_INTERPRET=1 before triton is imported
    interpreting: bool  # Triton kernels run in the interpreter during this run
    triton_cpu_skip: Optional[str]  # tests that run Triton kernels on CPU tensors
    gpu_skip: Optional[str]  # every gpu-marked test
    gpu_triton_skip: Optional[str]  # gpu-marked tests of the triton backend


def decide(cuda_available: bool, env: Mapping[str, str]) -> Decisions:
    """The decisions for a machine with or without a CUDA device and environment ``env``."""
    preset = env.get(INTERPRET_VAR)
    set_interpret = not cuda_available and preset is None
    interpreting = set_interpret or preset == "1"
    triton_cpu_skip = None
    if not interpreting:
        triton_cpu_skip = (
            f"Triton runs CPU tensors only under {INTERPRET_VAR}=1, and this run compiles Triton for the "
            f"CUDA device (its gpu-marked tests); `{INTERPRET_VAR}=1 pytest -m 'not gpu'` runs this test "
            "under the interpreter"
        )
    gpu_skip = None if cuda_available else "no CUDA device: gpu-marked test runs on a GPU machine"
    gpu_triton_skip = None
    if cuda_available and interpreting:
        gpu_triton_skip = (
            f"{INTERPRET_VAR}=1: Triton kernels would run in the interpreter, not compiled for the GPU; "
            f"run the gpu-marked tests without {INTERPRET_VAR}"
        )
    return Decisions(set_interpret, interpreting, triton_cpu_skip, gpu_skip, gpu_triton_skip)


def uses_triton(item) -> bool:
    """Whether a collected test runs the triton backend: a parameter whose value is
    ``"triton"``, or the ``triton_cpu`` marker."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    return any(isinstance(v, str) and v == "triton" for v in params.values()) or (
        item.get_closest_marker("triton_cpu") is not None
    )


def skip_reason(item, decisions: Decisions) -> Optional[str]:
    """Why a collected test must be skipped under ``decisions`` (None: it runs)."""
    if item.get_closest_marker("gpu") is not None:
        if decisions.gpu_skip:
            return decisions.gpu_skip
        if decisions.gpu_triton_skip and uses_triton(item):
            return decisions.gpu_triton_skip
        return None
    if decisions.triton_cpu_skip and uses_triton(item):
        return decisions.triton_cpu_skip
    return None
