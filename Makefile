# TitanovaX: `make demo` and `make test` each set themselves up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
UV_VERSION := 0.13.9
# the stamp changes whenever the pins or the project metadata change
STAMP := $(VENV)/.setup-$(shell cat requirements.txt pyproject.toml | sha256sum | cut -c1-16)

.PHONY: setup demo test test-stack test-fast lint docs docs-serve typecheck typecheck-mt5 bench lock clean-state help

help:
	@echo "make demo   - set up, then run the whole path end to end and print a summary"
	@echo "make test   - set up, then run the test suite (unit, integration, dags, e2e)"
	@echo "make test-stack - the whole tx stack: scheduler + Celery run market_data, its asset trains (4 min quiet, 13 min loaded)"
	@echo "make lint / docs / typecheck / bench / lock"

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(VENV)/bin/pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	@# torch first, the CPU wheel (an unpinned torch would pull a multi-GB CUDA build)
	@$(VENV)/bin/uv pip install -q --python $(PY) --find-links /opt/wheels "torch==2.13.0+cpu"
	@$(VENV)/bin/uv pip install -q --python $(PY) --find-links /opt/wheels --index-strategy unsafe-best-match -r requirements.txt
	@$(VENV)/bin/uv pip install -q --python $(PY) --no-deps -e .
	@command -v redis-server >/dev/null || test -x /usr/bin/redis-server || (apt-get update -qq && apt-get install -y -qq redis-server)
	@# headless Chromium + driver for the operator console's browser test
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null)
	@# Prometheus + promtool, Alertmanager + amtool (alert rules, e2e alerts), docker-compose (compose file validation)
	@test -x /usr/bin/promtool -a -x /usr/bin/prometheus-alertmanager -a -x /usr/bin/docker-compose || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus prometheus-alertmanager docker-compose >/dev/null)
	@rm -f $(VENV)/.setup-* && touch $@
	@echo "setup done: $(VENV)"

demo: setup
	$(VENV)/bin/tx demo

test: setup
	$(VENV)/bin/pytest -q -p no:cacheprovider --durations=15 -m "not stack"

# the whole `tx stack` (Airflow scheduler + Celery worker, MLflow, serving, ...): 8-12 min
test-stack: setup
	$(VENV)/bin/pytest -q -p no:cacheprovider -m stack -s

test-fast: setup
	$(VENV)/bin/pytest -q -m "unit"

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# the docs site (mkdocs-material); the CLI and settings reference pages are generated from the code
docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

docs-serve: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

typecheck: setup
	$(VENV)/bin/mypy engine titanovax training serving feature_repo/pipeline

# the MT5 gateway against the official API's types (metatrader5-stubs): `import MetaTrader5`
# resolves to the stubs, so every adapter call is checked against the real signatures
typecheck-mt5: setup
	$(VENV)/bin/mypy engine/mt5

bench: setup
	$(VENV)/bin/python bench/online_read.py
	$(VENV)/bin/python bench/mt5_bridge.py
	$(VENV)/bin/python bench/freshness.py
	$(VENV)/bin/python bench/engine_loop.py --days 3
	$(VENV)/bin/python bench/materialize.py
	$(VENV)/bin/python bench/serving.py
	$(VENV)/bin/python bench/synthetic_market.py

lock: setup
	$(VENV)/bin/uv pip compile requirements.in --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	  --find-links /opt/wheels --index-strategy unsafe-best-match --no-header -o requirements.txt

clean-state:
	rm -rf .tx
