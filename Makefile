# zgate: thin wrappers over uv. `make` (or `make help`) lists the targets.

.DEFAULT_GOAL := help
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

UV ?= uv
RUN := $(UV) run --frozen
PKI_DIR ?= .zgate/pki
DIST ?= dist
# Extra flags for `make demo`, e.g. DEMO_ARGS="--mode stream --keep".
DEMO_ARGS ?=
# `make bench WIREGUARD=1` also installs wireguard-go to compare with; BENCH_ARGS="--repeat 5",
# BENCH_ARGS="--quick" (one short round, ~75 s), BENCH_ARGS="--engines qh3" (one QUIC engine).
WIREGUARD ?= 0
BENCH_ARGS ?=

# `make test`: one --cov per import package, branch coverage, a JSON report for
# scripts/coverage_floors.py (the floors: [tool.zgate.coverage-floors] in pyproject.toml).
# PYTEST_ARGS="-x -k name" adds pytest options (a partial run then misses the floors).
PYTEST_ARGS ?=
COVERAGE_DIR := build/coverage
COVERAGE_PACKAGES := zgate_proto zgate_policy zgate_pki zgate_host zgate_relay zgate_agent \
	zgate_connector zgate_control zgate_cli zgate_lab
COVERAGE_ARGS := $(foreach package,$(COVERAGE_PACKAGES),--cov=$(package)) --cov-branch \
	--cov-report=json:$(COVERAGE_DIR)/coverage.json

# The wheels each service needs: the service and the workspace libraries it imports.
RELAY_PACKAGES := zgate-proto zgate-policy zgate-pki zgate-host zgate-relay
AGENT_PACKAGES := zgate-proto zgate-host zgate-pki zgate-agent

# Containers. Debian's docker-compose 1.29 stands in when there is no `docker compose` plugin;
# it refuses a top-level `name:` in compose.yaml, so the project name is always given here.
COMPOSE_PROJECT ?= zgate
COMPOSE ?= $(shell if docker compose version >/dev/null 2>&1; then echo "docker compose"; \
	else echo docker-compose; fi)
COMPOSE_CMD = $(COMPOSE) -p $(COMPOSE_PROJECT) -f compose.yaml
# A client that builds with BuildKit (RUN --mount): one with the buildx plugin, else the engine's
# own 20.10 client (Debian's docker.io), which has BuildKit built in.
DOCKER ?= $(shell if docker buildx version >/dev/null 2>&1 || [ ! -x /usr/bin/docker ]; \
	then echo docker; else echo /usr/bin/docker; fi)
# The images' base, built from the Debian archive by scripts/make-base-image (no registry needed).
BASE_IMAGE ?= zgate-base:bookworm
IMAGE_TAG ?= dev
IMAGES := relay agent connector control

.PHONY: help bootstrap sync certs clean-certs demo test coverage e2e bench lint fmt \
	all relay agent clean docker base-image up down dev-up dev-down logs-relay logs-agent \
	container-test

help: ## list the targets (the default)
	@echo "usage: make TARGET   (targets marked [root] need root: sudo make TARGET)"
	@awk 'BEGIN {FS = ":.*## "} /^[a-z][a-z0-9-]*:.*## / {printf "  %-12s %s\n", $$1, $$2}' \
		$(MAKEFILE_LIST)

bootstrap: ## install what is missing: host tools (as root), uv, the locked dependencies
	scripts/bootstrap

sync: ## install the locked dependencies into .venv (uv sync --frozen)
	$(UV) sync --frozen

certs: ## a dev PKI in .zgate/pki: CA, relay cert (compose's 172.28.0.10), client "agent"
	@if [ -f $(PKI_DIR)/ca.pem ]; then \
		echo "$(PKI_DIR)/ca.pem exists: keeping this CA (make clean-certs to start over)"; \
	else \
		$(RUN) zgate pki init --dir $(PKI_DIR) --relay-name relay --relay-name localhost \
			--relay-ip 172.28.0.10 --relay-ip 127.0.0.1; \
	fi
	@if [ -f $(PKI_DIR)/clients/agent.pem ]; then \
		echo "$(PKI_DIR)/clients/agent.pem exists: keeping it"; \
	else \
		$(RUN) zgate pki issue client agent --dir $(PKI_DIR); \
	fi

clean-certs: ## delete .zgate/ (the dev PKI and its CA key)
	rm -rf .zgate

demo: bootstrap ## [root] the one-machine demo in network namespaces (DEMO_ARGS=--keep ...)
	$(RUN) zgate-lab demo $(DEMO_ARGS)

test: ## the whole suite with branch coverage per package, held to floors; [root] for e2e and interop
	WITH_INTEROP=1 scripts/bootstrap
	@rm -f $(COVERAGE_DIR)/.coverage $(COVERAGE_DIR)/coverage.json
	@# Exit 5 (no test collected) is a failure like any other non-zero status.
	$(RUN) pytest $(COVERAGE_ARGS) $(PYTEST_ARGS)
	$(RUN) python scripts/coverage_floors.py --json $(COVERAGE_DIR)/coverage.json

