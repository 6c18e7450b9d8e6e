"""benchmarks/run.py, the CLI `make bench` runs: it checks its options, writes where it says,
prints tables that fit 120 columns, keeps warnings out of the progress bar, draws a plot."""

import contextlib
import gc
import io
import json
import logging
import os
import pathlib
import shutil
import subprocess
import sys
import types
import warnings
import weakref

import pytest
import torch

from benchmarks import run, summarize, workloads

ROOT = pathlib.Path(__file__).resolve().parents[1]

BAD = [
    (["--ops", "foo"], ["--ops", "'foo'", "train_step, conv_block, linear"]),
    (["--modes", "bogus"], ["--modes", "'bogus'", "fwd, train"]),
    (["--layers", "nosuchlayer"], ["--layers", "'nosuchlayer'", "mnist conv1 1->32 28x28"]),
    (["--dtypes", "float17"], ["--dtypes", "'float17'", "float32, bfloat16, float16, float64"]),
    (["--dtypes", "float32,"], ["--dtypes", "''"]),
    (["--providers", "nosuch"], ["--providers", "'nosuch'", "eager", "compile"]),
    (["--ops", "linear", "--layers", "mnist"], ["nothing to run", "--ops linear", "--layers mnist"]),
    (["--rounds", "0"], ["--rounds", "positive"]),
    (["--device", "tpu"], ["--device", "'tpu'"]),
    (["--save", "--no-save"], ["not allowed"]),
]


