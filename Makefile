# Trainyard's developer commands. `make test` on a fresh clone installs first, then runs every check.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Touched after a successful install; pyproject.toml changing makes it stale.
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
# make up: DEMO=0 skips the demo, EXIT=1 stops everything after it (exit status: the demo's),
# PORT picks the API's port.
DEMO ?= 1
EXIT ?= 0
PORT ?= 8000

.DEFAULT_GOAL := help
.PHONY: help up install lint test serve clean

help:
	@echo "make up        install, then the API, an agent and the digits demo on this machine (DEMO=0, EXIT=1, PORT=)"
	@echo "make install   create $(VENV) and install Trainyard with its dev tools"
	@echo "make test      lint, type-check, then pytest on SQLite and PostgreSQL"
	@echo "make lint      ruff check, ruff format --check, mypy, hadolint"
	@echo "make serve     migrate and serve on SQLite in ./data (set TRAINYARD_BOOTSTRAP_TOKEN)"
	@echo "make clean     remove $(VENV), caches and build output (never ./data)"

install:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	# Pinned first: the CPU build on this disk. An unpinned torch could pull a multi-GB CUDA build.
	$(BIN)/python -m pip install torch==2.13.0
	$(BIN)/python -m pip install -e '.[dev,agent,examples]'
	touch $(STAMP)

$(STAMP): pyproject.toml
	$(MAKE) install

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile.api
	$(BIN)/hadolint Dockerfile.agent

# pytest-xdist workers: one more than the CPUs, up to 4 (each holds its databases and servers; more
# would crowd a shared PostgreSQL's connections); TEST_WORKERS=0 runs in this one process. The extra
# worker fills the time the others wait on an agent, a server or a browser: with one per CPU on 2
# cores the suite kept 1.2 cores busy (docs/testing.md). A test file stays on one worker
# (--dist loadfile), so a module's real API, agent or browser is started once; files are handed out
# longest first (tests/conftest.py orders them; --no-loadscope-reorder keeps xdist from re-sorting
# them by their number of tests, which dealt the few-test, minutes-long e2e files out last).
TEST_WORKERS ?= $(shell $(PYTHON) -c "import os; print(min(4, (os.cpu_count() or 1) + 1))")

# Exit code 5 is pytest's "no tests collected": a failure like any other, named so nobody misreads it.
test: lint
	@echo "$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)"
	@$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS) || { code=$$?; \
		if [ $$code -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; exit $$code; }

# The one-command start (examples/up.py): migrate, serve, register the machine `local`, run its agent,
# train the demo; then keep the API and the agent running until Ctrl-C.
up: $(STAMP)
	$(BIN)/python examples/up.py --port $(PORT) $(if $(filter 0,$(DEMO)),--no-demo) \
		$(if $(filter 1,$(EXIT)),--exit-after-demo)

serve: $(STAMP)
	@test -n "$$TRAINYARD_BOOTSTRAP_TOKEN" || { \
		echo "make serve: set TRAINYARD_BOOTSTRAP_TOKEN (32 characters or more), the first administrator's token" >&2; \
		exit 2; }
	$(BIN)/trainyard-api migrate
	$(BIN)/trainyard-api serve

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
