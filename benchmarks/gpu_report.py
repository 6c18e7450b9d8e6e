"""make gpu-report: one command that turns a GPU machine into results a person reads in a minute.

    make gpu-report                       # every stage, in order
    make gpu-report STAGE=test            # one stage: build | test | sanitize | bench
    make gpu-report BUDGET=540            # every stage, all of them within 540 seconds
    make gpu-report RESUME=1              # what the last report in the directory left undone
    make gpu-report DRY_RUN=1             # check every stage's commands and files; run nothing
    python -m benchmarks.gpu_report [--stage STAGE] [--budget S] [--resume] [--dry-run] [--out DIR]

Written for the GPU machines: no package registry (nothing is downloaded), torch 2.11 with
CUDA 13, Triton 3.6, nvcc 13, ninja, compute-sanitizer, 16 cores, one H100 or H200. Each
stage stops itself after ``FUSEDOPS_STAGE_SECONDS`` (default 420: under 8 minutes) and keeps
what it finished; each can run alone, and the summary keeps the other stages' last results.

Where GPU time comes in short pieces: ``--budget`` (``BUDGET``, ``FUSEDOPS_REPORT_SECONDS``)
bounds the whole report, each stage taking what is left once the later stages' reserves
(``RESERVE_SECONDS``) are set aside (the build at least ``FLOOR_SECONDS``), so that one
command runs the build, the tests, compute-sanitizer and as many benchmark runs as fit, most
wanted first. ``--resume`` then runs only what the report in ``--out`` left undone: the stages
that did not pass (the build only if ``fusedops._C`` does not load with CUDA kernels) and the
benchmark runs and tables missing from it, adding their rows to its ``bench.json`` and their
output to its logs.

- build: ``pip install --no-build-isolation --no-deps -e .`` with ``FUSEDOPS_CUDA_ARCHS`` set
  to this GPU's architecture only; then checks that ``fusedops._C`` loads with CUDA kernels.
- test: the smoke tests first (``SMOKE_TESTS``, in one process, so their results survive a
  stage cut short), then ``pytest -m gpu`` (both GPU backends; Triton kernels compiled in parallel first,
  tests/triton_prewarm.py): with pytest-xdist, in ``xdist_workers`` processes; without it one
  process per test file, so that a kernel fault, which leaves the CUDA context unusable, costs
  one file; one JUnit XML. Without a CUDA device: the CPU suite without the Triton interpreter
  tests (``-m "not gpu"``, ``TRITON_INTERPRET=0``) instead (on a GPU machine that is ``make
  test``'s job, not worth its minutes).
- sanitize: compute-sanitizer memcheck, racecheck, initcheck and synccheck over the
  ``sanitize``-marked tests (tests/test_gpu_sanitize.py: small shapes, both backends, the
  reference on the CPU), with torch's caching allocator off; a one-line verdict per tool that
  counts the errors in fusedops' kernels apart from any elsewhere.
- bench: ``benchmarks/run.py`` on CUDA with every provider but max-autotune and the reference
  (eager NCHW, eager channels_last + cudnn.benchmark, torch.compile, CUDA-graph replays, the
  Triton and CUDA backends and their variants), one layer per run so that a run cut short by
  the time limit loses one layer, not the table, most wanted first (``BENCH_RUNS``): the VGG
  block (batch 64) and the conv blocks of the tutorials (batch 256) in bfloat16, then in float32,
  then the MLP and a whole tutorial CNN's training step, then (bfloat16) a 4096 x 4096 linear
  layer and the 32->64 layers without a pool; then the host time per call on CUDA
  (``benchmarks/host_overhead.py``), where each backend's training step spends GPU time
  (``benchmarks/kernel_profile.py``), the Triton conv-block kernels under candidate block
  configs (``benchmarks/triton_tiles.py``), and with the time left torch.compile
  max-autotune-no-cudagraphs on the bf16 tutorial layers (minutes of compiling per layer).

Everything goes to ``$FUSEDOPS_REPORT_DIR`` (default ``benchmarks/results/<gpu>/``; a dry
run defaults to a temporary directory): ``summary.md``, ``build.log``, ``test.log``,
``junit.xml``, ``sanitize.log``, ``bench.log``, ``bench.json``, ``bench.png``.

Without a CUDA device each stage does its CPU part (build: the C++ kernels; test: the CPU
suite) or says why it skipped. ``--dry-run`` goes through every stage's commands and files
without running them: it prints the commands, checks what they name exists (the pytest
selections collect tests, every benchmark run selects a layer), and builds the summary from
built-in sample outputs, so that the parsing and the report are exercised too.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("build", "test", "sanitize", "bench")
FILES = ("summary.md", "build.log", "test.log", "junit.xml", "sanitize.log", "bench.log", "bench.json", "bench.png")
SANITIZER_TOOLS = ("memcheck", "racecheck", "initcheck", "synccheck")
PRECISIONS = ("fp32", "tf32", "bf16", "fp16", "fp64")
BACKENDS = ("triton", "cuda", "cpp", "reference")
DTYPE_LABELS = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "float64": "fp64"}
# Kernels of fusedops (Triton and CUDA): a sanitizer finding in one of them is ours.
OUR_KERNELS = ("fusedops", "conv_block_fwd_kernel", "conv_block_dx_kernel", "conv_block_dw_kernel",
               "conv_block_dw_runs_kernel",
               "conv_block_jvp_kernel", "linear_fwd_kernel", "linear_dx_kernel", "linear_dw_kernel",
               "conv_pool_direct_kernel", "conv_pool_patch_kernel", "conv_pool_gemm_kernel", "conv_pool_runs_kernel",
               "unpool_kernel", "unpool_runs_kernel", "conv_weight_grad_direct_kernel",
               "conv_grads_kernel", "conv_grads_runs_kernel", "linear_forward_runs_kernel",
               "sum_grad_partials_kernel", "sum_partials_kernel", "jvp_kernel",
               "linear_forward_kernel", "activation_grad_kernel", "linear_input_grad_kernel",
               "linear_weight_grad_kernel", "linear_input_grad_runs_kernel", "linear_weight_grad_runs_kernel",
               "column_sum_kernel")
BENCH_BATCH = 256  # the tutorial layers' batch; the VGG block's is VGG_BATCH
VGG_BATCH = 64


@dataclass(frozen=True)
class BenchRun:
    """One ``benchmarks/run.py`` run: one layer (its full name; a part of names selects every
    layer that has it), one dtype; ``seconds``: about how long it takes (its results are
    written at its end: a run cut short has none, so a run starts only where that much time is
    left)."""

    dtype: str
    op: str
    layer: str
    batch: int = BENCH_BATCH
    seconds: int = 60

    @property
    def label(self) -> str:
        return f"{self.layer} {self.dtype} b{self.batch}"


# The benchmark runs, most wanted first: the conv blocks (the speed targets) in bfloat16, then in
# float32 (TF32 by default: what most users train in), then the linear layers and a whole model.
# The compute-bound VGG block (batch 64) first: the GEMM engines' speed shows there, while the
# tutorial layers (batch 256) are launch-bound; their 32->64 layers (the GEMM engines again)
# before the first layers (direct kernels, timed on a GPU before). Each layer by its full name,
# so that a run times that layer alone: the 32->64 layers' no-pool variants (a seventh H200
# run's "cifar conv2" run timed both, twice the time) come last, with the large linear layer.
_CONV_BLOCKS = (("vgg block 64->128 112x112", VGG_BATCH, 120), ("cifar conv2 32->64 16x16", BENCH_BATCH, 45),
                ("mnist conv2 32->64 14x14", BENCH_BATCH, 45), ("mnist conv1 1->32 28x28", BENCH_BATCH, 45),
                ("cifar conv1 3->32 32x32", BENCH_BATCH, 45))
BENCH_RUNS = tuple(
    [BenchRun(dtype, "conv_block", layer, batch, seconds) for dtype in ("bfloat16", "float32")
     for layer, batch, seconds in _CONV_BLOCKS]
    + [BenchRun(dtype, op, layer, seconds=seconds)
       for op, layer, seconds in (("linear", "mlp 784-512-512-10 relu", 60),
                                  ("train_step", "cifar tutorial CNN (blitz LeNet)", 90))
       for dtype in ("bfloat16", "float32")]
    + [BenchRun("bfloat16", "linear", "4096x4096 gelu", seconds=60),
       BenchRun("bfloat16", "conv_block", "no-pool", seconds=90)])  # two layers


clock = time.monotonic  # the stages' time (a test runs them on a simulated one)


def stage_seconds() -> float:
    return float(os.environ.get("FUSEDOPS_STAGE_SECONDS", "420"))


# What a report with a budget keeps back for each later stage while an earlier one runs: about
# what its essential part took on an H200 (the gpu tests ~130 s after a ~60 s prewarm, the four
# sanitizer tools ~50 s, the first benchmark runs).
RESERVE_SECONDS = {"build": 0, "test": 200, "sanitize": 60, "bench": 90}
# What a stage is given of the budget whatever the later stages' reserves: the build, without
# which no cuda test, sanitizer run or benchmark means anything. A bare H200 machine built in
# 49-72 s before the kernels grew; the 123 s a 480 s budget then left the build (what remained
# less the later reserves) stopped one after 98 s with its two largest files still compiling.
# What the build does not use is left to the later stages.
FLOOR_SECONDS = {"build": 240.0}


def stage_limit(stage: str, later: Sequence[str], left: Optional[float]) -> float:
    """Seconds ``stage`` may run: ``FUSEDOPS_STAGE_SECONDS``, and where ``left`` seconds of the
    report's budget remain, what is left once the reserves of the ``later`` stages are set
    aside, but at least a fifth of it (no stage is given nothing) and at least the stage's
    floor (``FLOOR_SECONDS``) where that much is left."""
    limit = stage_seconds()
    if left is None:
        return limit
    share = max(left / 5, left - sum(RESERVE_SECONDS[s] for s in later), FLOOR_SECONDS.get(stage, 0.0))
    return max(0.0, min(limit, left, share))


# --- running commands ----------------------------------------------------------------------------


@dataclass
class Result:
    """How a command ended: exit code, seconds, whether the time limit stopped it."""

    rc: int
    seconds: float
    timed_out: bool = False
    dry: bool = False


# How long stopping a command past its limit may take (_stop: SIGINT, then SIGKILL); a command
# is stopped that long before its limit, so that it ends within it.
STOP_SECONDS = 25


class Runner:
    """Runs commands with their output appended to a log, each ended within its time limit
    (stopped ``STOP_SECONDS`` before it); in a dry run only logs them."""

    def __init__(self, dry_run: bool, echo=print):
        self.dry_run, self.echo = dry_run, echo

    def run(self, cmd: Sequence[str], log: Path, timeout: float, env: Optional[Dict[str, str]] = None,
            cwd: Path = ROOT) -> Result:
        line = " ".join(_quote(c) for c in cmd)
        self.echo(f"$ {line}")
        with open(log, "a") as f:
            f.write(f"\n$ {line}\n")
        if self.dry_run:
            return Result(0, 0.0, dry=True)
        start = clock()
        with open(log, "a") as f:
            proc = subprocess.Popen(list(cmd), cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            timed_out = False
            try:
                proc.wait(timeout=max(1.0, timeout - STOP_SECONDS))
            except subprocess.TimeoutExpired:
                timed_out = True
                _stop(proc)
            f.write(f"\n[exit {proc.returncode} after {clock() - start:.0f} s"
                    f"{', stopped by the time limit' if timed_out else ''}]\n")
        return Result(proc.returncode, clock() - start, timed_out)


def _stop(proc: subprocess.Popen) -> None:
    """SIGINT first (pytest then still writes its report), SIGKILL if it does not end: at most
    STOP_SECONDS."""
    for sig, wait in ((signal.SIGINT, STOP_SECONDS - 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def trim_log(path: Path, max_bytes: int = 256 * 1024, head: int = 200) -> None:
    """Keep a log small enough to copy back whole: its first ``head`` lines and as much of
    its end as fits in ``max_bytes``."""
    if not path.exists() or path.stat().st_size <= max_bytes:
        return
    lines = path.read_text(errors="replace").splitlines()
    top, tail, size = lines[:head], [], sum(len(ln) + 1 for ln in lines[:head])
    for line in reversed(lines[head:]):
        if size + len(line) + 1 > max_bytes - 200:
            break
        tail.append(line)
        size += len(line) + 1
    cut = len(lines) - head - len(tail)
    path.write_text("\n".join(top + [f"[... {cut} lines cut to keep the log under {max_bytes // 1024} KB ...]"]
                              + tail[::-1]) + "\n")


def _quote(arg: str) -> str:
    return arg if re.fullmatch(r"[\w@%+=:,./-]+", arg) else "'" + arg.replace("'", "'\\''") + "'"


def _env(**changes) -> Dict[str, str]:
    """This environment with ``changes`` (None removes a variable), the tree first on PYTHONPATH."""
    env = dict(os.environ)
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def _output(cmd: Sequence[str]) -> str:
    try:
        return subprocess.run(list(cmd), capture_output=True, text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


# --- the machine ----------------------------------------------------------------------------------


@dataclass
class Machine:
    cuda: bool
    gpu: str
    arch: str
    torch: str
    triton: str
    nvcc: str
    driver: str
    cpus: int
    commit: str

    @staticmethod
    def probe() -> Machine:
        import torch

        cuda = torch.cuda.is_available()
        gpu, arch = "no CUDA device", ""
        if cuda:
            gpu = torch.cuda.get_device_name(0)
            major, minor = torch.cuda.get_device_capability(0)
            arch = f"{major}{minor}"
        try:
            import triton

            triton_version = triton.__version__
        except ImportError:
            triton_version = "not installed"
        nvcc = re.findall(r"release ([\d.]+)", _output(["nvcc", "--version"]))
        driver = _output(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]).splitlines()
        commit = _output(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]) or "unknown"
        if _output(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"]):
            commit += " (with uncommitted changes)"
        return Machine(cuda, gpu, arch, torch.__version__, triton_version, f"nvcc {nvcc[0]}" if nvcc else "no nvcc",
                       driver[0] if driver else "-", os.cpu_count() or 1, commit)

    def slug(self) -> str:
        from benchmarks.run import device_slug

        return device_slug("cuda" if self.cuda else "cpu")


def compute_sanitizer() -> Optional[str]:
    """Path of compute-sanitizer: on PATH, else in $CUDA_HOME/bin or /usr/local/cuda/bin."""
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "compute-sanitizer").exists():
            return str(Path(home) / "bin" / "compute-sanitizer")
    return None


# --- report state ---------------------------------------------------------------------------------


@dataclass
class Report:
    """The stages' results, kept inside summary.md (an HTML comment) so that a stage run alone
    adds to the others' last results."""

    out: Path
    machine: Machine
    dry_run: bool
    stages: Dict[str, dict] = field(default_factory=dict)
    limit: float = 0.0  # seconds the stage now running may take
    resume: bool = False  # add to the stage's last results instead of starting over (bench)

    STATE = re.compile(r"<!-- gpu-report-state (.*?) -->", re.S)
    gpu: Optional[str] = None  # the GPU of the loaded report's results

    def load(self) -> None:
        path = self.out / "summary.md"
        if path.exists():
            match = self.STATE.search(path.read_text())
            if match:
                try:
                    state = json.loads(match.group(1))
                    self.stages, self.gpu = state.get("stages", {}), state.get("gpu")
                except json.JSONDecodeError:
                    self.stages = {}

    def save(self) -> Path:
        path = self.out / "summary.md"
        # "--" may not appear in an HTML comment: as a JSON escape it reads back the same.
        state = json.dumps({"stages": self.stages, "gpu": self.machine.gpu},
                           sort_keys=True).replace("--", "-\\u002d")
        path.write_text(render_summary(self) + f"\n<!-- gpu-report-state {state} -->\n")
        return path


