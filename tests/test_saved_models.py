"""Models pickled by older fusedops versions load and compute the same outputs.

``tests/fixtures/saved-<commit>.pt`` were written by ``tools/save_model_fixture.py`` with the
fusedops of that commit on the path: a model of FusedConvBlock and FusedLinear, and a plain
CNN rewritten by that version's ``fuse()`` (a torch.fx GraphModule in f729e71, the user's
model rewritten in place since), with their outputs. A newer fusedops that renames a class,
a module or an attribute the pickles name, or reads a new attribute in forward, fails here.
"""

from pathlib import Path

import pytest
import torch

import fusedops

FIXTURES = sorted((Path(__file__).parent / "fixtures").glob("saved-*.pt"))


def test_there_are_fixtures_of_older_versions():
    assert len(FIXTURES) >= 2, FIXTURES


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_a_model_saved_by_an_older_version_loads_and_computes_the_same(path):
    saved = torch.load(path, weights_only=False)
    x = saved["input"]
    for name, model in saved["models"].items():
        with torch.no_grad():
            out = model(x)
        where = f"{saved['version']} {name}"
        torch.testing.assert_close(out, saved["outputs"][name], msg=lambda m, where=where: f"{where}: {m}")
        # and it still trains: every parameter gets a gradient
        model.train()
        model(x.requires_grad_()).sum().backward()
        assert all(p.grad is not None for p in model.parameters()), name
        x = x.detach()


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_the_saved_fused_modules_are_todays_classes(path):
    saved = torch.load(path, weights_only=False)
    kinds = {type(m) for model in saved["models"].values() for m in model.modules()}
    assert fusedops.FusedConvBlock in kinds and fusedops.FusedLinear in kinds