coverage: ## per-file report and HTML (build/coverage/html) of the last make test's coverage
	$(RUN) coverage report --show-missing --skip-covered
	$(RUN) coverage html
	@echo "HTML report: $(COVERAGE_DIR)/html/index.html"

# `make fuzz`: each parser's atheris harness (fuzz/) for FUZZ_RUNS inputs, one after another,
# niced; FUZZ_TARGETS="capsules,dns" picks harnesses (default all). Summary: build/fuzz/.
FUZZ_RUNS ?= 1000000
FUZZ_TARGETS ?=

.PHONY: fuzz
fuzz: ## fuzz every parser (atheris) for FUZZ_RUNS inputs each (FUZZ_TARGETS=capsules,dns,...)
	nice -n 10 $(RUN) python fuzz/run.py --runs $(FUZZ_RUNS) $(if $(FUZZ_TARGETS),--targets $(FUZZ_TARGETS))

.PHONY: mutants
mutants: ## mutation testing (mutmut) of the sans-IO core; MUTANTS_ARGS="relay.dns --timeout 900"
	$(RUN) python scripts/mutants.py $(MUTANTS_ARGS)

# `make e2e QUIC_ENGINE=qh3`: the relays, agents and connectors of the e2e tests on that engine
# (through their ZGATE_*_QUIC_ENGINE variables); empty: each service's default.
QUIC_ENGINE ?=
e2e: ## [root] the end-to-end tests in network namespaces (tests/e2e, the lab's); QUIC_ENGINE=aioquic|qh3
	$(if $(QUIC_ENGINE),ZGATE_RELAY_QUIC_ENGINE=$(QUIC_ENGINE) ZGATE_AGENT_QUIC_ENGINE=$(QUIC_ENGINE) \
		ZGATE_CONNECTOR_QUIC_ENGINE=$(QUIC_ENGINE)) $(RUN) pytest tests/e2e packages/zgate-lab/tests -m e2e

bench: ## [root] the tunnel benchmark: veth, both zgate modes on each QUIC engine, wireguard-go (WIREGUARD=1 installs it)
	WITH_WIREGUARD=$(WIREGUARD) scripts/bootstrap
	$(RUN) python bench/tunnel.py $(BENCH_ARGS)

lint: ## ruff check, ruff format --check, mypy strict (sources, tests, bench: [tool.mypy] files)
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) mypy

fmt: ## fix what ruff can fix, then format
	$(RUN) ruff check --fix .
	$(RUN) ruff format .

all: ## wheels of every workspace package into dist/
	$(UV) build --all-packages --wheel --out-dir $(DIST)

relay: ## wheels of the relay and the libraries it needs into dist/
	@for package in $(RELAY_PACKAGES); do \
		$(UV) build --package $$package --wheel --out-dir $(DIST); \
	done

agent: ## wheels of the agent and the libraries it needs into dist/
	@for package in $(AGENT_PACKAGES); do \
		$(UV) build --package $$package --wheel --out-dir $(DIST); \
	done

clean: ## remove dist/, build/ and the tool caches (not .zgate: see clean-certs)
	rm -rf $(DIST) build .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -path ./.venv -prune -o -type d -name __pycache__ -exec rm -rf {} +

base-image: ## [root] the images' base from the Debian archive (kept if present; FORCE=1 rebuilds)
	DOCKER=$(DOCKER) scripts/make-base-image $(BASE_IMAGE)

docker: base-image ## the relay, agent, connector and control images (zgate-*:dev, BuildKit, local base)
	@for image in $(IMAGES); do \
		echo "== zgate-$$image:$(IMAGE_TAG)"; \
		DOCKER_BUILDKIT=1 $(DOCKER) build --build-arg PYTHON_IMAGE=$(BASE_IMAGE) \
			-f services/$$image/Dockerfile -t zgate-$$image:$(IMAGE_TAG) .; \
	done

up: certs ## start relay, agent, control and the "internet" host (compose -p zgate; images: make docker)
	@$(DOCKER) image inspect zgate-relay:$(IMAGE_TAG) zgate-agent:$(IMAGE_TAG) zgate-control:$(IMAGE_TAG) >/dev/null 2>&1 \
		|| { echo "no zgate-relay/zgate-agent/zgate-control:$(IMAGE_TAG) images: run make docker (or make dev-up)" >&2; exit 1; }
	@mkdir -p .zgate/www
	$(COMPOSE_CMD) up -d --no-build

down: ## stop and remove the compose services
	$(COMPOSE_CMD) down

dev-up: docker up ## build the images, then start the lab (make logs-relay, make dev-down)

dev-down: ## stop the lab and delete its volumes (the services' state)
	$(COMPOSE_CMD) down -v --remove-orphans

logs-relay: ## follow the relay's logs
	$(COMPOSE_CMD) logs -f relay

logs-agent: ## follow the agent's logs
	$(COMPOSE_CMD) logs -f agent

container-test: ## [root] images + compose lab: ping, download, /metrics, Prometheus (tests/containers)
	ZGATE_CONTAINER_TESTS=1 DOCKER=$(DOCKER) BASE_IMAGE=$(BASE_IMAGE) \
		$(RUN) pytest tests/containers -m containers
