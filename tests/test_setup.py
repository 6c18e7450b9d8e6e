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


# ---- pip install . : built against the installed torch, never an isolated download ----


def test_torch_is_not_a_build_requirement():
    """An isolated build must not download a torch of its own (pyproject.toml's [build-system])."""
    import re

    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        section = f.read().split("[build-system]", 1)[1].split("\n[", 1)[0]
    requires = re.search(r"^requires\s*=\s*\[(.*?)\]", section, re.M | re.S).group(1)
    names = [re.split(r"[<>=!~ ;\[]", r.strip().strip("\"'"))[0] for r in requires.split(",") if r.strip()]
    assert "setuptools" in names and "torch" not in names, names


def test_isolated_build_is_detected(setup_py, monkeypatch):
    monkeypatch.setattr(setup_py.sys, "path", ["/tmp/pip-build-env-k2x_9/overlay/lib/python3.11/site-packages"])
    assert setup_py._isolated_build()
    monkeypatch.setattr(setup_py.sys, "path", ["/usr/lib/python3.11", "/home/me/rebuild-env-x"])
    monkeypatch.setattr(setup_py.sys, "prefix", "/usr")
    assert not setup_py._isolated_build()


def _fresh_venv(tmp_path):
    import subprocess
    import sys

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    return venv / "bin" / "pip"


@pytest.mark.slow
def test_isolated_pip_install_refuses_at_once_with_one_line(tmp_path):
    """`pip install .` (build isolation) in a fresh virtualenv: one line saying to use
    --no-build-isolation, before anything is compiled and without downloading a torch (a few
    seconds: a virtualenv, then pip fetching setuptools, wheel and ninja)."""
    import shutil
    import subprocess

    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), src / name)
    pip = _fresh_venv(tmp_path)
    result = subprocess.run([str(pip), "install", "--disable-pip-version-check", str(src)], capture_output=True,
                            text=True, timeout=300)
    out = result.stdout + result.stderr
    if "Getting requirements to build wheel" not in out:
        pytest.skip(f"pip could not install the build requirements (setuptools, wheel, ninja) here: {out[-500:]}")
    assert result.returncode != 0
    lines = [line.strip() for line in out.splitlines() if "fusedops setup:" in line]
    assert len(lines) == 1, out
    assert "pip install --no-build-isolation ." in lines[0] and "built against the torch it runs with" in lines[0]
    assert "torch-" not in out and "Collecting torch" not in out  # no torch fetched
    assert "compiling" not in out.lower() and not (src / "build").exists()
