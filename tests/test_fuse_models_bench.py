"""benchmarks/fuse_models.py: a row per model and mode asked for, each pairing the model with
fuse() of it; bad options refused."""

import pytest

from benchmarks import fuse_models


def test_rows_cover_every_model_and_mode(capsys):
    names = ["mlp", "residual_bn"]
    assert fuse_models.main(["--models", ",".join(names), "--batch", "2", "--rounds", "1"]) == 0
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    rows = [[c.strip() for c in r] for r in rows[2:]]  # past the header and its rule
    assert {(r[0], r[1]) for r in rows} == {(n, m) for n in names for m in fuse_models.MODES}
    assert len(rows) == 4
    assert all(float(r[2]) > 0 and float(r[3].rstrip("x")) > 0 for r in rows)


@pytest.mark.parametrize("argv", [["--models", "vgg"], ["--models", ""], ["--rounds", "x"]])
def test_bad_options_exit_2(argv):
    with pytest.raises(SystemExit) as exc:
        fuse_models.main(argv)
    assert exc.value.code == 2
