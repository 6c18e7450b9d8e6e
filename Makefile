# make test               install what is missing, build fusedops._C, prove the GPU side builds
#                         (cuda-build-check, cuda-kernel-check, triton-check: no GPU needed), run
#                         the test suite
# make fuzz               the property tests (tests/test_properties.py, hypothesis) with the long
#                         profile: about 25 times the examples of make test's (~20-30 minutes on 2
#                         cores), random seeds, failures kept in .hypothesis/ (git-ignored)
# make bench              install what is missing, build, run the benchmarks on the best device present
#                         (benchmarks/run.py), then the host time per call (benchmarks/host_overhead.py)
#                         and every fuse() test model against its original on the CPU (fuse_models.py);
#                         writes only to benchmarks/results/local/ (git-ignored) and says what it wrote
# make bench-save         the same benchmarks, run.py's written to benchmarks/results/: the committed results
# make cuda-build-check   build fusedops with its CUDA kernels against torch 2.14.1 (CUDA build) in
#                         build/venv-torch2.14.1, check every CUDA kernel is registered, and compile
#                         csrc/*.cpp against the headers of the GPU machines' torch (2.11.0)
# make cuda-kernel-check  compile the CUDA kernels for sm_90 and sm_80 with nvcc alone and hold the
#                         implicit GEMMs to their rules (registers for 2 blocks per SM, no 64-bit
#                         division in a loop, one barrier per main-loop step: tools/cuda_kernel_report.py);
#                         writes benchmarks/cuda-sm90.md (make test: its report in build/cuda-kernel-check/)
# make triton-check       compile every Triton kernel for sm_90 and sm_80 as the launchers specialise
#                         it (Triton 3.6 in build/venv-triton3.6); writes benchmarks/triton-sm90.md
#                         (make test runs the same check, its report in build/triton-check/)
# make sanitize           build fusedops._C with -fsanitize=address,undefined into build/sanitize/ (the
#                         normal build is left as it is) and run the cpp kernels' tests against it with
#                         the ASan runtime preloaded (tools/sanitize.sh); any sanitizer report fails it
# make gpu-report         on a GPU machine (no package registry needed): build for its GPU, the gpu tests,
#                         compute-sanitizer, the GPU benchmarks -> benchmarks/results/<gpu>/summary.md and
#                         its logs; STAGE=build|test|sanitize|bench runs one stage, BUDGET=seconds bounds
#                         the whole report, RESUME=1 (or RESUME=<report dir>) runs what the last one left
#                         undone, DRY_RUN=1 only checks
#
# `make test` runs the three GPU checks when a source they cover changed since they last passed
# (always on a fresh clone); their virtualenvs are made once and reused. `make test GPU_CHECKS=0`
# skips them (a machine without a CUDA toolkit or without the torch 2.14.1 / Triton 3.6 wheels).
# It runs `make sanitize` the same way: when a C++ source changed since it last passed.

SHELL := /bin/bash
PYTHON ?= python3
PIP := $(PYTHON) -m pip
STAMP := build/.installed
SOURCES := setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/cpu/*.cpp csrc/cuda/*.cu csrc/cuda/*.cpp csrc/*.h csrc/*/*.h csrc/cuda/*.cuh)

# $(call ensure,module,requirement): pip-install requirement only when module does not import,
# so a machine that already has it (or has no package registry) is left as it is.
define ensure
	@$(PYTHON) -c "import $(1)" 2>/dev/null || { echo "make: installing $(2)"; $(PIP) install -q "$(2)"; }
endef

# The build, showing the compiler steps (ninja's [n/N] lines) and setup.py's choices.
define build
	@echo "make: building fusedops._C against torch $$($(PYTHON) -c 'import torch; print(torch.__version__)')" \
		"(pip install --no-build-isolation -e .; a few minutes on 2 cores; log in build/install.log)"
	@mkdir -p build
	@set -o pipefail; start=$$(date +%s); \
	$(PIP) install -v --no-build-isolation -e . 2>&1 | tee build/install.log \
		| sed -un -e 's/^ *\(\[[0-9]*\/[0-9]*\]\) .* -c [^ ]*\/\(csrc\/[^ ]*\) .*/  \1 compiling \2/p' \
			-e 's/^ *\(fusedops setup:\)/  \1/p' -e '/^Successfully installed/p' \
		| awk '!seen[$$0]++ { print; fflush() }' \
		|| { tail -n 40 build/install.log; echo "make: the build failed (log: build/install.log)" >&2; exit 1; }; \
	echo "make: built in $$(( $$(date +%s) - start )) s"
