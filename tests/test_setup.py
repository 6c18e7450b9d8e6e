"""setup.py's choices: the C++ standard torch requires, and where the CUDA toolkit is."""

import importlib.util
import os
import stat
import types

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def setup_py():
    """setup.py as a module (it calls setup() only when run as __main__)."""
    spec = importlib.util.spec_from_file_location("fusedops_setup", os.path.join(ROOT, "setup.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _toolkit(root):
    """A fake CUDA toolkit under ``root``: bin/nvcc and include/cuda_runtime_api.h."""
    os.makedirs(os.path.join(root, "bin"))
    os.makedirs(os.path.join(root, "include"))
    open(os.path.join(root, "include", "cuda_runtime_api.h"), "w").close()
    _executable(os.path.join(root, "bin", "nvcc"), "#!/bin/sh\necho real nvcc\n")
    return root


def _executable(path, text):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)


def test_cxx_standard_is_what_the_torch_headers_require(setup_py, tmp_path):
    def fake_torch(guard):
        aten = tmp_path / guard / "include" / "ATen"
        aten.mkdir(parents=True)
        (aten / "ATen.h").write_text(f"#if !defined(_MSC_VER) && __cplusplus < {guard}\n#error C++ required\n#endif\n")
        return types.SimpleNamespace(__file__=str(tmp_path / guard / "__init__.py"))

    assert setup_py._cxx_standard(fake_torch("202002L")) == "c++20"  # torch 2.14
    assert setup_py._cxx_standard(fake_torch("201703L")) == "c++17"  # torch 2.11 - 2.13
    installed = torch.__version__.split("+")[0].split(".")
    expected = "c++20" if tuple(int(v) for v in installed[:2]) >= (2, 14) else "c++17"
    assert setup_py._cxx_standard(torch) == expected


def test_cuda_home_found_through_an_nvcc_wrapper_script(setup_py, tmp_path, monkeypatch):
    toolkit = _toolkit(str(tmp_path / "cuda-13.0"))
    wrappers = tmp_path / "local" / "bin"
    wrappers.mkdir(parents=True)
    _executable(str(wrappers / "nvcc"), f'#!/bin/sh\nexec {toolkit}/bin/nvcc "$@"\n')
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", str(wrappers))
    monkeypatch.setattr(setup_py, "CONVENTIONAL_CUDA_HOME", str(tmp_path / "nowhere"))
    # torch guesses the wrapper's parent directory, which has no headers.
    home, why = setup_py._find_cuda_home(str(tmp_path / "local"))
    assert home == toolkit
    assert "nvcc" in why and "has no include/cuda_runtime_api.h" in why


def test_cuda_home_order_explicit_then_torch_then_conventional(setup_py, tmp_path, monkeypatch):
    explicit, guessed, conventional = (_toolkit(str(tmp_path / name)) for name in ("explicit", "guess", "conv"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(setup_py, "CONVENTIONAL_CUDA_HOME", conventional)
    monkeypatch.setenv("CUDA_HOME", explicit)
    assert setup_py._find_cuda_home(guessed) == (explicit, "CUDA_HOME is set")
    monkeypatch.delenv("CUDA_HOME")
    monkeypatch.delenv("CUDA_PATH", raising=False)
    assert setup_py._find_cuda_home(guessed) == (guessed, "torch's guess")
    home, why = setup_py._find_cuda_home(str(tmp_path / "empty"))
    assert home == conventional and "no nvcc on PATH" in why
    monkeypatch.setattr(setup_py, "CONVENTIONAL_CUDA_HOME", str(tmp_path / "nowhere"))
    home, why = setup_py._find_cuda_home(None)
    assert home is None and "no nvcc on PATH" in why


def test_explicit_cuda_home_without_headers_is_an_error(setup_py, tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    with pytest.raises(SystemExit, match="FUSEDOPS_SKIP_CUDA_BUILD"):
        setup_py._find_cuda_home(None)
