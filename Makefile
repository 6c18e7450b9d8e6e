# make test   install what is missing, build fusedops._C, run the test suite (CPU)
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

.PHONY: install deps test bench lint clean

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

test: install
	$(PYTHON) -m pytest tests -q

bench: install
	@$(PYTHON) -c "import matplotlib" 2>/dev/null || $(PIP) install -q matplotlib \
		|| echo "matplotlib could not be installed: the benchmark writes no plot"
	$(PYTHON) benchmarks/run.py

lint:
	$(call ensure,ruff,ruff)
	$(PYTHON) -m ruff check .

clean:
	rm -rf build *.egg-info fusedops/_C*.so
