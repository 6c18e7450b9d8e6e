"""Test configuration: Triton's interpreter without a GPU, the gpu and triton_cpu markers
(decided by tests/harness.py), the backend fixture."""

import os
import sys

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


def pytest_collection_finish(session):
    """On a GPU, compile the selected gpu tests' Triton kernels in parallel first
    (tests/triton_prewarm.py): a thousand compiles, one at a time in the tests, would take
    most of a run."""
    if session.config.option.collectonly or not torch.cuda.is_available() or DECISIONS.interpreting:
        return
    from tests import triton_prewarm

    if triton_prewarm.enabled_reason():
        return
    job_list = triton_prewarm.jobs_of_items(session.items)
    if len(job_list) < triton_prewarm.MIN_JOBS:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    say = reporter.write_line if reporter is not None else print
    try:
        major, minor = torch.cuda.get_device_capability()
        line = triton_prewarm.prewarm(job_list, max(1, (os.cpu_count() or 2) - 1), 10 * major + minor, say)
    except Exception as exc:  # only time is lost: the tests compile what they launch
        line = f"triton prewarm failed ({type(exc).__name__}: {exc}); the tests compile their kernels themselves"
    say(line)


@pytest.fixture(autouse=True)
def _seed_and_env(monkeypatch):
    """Fresh, reproducible random inputs per test; no FUSEDOPS_BACKEND leaking in, and no
    backend choice or Triton launch plan cached under a registry, limit or kernel another
    test patched."""
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    backends.clear_choice_cache()
    _clear_triton_plans()
    torch.manual_seed(0)
    yield
    backends.clear_choice_cache()
    _clear_triton_plans()


def _clear_triton_plans():
    """No Triton launch plan cached under limits or kernels another test patched."""
    launch = sys.modules.get("fusedops.triton._launch")
    if launch is not None:
        launch.clear_plans()


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
