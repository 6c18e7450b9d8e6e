"""benchmarks/linear_layers.py: a row for every layer, activation, mode and thread count asked for,
each pairing the eager chain with a FusedLinear of the same activation; bad options refused."""

import pytest

from benchmarks import linear_layers


def test_rows_cover_every_activation_mode_and_thread_count(capsys):
    argv = ["--threads", "1,2", "--rounds", "1", "--shapes", "3x8x16"]
    assert linear_layers.main(argv) == 0
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if line[:3].strip("| ").isdigit()]
    got = {(r[0].strip(), r[1].strip(), r[2].strip(), r[3].strip()) for r in rows}
    want = {(t, layer, act, mode) for t in ("1", "2") for layer in ("3 x 8 -> 16",)
            for act in linear_layers.ACTIVATIONS for mode in ("fwd", "train")}
    assert got == want
    assert all(float(r[5]) > 0 for r in rows)


@pytest.mark.parametrize("argv", [["--acts", "tanh"], ["--rounds", "x"]])
def test_bad_options_exit_2(argv):
    with pytest.raises(SystemExit) as exc:
        linear_layers.main(argv)
    assert exc.value.code == 2
