# agent-sandbox: `make help` lists the targets.
SHELL := /bin/bash
export CARGO_TARGET_DIR ?= /var/tmp/agent-sandbox-target
export CARGO_TERM_COLOR ?= never
export AGENT_SANDBOX_IMAGE ?= agent-sandbox/base:bookworm
BIN := $(CARGO_TARGET_DIR)/release/agent-sandbox

.PHONY: help setup image build lint test python-test node-test demo bench fuzz clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

setup: ## install what is missing, start Docker, build the base image, register gVisor (runsc)
	scripts/setup.sh
	scripts/docker.sh
	scripts/runsc.sh

image: ## build the local base image agent-sandbox/base:bookworm if absent
	scripts/docker.sh

build: ## build the library and the CLI (release)
	cargo build --release --workspace

lint: ## rustfmt and clippy (warnings are errors)
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

test: setup ## build everything and run every test (Docker tests included)
	$(MAKE) lint
	cargo test --workspace --all-targets
	cargo test --workspace --doc
	scripts/python-test.sh
	scripts/node-test.sh

python-test: setup ## build the wheel, install it in a fresh venv, run pytest
	scripts/python-test.sh

node-test: setup ## build the addon, npm pack, install the tarball fresh, node --test + tsc
	scripts/node-test.sh

demo: setup build ## a sandboxed run that shows the allowlist and the jail working
	scripts/demo.sh $(BIN)

bench: ## criterion policy benchmark, proxy/run/session comparisons (runc and runsc), the load test
	scripts/setup.sh --bench
	scripts/docker.sh
	scripts/runsc.sh
	cargo bench -p agent-sandbox-benches --bench policy
	cargo build --release -p agent-sandbox-benches -p agent-sandbox-cli
	$(CARGO_TARGET_DIR)/release/proxy-compare --agent-sandbox $(BIN)
	$(CARGO_TARGET_DIR)/release/run-compare
	$(CARGO_TARGET_DIR)/release/session-compare
	$(CARGO_TARGET_DIR)/release/load
	scripts/python-test.sh -q -k the_installed_wheel  # builds and installs the wheel
	v=$$(mktemp -d) && python3 -m venv $$v && $$v/bin/pip install -q $(CARGO_TARGET_DIR)/wheels/*.whl && $$v/bin/python benches/python_overhead.py; rm -rf $$v

fuzz: ## run the cargo-fuzz targets briefly (FUZZ_SECONDS, default 30 each)
	scripts/fuzz.sh

clean: ## remove build output
	cargo clean
