"""pytest-benchmark suites: `pytest benchmarks/ --benchmark-only` (not part of `make test`)."""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BATCH = int(os.environ.get("FUSEDOPS_BENCH_BATCH", 256 if DEVICE == "cuda" else 64))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
