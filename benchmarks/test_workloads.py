"""pytest-benchmark suites for the workloads of benchmarks/run.py.

    pytest benchmarks/ --benchmark-only                       # time everything on the best device
    pytest benchmarks/ --benchmark-only --benchmark-autosave  # keep a baseline
    pytest benchmarks/ --benchmark-only --benchmark-compare   # compare with the last baseline

Each case checks the provider's output against eager before timing it.
"""

import pytest
import torch

from benchmarks import providers, workloads
from benchmarks.conftest import BATCH, DEVICE
from benchmarks.run import TOLERANCE

POOL = workloads.ALL if DEVICE == "cuda" else workloads.CPU_DEFAULT
PROVIDER_NAMES = ["eager", "eager-channels_last", "compile"] + [
    f"fusedops-{b}" for b in providers.fusedops_backends_for(DEVICE)
]
CASES = [
    pytest.param(w, mode, name, id=f"{w.layer}-{mode}-{name}")
    for w in POOL
    for mode in w.modes
    for name in PROVIDER_NAMES
    if not (name == "eager-channels_last" and w.op == "linear")
]


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("workload,mode,name", CASES)
def test_workload(benchmark, workload, mode, name):
    provs = {p.name: p for p in providers.make_providers(workload, DEVICE, torch.float32, None)}
    inputs = providers.make_inputs(workload, BATCH, DEVICE, torch.float32, 1, mode)
    with torch.no_grad():
        expected = providers.make_step(provs["eager"], workload, inputs, "fwd")(0)
        got = providers.make_step(provs[name], workload, inputs, "fwd")(0)
    torch.testing.assert_close(got, expected, atol=TOLERANCE[torch.float32] * max(1.0, expected.abs().max().item()),
                               rtol=TOLERANCE[torch.float32])
    step = providers.make_step(provs[name], workload, inputs, mode)
    step(0)  # warm-up (and compile)

    def run():
        step(0)
        _sync()

    benchmark.pedantic(run, rounds=5, warmup_rounds=1)