@pytest.mark.parametrize("argv,words", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_unknown_values_exit_2_with_a_message(argv, words, capsys):
    with pytest.raises(SystemExit) as info:
        run.parse_args(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err
    for word in words:
        assert word in err


def test_help_lists_the_allowed_values(capsys):
    with pytest.raises(SystemExit) as info:
        run.parse_args(["--help"])
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for value in [*run.OPS, *run.MODES, *run.DTYPES, "cpu", "cuda", "eager-channels_last", "fusedops-auto"]:
        assert value in out, value
    for w in workloads.ALL:
        assert w.layer in out


def test_results_go_to_an_ignored_place_unless_saved(tmp_path):
    assert run.parse_args([]).out == run.LOCAL_RESULTS == ROOT / "benchmarks" / "results" / "local"
    assert run.parse_args(["--save"]).out == run.RESULTS == ROOT / "benchmarks" / "results"
    assert run.parse_args(["--no-save"]).out is None
    assert run.parse_args(["--out", str(tmp_path)]).out == tmp_path
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    ignored = subprocess.run(["git", "check-ignore", "-q", "benchmarks/results/local/cpu.json"], cwd=ROOT)
    assert ignored.returncode == 0, "benchmarks/results/local/ must be git-ignored"
    committed = subprocess.run(["git", "check-ignore", "-q", "benchmarks/results/cpu.json"], cwd=ROOT)
    assert committed.returncode == 1


def test_a_run_prints_every_file_it_wrote_and_skips_what_a_provider_cannot_run(tmp_path, capsys):
    argv = ["--device", "cpu", "--ops", "linear", "--layers", "mlp", "--modes", "fwd", "--rounds", "1", "--batch",
            "2", "--dtypes", "float16,float32", "--providers", "fusedops-auto,fusedops-cpp", "--out", str(tmp_path)]
    assert run.main(argv) == 0
    out, err = capsys.readouterr()
    written = sorted(p.name for p in tmp_path.iterdir())
    for name in written:
        assert f"wrote {tmp_path / name}" in out
    result = json.loads((tmp_path / f"{run.device_slug('cpu')}.json").read_text())
    assert {r["provider"] for r in result["rows"] if r["dtype"] == "float32"} >= {"eager", "fusedops-auto"}
    if "cpp" in run.fusedops.available_backends():  # cpp runs float32 but not float16: skipped, saying why
        assert "fusedops-cpp" in {r["provider"] for r in result["rows"] if r["dtype"] == "float32"}
        assert "fusedops-cpp" not in {r["provider"] for r in result["rows"] if r["dtype"] == "float16"}
        assert [s["provider"] for s in result["skipped"]] == ["fusedops-cpp"]
        assert "skipped fusedops-cpp (float16): 'cpp' supports float32, float64 and bfloat16" in err
        assert "fusedops-cpp (float16) on 1 job" in out


@pytest.mark.parametrize("mode", ["fwd", "train"])
def test_an_autocast_precision_runs_float32_modules_and_inputs_under_autocast(mode):
    """``--dtypes bfloat16-autocast``: the modules and inputs stay float32, each step runs
    under torch.autocast, so the conv computes (and returns) bfloat16."""
    import torch

    from benchmarks import providers

    args = run.parse_args(["--device", "cpu", "--dtypes", "bfloat16-autocast,float32"])
    assert [(d.name, d.storage, d.compute, d.autocast) for d in args.dtypes] == [
        ("bfloat16-autocast", torch.float32, torch.bfloat16, True), ("float32", torch.float32, torch.float32, False)]
    w = workloads.CONV_LAYERS[0]
    provider = providers.Provider("eager", w.build())
    inputs = providers.make_inputs(w, 2, "cpu", torch.float32, 2, mode)
    out = providers.make_step(provider, w, inputs, mode, torch.bfloat16)(0)
    assert out.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in provider.module.parameters())
    if mode == "train":
        assert all(p.grad.dtype == torch.float32 for p in provider.module.parameters())
    assert providers.make_step(provider, w, inputs, mode)(0).dtype == torch.float32


def _row(op, layer, provider, mode="train", peak=None, saved=None, compile_ratio=1.1):
    return {"op": op, "layer": layer, "shape": [256, 3, 32, 32], "dtype": "bfloat16", "mode": mode,
            "provider": provider, "median_ms": 12345.678, "speedup_vs_eager": 12.345,
            "speedup_vs_compile": compile_ratio, "best_baseline": "eager-channels_last", "speedup_vs_best": 12.345,
            "tflops": 123.456, "gbps": 12345.6, "roofline_pct": 100.0, "peak_mem_mb": peak, "saved_bytes": saved}


def test_best_baseline_is_the_fastest_provider_that_is_not_fusedops_nor_a_graph_replay():
    times = {"eager": [3.0, 3.2, 2.9], "eager-channels_last": [2.0, 2.4, 2.2], "compile": [2.5, 2.1, 2.6],
             "fusedops-cpp": [1.0, 1.0, 1.0], "eager-graph": [0.5, 0.5, 0.5]}
    assert run.best_baseline(times) == "eager-channels_last"  # medians 3.0, 2.2, 2.5
    rows = [dict(_row("conv_block", "mnist conv1", p, mode=m), best_baseline=b)
            for m, b in (("fwd", "compile"), ("train", "eager-channels_last")) for p in ("eager", "fusedops-cpp")]
    text = summarize.table(rows, "conv_block")
    assert "mnist conv1 | bfloat16 | best baseline: fwd compile, train eager-channels_last" in text
    assert "vs best" in text and "(baseline: eager, compile, best)" in text
    assert "eager channels_last and torch.compile" in text


def test_table_fits_120_columns_and_drops_empty_columns():
    long = "cifar CNN 3->32->64, shared relu/pool and a long name"
    gpu = [_row(op, long, p, peak=12345.6, saved=123456789) for op in run.OPS
           for p in ("eager", "fusedops-reference-graph", "compile-max-autotune")]
    for op in run.OPS:
        text = summarize.table(gpu, op, rounds=15)
        assert max(len(line) for line in text.splitlines() if not line.startswith(long)) <= 120, text
        assert "peak" in text and "median over 15 rounds" in text
    cpu = [_row("conv_block", "mnist conv1", p, compile_ratio=None) for p in ("eager", "fusedops-cpp")]
    text = summarize.table(cpu, "conv_block")
    assert "peak" not in text and "img/s" not in text and "vs compile" not in text and "saved" not in text
    assert "vs eager" in text and "paired" in text and "not exactly the ratio of the median ms" in text


def test_whole_models_come_first_in_tables_and_plot_order():
    rows = [_row("linear", "lin", "eager"), _row("conv_block", "conv", "eager"), _row("train_step", "model", "eager")]
    assert [g[1] for g in summarize.groups(rows)] == ["model", "conv", "lin"]
    args = run.parse_args(["--device", "cpu"])
    assert [w.op for w in run.select_workloads(args)][0] == "train_step"


def test_a_full_layer_name_selects_that_layer_alone():
    def layers(selection):
        args = run.parse_args(["--device", "cpu", "--full", "--ops", "conv_block", "--layers", selection])
        return [w.layer for w in run.select_workloads(args)]

    assert layers("cifar conv2") == ["cifar conv2 32->64 16x16", "cifar conv2 32->64 16x16 no-pool"]
    assert layers("cifar conv2 32->64 16x16") == ["cifar conv2 32->64 16x16"]
    assert layers("cifar conv2 32->64 16x16,no-pool") == [
        "cifar conv2 32->64 16x16", "mnist conv2 32->64 14x14 no-pool", "cifar conv2 32->64 16x16 no-pool"]


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_warnings_and_log_messages_do_not_break_the_progress_bar():
    screen = _Terminal()
    logger = logging.getLogger("torch._dynamo.fusedops_test")
    handler = logging.StreamHandler(screen)
    logger.addHandler(handler)
    try:
        with run.Progress(2, stream=screen) as progress:
            progress.step("job one")
            # what Python's warnings module writes to sys.stderr (pytest records warnings instead)
            sys.stderr.write(warnings.formatwarning("a warning from the middle of a job", UserWarning, __file__, 1))
            logger.warning("torch._dynamo hit config.recompile_limit (8)")
            print("a note on stderr", file=sys.stderr)
            progress.step("job two")
    finally:
        logger.removeHandler(handler)
    # What a terminal shows: each line as left by its last carriage return.
    shown = [line.split("\r")[-1] for line in screen.getvalue().split("\n")]
    for message in ("a warning from the middle", "recompile_limit (8)", "a note on stderr"):
        line = next(line for line in shown if message in line)
        assert "job one" not in line and "[#" not in line, f"{message!r} printed into the bar: {line!r}"
    assert shown[-1] == "" and shown[-2].startswith("[") and "2/2 job two" in shown[-2]
    assert not any("1/2 job one" in line for line in shown[:-2])  # the bar was cleared, then redrawn


def test_a_log_file_gets_a_line_a_job_with_its_start_and_the_end(monkeypatch):
    log = io.StringIO()  # not a terminal
    clock = iter([100.0, 103.4, 130.2, 161.9])
    monkeypatch.setattr(run, "time", types.SimpleNamespace(monotonic=lambda: next(clock)))
    with run.Progress(2, stream=log) as progress:
        progress.step("job one")
        progress.step("job two")
    assert log.getvalue().splitlines() == ["[1/2] job one (at 3 s)", "[2/2] job two (at 30 s)", "[2/2] ended at 62 s"]


def test_plot_is_one_readable_figure(tmp_path):
    pytest.importorskip("matplotlib")
    from PIL import Image

    result = json.loads((ROOT / "benchmarks" / "results" / "cpu-amd-epyc.json").read_text())
    path = tmp_path / "plot.png"
    assert summarize.plot(result["rows"], str(path), summarize.plot_title(result))
    width, height = Image.open(path).size
    assert 800 <= width <= 2000 and 500 <= height <= 1600, (width, height)


@pytest.mark.parametrize("mode", ["fwd", "train"])
def test_a_provider_with_backend_flags_steps_more_than_once(mode):
    """cudnn.benchmark is set for each step of the channels_last provider (on CUDA): a step
    reused one generator-based context, so the second step raised (seen on an H200); the
    flag is restored after each step."""
    import torch

    from benchmarks import providers

    w = workloads.CONV_LAYERS[0]
    provider = providers.Provider("eager-channels_last", w.build(), channels_last=True, cudnn_benchmark=True)
    inputs = providers.make_inputs(w, 2, "cpu", torch.float32, 2, mode)
    step = providers.make_step(provider, w, inputs, mode)
    before = torch.backends.cudnn.benchmark
    for i in range(3):
        step(i)
    assert torch.backends.cudnn.benchmark == before


def test_a_providers_environment_is_set_for_each_step_and_restored(monkeypatch):
    """fusedops-triton-gather's FUSEDOPS_TRITON_CHANNEL_RUNS=0 holds inside every step (seen by
    the module's forward, on CPU here), and the variable is as before after each."""
    import torch
    from torch import nn

    from benchmarks import providers

    monkeypatch.delenv("FUSEDOPS_TRITON_CHANNEL_RUNS", raising=False)
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(os.environ.get("FUSEDOPS_TRITON_CHANNEL_RUNS"))
            return x * 2

    w = workloads.CONV_LAYERS[0]
    provider = providers.Provider("fusedops-triton-gather", Probe(), env={"FUSEDOPS_TRITON_CHANNEL_RUNS": "0"})
    inputs = providers.make_inputs(w, 2, "cpu", torch.float32, 2, "fwd")
    step = providers.make_step(provider, w, inputs, "fwd")
    for i in range(2):
        step(i)
        assert "FUSEDOPS_TRITON_CHANNEL_RUNS" not in os.environ
    assert seen == ["0", "0"]


def test_interleaved_rounds_time_every_provider_once_in_changing_orders():
    from benchmarks import measure

    calls = []
    fns = {name: (lambda i, name=name: calls.append(name)) for name in ("eager", "auto", "cpp", "compile")}
    times = measure.interleaved(fns, "cpu", rounds=12, calls=1)
    assert all(len(t) == 12 for t in times.values())
    rounds = [calls[i : i + 4] for i in range(0, len(calls), 4)]
    assert all(sorted(r) == sorted(fns) for r in rounds)
    # the provider timed right after eager is not always the same one
    followers = {r[r.index("eager") + 1] for r in rounds if r.index("eager") < 3}
    assert len(followers) > 1


class _GraphStandIn:
    """torch.cuda's graph API on the CPU: a "capture" that records nothing and holds no tensor,
    as a real CUDAGraph holds none of the memory allocated outside it."""

    def replay(self):
        pass


@pytest.mark.parametrize("mode,kind", [("train", "conv_block"), ("train", "train_step"), ("fwd", "conv_block")])
def test_graph_replay_keeps_alive_what_the_captured_step_reads(monkeypatch, mode, kind):
    """A CUDA graph reads the tensors its step holds (the gradient fed to backward, the optimizer
    state): they must outlive make_step as long as the replay does (freed, a replay read freed
    memory: the H100's illegal memory access in the first conv-block benchmark)."""
    from benchmarks import providers

    made = []
    real_randn_like = torch.randn_like

    def tracked_randn_like(t, *args, **kwargs):
        out = real_randn_like(t, *args, **kwargs)
        made.append(weakref.ref(out))
        return out

    monkeypatch.setattr(providers.torch, "randn_like", tracked_randn_like)
    stream = types.SimpleNamespace(wait_stream=lambda other: None)
    monkeypatch.setattr(torch.cuda, "Stream", lambda: stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda: stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", _GraphStandIn)
    monkeypatch.setattr(torch.cuda, "graph", lambda g: contextlib.nullcontext())
    w = next(w for w in (workloads.MODELS if kind == "train_step" else workloads.CONV_LAYERS))
    inputs = providers.make_inputs(w, 2, "cpu", torch.float32, 2, mode)
    provider = providers.Provider("eager-graph", w.build(), graph_of="eager")
    step = providers.make_step(provider, w, inputs, mode)
    held = [weakref.ref(x) for x in inputs]
    del inputs
    gc.collect()
    assert all(r() is not None for r in held + made), "a tensor the graph reads was freed"
    step(1)  # replays
    del step
    gc.collect()
    assert all(r() is None for r in held + made), "nothing is kept once the replay is gone"

