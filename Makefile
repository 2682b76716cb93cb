# The two commands of the README: `make run` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint fmt unit integration e2e bench clean up down logs

# (Re)create the venv when pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/fleet up

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy libs $(wildcard services/*/domain.py) agent/protocol.py agent/events.py
	$(BIN)/lint-imports

test: lint
	./scripts/ensure-browser
	$(BIN)/pytest -q -p no:cacheprovider

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit tests/contract

integration: $(STAMP)
	$(BIN)/pytest -q tests/integration

e2e: $(STAMP)
	$(BIN)/pytest -q tests/e2e

fmt: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python bench/backbone.py

# Locust against 127.0.0.1 (FLEET_URL, default :8080, e.g. `fleet up`), headless, 60 s of load.
# 250 devices: their logins fit auth's default 300 device logins a minute per address.
.PHONY: load
load: $(STAMP)
	$(BIN)/python -c 'import locust' 2>/dev/null || $(BIN)/python -m pip install --quiet -e '.[load]'
	$(BIN)/python bench/load.py --duration 60 --devices 250 $(LOAD_ARGS)

# The container deployment (docs/deploy.md): `make up PROFILES="sim observe"` adds profiles.
COMPOSE  ?= docker compose
PROFILES ?=
COMPOSE_PROFILES_ARGS = $(foreach p,$(PROFILES),--profile $(p))

up:
	@test -f .env || { echo "no .env: cp .env.example .env and fill in every secret" >&2; exit 2; }
	$(if $(filter observe,$(PROFILES)),FLEET_OTEL_EXPORTER=otlp) $(COMPOSE) $(COMPOSE_PROFILES_ARGS) up -d --build

down:
	$(COMPOSE) --profile sim --profile load --profile observe down

logs:
	$(COMPOSE) $(COMPOSE_PROFILES_ARGS) logs -f --tail=100

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
