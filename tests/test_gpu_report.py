"""make gpu-report (benchmarks/gpu_report.py) without a GPU: the dry run goes through every
stage's commands and files, so that a typo cannot waste a rare GPU run; each stage says why
it skips without a CUDA device; the parsing of pytest's, compute-sanitizer's and the
benchmark's outputs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_report as gr

ROOT = Path(__file__).resolve().parents[1]


def test_the_dry_run_goes_through_every_stage_and_a_stage_alone_keeps_the_others(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("STAGE", "DRY_RUN", "FUSEDOPS_REPORT_DIR")}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_report", "--dry-run", "--out", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "-m pip install --no-build-isolation --no-deps -v -e ." in out
    assert "-m pytest tests -m gpu" in out
    assert "-m 'not gpu'" not in out  # a GPU machine leaves the CPU suite to make test
    for tool in gr.SANITIZER_TOOLS:
        assert f"compute-sanitizer --tool {tool} " in out
    assert out.count("benchmarks/run.py --device cuda") == len(gr.BENCH_RUNS) + 1 == 17
    # max-autotune only in the last run; the reference in none
    assert out.count("--skip-providers compile-max-autotune,fusedops-reference") == 16
    assert out.rindex("--providers compile-max-autotune") > out.index("benchmarks/kernel_profile.py")
    # the speed targets first: the VGG block at batch 64, then the tutorial layers, in bf16
    runs = [line for line in out.splitlines() if "benchmarks/run.py" in line]
    assert "--dtypes bfloat16 --batch 64 --ops conv_block --layers 'vgg block 64->128 112x112'" in runs[0]
    assert all("--dtypes bfloat16 --batch 256 --ops conv_block" in line for line in runs[1:5])
    files = sorted(p.name for p in tmp_path.iterdir())
    assert set(files) <= set(gr.FILES) and len(gr.FILES) <= 8
    assert {"summary.md", "build.log", "test.log", "junit.xml", "sanitize.log", "bench.log", "bench.json"} <= set(files)
    # small enough to copy back and commit (the plot: 30 layer and dtype rows at 60 dpi, ~70 KB)
    assert all((tmp_path / f).stat().st_size < 256 * 1024 for f in files)
    summary = (tmp_path / "summary.md").read_text()
    assert "DRY RUN" in summary
    for stage in gr.STAGES:
        assert f"| {stage} | dry-run |" in summary
    # The checks the dry run makes: the pytest selections collect tests, every benchmark run selects a layer.
    assert "pytest -m 'gpu' collects" in summary and "pytest -m 'sanitize' collects" in summary
    assert "16 benchmark runs, each selects its layers, none a layer another times" in summary
    # The sample outputs went through the parsers into the summary.
    assert "| gpu | cuda |" in summary and "test_conv_block[cuda-fp16-pool_padding]" in summary
    assert "racecheck: FAIL: 1 errors; fusedops kernels: 1 in conv_pool_gemm_kernel" in summary
    assert "| mnist conv1 1->32 28x28 (sample) | bf16 | fwd | 0.050 |" in summary
    assert "| vgg block 64->128 112x112 (sample), batch 64 | fp32 | train | 0.050 |" in summary
    assert "benchmarks/host_overhead.py --device cuda" in out and "| cuda | conv block (sample) |" in summary
    assert "benchmarks/kernel_profile.py" in out and "| bfloat16 | 1->32 @28 (sample) | eager |" in summary
    assert "benchmarks/triton_tiles.py" in out and "| vgg 64->128 @112 (sample) | fwd | 128x128x64 w8 * |" in summary
    assert "81 Triton tile candidates, each planned as forced" in summary

    # One stage alone: the others' results stay in the summary.
    assert gr.main(["--stage", "build", "--dry-run", "--out", str(tmp_path)]) == 0
    again = (tmp_path / "summary.md").read_text()
    assert "| test | dry-run |" in again and "racecheck: FAIL" in again and (tmp_path / "bench.json").exists()


def test_with_pytest_xdist_the_gpu_tests_run_in_parallel_after_one_prewarm(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FUSEDOPS_XDIST_WORKERS", "4")
    assert gr.main(["--stage", "test", "--dry-run", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "-m tests.triton_prewarm --jobs" in out
    assert "-m pytest tests -m gpu" in out and " -n 4" in out
    # the smoke tests first, on their own, then left out of the later runs
    smoke = out.index("-m pytest tests/test_triton_launch.py tests/test_reference_offsets.py tests/test_build.py "
                      "-m 'gpu or not gpu'")
    assert smoke < out.index("tests.triton_prewarm")
    assert out.count("--ignore=tests/test_triton_launch.py") == 1  # the gpu run
    assert "tests/test_gpu_conv_block.py" not in out  # not one process per file
    assert out.index("tests.triton_prewarm") < out.index("-m pytest tests -m gpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine runs these stages")
@pytest.mark.parametrize("stage", ["sanitize", "bench"])
def test_without_a_cuda_device_the_gpu_stages_say_why_they_skip(tmp_path, stage):
    assert gr.main(["--stage", stage, "--out", str(tmp_path)]) == 0
    summary = (tmp_path / "summary.md").read_text()
    assert f"| {stage} | skipped |" in summary and "no CUDA device (torch.cuda.is_available() is False)" in summary


def test_the_dry_run_finds_a_layer_two_benchmark_runs_would_time(tmp_path):
    overlapping = (gr.BenchRun("bfloat16", "conv_block", "cifar conv2"),
                   gr.BenchRun("bfloat16", "conv_block", "no-pool"), gr.BenchRun("float32", "conv_block", "no-pool"))
    problems = gr._check_bench_args(overlapping, tmp_path)
    assert problems == ["dry run: cifar conv2 32->64 16x16 no-pool bfloat16 is timed by both "
                        "'cifar conv2 bfloat16 b256' and 'no-pool bfloat16 b256'"]
    assert gr._check_bench_args(gr.BENCH_RUNS, tmp_path) == [
        f"{len(gr.BENCH_RUNS)} benchmark runs, each selects its layers, none a layer another times"]


def test_max_autotune_runs_the_bf16_tutorial_layers_and_no_variant_of_them():
    from benchmarks import run as bench

    args = bench.parse_args([*gr.bench_argv(gr.AUTOTUNE_RUN, Path("unused"), device="cpu"), "--full"])
    args.device = "cuda"
    assert sorted(w.layer for w in bench.select_workloads(args)) == [
        "cifar conv1 3->32 32x32", "cifar conv2 32->64 16x16", "mlp 784-512-512-10 relu", "mnist conv1 1->32 28x28",
        "mnist conv2 32->64 14x14"]


def test_a_budget_gives_each_stage_what_the_later_ones_leave(monkeypatch):
    monkeypatch.delenv("FUSEDOPS_STAGE_SECONDS", raising=False)
    later = ("test", "sanitize", "bench")
    reserved = sum(gr.RESERVE_SECONDS[s] for s in later)
    monkeypatch.setattr(gr, "FLOOR_SECONDS", {})  # the reserves alone (the floor: the next test)
    assert gr.stage_limit("build", later, None) == 420  # no budget: each stage's own limit
    assert gr.stage_limit("build", later, 540) == 540 - reserved
    assert gr.stage_limit("bench", (), 300) == 300 and gr.stage_limit("bench", (), 5000) == 420
    assert gr.stage_limit("build", later, reserved) == reserved / 5  # never nothing while time is left
    assert gr.stage_limit("build", later, -3) == 0


def test_the_build_gets_its_floor_before_the_later_stages_reserves(monkeypatch):
    monkeypatch.delenv("FUSEDOPS_STAGE_SECONDS", raising=False)
    later = ("test", "sanitize", "bench")
    reserved = sum(gr.RESERVE_SECONDS[s] for s in later)
    floor = gr.FLOOR_SECONDS["build"]
    assert floor >= 200  # a bare H200 machine's build was cut short at 98 s
    # 480 s: the reserves would leave the build 130 s; it gets its floor.
    assert gr.stage_limit("build", later, 480) == floor > 480 - reserved
    assert gr.stage_limit("build", later, 620) == 620 - reserved > floor  # more where the reserves leave more
    assert gr.stage_limit("build", later, 150) == 150  # never more than is left
    assert gr.stage_limit("build", later, -3) == 0
    assert gr.stage_limit("test", ("sanitize", "bench"), 480) == 480 - 150  # no floor for the others


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine would build")
def test_a_spent_budget_runs_nothing_and_says_what_is_left(tmp_path, capsys):
    assert gr.main(["--budget", "1", "--out", str(tmp_path)]) == 0
    assert "$ " not in capsys.readouterr().out  # no command ran
    summary = (tmp_path / "summary.md").read_text()
    for stage in gr.STAGES:
        assert f"| {stage} | not run |  | the report's 1 s budget was spent |" in summary
    assert "Left undone: build, test, sanitize, bench. `make gpu-report RESUME=1`" in summary


def test_a_resumed_report_runs_only_what_is_left(tmp_path, capsys, monkeypatch):
    kept, out = tmp_path / "kept", tmp_path / "out"
    kept.mkdir()
    machine = gr.Machine(True, "GPU", "90", "2.11", "3.6", "nvcc 13.0", "-", 16, "abc")
    first = gr.BENCH_RUNS[:3]
    report = gr.Report(kept, machine, False, {
        "build": dict(status="passed"), "test": dict(status="passed"), "sanitize": dict(status="partial"),
        "bench": dict(status="partial", seconds=100, done=[r.label for r in first], host_table=["| kept |"])})
    report.save()
    (kept / "bench.json").write_text(json.dumps(gr.merge_bench([gr.sample_bench(r) for r in first])))
    (kept / "bench.log").write_text("the first runs' output\n")
    monkeypatch.setattr(gr, "built_with_cuda", lambda: True)  # the build is still here
    assert gr.main(["--resume", str(kept), "--dry-run", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "stages sanitize, bench;" in printed
    assert "pip install" not in printed and "pytest tests -m gpu" not in printed
    runs = [line for line in printed.splitlines() if "benchmarks/run.py" in line]
    assert len(runs) == len(gr.BENCH_RUNS) - 3 + 1  # the runs left, then max-autotune
    def argv(r):
        return f"--dtypes {r.dtype} --batch {r.batch} --ops {r.op} --layers {gr._quote(r.layer)} "

    assert not any(argv(r) in line for r in first for line in runs)  # done before
    assert all(any(argv(r) in line for line in runs) for r in gr.BENCH_RUNS[3:])
    assert "host_overhead.py" not in printed and "kernel_profile.py" in printed
    rows = json.loads((out / "bench.json").read_text())["rows"]
    assert {(r["layer"], r["dtype"], r["batch"]) for r in rows} >= {(f"{r.layer} (sample)", r.dtype, r.batch)
                                                                     for r in gr.BENCH_RUNS}
    assert (out / "bench.log").read_text().startswith("the first runs' output")
    again = gr.Report(out, machine, True)
    again.load()
    assert again.stages["bench"]["host_table"] == ["| kept |"] and again.stages["build"] == {"status": "passed"}
    assert set(again.stages["bench"]["done"]) == {r.label for r in gr.BENCH_RUNS} | {gr.AUTOTUNE_LABEL}
    # Without the build here, a resumed report builds again.
    monkeypatch.setattr(gr, "built_with_cuda", lambda: False)
    assert gr.main(["--resume", "--dry-run", "--out", str(out)]) == 0
    assert "stages build, sanitize, bench;" in capsys.readouterr().out


def test_the_state_in_the_summary_survives_what_a_comment_cannot_hold(tmp_path):
    machine = gr.Machine(False, "no CUDA device", "", "2.13", "3.9", "no nvcc", "-", 2, "abc")
    report = gr.Report(tmp_path, machine, False, {"test": dict(status="failed", detail="a --> b -- c")})
    report.save()
    again = gr.Report(tmp_path, machine, False)
    again.load()
    assert again.stages == report.stages


def test_a_command_past_its_time_limit_is_stopped(tmp_path):
    result = gr.Runner(False, echo=lambda s: None).run(
        [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "log", timeout=1)
    assert result.timed_out and result.seconds < 30
    assert "stopped by the time limit" in (tmp_path / "log").read_text()


def test_long_logs_keep_their_head_and_tail(tmp_path):
    log = tmp_path / "build.log"
    log.write_text("".join(f"line {i}\n" for i in range(100000)))
    gr.trim_log(log, max_bytes=20000, head=10)
    text = log.read_text()
    assert len(text) < 20000 and text.startswith("line 0\n") and text.endswith("line 99999\n")
    assert "lines cut to keep the log under 19 KB" in text


def test_tests_are_counted_per_backend_and_precision(tmp_path):
    parts = []
    for name, text in gr.SAMPLE_JUNIT.items():
        (tmp_path / f"{name}.xml").write_text(text)
        parts.append((name, tmp_path / f"{name}.xml"))
    gr.merge_junit(parts + [("missing", tmp_path / "none.xml")], tmp_path / "junit.xml")
    counts = gr.test_counts(tmp_path / "junit.xml")
    assert counts["table"]["gpu|triton|bf16"] == {"passed": 1}
    assert counts["table"]["gpu|cuda|fp16"] == {"failed": 1}
    assert counts["table"]["gpu|cuda|-"] == {"passed": 1}  # test_cuda_backend: backend from the module
    assert counts["table"]["cpu|triton|-"] == {"skipped": 1}
    assert counts["table"]["smoke|triton|-"] == {"passed": 1}  # backend from the module: test_triton_launch
    assert counts["line"] == ("cpu: 1 passed, 0 failed, 1 skipped; gpu: 3 passed, 1 failed, 0 skipped; "
                              "smoke: 1 passed, 0 failed, 0 skipped")
    assert len(counts["failures"]) == 1 and "grad weight" in counts["failures"][0]
    assert gr.classify("tests.test_linear", "test_low_precision_error_at_most_twice_torch[relu-bfloat16-cpp]") == (
        "cpp", "bf16")


def test_sanitizer_verdicts():
    ok = gr.Result(0, 12.0)
    assert gr.sanitizer_verdict("memcheck", gr.SAMPLE_SANITIZER["memcheck"], ok).startswith("memcheck: PASS")
    race = gr.sanitizer_verdict("racecheck", gr.SAMPLE_SANITIZER["racecheck"], gr.Result(1, 5.0))
    assert "FAIL: 1 errors; fusedops kernels: 1 in conv_pool_gemm_kernel" in race
    other = gr.sanitizer_verdict("initcheck", gr.SAMPLE_SANITIZER["initcheck"], gr.Result(1, 5.0))
    assert "none in fusedops kernels; 1 in other kernels" in other
    triton = ("========= Invalid __global__ read of size 2 bytes\n=========     at linear_input_grad_kernel+0x10\n"
              "1 failed, 27 passed in 9.0s\n========= ERROR SUMMARY: 1 error\n")
    assert "1 in linear_input_grad_kernel (1 failed, 27 passed)" in gr.sanitizer_verdict("memcheck", triton, ok)
    assert "NO VERDICT" in gr.sanitizer_verdict("synccheck", "Segmentation fault\n", gr.Result(-11, 1.0))
    assert "TIMEOUT" in gr.sanitizer_verdict("racecheck", "", gr.Result(-2, 99.0, timed_out=True))
    failed_tests = "3 failed, 25 passed in 9.0s\n========= ERROR SUMMARY: 0 errors\n"
    assert "tests failed" in gr.sanitizer_verdict("memcheck", failed_tests, gr.Result(1, 9.0))
    api = gr.sanitizer_verdict("synccheck", gr.SAMPLE_SANITIZER["synccheck"], ok)
    assert api.startswith("synccheck: PASS: no errors in any kernel (28 passed") and "1 CUDA API errors" in api


def test_the_benchmark_table_shows_speedups_over_eager_and_compile():
    rows = gr.sample_bench(gr.BenchRun("bfloat16", "conv_block", "mnist conv1"))["rows"]
    rows.append(dict(rows[0], provider="fusedops-reference", median_ms=1.0))
    rows.append(dict(rows[0], provider="eager-graph", speedup_vs_compile=None))
    table = gr.bench_table(rows)
    assert table[0] == "| layer | dtype | mode | eager ms | compile | fusedops-triton | fusedops-cuda | eager-graph |"
    assert "| mnist conv1 (sample) | bf16 | fwd | 0.050 | 0.040 (1.25x / 1.00x) | 0.030 (1.67x / 1.33x) |" in table[2]
    assert table[2].endswith("| 0.050 (1.00x) |")
    merged = gr.merge_bench([{"device": "d", "ceilings": {"a": 1}, "rows": rows[:2]},
                             {"ceilings": {"b": 2}, "rows": rows[2:3]}])
    assert merged["ceilings"] == {"a": 1, "b": 2} and len(merged["rows"]) == 3 and gr.merge_bench([]) == {"rows": []}


# What each command took on an H200 with 16 cores (benchmarks/results/cuda-nvidia-h200/, and
# estimates where nothing was timed: a benchmark run, the tables, max-autotune), seconds.
H200_SECONDS = (("pip install", 75), ("pytest tests -m gpu", 135), ("tests/test_triton_launch.py", 25),
                ("tests.triton_prewarm", 60), ("compute-sanitizer", 16), ("benchmarks/run.py", 60),
                ("host_overhead.py", 30), ("kernel_profile.py", 30), ("triton_tiles.py", 240))


class SimulatedGpuMachine:
    """Runs no command: each takes its H200_SECONDS on a simulated clock, or its time limit if
    that is shorter; a benchmark run leaves a results JSON where it was told to."""

    def __init__(self):
        self.now, self.commands = 0.0, []

    def clock(self) -> float:
        return self.now

    def run(self, cmd, log, timeout, env=None, cwd=None, seconds=H200_SECONDS):
        line = " ".join(cmd)
        seconds = next(s for part, s in seconds if part in line)
        took = min(seconds, max(1.0, timeout))
        self.now += took
        self.commands.append((line, took, took < seconds))
        if "compute-sanitizer" in line and took == seconds:  # a clean verdict
            summary = ("RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)" if "racecheck" in line
                       else "ERROR SUMMARY: 0 errors")
            with open(log, "a") as f:
                f.write(f"28 passed in 5.0s\n========= {summary}\n")
        if "benchmarks/run.py" in line and took == seconds:
            out = Path(cmd[cmd.index("--out") + 1])
            out.mkdir(parents=True, exist_ok=True)
            dtype, layer = cmd[cmd.index("--dtypes") + 1], cmd[cmd.index("--layers") + 1]
            run = gr.BenchRun(dtype, cmd[cmd.index("--ops") + 1], layer, int(cmd[cmd.index("--batch") + 1]))
            (out / "r.json").write_text(json.dumps(gr.sample_bench(run)))
        return gr.Result(0, took, took < seconds)


def test_a_budget_of_500_seconds_fits_every_stage_and_the_first_benchmark_runs(tmp_path, monkeypatch):
    gpu = _simulate(monkeypatch)
    gr.main(["--budget", "500", "--out", str(tmp_path / "first")])
    assert gpu.now <= 500
    cut = [line for line, _, stopped in gpu.commands if stopped]
    assert not any("benchmarks/run.py" not in line for line in cut), cut  # nothing but a benchmark run cut short
    ran = [line for line, _, _ in gpu.commands]
    assert sum("compute-sanitizer" in line for line in ran) == 4
    assert [_state(tmp_path / "first")[s]["status"] for s in gr.STAGES] == ["passed", "passed", "passed", "partial"]
    bench = [line for line in ran if "benchmarks/run.py" in line]
    assert len(bench) >= 1 and "--layers vgg block" in bench[0]
    # The rest in a second command: no build, no tests, the benchmark runs not yet done.
    first_runs, gpu.commands = len(bench) - len(cut), []
    gr.main(["--resume", str(tmp_path / "first"), "--budget", "420", "--out", str(tmp_path / "second")])
    ran = [line for line, _, _ in gpu.commands]
    assert not any("pip install" in line or "pytest" in line for line in ran)  # sanitize's too
    assert sum("benchmarks/run.py" in line for line in ran) >= 5
    assert len(_state(tmp_path / "second")["bench"]["done"]) >= first_runs + 5


def _simulate(monkeypatch):
    """The report's commands on a SimulatedGpuMachine of this H200; returns it."""
    gpu = SimulatedGpuMachine()
    machine = gr.Machine(True, "NVIDIA H200", "90", "2.11", "3.6", "nvcc 13.0", "-", 16, "abc")
    monkeypatch.setattr(gr, "clock", gpu.clock)
    monkeypatch.setattr(gr.Runner, "run", lambda self, *a, **k: gpu.run(*a, **k))
    monkeypatch.setattr(gr.Machine, "probe", staticmethod(lambda: machine))
    monkeypatch.setattr(gr, "probe_build", lambda: "fusedops True None")
    monkeypatch.setattr(gr, "compute_sanitizer", lambda: "compute-sanitizer")
    monkeypatch.setattr(gr, "xdist_workers", lambda cpus: 12)
    monkeypatch.delenv("FUSEDOPS_STAGE_SECONDS", raising=False)
    return gpu


