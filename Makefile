# agent-sandbox: `make help` lists the targets.
SHELL := /bin/bash
export CARGO_TARGET_DIR ?= /var/tmp/agent-sandbox-target
export CARGO_TERM_COLOR ?= never
BIN := $(CARGO_TARGET_DIR)/release/agent-sandbox

.PHONY: help build lint test demo bench fuzz clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

build: ## build the library and the CLI (release)
	cargo build --release --workspace

lint: ## rustfmt and clippy (warnings are errors)
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

test: ## build everything and run every test
	scripts/setup.sh
	$(MAKE) lint
	cargo test --workspace --all-targets
	cargo test --workspace --doc

demo: build ## a proxied run that shows the allowlist working
	scripts/setup.sh
	scripts/demo.sh $(BIN)

bench: ## criterion policy benchmark and the loopback proxy comparison
	scripts/setup.sh --bench
	cargo bench -p agent-sandbox-benches --bench policy
	cargo build --release -p agent-sandbox-benches -p agent-sandbox-cli
	$(CARGO_TARGET_DIR)/release/proxy-compare --agent-sandbox $(BIN)

fuzz: ## run the cargo-fuzz targets briefly (FUZZ_SECONDS, default 30 each)
	scripts/fuzz.sh

clean: ## remove build output
	cargo clean
