"""Build the compiled extension ``fusedops._C`` from ``csrc/``.

A torch extension must be built against the torch it will run with (same version, same
C++ ABI, CUDA or not), so it builds against the torch installed in the environment:
``pip install --no-build-isolation .`` (or ``-e .``). pyproject.toml does not list torch as
a build requirement, so that pip's default isolated build (which would download the newest
torch, often a multi-GB CUDA build, into a throwaway environment) stops at once with a
one-line message saying this, before anything is downloaded or compiled.

The C++ sources (schemas and CPU kernels) are always built. The CUDA sources are built
when torch has CUDA and a CUDA toolkit is found, unless ``FUSEDOPS_SKIP_CUDA_BUILD=1``.

The C++ standard is the one the installed torch's headers require (C++17 up to torch 2.13,
C++20 from torch 2.14), for g++ and nvcc alike.

The CUDA toolkit is the first of: ``CUDA_HOME`` (or ``CUDA_PATH``) when set; torch's own
guess when it holds ``include/cuda_runtime_api.h``; the toolkit of the real ``nvcc`` that
the ``nvcc`` on PATH is, links to or (as a wrapper script) execs; ``/usr/local/cuda``. The
build prints which it used and why, or why it builds without the CUDA kernels.

Environment:
  FUSEDOPS_SKIP_CUDA_BUILD=1   build the CPU part only
  FUSEDOPS_CUDA_ARCHS="80;90"  compute capabilities to build SASS for (PTX for the newest)
  CUDA_HOME=/path/to/cuda      the CUDA toolkit to build with
  DEBUG=1                      -O0 -g (and -lineinfo for CUDA)
  SANITIZE=1                   the CPU part only, with AddressSanitizer and UndefinedBehaviorSanitizer
                               (-fsanitize=address,undefined -fno-sanitize-recover=all -fno-wrapv
                               -O1 -g):
                               what `make sanitize` builds into build/sanitize/ and tests
  MAX_JOBS=N                   parallel compile jobs (ninja)
"""

import glob
import os
import re
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
CUDA_HEADER = os.path.join("include", "cuda_runtime_api.h")
CONVENTIONAL_CUDA_HOME = "/usr/local/cuda"


def _say(message):
    print(f"fusedops setup: {message}", file=sys.stderr)


def _sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _shared_libstdcxx() -> list:
    """The link argument for the shared libstdc++ this process (torch) loaded: its path from
    /proc/self/maps on Linux, ``-lstdc++`` where that is not found, nothing elsewhere."""
    if not sys.platform.startswith("linux"):
        return []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split(maxsplit=5)[-1].strip()
                if os.path.basename(path).startswith("libstdc++.so") and os.path.isfile(path):
                    return [path]
    except OSError:
        pass
    return ["-lstdc++"]


def _cxx_standard(torch):
    """The standard the installed torch's headers demand: ATen.h stops the build with
    ``#error`` below it (``__cplusplus < 202002L`` from torch 2.14, ``201703L`` before)."""
    header = os.path.join(os.path.dirname(torch.__file__), "include", "ATen", "ATen.h")
    try:
        with open(header) as f:
            found = re.search(r"__cplusplus\s*<\s*(\d{4})\d\dL", f.read())
    except OSError:
        found = None
    year = int(found.group(1)) if found else 2017
    return f"c++{max(year, 2017) % 100}"


def _has_cuda_headers(home):
    return bool(home) and os.path.isfile(os.path.join(home, CUDA_HEADER))


def _real_nvcc(nvcc, depth=0):
    """The nvcc binary behind ``nvcc``: symlinks resolved, and a shell script that execs
    another nvcc (a common wrapper) followed to the one it runs."""
    real = os.path.realpath(nvcc)
    try:
        with open(real, "rb") as f:
            head = f.read(4096)
    except OSError:
        return real
    if not head.startswith(b"#!") or depth > 4:
        return real
    for path in re.findall(rb"(/[^\s'\"]*/nvcc)(?![\w.-])", head):
        target = os.path.realpath(path.decode())
        if target != real and os.path.isfile(target) and os.access(target, os.X_OK):
            return _real_nvcc(target, depth + 1)
    return real


def _find_cuda_home(torch_guess):
    """``(toolkit directory or None, why)``: see the module docstring for the order."""
    explicit = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if explicit:
        if not _has_cuda_headers(explicit):
            raise SystemExit(
                f"fusedops setup: CUDA_HOME={explicit} has no {CUDA_HEADER}; point CUDA_HOME at the CUDA "
                "toolkit, or set FUSEDOPS_SKIP_CUDA_BUILD=1 to build without the CUDA kernels"
            )
        return explicit, "CUDA_HOME is set"
    tried = []
    if _has_cuda_headers(torch_guess):
        return torch_guess, "torch's guess"
    if torch_guess:
        tried.append(f"torch's guess {torch_guess} has no {CUDA_HEADER}")
    nvcc = shutil.which("nvcc")
    if nvcc:
        home = os.path.dirname(os.path.dirname(_real_nvcc(nvcc)))
        if _has_cuda_headers(home):
            return home, "; ".join([f"the toolkit of the nvcc that {nvcc} runs"] + tried)
        tried.append(f"the nvcc on PATH ({nvcc}) leads to {home}, which has no {CUDA_HEADER}")
    else:
        tried.append("no nvcc on PATH")
    if _has_cuda_headers(CONVENTIONAL_CUDA_HOME):
        return CONVENTIONAL_CUDA_HOME, "; ".join(["the conventional location"] + tried)
    tried.append(f"{CONVENTIONAL_CUDA_HOME} has no {CUDA_HEADER}")
    return None, "; ".join(tried)


