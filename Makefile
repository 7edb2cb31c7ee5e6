# Every target sets up what it needs from this repository's own files.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup chromium demo test bench clean

$(STAMP): setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt \
		--config-settings editable_mode=compat -e ".[torch,s3,test]"
	touch $@

setup: $(STAMP)

demo: setup
	PYTHON=$(CURDIR)/$(BIN)/python ./scripts/demo.sh

# The card tests render cards in headless Chromium: Debian's package, installed once.
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(CHROMIUM):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium

chromium: $(CHROMIUM)

test: setup $(CHROMIUM)
	$(BIN)/python -m pytest tests

# The benchmarks get their own environment: the peers they compare against are never
# dependencies of the package.
BENCH_VENV := benchmarks/.venv
BENCH_STAMP := $(BENCH_VENV)/.installed

$(BENCH_STAMP): setup.py constraints.txt benchmarks/requirements.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --disable-pip-version-check -c constraints.txt \
		--config-settings editable_mode=compat -e ".[torch]" -r benchmarks/requirements.txt
	touch $@

# metaflow-checkpoint registers its own `checkpoint` decorator, so it cannot share an
# environment with our package: its flows run in a venv of their own.
PEER_VENV := benchmarks/.venv-peer
PEER_STAMP := $(PEER_VENV)/.installed

$(PEER_STAMP): constraints.txt benchmarks/requirements-peer.txt
	$(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/pip install --quiet --disable-pip-version-check -c constraints.txt \
		-r benchmarks/requirements-peer.txt
	touch $@

bench: $(BENCH_STAMP) $(PEER_STAMP)
	$(BENCH_VENV)/bin/python benchmarks/run.py

clean:
	rm -rf $(VENV) $(BENCH_VENV) $(PEER_VENV) demo-output test-output
