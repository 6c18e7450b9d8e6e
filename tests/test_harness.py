"""What the test run may execute on this machine (tests/harness.py), and the proof that the
CPU suite's Triton tests cannot fail for harness reasons on a CUDA machine: they run under a
simulated one (tests/simulated_cuda_machine.py) and must all be skipped with the reason."""

import os
import subprocess
import sys
import types
import xml.etree.ElementTree as ET
from pathlib import Path

from tests import harness

ROOT = Path(__file__).resolve().parents[1]


def test_no_cuda_device_interprets_triton_and_skips_gpu_tests():
    d = harness.decide(False, {})
    assert d.set_interpret and d.interpreting
    assert d.triton_cpu_skip is None and d.gpu_triton_skip is None
    assert "no CUDA device" in d.gpu_skip


def test_no_cuda_device_with_the_interpreter_off_skips_the_triton_cpu_tests():
    d = harness.decide(False, {"TRITON_INTERPRET": "0"})
    assert not d.set_interpret and not d.interpreting
    assert "TRITON_INTERPRET=1" in d.triton_cpu_skip and d.gpu_skip


def test_cuda_machine_compiles_triton_and_skips_its_cpu_tensor_tests():
    d = harness.decide(True, {})
    assert not d.set_interpret and not d.interpreting
    assert d.gpu_skip is None and d.gpu_triton_skip is None
    assert "TRITON_INTERPRET=1" in d.triton_cpu_skip


def test_cuda_machine_with_the_interpreter_runs_the_triton_cpu_tests_not_the_gpu_ones():
    d = harness.decide(True, {"TRITON_INTERPRET": "1"})
    assert not d.set_interpret and d.interpreting
    assert d.triton_cpu_skip is None and d.gpu_skip is None
    assert "interpreter" in d.gpu_triton_skip


def _item(params=None, markers=()):
    return types.SimpleNamespace(callspec=types.SimpleNamespace(params=params or {}),
                                 get_closest_marker=lambda name: object() if name in markers else None)


def test_skip_reasons_follow_the_decisions():
    cuda = harness.decide(True, {})
    cpu = harness.decide(False, {})
    interpreting_cuda = harness.decide(True, {"TRITON_INTERPRET": "1"})
    triton_cpu = _item({"backend": "triton"})
    marked = _item(markers=("triton_cpu",))
    other = _item({"backend": "cpp"})
    gpu_triton = _item({"backend": "triton"}, markers=("gpu",))
    gpu_cuda = _item({"gpu_backend": "cuda"}, markers=("gpu",))
    assert harness.skip_reason(triton_cpu, cuda) == cuda.triton_cpu_skip
    assert harness.skip_reason(marked, cuda) == cuda.triton_cpu_skip
    assert harness.skip_reason(other, cuda) is None
    assert harness.skip_reason(gpu_triton, cuda) is None and harness.skip_reason(gpu_cuda, cuda) is None
    assert harness.skip_reason(triton_cpu, cpu) is None and harness.skip_reason(gpu_cuda, cpu) == cpu.gpu_skip
    assert harness.skip_reason(gpu_triton, interpreting_cuda) == interpreting_cuda.gpu_triton_skip
    assert harness.skip_reason(gpu_cuda, interpreting_cuda) is None
    assert harness.skip_reason(triton_cpu, interpreting_cuda) is None


def _run_simulated(tmp_path):
    """The CPU suite's Triton tests and tests/harness_canary.py on a simulated CUDA machine:
    ``{test id: (outcome, message)}``."""
    report = tmp_path / "junit.xml"
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "FUSEDOPS_BACKEND")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    # --keep-duplicates: the canary lies in tests/, which pytest would otherwise take as already given.
    cmd = [sys.executable, "-m", "pytest", "-p", "tests.simulated_cuda_machine", "-m", "not gpu", "-q",
           "-p", "no:cacheprovider", "--keep-duplicates", f"--junitxml={report}", "tests", "tests/harness_canary.py"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert report.exists(), f"no report: {proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    outcomes = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            found = case.find(tag)
            if found is not None:
                outcome, message = tag, found.get("message", "")
                break
        outcomes[name] = (outcome, message)
    return outcomes, proc


def test_triton_cpu_tests_are_skipped_not_failed_on_a_cuda_machine(tmp_path):
    outcomes, proc = _run_simulated(tmp_path)
    reason = harness.decide(True, {}).triton_cpu_skip
    canary = {k: v for k, v in outcomes.items() if "harness_canary" in k}
    suite = {k: v for k, v in outcomes.items() if k not in canary}
    # The simulation can fail: an unmarked Triton test on CPU tensors fails there as on a GPU machine.
    assert canary["tests.harness_canary::test_unmarked_triton_test_on_cpu_tensors"][0] == "failure", canary
    assert "TRITON_INTERPRET=1" in canary["tests.harness_canary::test_unmarked_triton_test_on_cpu_tensors"][1]
    assert canary["tests.harness_canary::test_marked_triton_test_on_cpu_tensors"] == ("skipped", reason)
    # The suite's own: every one skipped with the harness's reason, none failed.
    assert len(suite) >= 100, f"only {len(suite)} Triton CPU tests collected:\n{proc.stdout[-3000:]}"
    wrong = {k: v for k, v in suite.items() if v != ("skipped", reason)}
    assert wrong == {}, f"{len(wrong)} tests not skipped with the harness's reason"