def _state(out):
    report = gr.Report(out, None, False)
    report.load()
    return report.stages


def test_a_resume_without_time_keeps_what_the_stage_had(tmp_path, monkeypatch):
    gpu = _simulate(monkeypatch)
    gr.main(["--budget", "500", "--out", str(tmp_path)])
    before = _state(tmp_path)["bench"]
    assert before["status"] == "partial" and before["done"]
    log = (tmp_path / "bench.log").read_text()
    gpu.commands = []
    gr.main(["--resume", "--budget", "10", "--out", str(tmp_path)])  # too little for any stage
    assert gpu.commands == [] and _state(tmp_path)["bench"] == before
    assert (tmp_path / "bench.log").read_text() == log and json.loads((tmp_path / "bench.json").read_text())["rows"]


def test_a_bench_is_passed_only_with_every_run_and_table(tmp_path, monkeypatch):
    _simulate(monkeypatch)
    monkeypatch.setenv("FUSEDOPS_STAGE_SECONDS", "1500")  # every run, then too little for the tiles' 240 s
    assert gr.main(["--stage", "bench", "--budget", "1400", "--out", str(tmp_path)]) == 0
    bench = _state(tmp_path)["bench"]
    assert set(r.label for r in gr.BENCH_RUNS) <= set(bench["done"])
    assert bench["status"] == "partial" and not bench["tiles_table"]
    assert "Left undone: bench." in (tmp_path / "summary.md").read_text()


