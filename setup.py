"""Build the compiled extension ``fusedops._C`` from ``csrc/``.

The C++ sources (schemas and CPU kernels) are always built. The CUDA sources are built
when torch has CUDA and nvcc is present, unless ``FUSEDOPS_SKIP_CUDA_BUILD=1``.

Environment:
  FUSEDOPS_SKIP_CUDA_BUILD=1   build the CPU part only
  FUSEDOPS_CUDA_ARCHS="80;90"  compute capabilities to build SASS for (PTX for the newest)
  DEBUG=1                      -O0 -g (and -lineinfo for CUDA)
  MAX_JOBS=N                   parallel compile jobs (ninja)
"""

import glob
import os
import shutil
import warnings

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _want_cuda(torch):
    if os.environ.get("FUSEDOPS_SKIP_CUDA_BUILD", "0") == "1":
        return False
    if torch.version.cuda is None:
        return False
    from torch.utils.cpp_extension import CUDA_HOME

    if CUDA_HOME is None and shutil.which("nvcc") is None:
        warnings.warn("fusedops: torch has CUDA but nvcc was not found; building CPU kernels only", stacklevel=2)
        return False
    return True


def _gencode_flags():
    archs = [a.strip() for a in os.environ.get("FUSEDOPS_CUDA_ARCHS", "80;90").split(";") if a]
    flags = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    newest = max(archs, key=lambda a: int("".join(c for c in a if c.isdigit())))
    flags.append(f"-gencode=arch=compute_{newest},code=compute_{newest}")
    return flags


def _extensions():
    import torch
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    debug = os.environ.get("DEBUG", "0") == "1"
    cxx = ["-O0", "-g"] if debug else ["-O3"]
    cxx += ["-std=c++17", "-fopenmp"] if os.name != "nt" else []
    sources = _sources("csrc/*.cpp") + _sources("csrc/cpu/*.cpp")
    define_macros = []
    cuda_sources = _sources("csrc/cuda/*.cu") + _sources("csrc/cuda/*.cpp")
    if cuda_sources and _want_cuda(torch):
        nvcc = ["-O0", "-g", "-lineinfo"] if debug else ["-O3", "-lineinfo"]
        nvcc += ["-std=c++17", "--expt-relaxed-constexpr"] + _gencode_flags()
        define_macros.append(("FUSEDOPS_WITH_CUDA", "1"))
        return [
            CUDAExtension(
                "fusedops._C",
                sources + cuda_sources,
                define_macros=define_macros,
                extra_compile_args={"cxx": cxx, "nvcc": nvcc},
                extra_link_args=["-fopenmp"],
            )
        ]
    return [
        CppExtension(
            "fusedops._C",
            sources,
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx},
            extra_link_args=["-fopenmp"],
        )
    ]


def _cmdclass():
    from torch.utils.cpp_extension import BuildExtension

    return {"build_ext": BuildExtension.with_options(use_ninja=True)}


setup(ext_modules=_extensions(), cmdclass=_cmdclass())
