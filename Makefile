# crius — the two commands: `make run` and `make test`. See README.md.
SHELL := /bin/bash
.DEFAULT_GOAL := help
CARGO ?= cargo

# Debian 12 packages. Runtime: what crius drives on a node. Build: what the build needs.
# Test: the fixtures (loopback registry, image tooling) and the reference runtime.
PACKAGES_RUN   := runc crun containernetworking-plugins iptables iproute2
PACKAGES_BUILD := protobuf-compiler gcc libc6-dev make
PACKAGES_TEST  := docker-registry skopeo umoci busybox-static apache2-utils jq curl python3-venv openssl

CNI_CONF_DIR ?= /etc/cni/net.d
RUN_ARGS ?=

.PHONY: fuzz help run test lint build build-release deps deps-test install-cni host-setup unit e2e chaos bench clean

help:
	@echo "make run    install what is missing, build, start crius with the default config"
	@echo "make test   install what the tests need, build, run unit + e2e tests and lint"
	@echo "make lint   cargo fmt --check and clippy -D warnings"
	@echo "make chaos  the long fault suites: 60 seeded kill -9s, the 1000-pod churn"
	@echo "make bench  crius against Debian's containerd, same CRI workloads, with runc/crun floors"

# Installs the Debian packages in $(1) that are not installed yet.
define apt_install
	@missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing:" $$missing; \
	  if [ "$$(id -u)" != 0 ]; then echo "run as root to install packages" >&2; exit 1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
endef

deps:
	$(call apt_install,$(PACKAGES_RUN) $(PACKAGES_BUILD))
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install a Rust toolchain (rustup.rs), 1.89 or newer" >&2; exit 1; }

deps-test: deps
	$(call apt_install,$(PACKAGES_TEST))

build: deps
	$(CARGO) build --workspace --bins

build-release: deps
	$(CARGO) build --release --workspace --bins

# Host quirks of hybrid cgroup machines: crun (1.8) refuses v1/v2 hybrid mode while the hugetlb
# controller sits on the cgroup2 mount, so bind it to its own v1 hierarchy (idempotent; a no-op
# on pure v1 or v2 hosts). See docs/containers.md.
host-setup:
	@if [ -d /sys/fs/cgroup/unified ] && grep -qw hugetlb /sys/fs/cgroup/unified/cgroup.controllers 2>/dev/null; then \
	  mkdir -p /sys/fs/cgroup/hugetlb && mount -t cgroup -o hugetlb cgroup /sys/fs/cgroup/hugetlb && \
	  echo "mounted the hugetlb controller as cgroup v1 (crun hybrid mode)"; \
	fi

# Installs the default CNI network unless the conf dir already holds one.
install-cni:
	@mkdir -p $(CNI_CONF_DIR)
	@if ls $(CNI_CONF_DIR)/*.conf $(CNI_CONF_DIR)/*.conflist $(CNI_CONF_DIR)/*.json >/dev/null 2>&1; then \
	  echo "keeping the CNI config in $(CNI_CONF_DIR)"; \
	else \
	  install -m 0644 cni/conf/10-crius-bridge.conflist $(CNI_CONF_DIR)/ && echo "installed $(CNI_CONF_DIR)/10-crius-bridge.conflist"; \
	fi

run: build-release install-cni host-setup
	./target/release/crius $(RUN_ARGS)

unit: build
	$(CARGO) test --workspace --exclude crius-e2e

e2e: deps-test build host-setup
	$(CARGO) test -p crius-e2e

# The long fault suites, not in `make test`: the chaos suite with 60 kills (CHAOS_KILLS, seed
# CHAOS_SEED) and the 1 000-pod churn (CHURN_PODS) with its leak and RSS checks.
CHAOS_KILLS ?= 60
CHAOS_SEED ?= 1
CHURN_PODS ?= 1000
chaos: deps-test build host-setup
	CRIUS_CHAOS_KILLS=$(CHAOS_KILLS) CRIUS_CHAOS_SEED=$(CHAOS_SEED) $(CARGO) test -p crius-e2e --test chaos -- --nocapture
	CRIUS_CHURN_PODS=$(CHURN_PODS) $(CARGO) test -p crius-e2e --test stress a_thousand_pod_churn -- --ignored --nocapture

test: deps-test build host-setup
	$(CARGO) test --workspace
	$(MAKE) --no-print-directory chart-test
	$(MAKE) --no-print-directory lint

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The side-by-side table: crius and Debian's containerd started on private dirs, the same CRI
# workloads on both, interleaved, plus bare runc/crun create+start of crius's bundle; both
# daemons are stopped afterwards. Both run their pods with runc (BENCH_HANDLER; crius's own
# default is crun when installed, containerd's runc). BENCH_ARGS adds flags
# (`BENCH_ARGS="-n 50 --json"`, `--pull-mb 100` for cold pulls of a big image);
# `crius-bench --help` lists them and the other subcommands.
BENCH_HANDLER ?= runc
BENCH_ARGS ?=
bench: build-release deps-test
	$(call apt_install,containerd)
	$(CARGO) build --release -p crius-e2e --bin crius-bench
	./target/release/crius-bench compare --crius-bin $(CURDIR)/target/release/crius \
		--runtime-handler $(BENCH_HANDLER) $(BENCH_ARGS)

clean:
	$(CARGO) clean

# cargo-fuzz targets in fuzz/ (own workspace, nightly; not in CI): each runs FUZZ_SECONDS in
# turn, as root (the unpack target makes device nodes), from fuzz/corpus/<target> plus the
# committed seeds in fuzz/seeds/<target>. Findings land in fuzz/artifacts/<target>.
FUZZ_TARGETS ?= container_spec pod_spec unpack_layer spdy_frames config_parse
FUZZ_SECONDS ?= 600
FUZZ_FLAGS   ?=
fuzz:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	for t in $(FUZZ_TARGETS); do \
	  mkdir -p fuzz/corpus/$$t; \
	  cargo +nightly fuzz run $(FUZZ_FLAGS) $$t fuzz/corpus/$$t $$(ls -d fuzz/seeds/$$t 2>/dev/null) \
	    -- -max_total_time=$(FUZZ_SECONDS) || exit 1; \
	done

# make image, payload, dist, install, uninstall, chart-test, chart-readme: see the file.
include charts/installer/packaging.mk
