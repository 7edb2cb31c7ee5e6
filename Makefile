# Every target sets up what it needs from this repository's own files.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup chromium demo test test-fast test-durations test-oldest gpu-check bench bench-full clean

# Editable, in setuptools' compat mode: Metaflow finds extensions on sys.path, and the default
# editable mode hides the package from that scan (README: Installing into your own project).
# The import below, from another directory, fails the setup if Metaflow does not see it.
$(STAMP): setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt \
		--config-settings editable_mode=compat -e ".[torch,s3,test]"
	cd / && USERNAME=setup $(CURDIR)/$(BIN)/python -c "from metaflow import checkpoint"
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

# Two workers: most of the suite waits on flow subprocesses, so the two cores stay busy.
# The slowest modules are collected first (their times are in tests/durations.json); with
# work stealing an idle worker takes queued tests from the busy one, so they finish
# together. The 15 slowest tests are listed at the end, to see where the time goes.
test: setup $(CHROMIUM)
	$(BIN)/python -m pytest -n 2 --dist worksteal --durations=15 tests
	$(MAKE) test-oldest

# The engine tier, for the edit loop: no flow or other subprocess run, no S3 server, no
# browser, no long stress (the markers are described in pytest.ini).
FAST_TIER := not flow and not s3 and not browser and not slow

test-fast: setup
	$(BIN)/python -m pytest -q -m "$(FAST_TIER)" tests

# The whole suite, rewriting each module's time in tests/durations.json (commit it): the
# order `make test` starts the modules in.
test-durations: setup $(CHROMIUM)
	$(BIN)/python -m pytest -n 2 --dist worksteal --record-durations tests

# The oldest Metaflow setup.py accepts runs the README's quick start too (a crash, the
# retry's resume, the card), in a venv of its own with just torch and pytest. Metaflow
# before 2.19 does not see an editable install, so the checkout is installed regularly
# there, again whenever the package's files change.
OLDEST_METAFLOW := 2.15.21
OLDEST_VENV := .venv-oldest
OLDEST_STAMP := $(OLDEST_VENV)/.installed
OLDEST_PACKAGE := $(OLDEST_VENV)/.package
PACKAGE_FILES := $(shell git ls-files metaflow_extensions 2>/dev/null || find metaflow_extensions -name '*.py')

$(OLDEST_STAMP): setup.py constraints.txt
	$(PYTHON) -m venv $(OLDEST_VENV)
	grep -v '^metaflow==' constraints.txt > $(OLDEST_VENV)/constraints.txt
	$(OLDEST_VENV)/bin/pip install --quiet --disable-pip-version-check \
		-c $(OLDEST_VENV)/constraints.txt "metaflow==$(OLDEST_METAFLOW)" ".[torch]" pytest
	touch $@ $(OLDEST_PACKAGE)

$(OLDEST_PACKAGE): $(OLDEST_STAMP) $(PACKAGE_FILES)
	$(OLDEST_VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps --force-reinstall .
	touch $@

test-oldest: $(OLDEST_PACKAGE)
	$(OLDEST_VENV)/bin/python -m pytest tests/test_newcomer.py::test_readme_quick_start_as_printed

# The checks that need a GPU, on a machine that has one (the script says what it needs).
gpu-check:
	./scripts/gpu_check.sh

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

# The headline tables (ours against the sound limit, DCP) in under 20 minutes; with
# BASELINE=DIR, another checkout's tree measured side by side. bench-full: then the rest.
bench: $(BENCH_STAMP)
	$(BENCH_VENV)/bin/python benchmarks/headline.py $(if $(BASELINE),--baseline $(BASELINE))

bench-full: $(BENCH_STAMP) $(PEER_STAMP)
	$(BENCH_VENV)/bin/python benchmarks/headline.py --full

clean:
	rm -rf $(VENV) $(OLDEST_VENV) $(BENCH_VENV) $(PEER_VENV) demo-output test-output
