"""Test configuration: Triton's interpreter without a GPU, the gpu and triton_cpu markers
(decided by tests/harness.py), the backend fixture."""

import os

import pytest
import torch

from tests import harness

DECISIONS = harness.decide(torch.cuda.is_available(), os.environ)
if DECISIONS.set_interpret:
    # Must be set before triton is imported: runs Triton kernels on CPU tensors.
    os.environ[harness.INTERPRET_VAR] = "1"

import fusedops  # noqa: E402
from fusedops import backends  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """Skip, with the reason, what this machine cannot run (see tests/harness.py)."""
    for item in items:
        reason = harness.skip_reason(item, DECISIONS)
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(autouse=True)
def _seed_and_env(monkeypatch):
    """Fresh, reproducible random inputs per test; no FUSEDOPS_BACKEND leaking in, and no
    backend choice cached under a registry another test patched."""
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    backends.clear_choice_cache()
    torch.manual_seed(0)
    yield
    backends.clear_choice_cache()


def cpu_backend_params():
    """Every registered backend that may run CPU tensors, skipped with its reason if it can't."""
    params = []
    for name in backends.known_backends():
        b = backends._REGISTRY[name]
        if "cpu" not in b.devices:
            continue
        reason = b.unavailable_reason()
        if reason:
            reason = f"backend unavailable here: {reason}"
        elif name == "triton":
            reason = DECISIONS.triton_cpu_skip
        marks = [pytest.mark.skip(reason=reason)] if reason else []
        params.append(pytest.param(name, id=name, marks=marks))
    return params


@pytest.fixture(params=cpu_backend_params())
def backend(request):
    """Name of a backend that runs CPU tensors on this machine."""
    assert request.param in fusedops.available_backends()
    return request.param


def require_gpu_backend(name):
    """Fail (a GPU machine must run both GPU backends) unless backend ``name`` can run CUDA tensors."""
    reason = backends._REGISTRY[name].unavailable_reason()
    if reason is not None:
        pytest.fail(f"a GPU machine must build and run the {name} backend: {reason}")


def skip_unless_backend_has(name, op):
    """Skip (saying why) when backend ``name`` has no kernels for ``op``."""
    if op not in backends._REGISTRY[name].ops:
        pytest.skip(f"backend {name!r} has no {op} kernels yet (it implements {list(backends._REGISTRY[name].ops)})")


def skip_unless_backend_runs(name, *tensors):
    """Skip (saying why) when backend ``name`` reports it cannot run these tensors."""
    reasons = backends._REGISTRY[name].unsupported_reasons(list(tensors))
    if reasons:
        pytest.skip(f"backend {name!r} cannot run this case: {'; '.join(reasons)}")


def skip_if_interpreted_bfloat16(backend, dtype):
    """Triton's CPU interpreter truncates float32 -> bfloat16 conversions (GPU kernels round to
    nearest even; measured: half of the values differ by one ulp), so bf16 error bounds of the
    triton backend are checked by the gpu-marked tests, not here."""
    if backend == "triton" and dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("Triton's CPU interpreter truncates float32->bfloat16; bf16 accuracy is checked on the GPU")
