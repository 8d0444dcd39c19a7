# The two commands of the README. Both set up a fresh machine: system packages (as root), venv, the project.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
# demo data; FFCV's build needs; a real Slurm for the cluster tests
DEMO_PKGS := dataset-fashion-mnist
TEST_PKGS := $(DEMO_PKGS) pkg-config libopencv-dev libturbojpeg0-dev slurm-wlm munge

.PHONY: demo test test-min install install-min system-demo system-test lint bench clean

demo: system-demo install
	$(VENV)/bin/mkf demo

test: system-test install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports  # the layering contracts in pyproject.toml
	$(VENV)/bin/python -m pytest -q --durations=25  # the slowest tests, to keep CI under an hour

install: $(STAMP)

# The declared floors of torch, Lightning and timm (pyproject.toml), tested: a second venv at exactly those
# versions runs the fast subset that leans on what each one added (mid-epoch resume, EMA internals, the bf16
# query). Raise a floor here and in pyproject.toml together. torch comes from the package index itself
# (--isolated skips a local find-links folder): a CPU-only local torch wheel cannot load PyPI's torchvision.
MIN_VENV  ?= .venv-min
MIN_PY    := $(MIN_VENV)/bin/python
MIN_TORCH := torch==2.13.0 torchvision==0.28.0
MIN_PINS  := lightning==2.5.0 timm==1.0.31
MIN_STAMP := $(MIN_VENV)/.installed-$(shell cat pyproject.toml Makefile | cksum | cut -d' ' -f1)
CA_BUNDLE := $(wildcard /etc/ssl/certs/ca-certificates.crt)
MIN_TESTS := tests/test_train_cell.py tests/test_classifier.py tests/test_data_wds.py tests/test_recipe.py \
             tests/test_catalog_cells.py
MIN_SELECT := resum or precision or bf16 or ema or fig3_manmade_natural or demo-

install-min: $(MIN_STAMP)

$(MIN_STAMP): pyproject.toml Makefile
	test -x $(MIN_PY) || python3 -m venv $(MIN_VENV)
	echo '*' > $(MIN_VENV)/.gitignore
	$(MIN_PY) -m pip install -q --upgrade pip
	$(MIN_PY) -m pip install -q --isolated $(if $(CA_BUNDLE),--cert $(CA_BUNDLE)) $(MIN_TORCH)
	$(MIN_PY) -m pip install -q $(MIN_PINS) -e '.[test]'
	$(MIN_PY) tools/check_floors.py
	rm -f $(MIN_VENV)/.installed-* && touch $@

test-min: install-min
	OMP_NUM_THREADS=1 $(MIN_PY) -m pytest -q -p no:cacheprovider $(MIN_TESTS) -k "$(MIN_SELECT)"

# FFCV (optional extra) is installed when its system libraries are present, as they are after system-test.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	if pkg-config --exists libturbojpeg opencv4 2>/dev/null; then $(PY) -m pip install -q -e '.[test,ffcv]'; \
	else echo "FFCV skipped: install pkg-config libopencv-dev libturbojpeg0-dev, then rerun"; fi
	rm -f $(VENV)/.installed-* && touch $@

# Debian packages: installed when we are root; otherwise say what is missing and what it costs.
system-demo:
	@PKGS="$(DEMO_PKGS)" sh tools/ensure_debian_packages.sh

system-test:
	@PKGS="$(TEST_PKGS)" sh tools/ensure_debian_packages.sh

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

bench: install
	$(VENV)/bin/mkf bench train

clean:
	rm -rf results/demo