def _cuda_home(torch):
    """The CUDA toolkit to build the CUDA sources with, or None (saying why) to skip them."""
    if os.environ.get("FUSEDOPS_SKIP_CUDA_BUILD", "0") == "1":
        _say("building without the CUDA kernels: FUSEDOPS_SKIP_CUDA_BUILD=1")
        return None
    if torch.version.cuda is None:
        _say(f"building without the CUDA kernels: torch {torch.__version__} is not a CUDA build")
        return None
    from torch.utils import cpp_extension

    home, why = _find_cuda_home(cpp_extension.CUDA_HOME)
    if home is None:
        _say(f"building without the CUDA kernels: no CUDA toolkit found ({why}); set CUDA_HOME")
        return None
    # torch reads its module-level CUDA_HOME when it builds (nvcc, include and library paths).
    cpp_extension.CUDA_HOME = home
    os.environ["CUDA_HOME"] = home
    _say(f"CUDA toolkit {home} ({why})")
    return home


def _gencode_flags():
    archs = [a.strip() for a in os.environ.get("FUSEDOPS_CUDA_ARCHS", "80;90").split(";") if a.strip()]
    flags = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    newest = max(archs, key=lambda a: int("".join(c for c in a if c.isdigit())))
    flags.append(f"-gencode=arch=compute_{newest},code=compute_{newest}")
    return flags


def _isolated_build() -> bool:
    """Whether this runs in a build frontend's isolated environment (pip's ``pip-build-env-*``,
    ``python -m build``'s ``build-env-*``), which does not see the installed packages."""
    return any(re.search(r"(^|[/\\])(pip-)?build-env-", p) for p in sys.path + [sys.prefix])


def _torch():
    """The installed torch, or stop with one line saying how to build against it."""
    try:
        import torch
    except ImportError:
        if _isolated_build():
            raise SystemExit(
                "fusedops setup: use `pip install --no-build-isolation .` (or -e .): a torch extension must be "
                "built against the torch it runs with, and this isolated build environment has no torch "
                "(installing one here would download another torch, e.g. a multi-GB CUDA build)"
            ) from None
        raise SystemExit(
            "fusedops setup: torch is not installed: install torch>=2.11 first, then "
            "`pip install --no-build-isolation .` (a torch extension is built against the torch it runs with)"
        ) from None
    return torch


def _extensions():
    torch = _torch()
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    debug = os.environ.get("DEBUG", "0") == "1"
    std = _cxx_standard(torch)
    _say(f"torch {torch.__version__}: -std={std}")
    sanitize = os.environ.get("SANITIZE", "0") == "1"
    cxx = ["-O0", "-g"] if debug else ["-O3"]
    cxx += [f"-std={std}", "-fopenmp"] if os.name != "nt" else []
    # libstdc++ shared with torch, named by the path torch loaded it from: a g++ whose library
    # path holds only the static archive (a wrapper with -B<dir of libstdc++.a>, seen on a GPU
    # machine) resolves -lstdc++ to libstdc++.a and gives the extension its own copy, whose
    # streams then fail with torch's (error messages lost their numbers, or the process crashed
    # formatting them). Named before the driver's own -lstdc++, the shared library satisfies
    # every reference and the archive adds nothing.
    link = ["-fopenmp"] + _shared_libstdcxx()
    if sanitize:
        flags = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
        # -fno-wrapv undoes the -fwrapv of Python's own CFLAGS, which makes signed overflow
        # defined and so hides it from UBSan; the last -O wins.
        cxx += flags + ["-fno-wrapv", "-O1", "-g"]
        link += flags
        _say("building the CPU part with AddressSanitizer and UndefinedBehaviorSanitizer: SANITIZE=1")
    sources = _sources("csrc/*.cpp") + _sources("csrc/cpu/*.cpp")
    define_macros = []
    cuda_sources = _sources("csrc/cuda/*.cu") + _sources("csrc/cuda/*.cpp")
    if cuda_sources and not sanitize and _cuda_home(torch):
        nvcc = ["-O0", "-g", "-lineinfo"] if debug else ["-O3", "-lineinfo"]
        nvcc += [f"-std={std}", "--expt-relaxed-constexpr"] + _gencode_flags()
        define_macros.append(("FUSEDOPS_WITH_CUDA", "1"))
        return [
            CUDAExtension(
                "fusedops._C",
                sources + cuda_sources,
                define_macros=define_macros,
                extra_compile_args={"cxx": cxx, "nvcc": nvcc},
                extra_link_args=link,
            )
        ]
    return [
        CppExtension(
            "fusedops._C",
            sources,
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx},
            extra_link_args=link,
        )
    ]


def _cmdclass():
    from torch.utils.cpp_extension import BuildExtension

    return {"build_ext": BuildExtension.with_options(use_ninja=True)}


# setuptools runs this file as __main__ (python setup.py ..., pip's build backend); tests
# import it under another name to check the helpers above.
if __name__ == "__main__":
    setup(ext_modules=_extensions(), cmdclass=_cmdclass())
