# Packaging targets, included by the top-level Makefile: the installer image, `make install`,
# the release tarball, and the chart tests. Uses the Makefile's apt_install and build targets.

CRIUS_VERSION    := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' Cargo.toml | head -1)
BIN_DIR          ?= target/release
IMAGE_DIR        ?= target/image/crius
IMAGE_TAG        ?= $(CRIUS_VERSION)
PAYLOAD_DIR      ?= target/payload
DIST_DIR         ?= target/dist
PREFIX           ?= /usr/local
DESTDIR          ?=
SYSCONFDIR       ?= /etc
SYSTEMD_UNIT_DIR ?= /etc/systemd/system
CHART_VENV       ?= target/chart-venv
# Debian's interpreter (package python3-venv), not whatever python3 comes first on PATH.
CHART_PYTHON     ?= /usr/bin/python3
PYTEST_ARGS      ?=

# Building from target/release builds it first; any other BIN_DIR must already hold the binaries.
bins_for_packaging := $(if $(filter target/release target/release/,$(BIN_DIR)),build-release)

.PHONY: image payload dist install uninstall chart-test chart-readme

# OCI image layout $(IMAGE_DIR), tag $(IMAGE_TAG); push: skopeo copy oci:$(IMAGE_DIR):$(IMAGE_TAG) docker://HOST/crius:TAG
image: $(bins_for_packaging)
	$(call apt_install,busybox-static jq gzip)
	charts/installer/build-image.sh $(BIN_DIR) $(IMAGE_DIR) $(IMAGE_TAG)

# What crius-install installs, in $(PAYLOAD_DIR) (the image's /opt/crius).
payload: $(bins_for_packaging)
	charts/installer/payload.sh $(BIN_DIR) $(PAYLOAD_DIR)

# Release tarball: the payload; `tar xzf ...; sudo ./crius-$(CRIUS_VERSION)/crius-install --host-root /`.
dist: payload
	@arch=$$(dpkg --print-architecture); out=$(DIST_DIR)/crius-$(CRIUS_VERSION)-linux-$$arch.tar.gz; \
	mtime=$$(git log -1 --format=%ct 2>/dev/null || echo 0); mkdir -p $(DIST_DIR); \
	tar --create --directory $(PAYLOAD_DIR) --transform 's,^\.,crius-$(CRIUS_VERSION),' --sort=name \
	  --format=posix --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
	  --mtime=@$$mtime --owner=0 --group=0 --numeric-owner . | gzip -n > $$out && echo "built $$out"

# Manual install (PREFIX/DESTDIR): binaries, the default config unless one exists, the systemd
# unit, and the default CNI conflist when $(CNI_CONF_DIR) holds none. Does not start anything.
install: payload
	install -D -m 0755 $(PAYLOAD_DIR)/bin/crius $(DESTDIR)$(PREFIX)/bin/crius
	install -D -m 0755 $(PAYLOAD_DIR)/bin/crius-conmon $(DESTDIR)$(PREFIX)/bin/crius-conmon
	install -d $(DESTDIR)$(SYSCONFDIR)/crius/crius.d
	@if [ -e $(DESTDIR)$(SYSCONFDIR)/crius/crius.toml ]; then echo "keeping $(DESTDIR)$(SYSCONFDIR)/crius/crius.toml"; \
	else install -m 0644 $(PAYLOAD_DIR)/etc/crius.toml $(DESTDIR)$(SYSCONFDIR)/crius/crius.toml && echo "installed $(DESTDIR)$(SYSCONFDIR)/crius/crius.toml"; fi
	install -d $(DESTDIR)$(SYSTEMD_UNIT_DIR)
	sed 's,/usr/local/bin/crius,$(PREFIX)/bin/crius,' $(PAYLOAD_DIR)/systemd/crius.service > $(DESTDIR)$(SYSTEMD_UNIT_DIR)/crius.service
	$(MAKE) --no-print-directory install-cni CNI_CONF_DIR=$(DESTDIR)$(CNI_CONF_DIR)
	@echo "start crius: systemctl daemon-reload && systemctl enable --now crius"

# Undoes `make install` except the config and CNI files, which may hold local changes.
uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/crius $(DESTDIR)$(PREFIX)/bin/crius-conmon $(DESTDIR)$(SYSTEMD_UNIT_DIR)/crius.service
	@echo "kept $(DESTDIR)$(SYSCONFDIR)/crius and the CNI config; remove them by hand if unwanted"

$(CHART_VENV)/.installed: charts/tests/requirements.txt
	$(call apt_install,python3-venv)
	rm -rf $(CHART_VENV)
	$(CHART_PYTHON) -m venv $(CHART_VENV)
	$(CHART_VENV)/bin/pip install --quiet --disable-pip-version-check --no-input -r charts/tests/requirements.txt
	touch $@

# Chart render/lint/schema tests, installer tests against temporary host roots, image build + push.
chart-test: deps-test build $(CHART_VENV)/.installed
	CRIUS_BIN_DIR=$(CURDIR)/target/debug $(CHART_VENV)/bin/python -m pytest -p no:cacheprovider $(PYTEST_ARGS) charts/tests

# Rewrites the values table of charts/crius/README.md from values.yaml.
chart-readme: $(CHART_VENV)/.installed
	$(CHART_VENV)/bin/python charts/tests/chart_readme.py --write
