"""pytest plugin (``-p tests.simulated_cuda_machine``): the process reports one CUDA device.

Loaded before tests/conftest.py, so that conftest makes the decisions of a CUDA machine
(tests/harness.py) on a CPU-only one; tests/test_harness.py runs the CPU suite's Triton tests
this way to prove that none of them fails for a harness reason on a GPU machine.

Only the decisions are simulated, so only the tests they concern are kept: the collected
tests that run the triton backend (``harness.uses_triton``) and those of
tests/harness_canary.py; the rest are deselected (they could take a CUDA path that does not
exist here). Run it with ``-m "not gpu"``: gpu-marked tests need the real device.
"""

import pytest
import torch

from tests import harness

torch.cuda.is_available = lambda: True
torch.cuda.device_count = lambda: 1


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    keep = [item for item in items if harness.uses_triton(item) or item.module.__name__.endswith("harness_canary")]
    drop = [item for item in items if item not in keep]
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
