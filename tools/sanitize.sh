#!/usr/bin/env bash
# The C++ CPU kernels under AddressSanitizer and UndefinedBehaviorSanitizer (`make sanitize`).
#
# Builds fusedops._C with SANITIZE=1 (setup.py: -fsanitize=address,undefined
# -fno-sanitize-recover=all -fno-omit-frame-pointer -O1 -g, CPU part only) into
# build/sanitize/tree, a copy of the fusedops package and the tests, so the normal build in
# fusedops/ is left as it is. Then runs the tests that reach every cpp kernel path (forward,
# backward, double backward, JVP, gradcheck, every layout and dtype) from that copy, with the
# ASan runtime preloaded (python itself is not instrumented, so the runtime must be loaded
# before anything else).
#
# Any report fails the run: ASan aborts on its first error (halt_on_error is its default,
# abort_on_error makes it a SIGABRT), and -fno-sanitize-recover=all makes every UBSan check
# abort too. Leak detection is off: CPython does not free its interned objects, modules and
# arenas at exit by design, so LeakSanitizer would report thousands of allocations that are
# not ours.
set -euo pipefail

PYTHON=${PYTHON:-python3}
CXX=${CXX:-c++}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$ROOT/build/sanitize
TREE=$OUT/tree
cd "$ROOT"

say() { echo "sanitize: $*"; }
start=$(date +%s)

# The package and the tests (and the benchmark workloads some tests use), without the normal
# build's extension; the sanitized one is built into the same tree (its compiled objects, in
# build/sanitize/tmp, are reused: a later run recompiles only the changed sources).
rm -rf "$TREE"
mkdir -p "$TREE/benchmarks"
cp -r fusedops tests pyproject.toml "$TREE"/
cp benchmarks/*.py "$TREE/benchmarks"/  # tests/models.py imports benchmarks.workloads
find "$TREE" \( -name '__pycache__' -o -name '_C*.so' \) -prune -exec rm -rf {} +

say "building fusedops._C with -fsanitize=address,undefined (log: build/sanitize/build.log)"
if ! SANITIZE=1 FUSEDOPS_SKIP_CUDA_BUILD=1 "$PYTHON" setup.py build_ext --build-lib "$TREE" \
    --build-temp "$OUT/tmp" >"$OUT/build.log" 2>&1; then
  tail -n 40 "$OUT/build.log"
  say "the sanitized build failed" >&2
  exit 1
fi
so=$(ls "$TREE"/fusedops/_C*.so)
if [[ $(ldd "$so") != *libasan* ]]; then
  say "$so is not linked against the ASan runtime" >&2
  exit 1
fi
say "built in $(( $(date +%s) - start )) s"

asan=$("$CXX" -print-file-name=libasan.so)
ubsan=$("$CXX" -print-file-name=libubsan.so)
for lib in "$asan" "$ubsan"; do
  [[ -e $lib ]] || { say "the sanitizer runtime $lib is missing (gcc's libasan/libubsan)" >&2; exit 1; }
done

run() {
  (cd "$TREE" && env LD_PRELOAD="$asan:$ubsan" PYTHONPATH="$TREE" \
    ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1:detect_stack_use_after_return=1:strict_string_checks=1:check_initialization_order=1 \
    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    "$PYTHON" "$@")
}

# The tests must run the sanitized extension, not skip because it did not load.
run -c "
import fusedops, fusedops._native as n
assert n.loaded(), n.LOAD_ERROR
assert fusedops._C.__file__.startswith('$TREE/'), fusedops._C.__file__
print('sanitize: tests run', fusedops._C.__file__)
"

# Every cpp kernel path: forward and backward of every path and layout, double backward,
# JVP, gradcheck, the native autograd ops (and their error checks), the linear kernels, and
# the modules called from several Python threads and across thread counts. -k keeps, of the
# files parametrised by backend, the cpp cases (module names match too). --capture=sys: the
# sanitizers write their report to file descriptor 2, which pytest's default capture would
# lose when the process aborts.
run -m pytest -q -p no:cacheprovider -x --durations=5 --capture=sys -k "cpp or native_path or threads" \
  tests/test_cpp_backend.py tests/test_native_path.py tests/test_gradcheck.py tests/test_conv_block.py \
  tests/test_linear.py tests/test_double_backward.py tests/test_threads.py

say "passed in $(( $(date +%s) - start )) s"
