# agent-sandbox: `make help` lists the targets.
SHELL := /bin/bash
export CARGO_TARGET_DIR ?= /var/tmp/agent-sandbox-target
export CARGO_TERM_COLOR ?= never
# No incremental state: it grew to tens of GiB across runs (scripts/cache.sh).
export CARGO_INCREMENTAL ?= 0
export AGENT_SANDBOX_IMAGE ?= agent-sandbox/base:bookworm
BIN := $(CARGO_TARGET_DIR)/release/agent-sandbox

.PHONY: help setup image build lint test test-gvisor test-remote test-podman python-test node-test demo bench fuzz clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

setup: ## install what is missing, start Docker, build the base image, register gVisor (runsc)
	scripts/cache.sh
	scripts/setup.sh
	scripts/docker.sh
	scripts/runsc.sh

image: ## build the local images agent-sandbox/base:bookworm and agent-sandbox/clients:bookworm if absent
	scripts/docker.sh --clients

build: ## build the library and the CLI (release)
	cargo build --release --workspace

lint: ## rustfmt and clippy (warnings are errors)
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy -p agent-sandbox --test remote -- -D warnings

test: setup ## build everything and run every test (Docker tests included)
	scripts/docker.sh --clients
	$(MAKE) lint
	cargo test --workspace --all-targets
	cargo test --workspace --doc
	$(MAKE) test-gvisor
	$(MAKE) test-remote
	$(MAKE) test-podman
	scripts/python-test.sh
	scripts/node-test.sh
	scripts/integrations-test.sh

# The Docker, session and pool suites again under gVisor. Left out, each for a
# difference of the runtime, not of agent-sandbox (see the README's gVisor notes):
# the pids limit counts gVisor's own host threads, not the sandbox's processes
# (fork_bomb, exhausting_pids); the engine's seccomp profile is not applied, so
# the setuid and seccomp-status checks are gVisor's own test's (setuid_bits,
# setuid_and_capabilities; the_jail_holds_under_gvisor checks the sweep); a memory
# limit ends the whole gVisor sandbox and there is no cgroup inside (memory_limit,
# timeout_oom_and_cancel); FIFOs made inside do not exist on the host
# (host_side_file_access); gVisor's /proc does not hide a non-dumpable PID 1's
# environment (cannot_trace_init); its mount table is its own (mount_table); its
# kernel lets root without capabilities mknod and unshare inside (privileged_attacks); the host's
# temp dir bind-mounted into a sandbox reads as EINVAL under gVisor, so the attacker of
# run_stdin_is_private cannot even look (it passes under runc).
GVISOR_SKIP := fork_bomb_is_contained_by_the_pids_limit exhausting_pids_refuses_work_but_never_kills_the_session \
	setuid_bits_cannot_be_set_in_the_workspace setuid_and_capabilities_give_nothing \
	an_exec_killed_by_the_memory_limit_says_so timeout_oom_and_cancel_behave_as_in_one_shot_runs \
	host_side_file_access_never_leaves_the_workspace processes_inside_cannot_trace_init \
	run_stdin_is_private_to_the_sandbox_user \
	the_mount_table_is_exactly_the_expected_one privileged_attacks_fail_even_as_root_inside
test-gvisor: setup ## the Docker, session and pool suites under gVisor (runsc)
	AGENT_SANDBOX_RUNTIME=runsc cargo test -p agent-sandbox --test it -- docker:: session:: pool:: capture:: secrets:: ask::nothing_inside spawn:: \
		$(foreach t,$(GVISOR_SKIP),--skip $(t))

# A remote engine: a second dockerd in a container of the test's own, reached
# only through TCP on the host's loopback (scripts/remote-engine.sh; its image is
# built once and kept). Sandboxes there go through a gateway. The one-shot
# (docker::), session, pool and background-process suites run against it whole:
# where a test is about the local path (bind mounts, the host-side file API) it
# asserts what a gateway gives instead (support::docker::through_gateway). The
# `remote` test binary checks the box, the workspace copy and cleanup on both
# engines; the CLI connects over TLS.
# Rootful Podman through its Docker-compatible API (`podman system service`,
# started by scripts/podman.sh, which installs Podman if missing and loads the
# base image into it): the one-shot, session, pool and background-process
# suites, whole. Rootless Podman on this cgroup v1 machine drops the memory and
# pids limits, and the library refuses it (README: Podman).
test-podman: setup ## the one-shot, session, pool and background-process suites against rootful Podman
	scripts/podman.sh start
	DOCKER_HOST=unix:///run/agent-sandbox-podman/podman.sock cargo test -p agent-sandbox --test it -- docker:: session:: pool:: spawn::

REMOTE_TLS := DOCKER_HOST=tcp://127.0.0.1:23760 DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH=/var/tmp/agent-sandbox-remote/certs
test-remote: setup ## the gateway path against a second Docker engine over TCP (and TLS)
	scripts/remote-engine.sh start
	DOCKER_HOST=tcp://127.0.0.1:23750 cargo test -p agent-sandbox --test remote
	DOCKER_HOST=tcp://127.0.0.1:23750 cargo test -p agent-sandbox --test it -- docker:: session:: pool:: spawn::
	cargo build -p agent-sandbox-cli
	ws=$$(mktemp -d) && chown 1000:1000 $$ws && echo tls > $$ws/in && \
	out=$$($(REMOTE_TLS) $(CARGO_TARGET_DIR)/debug/agent-sandbox run --workspace $$ws -- sh -c 'cat in; echo through > out') && \
	test "$$out" = tls && test "$$(cat $$ws/out)" = through && rm -rf $$ws

python-test: setup ## build the wheel, install it in a fresh venv, run pytest
	scripts/python-test.sh

node-test: setup ## build the addon, npm pack, install the tarball fresh, node --test + tsc
	scripts/node-test.sh

integrations-test: setup ## the MCP server and the framework adapters against the MCP SDKs, openai-agents, deepagents (after python-test)
	scripts/integrations-test.sh

demo: setup build ## a sandboxed run that shows the allowlist and the jail working
	scripts/demo.sh $(BIN)

bench: ## criterion policy benchmark, proxy/run/session comparisons (runc and runsc), the load test
	scripts/cache.sh
	scripts/setup.sh --bench
	scripts/docker.sh
	scripts/runsc.sh
	cargo bench -p agent-sandbox-benches --bench policy
	cargo build --release -p agent-sandbox-benches -p agent-sandbox-cli
	$(CARGO_TARGET_DIR)/release/proxy-compare --agent-sandbox $(BIN)
	$(CARGO_TARGET_DIR)/release/run-compare
	$(CARGO_TARGET_DIR)/release/session-compare
	$(CARGO_TARGET_DIR)/release/capture-compare
	$(CARGO_TARGET_DIR)/release/intercept-compare
	scripts/remote-engine.sh start
	$(CARGO_TARGET_DIR)/release/gateway-compare --remote tcp://127.0.0.1:23750 \
	  --remote-tls tcp://127.0.0.1:23760 /var/tmp/agent-sandbox-remote/certs
	$(CARGO_TARGET_DIR)/release/load
	scripts/python-test.sh -q -k the_installed_wheel  # builds and installs the wheel
	v=$$(mktemp -d) && python3 -m venv $$v && $$v/bin/pip install -q $(CARGO_TARGET_DIR)/wheels/*.whl && $$v/bin/python benches/python_overhead.py; rm -rf $$v

fuzz: ## run the cargo-fuzz targets briefly (FUZZ_SECONDS, default 30 each)
	scripts/fuzz.sh

clean: ## remove build output
	cargo clean
