# The two commands of the README. Both set up a fresh machine: system packages (as root), venv, the project.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
# demo data; FFCV's build needs; a real Slurm for the cluster tests
DEMO_PKGS := dataset-fashion-mnist
TEST_PKGS := $(DEMO_PKGS) pkg-config libopencv-dev libturbojpeg0-dev slurm-wlm munge

.PHONY: demo test install system-demo system-test lint bench clean

demo: system-demo install
	$(VENV)/bin/mkf demo

test: system-test install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -q

install: $(STAMP)

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

bench: install
	$(VENV)/bin/mkf bench train

clean:
	rm -rf results/demo
