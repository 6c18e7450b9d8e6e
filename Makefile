# make test   install what is missing, build fusedops._C, compile every CUDA kernel file with
#             nvcc for sm_80 and sm_90 (when nvcc is present), run the test suite
# make bench  install what is missing, build, run the benchmarks on the best device present

PYTHON ?= python3
PIP := $(PYTHON) -m pip
STAMP := build/.installed
SOURCES := setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/cpu/*.cpp csrc/cuda/*.cu csrc/cuda/*.cpp csrc/*.h csrc/*/*.h)

# $(call ensure,module,requirement): pip-install requirement only when module does not import,
# so a machine that already has it (or has no package registry) is left as it is.
define ensure
	@$(PYTHON) -c "import $(1)" 2>/dev/null || $(PIP) install -q "$(2)"
endef

# nvcc, when installed (on PATH or in /usr/local/cuda); the CUDA kernels compile without a GPU.
NVCC ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
CUDA_SOURCES := $(wildcard csrc/cuda/*.cu)
CUDA_HEADERS := $(wildcard csrc/cuda/*.cuh csrc/cuda/*.h csrc/*.h)
CUDA_ARCHS := 80 90
# The defines torch's extension build passes to nvcc, so that this check sees what setup.py builds.
NVCC_FLAGS := -std=c++17 --expt-relaxed-constexpr -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ \
	-D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__ $(foreach a,$(CUDA_ARCHS),-gencode=arch=compute_$(a),code=sm_$(a))
CUDA_CHECKS := $(patsubst csrc/cuda/%.cu,build/cuda-check/%.o,$(CUDA_SOURCES))

.PHONY: install deps test bench lint clean cuda-check

deps:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0
	@$(PYTHON) -c "import setuptools, sys; v = int(setuptools.__version__.split('.')[0]); sys.exit(v < 64)" 2>/dev/null \
		|| $(PIP) install -q "setuptools>=64"
	$(call ensure,wheel,wheel)
	$(call ensure,ninja,ninja)
	$(call ensure,numpy,numpy)
	$(call ensure,triton,triton)
	$(call ensure,pytest,pytest)
	$(call ensure,pytest_benchmark,pytest-benchmark)

$(STAMP): $(SOURCES)
	$(MAKE) deps
	$(PIP) install -q --no-build-isolation -e .
	@mkdir -p build && touch $(STAMP)

install: deps $(STAMP)

test: install cuda-check
	$(PYTHON) -m pytest tests -q

# Compiles each csrc/cuda/*.cu for every arch in CUDA_ARCHS, so that a CUDA syntax or type
# error fails here even on a machine without a GPU (or with a CPU-only torch).
cuda-check: $(if $(NVCC),$(CUDA_CHECKS),)
	@$(if $(NVCC),echo "nvcc: $(notdir $(CUDA_SOURCES)) compile for sm_$(subst $(eval) ,/sm_,$(CUDA_ARCHS))",echo "nvcc not found: CUDA kernels not compile-checked")

build/cuda-check/%.o: csrc/cuda/%.cu $(CUDA_HEADERS)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCC_FLAGS) -c $< -o $@

bench: install
	@$(PYTHON) -c "import matplotlib" 2>/dev/null || $(PIP) install -q matplotlib \
		|| echo "matplotlib could not be installed: the benchmark writes no plot"
	$(PYTHON) benchmarks/run.py

lint:
	$(call ensure,ruff,ruff)
	$(PYTHON) -m ruff check .

clean:
	rm -rf build *.egg-info fusedops/_C*.so