endef

GPU_CHECKS ?= 1
CUDA_CHECK_TORCH ?= 2.14.1
CUDA_CHECK_STAMP := build/cuda-build-check/.passed
CUDA_CHECK_SOURCES := $(SOURCES) fusedops/_native.py tools/cuda_build_check.sh tools/check_cuda_kernels.py
TRITON_VENV := build/venv-triton3.6
TRITON_CHECK_STAMP := build/triton-check/.passed
TRITON_CHECK_SOURCES := $(wildcard fusedops/triton/*.py) fusedops/ops/conv_block.py fusedops/functional.py \
	fusedops/_args.py $(wildcard tools/triton_*.py)
SANITIZE_STAMP := build/sanitize/.passed
SANITIZE_SOURCES := setup.py $(wildcard csrc/*.cpp csrc/cpu/*.cpp csrc/*.h csrc/cpu/*.h) tools/sanitize.sh
CUDA_KERNEL_STAMP := build/cuda-kernel-check/.passed
CUDA_KERNEL_SOURCES := $(wildcard csrc/cuda/*.cu csrc/cuda/*.cuh csrc/cuda/*.h csrc/*.h) tools/cuda_kernel_report.py
GPU_CHECK_STAMPS := $(if $(filter 1,$(GPU_CHECKS)),$(CUDA_CHECK_STAMP) $(CUDA_KERNEL_STAMP) $(TRITON_CHECK_STAMP))

.PHONY: install deps test fuzz bench bench-save lint clean cuda-build-check cuda-kernel-check triton-check sanitize

deps:
	@echo "make: checking the tools and packages (installs only what is missing)"
	@$(PYTHON) -c "import torch" 2>/dev/null || { echo "make: installing torch==2.13.0 (CPU build)"; \
		$(PIP) install -q torch==2.13.0; }
	@$(PYTHON) -c "import setuptools, sys; v = int(setuptools.__version__.split('.')[0]); sys.exit(v < 64)" 2>/dev/null \
		|| { echo "make: installing setuptools>=64"; $(PIP) install -q "setuptools>=64"; }
	$(call ensure,wheel,wheel)
	$(call ensure,ninja,ninja)
	$(call ensure,numpy,numpy)
	$(call ensure,triton,triton)
	$(call ensure,pytest,pytest)
	$(call ensure,hypothesis,hypothesis)
	$(call ensure,pytest_benchmark,pytest-benchmark)
	@$(PYTHON) -c "import matplotlib" 2>/dev/null || { echo "make: installing matplotlib (the benchmark plot)"; \
		$(PIP) install -q matplotlib || echo "make: matplotlib could not be installed: no benchmark plot"; }

$(STAMP): $(SOURCES) | deps
	$(call build)
	@mkdir -p build && touch $(STAMP)

install: deps $(STAMP)

test: install $(SANITIZE_STAMP) $(GPU_CHECK_STAMPS)
	@$(if $(GPU_CHECK_STAMPS),,echo "GPU_CHECKS=$(GPU_CHECKS): cuda-build-check, cuda-kernel-check and triton-check skipped")
	@echo "make: running the test suite (pytest tests; about 20-30 minutes on 2 cores)"
	$(PYTHON) -m pytest tests -q

# Property tests with the long hypothesis profile (tests/strategies.py): add what it finds to
# tests/test_properties.py as @example cases or regression tests.
fuzz: install
	FUSEDOPS_HYPOTHESIS_PROFILE=fuzz $(PYTHON) -m pytest tests/test_properties.py -q --hypothesis-show-statistics

# The C++ CPU kernels under AddressSanitizer and UndefinedBehaviorSanitizer (tools/sanitize.sh).
# Measured on 2 cores: the sanitized build 4 minutes on a fresh clone (only the changed sources
# later), the 280 cpp tests under ASan 22 s idle, up to 4 minutes on a loaded machine.
sanitize: | deps
	PYTHON=$(PYTHON) tools/sanitize.sh
	@touch $(SANITIZE_STAMP)

$(SANITIZE_STAMP): $(SANITIZE_SOURCES) | deps
	@echo "make: sanitize (a C++ source changed since it last passed; about 1-5 minutes)"
	PYTHON=$(PYTHON) tools/sanitize.sh
	@touch $@

# The extension with its CUDA kernels, built as users build it, against a CUDA build of torch.
cuda-build-check:
	PYTHON=$(PYTHON) CUDA_CHECK_TORCH=$(CUDA_CHECK_TORCH) tools/cuda_build_check.sh

$(CUDA_CHECK_STAMP): $(CUDA_CHECK_SOURCES)
	@echo "make: cuda-build-check (a source it covers changed since it last passed; about 2-3 minutes)"
	PYTHON=$(PYTHON) CUDA_CHECK_TORCH=$(CUDA_CHECK_TORCH) tools/cuda_build_check.sh
	@touch $@

# The CUDA kernels compiled by nvcc alone (no torch needed), their resources and loops checked.
cuda-kernel-check:
	$(PYTHON) tools/cuda_kernel_report.py --check

$(CUDA_KERNEL_STAMP): $(CUDA_KERNEL_SOURCES)
	@echo "make: cuda-kernel-check (a CUDA source changed since it last passed; about 1 minute)"
	@mkdir -p $(dir $@)
	$(PYTHON) tools/cuda_kernel_report.py --check --out $(dir $@)cuda-sm90.md > /dev/null
	@touch $@

# Every Triton kernel compiled for the GPU machines' Triton (3.6) and GPUs (sm_90, sm_80).
triton-check: $(TRITON_VENV)/.complete
	$(TRITON_VENV)/bin/python tools/triton_check.py

# Run by make test: the same check, its report in build/ (the committed one changes only with
# an explicit make triton-check, so make test leaves git status clean).
$(TRITON_CHECK_STAMP): $(TRITON_VENV)/.complete $(TRITON_CHECK_SOURCES)
	@echo "make: triton-check (a source it covers changed since it last passed; about 4 minutes)"
	@mkdir -p $(dir $@)
	$(TRITON_VENV)/bin/python tools/triton_check.py --out $(dir $@)triton-sm90.md
	@touch $@

# torch 2.13 (CPU) is only the host side of the launchers; torch 2.14 pins another Triton.
$(TRITON_VENV)/.complete:
	@echo "make: creating $(TRITON_VENV) (torch 2.13 CPU + Triton 3.6) for triton-check"
	rm -rf $(TRITON_VENV)
	$(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/pip install -q torch==2.13.0 "triton==3.6.*" numpy
	@touch $@

# Results go to benchmarks/results/local/ (git-ignored); bench-save writes the committed ones.
bench: install
	$(PYTHON) benchmarks/run.py
	$(PYTHON) benchmarks/host_overhead.py
	$(PYTHON) benchmarks/fuse_models.py

bench-save: install
	$(PYTHON) benchmarks/run.py --save
	$(PYTHON) benchmarks/host_overhead.py
	$(PYTHON) benchmarks/fuse_models.py

lint:
	$(call ensure,ruff,ruff)
	$(PYTHON) -m ruff check .

clean:
	rm -rf build *.egg-info fusedops/_C*.so

# Stages, files and time limits: benchmarks/gpu_report.py. Needs only what the GPU machines have.
.PHONY: gpu-report
gpu-report:
	$(PYTHON) -m benchmarks.gpu_report $(if $(STAGE),--stage $(STAGE)) $(if $(BUDGET),--budget $(BUDGET)) \
		$(if $(filter-out 0,$(RESUME)),--resume $(filter-out 1,$(RESUME))) $(if $(filter 1,$(DRY_RUN)),--dry-run)