# --- stage: build ---------------------------------------------------------------------------------


def stage_build(report: Report, runner: Runner) -> dict:
    m = report.machine
    log = report.out / "build.log"
    cmd = [sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-v", "-e", "."]
    env = _env(MAX_JOBS=str(m.cpus), FUSEDOPS_CUDA_ARCHS=m.arch or None)
    if runner.dry_run:
        missing = [p for p in ("setup.py", "pyproject.toml") if not (ROOT / p).exists()]
        if "FUSEDOPS_CUDA_ARCHS" not in (ROOT / "setup.py").read_text():
            missing.append("setup.py does not read FUSEDOPS_CUDA_ARCHS")
        runner.run(cmd, log, 0, env)
        if missing:
            return dict(status="failed", detail="dry run: " + "; ".join(missing))
        return dict(status="dry-run", detail=f"would build for sm_{m.arch or '90'}")
    result = runner.run(cmd, log, report.limit, env)
    probe = probe_build()
    built = f"fusedops._C: {probe or 'fusedops does not import'}"
    if result.rc != 0:
        return dict(status="timeout" if result.timed_out else "failed", seconds=result.seconds,
                    detail=f"pip exit {result.rc} (build.log); {built}")
    with_cuda = " True " in f" {probe} "
    if m.cuda and not with_cuda:
        return dict(status="failed", seconds=result.seconds, detail=f"built without CUDA kernels: {built}")
    what = f"CUDA kernels for sm_{m.arch}" if m.cuda else "C++ kernels only (no CUDA device here)"
    return dict(status="passed", seconds=result.seconds, detail=f"{what}; {built}")


def probe_build() -> str:
    """``fusedops``' path, whether ``fusedops._C`` has CUDA kernels and why it did not load,
    from a fresh interpreter ("" if fusedops does not import)."""
    return _output([sys.executable, "-c", "import fusedops, fusedops._native as n; "
                    "print(fusedops.__file__, n.WITH_CUDA, n.LOAD_ERROR)"])


def built_with_cuda() -> bool:
    return " True " in f" {probe_build()} "


# --- stage: test ------------------------------------------------------------------------------------


def pytest_cmd(selection: str, junit: Path, paths: Sequence[str] = ("tests",), extra=()) -> List[str]:
    return [sys.executable, "-m", "pytest", *paths, "-m", selection, "-q", "-rfE", "-p", "no:cacheprovider",
            "-o", "junit_family=xunit1", f"--junitxml={junit}", "--durations=5", *extra]


# Run first, in a process of their own, so that their results survive a stage cut short: the
# checks of the code paths newest to a GPU (Triton's direct launches, the reference's offset
# tables, the build's libstdc++ link), gpu-marked or not. The later runs leave them out.
SMOKE_TESTS = ("tests/test_triton_launch.py", "tests/test_reference_offsets.py", "tests/test_build.py")
SKIP_SMOKE = tuple(f"--ignore={path}" for path in SMOKE_TESTS)

# The gpu-marked tests in separate processes, quickest first: a kernel that faults leaves the
# CUDA context unusable for the rest of its process only.
GPU_TEST_RUNS = (
    ("tests/test_gpu_sanitize.py",), ("tests/test_gpu_conv_block.py",), ("tests/test_gpu_linear.py",),
    ("tests/test_gpu_offsets.py",), ("tests/test_gpu_configs.py",), ("tests/test_gpu_determinism.py",),
    ("tests", "--ignore-glob=tests/test_gpu_*.py", *SKIP_SMOKE),
)


def xdist_workers(cpus: int) -> int:
    """Processes for the gpu tests under pytest-xdist: ``FUSEDOPS_XDIST_WORKERS`` if set, else
    ``cpus - 2`` (2 to 12) where pytest-xdist is installed, else 0 (one process per test file).
    On an H200 with 16 cores, 12 processes ran the ~1500 gpu tests in 115 s."""
    if os.environ.get("FUSEDOPS_XDIST_WORKERS"):
        return int(os.environ["FUSEDOPS_XDIST_WORKERS"])
    try:
        import xdist  # noqa: F401
    except ImportError:
        return 0
    return max(2, min(12, cpus - 2))


def stage_test(report: Report, runner: Runner) -> dict:
    m = report.machine
    log, junit = report.out / "test.log", report.out / "junit.xml"
    budget = report.limit
    start = clock()
    tmp = Path(tempfile.mkdtemp(prefix="gpu-report-test-"))
    runs, notes = [], []
    if runner.dry_run:
        notes += _check_selection("gpu", 1000)
        missing = [p for paths in GPU_TEST_RUNS for p in paths if not p.startswith("-") and not (ROOT / p).exists()]
        notes += [f"dry run: {p} does not exist" for p in missing]
    if m.cuda or runner.dry_run:
        path = tmp / "smoke.xml"
        left = budget - (clock() - start)
        # A third of the stage, at most 3 minutes: cold (its kernels are not prewarmed) it ran 72
        # of its tests in the 65 s a quarter gave it on an H200, while the gpu run that follows
        # needed about 190 s of a 350 s stage (prewarm included).
        runs.append(("smoke", path, runner.run(pytest_cmd("gpu or not gpu", path, SMOKE_TESTS), log,
                                                min(left / 3, 180), _env(TRITON_INTERPRET=None))))
    workers = xdist_workers(m.cpus)
    if (m.cuda or runner.dry_run) and workers:
        # The Triton kernels compiled once, in parallel; then every gpu test in `workers`
        # processes (a kernel fault poisons its process's CUDA context: the tests that process
        # runs after it fail too, and say so).
        left = budget - (clock() - start)
        if left >= 60 or runner.dry_run:
            runner.run([sys.executable, "-m", "tests.triton_prewarm", "--jobs", str(m.cpus)], log, min(left / 3, 180),
                       _env(TRITON_INTERPRET=None))
        path = tmp / "gpu0.xml"
        cmd = pytest_cmd("gpu", path, ("tests",), ("-n", str(workers), *SKIP_SMOKE))
        left = budget - (clock() - start)
        if left >= 30 or runner.dry_run:
            runs.append(("gpu", path, runner.run(cmd, log, left, _env(TRITON_INTERPRET=None,
                                                                       FUSEDOPS_TRITON_PREWARM="0"))))
        else:
            notes.append(f"gpu tests not run ({budget:.0f} s stage limit)")
    elif m.cuda or runner.dry_run:
        for i, paths in enumerate(GPU_TEST_RUNS):
            left = budget - (clock() - start)
            if left < 20 and not runner.dry_run:
                notes.append(f"gpu tests not run ({budget:.0f} s stage limit): " + ", ".join(
                    " ".join(p) for p in GPU_TEST_RUNS[i:]))
                break
            path = tmp / f"gpu{i}.xml"
            cmd = pytest_cmd("gpu", path, paths[:1], paths[1:])
            runs.append(("gpu", path, runner.run(cmd, log, left, _env(TRITON_INTERPRET=None))))
    else:
        notes.append("gpu tests not run: no CUDA device (torch.cuda.is_available() is False)")
    if not m.cuda and not runner.dry_run:
        # This machine's part: the CPU suite without the Triton interpreter tests (make test runs
        # those everywhere). A GPU machine leaves it to make test: its minutes are the GPU's.
        cpu_junit = tmp / "cpu.xml"
        result = runner.run(pytest_cmd("not gpu", cpu_junit, ("tests",), SKIP_SMOKE), log,
                            budget - (clock() - start), _env(TRITON_INTERPRET="0"))
        runs.append(("cpu", cpu_junit, result))
    if runner.dry_run:
        samples = {0: "smoke", 1: "gpu"}  # one sample each; the other runs empty
        for k, (name, path, _) in enumerate(runs):
            path.write_text(SAMPLE_JUNIT[name] if samples.get(k) == name else "<testsuites/>")
    merge_junit([(name, path) for name, path, _ in runs], junit)
    counts = test_counts(junit)
    for name, path, result in runs:
        what = f"{name} run {path.stem}" if name == "gpu" else f"{name} run"
        if result.timed_out:
            notes.append(f"{what} stopped by the {budget:.0f} s stage limit after {result.seconds:.0f} s")
        elif result.rc not in (0, 1, 5) and not result.dry:
            notes.append(f"{what}: pytest exit {result.rc} (test.log)")
    shutil.rmtree(tmp, ignore_errors=True)
    failed = sum(c.get("failed", 0) + c.get("error", 0) for c in counts["table"].values())
    if runner.dry_run:
        status = "dry-run"
    elif failed or any(not r.timed_out and r.rc not in (0, 1, 5) for _, _, r in runs):
        status = "failed"
    else:  # what the time limit cut off is listed in the notes
        status = "partial" if any(r.timed_out for _, _, r in runs) else "passed"
    if runner.dry_run and any(n.startswith("dry run:") for n in notes):
        status = "failed"
    return dict(status=status, seconds=clock() - start, detail=counts["line"], counts=counts, notes=notes)


def _check_selection(marker: str, at_least: int) -> List[str]:
    """A dry run collects what a pytest run would select (a typo selects nothing)."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "tests", "-m", marker, "--collect-only", "-q",
                           "-p", "no:cacheprovider"], cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=600)
    count = sum(1 for ln in proc.stdout.splitlines() if "::" in ln)
    if proc.returncode != 0 or count < at_least:
        tail = " | ".join(proc.stdout.strip().splitlines()[-3:])
        return [f"dry run: pytest -m '{marker}' collects {count} tests (expected >= {at_least}): {tail}"]
    return [f"pytest -m '{marker}' collects {count} tests"]


def merge_junit(parts, out: Path) -> None:
    """One JUnit XML with a ``<testsuite>`` per run, named after it."""
    root = ET.Element("testsuites")
    for name, path in parts:
        if not path.exists():
            continue
        try:
            tree = ET.parse(path).getroot()
        except ET.ParseError:
            continue
        for suite in ([tree] if tree.tag == "testsuite" else list(tree.iter("testsuite"))):
            suite.set("name", name)
            root.append(suite)
    ET.ElementTree(root).write(out, encoding="utf-8", xml_declaration=True)


def classify(classname: str, name: str):
    """``(backend, precision)`` of a test from its id: the parameters in brackets, else the module."""
    params = re.split(r"[-\[\]]", name)
    backend = next((p for p in params if p in BACKENDS), None)
    if backend is None:
        module = classname.rsplit(".", 1)[-1]
        backend = next((b for b in BACKENDS if b in module), "other")
    precision = next((p for p in params if p in PRECISIONS), None)
    if precision is None:
        precision = next((DTYPE_LABELS[p] for p in params if p in DTYPE_LABELS), "-")
    return backend, precision


def test_counts(junit: Path) -> dict:
    """Counts per (run, backend, precision), the failures, and a one-line total."""
    table: Dict[str, Counter] = defaultdict(Counter)
    failures = []
    if junit.exists():
        for suite in ET.parse(junit).getroot().iter("testsuite"):
            run = suite.get("name", "?")
            for case in suite.iter("testcase"):
                backend, precision = classify(case.get("classname", ""), case.get("name", ""))
                outcome = "passed"
                for tag, label in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
                    found = case.find(tag)
                    if found is not None:
                        outcome = label
                        if label in ("failed", "error"):
                            message = (found.get("message") or found.text or "").strip().splitlines()
                            failures.append(f"{case.get('classname')}::{case.get('name')}: "
                                            f"{message[0][:300] if message else label}")
                        break
                table[f"{run}|{backend}|{precision}"][outcome] += 1
    totals: Dict[str, Counter] = defaultdict(Counter)
    for key, c in table.items():
        totals[key.split("|")[0]].update(c)
    line = "; ".join(f"{run}: {c['passed']} passed, {c['failed'] + c['error']} failed, {c['skipped']} skipped"
                     for run, c in sorted(totals.items())) or "no test results"
    return {"table": {k: dict(v) for k, v in table.items()}, "failures": failures, "line": line}


# --- stage: sanitize ------------------------------------------------------------------------------


def stage_sanitize(report: Report, runner: Runner) -> dict:
    m = report.machine
    sanitizer = compute_sanitizer() or ("compute-sanitizer" if runner.dry_run else None)
    if not m.cuda and not runner.dry_run:
        return dict(status="skipped", detail="no CUDA device (torch.cuda.is_available() is False): "
                    "compute-sanitizer checks kernels running on a GPU")
    if sanitizer is None:
        return dict(status="skipped", detail="compute-sanitizer not found (PATH, $CUDA_HOME/bin, /usr/local/cuda/bin)")
    log = report.out / "sanitize.log"
    notes = _check_selection("sanitize", 10) if runner.dry_run else []
    start, budget = clock(), report.limit
    verdicts = {}
    # No caching allocator (each tensor its own allocation: memcheck sees its bounds, initcheck
    # its first write; the tests' poisoning is off); no prewarm (the test stage filled the cache).
    env = _env(PYTORCH_NO_CUDA_MEMORY_CACHING="1", FUSEDOPS_TRITON_PREWARM="0", TRITON_INTERPRET=None)
    for i, tool in enumerate(SANITIZER_TOOLS):
        left = budget - (clock() - start)
        if left < 20 and not runner.dry_run:
            verdicts[tool] = f"{tool}: NOT RUN: the {budget:.0f} s stage limit was reached"
            continue
        cmd = [sanitizer, "--tool", tool, "--print-limit", "20", sys.executable, "-m", "pytest", "tests",
               "-m", "sanitize", "-q", "-p", "no:cacheprovider", "-o", "addopts="]
        mark = log.stat().st_size if log.exists() else 0
        result = runner.run(cmd, log, left / (len(SANITIZER_TOOLS) - i), env)
        text = SAMPLE_SANITIZER[tool] if result.dry else log.read_text(errors="replace")[mark:]
        verdicts[tool] = sanitizer_verdict(tool, text, result)
    bad = [v for v in verdicts.values() if ": PASS" not in v]
    if runner.dry_run:
        status = "dry-run"
    elif any(": FAIL" in v or ": NO VERDICT" in v for v in bad):
        status = "failed"
    else:
        status = "partial" if bad else "passed"  # a tool cut off by the time limit
    if any(n.startswith("dry run:") for n in notes):
        status = "failed"
    return dict(status=status, seconds=clock() - start, verdicts=verdicts, notes=notes,
                detail=f"{len(verdicts) - len(bad)} of {len(SANITIZER_TOOLS)} tools clean")


def sanitizer_verdict(tool: str, text: str, result: Result) -> str:
    """One line: PASS, FAIL, or why there is no verdict. Each finding the sanitizer printed is
    counted in fusedops' kernels, in other kernels (torch's: one reading what a fusedops kernel
    left unwritten lands here under initcheck) or as a CUDA API error (reported, but not a
    kernel's fault: torch and Triton probe the driver); PASS needs none in any kernel and the
    tests passing."""
    summary = re.search(r"ERROR SUMMARY: (\d+) errors?", text)
    race = re.search(r"RACECHECK SUMMARY: (\d+) hazards? displayed \((\d+) errors?, (\d+) warnings?\)", text)
    errors = int(race.group(2)) if race else int(summary.group(1)) if summary else None
    # One block per finding: it starts with its header line ("========= Invalid __global__ read ...").
    header = r"\n(?==+ (?:Invalid|Uninitialized|Error|Race|Barrier|Program hit|Warning|Malformed))"
    ours, other, api = Counter(), 0, 0
    for block in re.split(header, "\n" + text)[1:]:
        body = "\n".join(block.split("\n", 4)[:4])
        kernel = max((k for k in OUR_KERNELS if k in body and k != "fusedops"), key=len, default=None)
        if kernel or "fusedops" in body:
            ours[kernel or "fusedops"] += 1
        elif body.lstrip("= ").startswith("Program hit"):
            api += 1
        elif not body.lstrip("= ").startswith("Warning"):
            other += 1
    tests = re.findall(r"^=* ?((?:\d+ (?:passed|failed|skipped|errors?|deselected)(?:, )?)+) in [\d.]+s", text, re.M)
    outcome = tests[-1] if tests else "no pytest summary"
    api_note = f"; {api} CUDA API errors (sanitize.log)" if api else ""
    if result.timed_out:
        return f"{tool}: TIMEOUT after {result.seconds:.0f} s ({outcome}; {errors or 0} errors so far)"
    if errors is None:
        return f"{tool}: NO VERDICT: no sanitizer summary (exit {result.rc}; {outcome}); see sanitize.log"
    if ours or other:
        where = ", ".join(f"{n} in {k}" for k, n in ours.most_common(4))
        mine = f"fusedops kernels: {where}" if ours else "none in fusedops kernels"
        others = f"; {other} in other kernels" if other else ""
        return f"{tool}: FAIL: {errors} errors; {mine}{others}{api_note} ({outcome})"
    if result.rc != 0 and not result.dry:
        return f"{tool}: FAIL: no kernel errors but the tests failed (exit {result.rc}; {outcome}){api_note}"
    return f"{tool}: PASS: no errors in any kernel ({outcome}, {result.seconds:.0f} s){api_note}"


# --- stage: bench ---------------------------------------------------------------------------------


# max-autotune compiles take minutes per layer, and the reference backend is the oracle, not a
# contender (the CPU benchmarks time it): the main runs leave both out, and one run after the
# host-time and profile tables adds max-autotune for the bf16 tutorial layers, time permitting.
BENCH_PROVIDERS = ("--skip-providers", "compile-max-autotune,fusedops-reference")
AUTOTUNE_RUN = BenchRun("bfloat16", "conv_block,linear", ",".join(
    [layer for layer, batch, _ in _CONV_BLOCKS if batch == BENCH_BATCH] + ["mlp 784-512-512-10 relu"]))
AUTOTUNE_LABEL = "compile-max-autotune"


def bench_argv(run: BenchRun, out: Path, device="cuda", providers=BENCH_PROVIDERS) -> List[str]:
    return ["--device", device, "--dtypes", run.dtype, "--batch", str(run.batch), "--ops", run.op,
            "--layers", run.layer, "--modes", "fwd,train", *providers, "--out", str(out)]


# The tables after the benchmark runs: (key in the stage's results, script, its arguments, the
# dry run's sample output, what it is, seconds it needs at least, seconds it may take at most).
# Host time per call on CUDA (the tutorial layers are launch-bound), where each backend's training
# step spends GPU time, and the Triton kernels' candidate tiles (what the rules picking them
# should be; rows kept as they come, so a run cut short keeps its layers; at most 4 minutes, 81
# compiles and their timings, so that max-autotune keeps its turn).
def bench_tables():
    return (("host_table", "benchmarks/host_overhead.py", ("--device", "cuda"), SAMPLE_HOST_OVERHEAD,
             "host time per call", 30, float("inf")),
            ("profile_table", "benchmarks/kernel_profile.py", (), SAMPLE_KERNEL_PROFILE, "kernel profile", 30,
             float("inf")),
            ("tiles_table", "benchmarks/triton_tiles.py", (), SAMPLE_TRITON_TILES, "Triton tile candidates", 90, 240))


def stage_bench(report: Report, runner: Runner) -> dict:
    m = report.machine
    if not m.cuda and not runner.dry_run:
        return dict(status="skipped", detail="no CUDA device (torch.cuda.is_available() is False): the GPU "
                    "benchmark needs one (`make bench` benchmarks this CPU)")
    log, merged_path = report.out / "bench.log", report.out / "bench.json"
    start, budget = clock(), report.limit
    tmp = Path(tempfile.mkdtemp(prefix="gpu-report-bench-"))
    # Resumed: the runs and tables the last report finished stay, with their rows.
    previous = report.stages.get("bench", {}) if report.resume else {}
    done = set(previous.get("done", []))
    results = [json.loads(merged_path.read_text())] if done and merged_path.exists() else []
    tables = {key: previous.get(key, []) for key, *_ in bench_tables()}
    notes, errors = [], 0
    if runner.dry_run:
        notes += _check_bench_args(BENCH_RUNS, tmp) + _check_tiles()

    def left() -> float:
        return budget - (clock() - start)

    def run_py(run: BenchRun, out: Path, providers=BENCH_PROVIDERS) -> Optional[dict]:
        """``benchmarks/run.py`` for ``run``: its results JSON, or None (a note says why)."""
        nonlocal errors
        result = runner.run([sys.executable, "benchmarks/run.py", *bench_argv(run, out, providers=providers)], log,
                            left(), _env(TRITON_INTERPRET=None))
        if result.dry:
            out.mkdir(parents=True, exist_ok=True)
            (out / "sample.json").write_text(json.dumps(sample_bench(run)))
        found = sorted(out.glob("*.json"))
        if found:
            return json.loads(found[0].read_text())
        errors += not result.timed_out
        notes.append(f"{run.label}: no results ({'time limit' if result.timed_out else f'exit {result.rc}'}; "
                     "bench.log)")
        return None

    skipped = []
    for i, run in enumerate(r for r in BENCH_RUNS if r.label not in done):
        if left() < run.seconds and not runner.dry_run:  # a later, shorter run may still fit
            skipped.append(run.label)
            continue
        found = run_py(run, tmp / f"run{i}")
        if found:
            results.append(found)
            done.add(run.label)
    if skipped:
        notes.append(f"not run ({budget:.0f} s stage limit): " + ", ".join(skipped))

    for key, script, args, sample, what, min_seconds, max_seconds in bench_tables():
        if tables[key]:
            continue
        if left() < min_seconds and not runner.dry_run:
            notes.append(f"{what} not run ({budget:.0f} s stage limit)")
            continue
        mark = log.stat().st_size if log.exists() else 0
        result = runner.run([sys.executable, script, *args], log, min(left(), max_seconds), _env(TRITON_INTERPRET=None))
        text = sample if result.dry else log.read_text(errors="replace")[mark:]
        tables[key] = [ln for ln in text.splitlines() if ln.startswith("|")]
        if not tables[key]:
            notes.append(f"{what}: no table ({'time limit' if result.timed_out else f'exit {result.rc}'}; bench.log)")

    if AUTOTUNE_LABEL not in done:
        if left() >= 60 or runner.dry_run:
            found = run_py(AUTOTUNE_RUN, tmp / "autotune", providers=("--providers", "compile-max-autotune"))
            if found:
                results.append(found)
                done.add(AUTOTUNE_LABEL)
        else:
            notes.append(f"{AUTOTUNE_LABEL} not run ({budget:.0f} s stage limit)")
    merged = merge_bench(results)
    merged_path.write_text(json.dumps(merged, indent=1) + "\n")
    if merged["rows"]:
        from benchmarks.summarize import plot

        plot(merged["rows"], str(report.out / "bench.png"),  # 60 dpi: a file small enough to copy back
             f"fusedops speed-ups on {merged.get('device', m.gpu)} (batch {BENCH_BATCH}, VGG {VGG_BATCH})", dpi=60)
    shutil.rmtree(tmp, ignore_errors=True)
    runs_done = sum(run.label in done for run in BENCH_RUNS)
    everything = runs_done == len(BENCH_RUNS) and all(tables.values()) and AUTOTUNE_LABEL in done
    # failed: runs ended in errors and none gave results; partial: something is left (a resume
    # runs it), whether for time or for errors
    status = ("dry-run" if runner.dry_run else "passed" if everything
              else "failed" if errors and not runs_done else "partial")
    if any(n.startswith("dry run:") for n in notes):
        status = "failed"
    return dict(status=status, seconds=clock() - start + previous.get("seconds", 0),
                detail=f"{runs_done} of {len(BENCH_RUNS)} benchmark runs", notes=notes, done=sorted(done), **tables)


def _check_bench_args(runs: Sequence[BenchRun], tmp: Path) -> List[str]:
    """A dry run parses every benchmark run's arguments with benchmarks/run.py (on the CPU
    device, which the parser accepts here) and checks each selects at least one layer, and no
    layer is timed twice in one dtype (by two runs whose names overlap)."""
    from benchmarks import run as bench

    problems, timed = [], {}
    for run in runs:
        try:
            # --full: the CPU device's parser with the GPU's layer set (all of them)
            args = bench.parse_args([*bench_argv(run, tmp, device="cpu"), "--full"])
            args.device = "cuda"
            chosen = bench.select_workloads(args)
        except SystemExit as exc:
            problems.append(f"dry run: benchmarks/run.py rejects the arguments of {run.label} ({exc})")
            continue
        if not chosen:
            problems.append(f"dry run: benchmarks/run.py selects no layer for {run.op} {run.layer!r}")
        for w in chosen:
            if (w.layer, run.dtype) in timed:
                problems.append(f"dry run: {w.layer} {run.dtype} is timed by both {timed[w.layer, run.dtype]!r} "
                                f"and {run.label!r}")
            timed[w.layer, run.dtype] = run.label
    return problems or [f"{len(runs)} benchmark runs, each selects its layers, none a layer another times"]


def _check_tiles() -> List[str]:
    """A dry run builds every Triton tile candidate's launch plan (benchmarks/triton_tiles.py
    --dry-run, meta tensors: no GPU, nothing compiled) and checks the launchers plan each as given."""
    import contextlib
    import io

    try:
        from benchmarks import triton_tiles
    except ImportError as exc:  # a machine without Triton: the GPU machines have it
        return [f"Triton tile candidates not checked (no Triton here: {exc})"]

    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        rc = triton_tiles.main(["--dry-run"])
    lines = text.getvalue().splitlines()
    bad = [ln for ln in lines if not ln.endswith(": ok")]
    if rc or bad or not lines:
        return [f"dry run: benchmarks/triton_tiles.py: {ln}" for ln in bad] or [
            f"dry run: benchmarks/triton_tiles.py --dry-run exited {rc} with {len(lines)} candidates"]
    return [f"{len(lines)} Triton tile candidates, each planned as forced"]


def merge_bench(results: List[dict]) -> dict:
    """One results JSON (benchmarks/run.py's format) from the runs' JSONs (or an earlier merge),
    each row with its run's batch."""
    if not results:
        return {"rows": []}
    merged = {k: v for k, v in results[0].items() if k not in ("rows", "batch")}
    merged["ceilings"] = {}
    merged["rows"] = []
    seen = set()
    for r in results:
        merged["ceilings"].update(r.get("ceilings", {}))
        for row in r.get("rows", []):  # eager runs in every run: its first measurement stays
            row = dict(row, batch=row.get("batch", r.get("batch")))
            key = (row.get("layer"), row["batch"], row.get("dtype"), row.get("mode"), row.get("provider"))
            if key not in seen:
                seen.add(key)
                merged["rows"].append(row)
    return merged


def bench_table(rows: List[dict]) -> List[str]:
    """Markdown: per layer, dtype and mode, eager's median ms and every other provider's ms
    with its speed-up over eager and over torch.compile."""
    if not rows:
        return []
    providers: List[str] = []
    for r in rows:  # the reference backend is the oracle, not a contender: it stays in bench.json
        if r["provider"] not in providers and r["provider"] != "eager" and "reference" not in r["provider"]:
            providers.append(r["provider"])
    groups: Dict[tuple, Dict[str, dict]] = {}
    for r in rows:
        layer = r["layer"] if r.get("batch", BENCH_BATCH) == BENCH_BATCH else f"{r['layer']}, batch {r['batch']}"
        groups.setdefault((layer, DTYPE_LABELS.get(r["dtype"], r["dtype"]), r["mode"]), {})[r["provider"]] = r
    lines = ["| layer | dtype | mode | eager ms | " + " | ".join(providers) + " |",
             "| --- | --- | --- | ---: | " + " | ".join("---:" for _ in providers) + " |"]
    for (layer, dtype, mode), by in groups.items():
        eager = by.get("eager")
        cells = []
        for p in providers:
            r = by.get(p)
            if r is None:
                cells.append("-")
                continue
            vs_compile = f" / {r['speedup_vs_compile']:.2f}x" if r.get("speedup_vs_compile") else ""
            cells.append(f"{r['median_ms']:.3f} ({r['speedup_vs_eager']:.2f}x{vs_compile})")
        lines.append(f"| {layer} | {dtype} | {mode} | {eager['median_ms']:.3f} | " if eager else
                     f"| {layer} | {dtype} | {mode} | - | ")
        lines[-1] += " | ".join(cells) + " |"
    return lines


# --- summary --------------------------------------------------------------------------------------


def render_summary(report: Report) -> str:
    m = report.machine
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# fusedops GPU report: {m.gpu}", ""]
    if report.dry_run:
        lines += ["**DRY RUN**: no command ran. The counts, verdicts and timings below come from built-in sample "
                  "outputs; they only show that the report's commands and parsing work.", ""]
    lines += [f"commit {m.commit}, {now}; torch {m.torch}, Triton {m.triton}, {m.nvcc}, driver {m.driver}, "
              f"{m.cpus} CPUs" + (f", sm_{m.arch}" if m.arch else ""), "",
              "| stage | status | time | detail |", "| --- | --- | ---: | --- |"]
    for name in STAGES:
        s = report.stages.get(name)
        if s is None:
            lines.append(f"| {name} | not run | | `make gpu-report STAGE={name}` |")
            continue
        seconds = f"{s['seconds']:.0f} s" if s.get("seconds") and s["status"] != "dry-run" else ""
        lines.append(f"| {name} | {s['status']} | {seconds} | {s.get('detail', '')} |")
    undone = [n for n in STAGES if report.stages.get(n, {}).get("status") in ("partial", "not run", "timeout",
                                                                              "failed")]
    if undone:
        lines += ["", f"Left undone: {', '.join(undone)}. `make gpu-report RESUME=1` with this report's directory "
                  "as `FUSEDOPS_REPORT_DIR` (or `RESUME=<it>`) runs only what is left."]
    test = report.stages.get("test")
    if test:
        lines += ["", "## Tests: passed / failed / skipped per backend and precision", ""]
        lines += _count_table(test.get("counts", {}).get("table", {})) + [""]
        lines += [f"- {note}" for note in test.get("notes", [])]
        failures = test.get("counts", {}).get("failures", [])
        if failures:
            lines += ["", f"Failures ({len(failures)}; all in junit.xml and test.log):", ""]
            lines += [f"- {f}" for f in failures[:20]]
            if len(failures) > 20:
                lines.append(f"- ... {len(failures) - 20} more")
    sanitize = report.stages.get("sanitize")
    if sanitize:
        lines += ["", "## compute-sanitizer (tests -m sanitize, both GPU backends; details in sanitize.log)", ""]
        lines += [f"- {v}" for v in sanitize.get("verdicts", {}).values()] or [f"- {sanitize.get('detail', '')}"]
        lines += [f"- {n}" for n in sanitize.get("notes", [])]
    bench = report.stages.get("bench")
    if bench:
        lines += ["", f"## Benchmarks: batch {BENCH_BATCH} unless a layer says, median ms (speed-up over eager / "
                  "over torch.compile)",
                  "", "Data: bench.json, plot: bench.png, log: bench.log.", ""]
        results = report.out / "bench.json"
        rows = json.loads(results.read_text()).get("rows", []) if results.exists() else []
        lines += (bench_table(rows) or ["no benchmark results"]) + [""]
        lines += [f"- {n}" for n in bench.get("notes", [])]
        if bench.get("host_table"):
            lines += ["", "Host time per call on CUDA (benchmarks/host_overhead.py: tiny layers, median us per call):",
                      ""] + bench["host_table"]
        if bench.get("profile_table"):
            lines += ["", "Training step of each tutorial layer, batch 256 (benchmarks/kernel_profile.py: wall time "
                      "and CUDA time summed over its kernels):", ""] + bench["profile_table"]
        if bench.get("tiles_table"):
            lines += ["", "Triton conv-block kernels under candidate block configs, bf16 (benchmarks/triton_tiles.py: "
                      "ms per call, speed-up over the launcher's own config; * the fastest):", ""]
            lines += bench["tiles_table"]
    present = [f for f in FILES if (report.out / f).exists() or f == "summary.md"]
    lines += ["", "Files: " + ", ".join(present)]
    return "\n".join(lines) + "\n"


def _count_table(table: Dict[str, dict]) -> List[str]:
    rows: Dict[tuple, Dict[str, dict]] = defaultdict(dict)
    columns = [p for p in PRECISIONS] + ["-"]
    for key, c in table.items():
        run, backend, precision = key.split("|")
        rows[(run, backend)][precision] = c
    used = [p for p in columns if any(p in r for r in rows.values())]
    out = ["| run | backend | " + " | ".join("other" if p == "-" else p for p in used) + " |",
           "| --- | --- | " + " | ".join("---:" for _ in used) + " |"]
    for (run, backend), by in sorted(rows.items()):
        cells = []
        for p in used:
            c = by.get(p)
            cells.append("" if c is None else
                         f"{c.get('passed', 0)} / {c.get('failed', 0) + c.get('error', 0)} / {c.get('skipped', 0)}")
        out.append(f"| {run} | {backend} | " + " | ".join(cells) + " |")
    return out


# --- samples for the dry run ----------------------------------------------------------------------

SAMPLE_JUNIT = {
    "smoke": """<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="1">
<testcase classname="tests.test_triton_launch" name="test_direct_launches_match_jit_launches" time="0.1"/>
</testsuite></testsuites>""",
    "gpu": """<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="4">
<testcase classname="tests.test_gpu_conv_block" name="test_conv_block[triton-bf16-basic_2x2_pool]" time="0.1"/>
<testcase classname="tests.test_gpu_conv_block" name="test_conv_block[cuda-fp16-pool_padding]" time="0.1">
<failure message="AssertionError: cuda fp16 nchw: grad weight: error 0.031 &gt; 2 x torch's 0.004">x</failure>
</testcase>
<testcase classname="tests.test_gpu_linear" name="test_linear[cuda-tf32-5x7-gelu-bias]" time="0.1"/>
<testcase classname="tests.test_cuda_backend" name="test_gpu_gradcheck_both_ops" time="0.1"/>
</testsuite></testsuites>""",
    # The test stage's run without a CUDA device.
    "cpu": """<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="2">
<testcase classname="tests.test_conv_block" name="test_matches_torch[cpp-basic_2x2_pool]" time="0.1"/>
<testcase classname="tests.test_conv_block" name="test_matches_torch[triton-basic_2x2_pool]" time="0">
<skipped type="pytest.skip" message="Triton runs CPU tensors only under TRITON_INTERPRET=1">x</skipped></testcase>
</testsuite></testsuites>""",
}

SAMPLE_SANITIZER = {
    "memcheck": "== COMPUTE-SANITIZER\n28 passed in 95.1s\n========= ERROR SUMMARY: 0 errors\n",
    "racecheck": ("== COMPUTE-SANITIZER\n"
                  "========= Error: Race reported between Write access at conv_pool_gemm_kernel+0x1a0\n"
                  "=========     and Read access at conv_pool_gemm_kernel+0x2b0 [1024 hazards]\n"
                  "28 passed in 210.4s\n"
                  "========= RACECHECK SUMMARY: 1 hazard displayed (1 error, 0 warnings)\n"),
    "initcheck": ("== COMPUTE-SANITIZER\n========= Uninitialized __global__ memory read of size 4 bytes\n"
                  "=========     at void at::native::vectorized_elementwise_kernel+0x90\n"
                  "28 passed in 120.0s\n========= ERROR SUMMARY: 1 error\n"),
    "synccheck": ("== COMPUTE-SANITIZER\n========= Program hit cudaErrorPeerAccessUnsupported (error 217) due to "
                  "\"peer access is not supported\" on CUDA API call to cudaDeviceCanAccessPeer.\n"
                  "28 passed in 88.0s\n========= ERROR SUMMARY: 1 error\n"),
}


SAMPLE_HOST_OVERHEAD = """host time per call, torch -, 16 threads, median of 15 interleaved blocks of 200 calls
| device | call | mode | provider | us per call | time vs eager chain |
| --- | --- | --- | --- | ---: | ---: |
| cuda | conv block (sample) | no_grad fwd | eager chain | 30.0 | 1.00x |
| cuda | conv block (sample) | no_grad fwd | fused triton | 45.0 | 1.50x |
"""


SAMPLE_KERNEL_PROFILE = """bfloat16 1->32@28 eager: wall 0.500 ms, kernels 0.240 ms | max_pool 0.066ms x1
| dtype | layer | backend | wall ms | kernels ms | largest kernels |
| --- | --- | --- | ---: | ---: | --- |
| bfloat16 | 1->32 @28 (sample) | eager | 0.500 | 0.240 | max_pool 0.066ms |
"""


SAMPLE_TRITON_TILES = """| layer | role | config | path | ms | vs auto | difference | |
| --- | --- | --- | --- | ---: | ---: | ---: | --- |
| vgg 64->128 @112 (sample) | fwd | auto | runs | 2.0000 | 1.00x | 0.0e+00 | |
| vgg 64->128 @112 (sample) | fwd | 128x128x64 w8 * | runs | 1.0000 | 2.00x | 3.9e-03 | |
"""


def sample_bench(run: BenchRun) -> dict:
    rows = []
    for mode in ("fwd", "train"):
        for provider, ms in (("eager", 0.05), ("compile", 0.04), ("fusedops-triton", 0.03), ("fusedops-cuda", 0.06)):
            rows.append({"op": run.op, "layer": f"{run.layer} (sample)", "dtype": run.dtype, "mode": mode,
                         "provider": provider, "median_ms": ms, "speedup_vs_eager": round(0.05 / ms, 3),
                         "speedup_vs_compile": round(0.04 / ms, 3)})
    return {"device": "sample GPU", "torch": "-", "triton": "-", "commit": "-", "date": "-", "batch": run.batch,
            "rounds": 15, "ceilings": {run.dtype: {}}, "rows": rows}


# --- main -----------------------------------------------------------------------------------------

RUNNERS = {"build": stage_build, "test": stage_test, "sanitize": stage_sanitize, "bench": stage_bench}
STAGE_FILES = {"build": ("build.log",), "test": ("test.log", "junit.xml"), "sanitize": ("sanitize.log",),
               "bench": ("bench.log", "bench.json", "bench.png")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", default=os.environ.get("STAGE") or "all", choices=("all",) + STAGES)
    parser.add_argument("--budget", type=float, default=float(os.environ.get("FUSEDOPS_REPORT_SECONDS") or 0) or None,
                        help="seconds for the whole report (default: no limit but each stage's)")
    parser.add_argument("--resume", nargs="?", const="", default=None, metavar="DIR",
                        help="run what the report in --out left undone (copied first from DIR, if given)")
    parser.add_argument("--dry-run", action="store_true", default=os.environ.get("DRY_RUN") == "1")
    parser.add_argument("--out", default=os.environ.get("FUSEDOPS_REPORT_DIR"), help="report directory")
    args = parser.parse_args(argv)
    deadline = clock() + args.budget if args.budget else None
    sys.path.insert(0, str(ROOT))
    machine = Machine.probe()
    if args.out:
        out = Path(args.out)
    elif args.dry_run:
        out = Path(tempfile.mkdtemp(prefix="gpu-report-dry-run-"))
    else:
        out = ROOT / "benchmarks" / "results" / machine.slug()
    out.mkdir(parents=True, exist_ok=True)
    if args.resume is not None:
        kept = Path(args.resume) if args.resume else out
        if not (kept / "summary.md").exists():
            parser.error(f"--resume: no report to resume in {kept} (no summary.md)")
        if kept.resolve() != out.resolve():
            for name in FILES:  # the report to resume, from where it was kept; nothing else
                if (kept / name).exists():
                    shutil.copyfile(kept / name, out / name)
                else:
                    (out / name).unlink(missing_ok=True)
    report = Report(out, machine, args.dry_run)
    report.load()
    if args.resume is not None and not args.dry_run and report.gpu not in (None, machine.gpu):
        parser.error(f"--resume: the report is of {report.gpu}, this machine has {machine.gpu}")
    runner = Runner(args.dry_run)
    stages = STAGES if args.stage == "all" else (args.stage,)
    if args.resume is not None:
        stages = tuple(name for name in stages if not finished(report, name))
    print(f"gpu-report: {machine.gpu}; stages {', '.join(stages) or 'none left'}; report in {out}"
          + (f"; {args.budget:.0f} s budget" if args.budget else "") + (" (dry run)" if args.dry_run else ""))
    for i, name in enumerate(stages):
        left = None if deadline is None else deadline - clock()
        report.limit = stage_limit(name, stages[i + 1:], left)
        report.resume = args.resume is not None and name == "bench"
        if report.limit < 20 and not args.dry_run:
            why = f"the report's {args.budget:.0f} s budget was spent" if left is not None else \
                f"a {report.limit:.0f} s stage limit"
            print(f"gpu-report: {name}: not run: {why}")
            if args.resume is None or name not in report.stages:  # a resumed stage keeps what it has
                report.stages[name] = dict(status="not run", detail=why)
            continue
        if not report.resume:
            for stale in STAGE_FILES[name]:
                (out / stale).unlink(missing_ok=True)
        (out / f"{name}.log").touch()
        print(f"gpu-report: stage {name}" + (f" (at most {report.limit:.0f} s)" if left is not None else ""))
        try:
            result = RUNNERS[name](report, runner)
        except Exception as exc:  # a broken stage must not lose the others' results
            result = dict(status="failed", detail=f"gpu-report itself failed: {type(exc).__name__}: {exc}")
        report.stages[name] = _jsonable(result)
        trim_log(out / f"{name}.log")
        report.save()
        print(f"gpu-report: {name}: {result['status']}: {result.get('detail', '')}")
    print(f"gpu-report: wrote {report.save()}")
    worst = {report.stages[n]["status"] for n in stages if n in report.stages}
    return 1 if worst & {"failed", "timeout"} else 0


def finished(report: Report, stage: str) -> bool:
    """Whether a resumed report leaves ``stage`` out: it passed, and for the build, what it
    built is here (a fresh machine builds again)."""
    if report.stages.get(stage, {}).get("status") != "passed":
        return False
    return stage != "build" or built_with_cuda()


def _jsonable(result: dict) -> dict:
    return json.loads(json.dumps(result, default=lambda o: dict(o) if isinstance(o, Counter) else str(o)))


if __name__ == "__main__":
    sys.exit(main())
