# The README's commands. Everything the project needs is installed from here.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Debian packages the image build and boot tests use (tests/integration/test_image.py),
# the chromium the browser tests drive through Playwright (tests/browser/harness.py), and the
# curl that runs the seed's runbook lines as printed (tests/integration/test_runbooks.py).
# The arm64 image's binaries run here under qemu-user from bookworm-backports (bookworm's
# 7.2 lacks what the agent's mDNS needs): image/build.py --set-up-emulation fetches it, with
# gpgv checking Debian's signed index, and registers it with binfmt_misc
# (tests/integration/test_image_arm64.py); qemu-system-arm boots its .img (-m image_full).
DEBIAN_PACKAGES := debootstrap systemd-container mtools dosfstools e2fsprogs fdisk iproute2 chromium curl
DEBIAN_TOOLS    := debootstrap systemd-nspawn mcopy mkfs.vfat mkfs.ext4 sfdisk ip chromium curl
EMULATION_PACKAGES := gpgv debian-archive-keyring qemu-system-arm
EMULATION_TOOLS    := gpgv qemu-system-aarch64
SUDO   := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: demo test test-arm64 lint bench soak vendor clean debian-packages emulation

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,hub]'
	touch $(STAMP)

## make demo: a cloud hub and two simulated edges, each with its embedded NATS (Ctrl-C stops them)
demo: $(STAMP)
	$(BIN)/python examples/demo.py

# apt installs PACKAGES when one of TOOLS is missing.
define apt_install
	@for tool in $(2); do command -v $$tool >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
			$(1) >/dev/null; \
	fi
endef

## make debian-packages: what apt must add for the image, boot and browser tests (only when missing)
debian-packages:
	$(call apt_install,$(DEBIAN_PACKAGES),$(DEBIAN_TOOLS))

## make emulation: qemu, binfmt_misc mounted and backports' qemu-aarch64 registered, for the arm64
## image tests (opt-in: .venv/bin/pytest --opt-in tests/integration/test_image_arm64.py;
## they skip, saying why, when this fails)
emulation: $(STAMP) debian-packages
	$(call apt_install,$(EMULATION_PACKAGES),$(EMULATION_TOOLS))
	-$(SUDO) $(BIN)/python image/build.py --arch arm64 --set-up-emulation

## make test: the whole suite (unit, integration with real nats-servers, faults, an image boot)
test: $(STAMP) debian-packages
	$(BIN)/pytest -q

## make test-arm64: the arm64 image tests (build, boot to the hub under nspawn and in
## qemu-system-aarch64, the agent's suite on aarch64); ~17 min from an empty build/ cache,
## outside make test's 30 minutes; CI runs it after make test
test-arm64: emulation
	$(BIN)/pytest -q --opt-in -rs tests/integration/test_image_arm64.py

## make lint: ruff (lint + format check) and mypy on the packages, ansible-lint (production profile, offline) on ansible/
lint: $(STAMP)
	$(BIN)/ruff check edge_agent cloud_hub tests bench image ansible tools
	$(BIN)/ruff format --check edge_agent cloud_hub tests bench image ansible tools
	$(BIN)/mypy
	$(BIN)/ansible-lint --offline ansible/

## make vendor: the dashboard's pinned npm libraries (and the tests' axe-core) from vendor.lock.json, sha512-checked
vendor: $(STAMP)
	$(BIN)/python tools/vendor.py

## make bench: every benchmark but the soak; each prints one JSON line last (bench/common.py and bench/publisher.py are helpers)
bench: $(STAMP)
	@for script in $(filter-out bench/common.py bench/publisher.py bench/soak.py,$(wildcard bench/*.py)); do echo "== $$script"; $(BIN)/python $$script || exit 1; done

## make soak: 30 minutes of an edge and a hub under load, a flapping link and random kills (bench/soak.py)
soak: $(STAMP)
	$(BIN)/python bench/soak.py

clean:
	rm -rf $(VENV) .demo-state .pytest_cache .mypy_cache .ruff_cache *.egg-info