def test_a_bench_the_limit_stops_before_any_results_is_partial_not_failed(tmp_path, monkeypatch):
    slow = tuple((part, 400 if part == "benchmarks/run.py" else s) for part, s in H200_SECONDS)
    gpu = _simulate(monkeypatch)
    monkeypatch.setattr(gpu, "run", lambda *a, **k: SimulatedGpuMachine.run(gpu, *a, **k, seconds=slow))
    monkeypatch.setattr(gr.Runner, "run", lambda self, *a, **k: gpu.run(*a, **k))
    assert gr.main(["--stage", "bench", "--budget", "300", "--out", str(tmp_path)]) == 0
    assert _state(tmp_path)["bench"]["status"] == "partial"


def test_a_stage_limit_too_short_to_run_says_so(tmp_path, monkeypatch, capsys):
    _simulate(monkeypatch)
    monkeypatch.setenv("FUSEDOPS_STAGE_SECONDS", "10")
    assert gr.main(["--stage", "sanitize", "--out", str(tmp_path)]) == 0
    assert _state(tmp_path)["sanitize"] == {"status": "not run", "detail": "a 10 s stage limit"}


def test_a_resume_needs_a_report_of_this_gpu(tmp_path, monkeypatch):
    _simulate(monkeypatch)
    with pytest.raises(SystemExit):
        gr.main(["--resume", str(tmp_path / "missing"), "--out", str(tmp_path / "out")])
    other = gr.Machine(True, "NVIDIA H100", "90", "2.11", "3.6", "nvcc 13.0", "-", 16, "abc")
    gr.Report(tmp_path, other, False, {"build": dict(status="passed")}).save()
    with pytest.raises(SystemExit):
        gr.main(["--resume", "--out", str(tmp_path)])


def test_a_command_past_its_limit_ends_within_it_even_deaf_to_sigint(tmp_path, monkeypatch):
    monkeypatch.setattr(gr, "STOP_SECONDS", 6)  # SIGINT, 1 s, then SIGKILL
    deaf = "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(60)"
    result = gr.Runner(False, echo=lambda s: None).run([sys.executable, "-c", deaf], tmp_path / "log", timeout=8)
    assert result.timed_out and result.seconds <= 8


@pytest.mark.parametrize("resume, flag", [("1", "--resume"), ("some/dir", "--resume some/dir"), ("0", None)])
def test_make_passes_resume_and_budget(resume, flag):
    proc = subprocess.run(["make", "-n", "gpu-report", f"RESUME={resume}", "BUDGET=300"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "--budget 300" in proc.stdout
    assert (flag in proc.stdout) if flag else "--resume" not in proc.stdout
