"""The backend registry: availability, automatic choice, explicit names, the env override."""

import pytest
import torch

import fusedops
from fusedops import backends

X = torch.randn(1, 2, 6, 6)
W = torch.randn(3, 2, 3, 3)


def test_reference_always_available_and_names_known():
    names = fusedops.available_backends()
    assert "reference" in names
    assert set(names) <= {"reference", "triton", "cpp", "cuda"}
    assert backends.known_backends() == ["reference", "triton", "cpp", "cuda"]


def test_automatic_choice_never_fails_on_valid_input():
    out = fusedops.conv_relu_maxpool2d(X, W)
    torch.testing.assert_close(out, fusedops.conv_relu_maxpool2d(X, W, backend="reference"))
    assert backends.select("", [X, W], "conv_relu_maxpool2d").name in fusedops.available_backends()


def test_explicit_backend_that_cannot_run_lists_reasons():
    unable = [n for n in backends.known_backends() if backends._REGISTRY[n].unsupported_reasons([X, W])]
    assert "cuda" in unable  # CPU tensors
    for name in unable:
        with pytest.raises(RuntimeError, match=f"backend '{name}' cannot run conv_relu_maxpool2d") as info:
            fusedops.conv_relu_maxpool2d(X, W, backend=name)
        assert backends._REGISTRY[name].unsupported_reasons([X, W])[0] in str(info.value)


def test_cuda_backend_rejects_cpu_tensors_with_reason():
    reasons = backends._REGISTRY["cuda"].unsupported_reasons([X, W])
    assert reasons and ("cuda" in reasons[0])


def test_env_var_overrides_automatic_choice(monkeypatch):
    monkeypatch.setenv(backends.ENV_VAR, "reference")
    assert backends.select("", [X, W], "conv_relu_maxpool2d").name == "reference"
    monkeypatch.setenv(backends.ENV_VAR, "cuda")
    with pytest.raises(RuntimeError, match="backend 'cuda' cannot run"):
        fusedops.conv_relu_maxpool2d(X, W)
    monkeypatch.setenv(backends.ENV_VAR, "bogus")
    with pytest.raises(ValueError, match="environment variable FUSEDOPS_BACKEND 'bogus'"):
        fusedops.linear(torch.randn(2, 3), torch.randn(4, 3))


def test_unknown_name_lists_known_ones():
    with pytest.raises(ValueError, match=r"known backends are \['reference', 'triton', 'cpp', 'cuda'\]"):
        fusedops.linear(torch.randn(2, 3), torch.randn(4, 3), backend="mkl")


def test_no_gpu_query_at_import():
    import subprocess
    import sys

    code = (
        "import torch\n"
        "calls = []\n"
        "torch.cuda.is_available = lambda: calls.append(1) or False\n"
        "torch.cuda.device_count = lambda: calls.append(1) or 0\n"
        "import fusedops\n"
        "assert not calls, calls\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_import_works_without_extension():
    import subprocess
    import sys

    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'fusedops._C':\n"
        "            raise ImportError('blocked for the test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import torch, fusedops\n"
        "from fusedops import _native\n"
        "assert not _native.loaded() and 'blocked' in _native.LOAD_ERROR\n"
        "x = torch.randn(1, 2, 6, 6)\n"
        "assert fusedops.conv_relu_maxpool2d(x, torch.randn(3, 2, 3, 3)).shape == (1, 3, 2, 2)\n"
        "assert 'reference' in fusedops.available_backends()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_backend_without_kernels_for_an_op_is_refused_not_used(monkeypatch):
    class ConvOnly(backends.ReferenceBackend):
        name = "convonly"
        ops = ("conv_relu_maxpool2d",)

    monkeypatch.setitem(backends._REGISTRY, "convonly", ConvOnly())
    monkeypatch.setitem(backends.AUTO_ORDER, "cpu", ("convonly", "reference"))
    backends.clear_choice_cache()  # the registry was changed behind register()'s back
    lin = [torch.randn(2, 3), torch.randn(4, 3)]
    with pytest.raises(RuntimeError, match="'convonly' has no kernels for linear"):
        backends.select("convonly", lin, "linear")
    assert backends.select("", lin, "linear").name == "reference"
    assert backends.select("", [X, W], "conv_relu_maxpool2d").name == "convonly"
