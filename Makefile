# The two commands of the README. Both set up a fresh machine: venv, the project, the demo data.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: demo test install data lint bench clean

demo: install data
	$(VENV)/bin/mkf demo

test: install data
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -q

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $@

# Fashion-MNIST: Debian's package when we are root, else torchvision downloads it on first use (if online).
data:
	@if [ -f $(FMNIST)/train-images-idx3-ubyte.gz ]; then echo "Fashion-MNIST: $(FMNIST)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get install -y -q dataset-fashion-mnist || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist)); \
	else echo "Fashion-MNIST is not installed: run 'sudo apt-get install dataset-fashion-mnist'," \
		"or stay online so torchvision can download it on first use"; fi

lint: install
	$(VENV)/bin/ruff check .

bench: install data
	$(VENV)/bin/mkf bench train

clean:
	rm -rf results/demo
