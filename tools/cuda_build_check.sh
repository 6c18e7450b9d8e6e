#!/usr/bin/env bash
# make cuda-build-check: build fusedops with its CUDA kernels the way a user does
# (`pip install --no-build-isolation -e .`) against a CUDA build of torch, in a virtualenv of
# its own, and fail unless fusedops._C loads with a CUDA kernel for every native op.
# No GPU is needed. The build runs in a copy of the working tree (build/cuda-build-check/src)
# so that it never touches the in-place CPU build or the environment `make test` tests in.
#
# Then the ops' autograd sources are compiled against the headers of the torch the GPU
# machines run (GPU_MACHINE_TORCH).
#
# Environment: PYTHON (creates the virtualenv, default python3), CUDA_CHECK_TORCH (default
# 2.14.1), GPU_MACHINE_TORCH (default 2.11.0), FUSEDOPS_CUDA_ARCHS (default "80;90"),
# MAX_JOBS (default: all cores), CXX (default g++).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${CUDA_CHECK_TORCH:-2.14.1}
VENV=$ROOT/build/venv-torch$TORCH_VERSION
WORK=$ROOT/build/cuda-build-check
SRC=$WORK/src
start=$(date +%s)

# 1. The virtualenv with torch's CUDA build, made once (.complete marks a finished install).
if [ ! -f "$VENV/.complete" ]; then
    echo "cuda-build-check: creating $VENV (torch==$TORCH_VERSION, CUDA build)"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install -q "torch==$TORCH_VERSION" ninja "setuptools>=64" wheel numpy
    touch "$VENV/.complete"
fi
"$VENV/bin/python" -c "import sys, torch; sys.exit(torch.version.cuda is None)" || {
    echo "cuda-build-check: torch $TORCH_VERSION in $VENV is not a CUDA build" >&2
    exit 1
}

# 2. A copy of the working tree (tracked and untracked, not ignored), keeping file times so
# that ninja rebuilds only what changed; its build directory survives between runs.
mkdir -p "$SRC"
find "$SRC" -mindepth 1 -maxdepth 1 ! -name build -exec rm -rf {} +
git ls-files -z --cached --others --exclude-standard \
    | tar --null --files-from=- --ignore-failed-read -cf - 2>/dev/null | tar -xf - -C "$SRC"

# 3. The build users run, for sm_80 and sm_90. pip builds in a fresh temporary directory, so
# this compiles everything (about two minutes on two cores); make reruns it only when a
# source changed.
log=$WORK/build.log
archs=${FUSEDOPS_CUDA_ARCHS:-80;90}
echo "cuda-build-check: pip install --no-build-isolation -e . (torch $TORCH_VERSION, FUSEDOPS_CUDA_ARCHS=\"$archs\"), log in $log"
if ! (cd "$SRC" && FUSEDOPS_CUDA_ARCHS="$archs" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
        "$VENV/bin/pip" install --no-build-isolation --no-deps -v -e . >"$log" 2>&1); then
    grep "fusedops setup:" "$log" | awk '!seen[$0]++' || true
    grep -E -m 20 "error|Error" "$log" || tail -n 40 "$log"
    echo "cuda-build-check: FAILED: the build failed (full log: $log)" >&2
    exit 1
fi
grep "fusedops setup:" "$log" | awk '!seen[$0]++' || true

# 4. Load it outside the source tree and check the registrations.
(cd "$WORK" && "$VENV/bin/python" "$ROOT/tools/check_cuda_kernels.py" --expect-package "$SRC/fusedops")

# 5. The ops' autograd sources (hand-written nodes, compiled autograd, forward-mode AD use
# torch's internal C++ API, which changes between releases) compiled against the headers of
# the torch the GPU machines run, taken from its wheel (nothing installed; syntax and types only).
GPU_TORCH=${GPU_MACHINE_TORCH:-2.11.0}
HEADERS=$ROOT/build/torch$GPU_TORCH-headers
if [ ! -f "$HEADERS/.complete" ]; then
    echo "cuda-build-check: extracting torch $GPU_TORCH's headers into $HEADERS"
    rm -rf "$HEADERS" "$WORK/wheel"
    "$VENV/bin/pip" download -q --no-deps "torch==$GPU_TORCH" -d "$WORK/wheel"
    "$VENV/bin/python" -c "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); \
z.extractall(sys.argv[2], [n for n in z.namelist() if n.startswith('torch/include/')])" "$WORK"/wheel/torch-*.whl "$HEADERS"
    rm -rf "$WORK/wheel"
    touch "$HEADERS/.complete"
fi
include=$HEADERS/torch/include
pyinclude=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
for source in csrc/*.cpp; do
    if ! "${CXX:-g++}" -std=c++17 -fsyntax-only -DTORCH_API_INCLUDE_EXTENSION_H -DTORCH_EXTENSION_NAME=_C \
            -I"$include" -I"$include/torch/csrc/api/include" -I"$pyinclude" -Icsrc "$source"; then
        echo "cuda-build-check: FAILED: $source does not compile against torch $GPU_TORCH's headers" >&2
        exit 1
    fi
done
echo "cuda-build-check: csrc/*.cpp compile against torch $GPU_TORCH's headers (the GPU machines' torch)"
echo "cuda-build-check: passed in $(( $(date +%s) - start )) s"
