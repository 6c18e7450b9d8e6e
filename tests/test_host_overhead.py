"""benchmarks/host_overhead.py: the host-time benchmark runs, covers what it promises, refuses bad options."""

import pytest

from benchmarks import host_overhead


def test_host_overhead_rows_cover_every_workload_mode_and_provider(capsys):
    assert host_overhead.main(["--device", "cpu", "--rounds", "1", "--calls", "2"]) == 0
    printed = capsys.readouterr().out
    rows = [line for line in printed.splitlines() if line.startswith("| cpu |")]
    providers = {line.split("|")[4].strip() for line in rows}
    assert {"eager chain", "fused auto", "fused reference", "fused cpp"} <= providers
    for workload in ("Conv2d+ReLU+MaxPool2d", "Linear+ReLU"):
        for mode in ("no_grad fwd", "fwd+bwd"):
            assert any(f"| {workload} | {mode} | fused auto |" in line for line in rows), (workload, mode)
    eager = [line for line in rows if "| eager chain |" in line]
    assert eager and all(line.rstrip(" |").endswith("1.00x") for line in eager)


@pytest.mark.parametrize("argv", [["--rounds", "0"], ["--calls", "-1"], ["--device", "tpu"]])
def test_host_overhead_rejects_bad_options(argv):
    with pytest.raises(SystemExit) as info:
        host_overhead.main(argv)
    assert info.value.code == 2
