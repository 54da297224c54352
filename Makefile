# Two commands: `make run` serves the platform, `make test` runs the whole suite.
# Both create the virtual environment and install what they need on first use.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint typecheck bench loadtest venv install install-dev clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.installed-prod: requirements/base.txt requirements/prod.txt requirements/constraints.txt | $(PY)
	$(PY) -m pip install --quiet -r requirements/prod.txt
	$(PY) platform/pathhook.py >/dev/null
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed-prod requirements/dev.txt
	$(PY) -m pip install --quiet -r requirements/dev.txt
	touch $@

venv install: $(VENV)/.installed-prod
install-dev: $(VENV)/.installed-dev

run: $(VENV)/.installed-prod
	DJANGO_SETTINGS_MODULE=platform.settings.development $(PY) manage.py migrate --noinput
	DJANGO_SETTINGS_MODULE=platform.settings.development $(PY) manage.py bootstrap_demo --base-url http://$(HOST):$(PORT)
	DJANGO_SETTINGS_MODULE=platform.settings.development LLM_WARMUP=1 \
		$(PY) -m platform.web --host $(HOST) --port $(PORT) --workers 1

test: $(VENV)/.installed-dev
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy .

# Needs PostgreSQL, Redis and wrk (apt-get install wrk); results go to bench/results/.
bench: $(VENV)/.installed-dev
	$(PY) bench/bench_gateway.py
	$(PY) bench/bench_streams.py
	$(PY) bench/bench_engine.py --model inference/default_model --threads 1 --out bench/results/engine.json
	$(PY) bench/bench_http_generate.py
	$(PY) bench/bench_knowledge.py

# Load test (locust, headless) against a server that is already running; starts nothing itself.
# Tenants: `bench/loadtest_setup.py --url $(LOADTEST_URL)` writes them to LOADTEST_TENANTS first.
# Prints locust's summary; exits non-zero when any request failed (429s included).
LOADTEST_URL ?= http://127.0.0.1:8000
LOADTEST_SECONDS ?= 60
LOADTEST_USERS ?= 50
LOADTEST_TENANTS ?= var/loadtest-tenants.json
loadtest: $(VENV)/.installed-dev
	LOADTEST_TENANTS=$(LOADTEST_TENANTS) $(VENV)/bin/locust -f bench/locustfile.py --headless --only-summary \
		--host $(LOADTEST_URL) --users $(LOADTEST_USERS) --spawn-rate $(LOADTEST_USERS) --run-time $(LOADTEST_SECONDS)s

clean:
	rm -rf $(VENV) var
