# Sovereign: the two commands.
#   make run   install what is missing and start the control plane on its embedded default
#   make test  install test dependencies and run the whole suite (lint, types, contracts, tests)
#   make bench-setup / make bench   install what the benchmarks need / run them all

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Debian packages: libvirt (test driver + headers for libvirt-python) for running, bubblewrap
# (the embedded default's process enclaves run jobs in it, with the system python3.X of the
# venv's version) and mmdebstrap, e2fsprogs and qemu-utils (build the guest image from the Debian archive:
# `sovereign images build`). The test suite adds PostgreSQL (throwaway clusters), a real libvirtd with QEMU,
# swtpm and what builds a tiny guest (busybox, cpio; the kernel is fetched with apt-get
# download), Chromium for the browser tests, and the SSH client Ansible reaches the Debian
# guest of the deployment scenario (tests/deploy) with.
APT_RUN  := libvirt0 libvirt-dev pkg-config gcc bubblewrap mmdebstrap e2fsprogs qemu-utils
APT_TEST := $(APT_RUN) postgresql qemu-system-x86 libvirt-daemon-system swtpm swtpm-tools \
            busybox-static cpio chromium \
            openssh-client
# The benchmarks: PostgreSQL (bench/audit.py) and a real libvirtd with QEMU and what builds the
# tiny guest (bench/enclaves.py's boot), without the browser.
APT_BENCH := $(APT_RUN) postgresql qemu-system-x86 libvirt-daemon-system swtpm swtpm-tools \
             busybox-static cpio
BENCHMARKS := api audit enclaves gpu_scrub keys listing placement workloads

.PHONY: run test lint typecheck contracts ansible pytest bench bench-setup clean help

help:
	@echo "make run    start the control plane on the embedded default (http://127.0.0.1:$${SOVEREIGN_PORT:-8700})"
	@echo "make test   install test dependencies and run lint, types, import contracts and tests"
	@echo "make bench  install what the benchmarks need and run them all (BENCH_ARGS=--quick: a smoke run)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# workloads: PyTorch, which runs the scrub program of every GPU hand-over (on the embedded
# default, over simulated device memory) and the jobs of process enclaves.
$(VENV)/.run-installed: pyproject.toml | $(BIN)/python
	bash .ci/apt-install $(APT_RUN)
	$(BIN)/pip install --quiet -e '.[devstack,libvirt,workloads]'
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	bash .ci/apt-install $(APT_TEST)
	$(BIN)/pip install --quiet -e '.[devstack,libvirt,postgres,test,workloads]'
	touch $@ $(VENV)/.run-installed

$(VENV)/.bench-installed: pyproject.toml | $(BIN)/python
	bash .ci/apt-install $(APT_BENCH)
	$(BIN)/pip install --quiet -e '.[devstack,libvirt,bench]'
	touch $@ $(VENV)/.run-installed

run: $(VENV)/.run-installed
	$(BIN)/sovereign dev

lint: $(VENV)/.test-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.test-installed
	$(BIN)/mypy

contracts: $(VENV)/.test-installed
	$(BIN)/lint-imports

# The Ansible estate (ansible/): YAML lint, every playbook's syntax against every inventory, and
# ansible-lint's production profile (no skips). The converge itself is tests/deploy (pytest).
PLAYBOOKS := site pki hardening database openbao keycloak control_plane hypervisors
ansible: $(VENV)/.test-installed
	cd ansible && ../$(BIN)/yamllint --strict .
	cd ansible && for p in $(PLAYBOOKS); do \
	  ../$(BIN)/ansible-playbook -i inventories/ci --syntax-check $$p.yml >/dev/null && \
	  ../$(BIN)/ansible-playbook -i inventories/es -i inventories/pt --syntax-check $$p.yml >/dev/null \
	  || exit 1; done
	cd ansible && ../$(BIN)/ansible-lint --profile production

pytest: $(VENV)/.test-installed
	$(BIN)/python -m pytest

test: lint typecheck contracts ansible pytest

bench-setup: $(VENV)/.bench-installed

bench: $(VENV)/.bench-installed
	@for b in $(BENCHMARKS); do echo "== bench/$$b.py"; $(BIN)/python bench/$$b.py $(BENCH_ARGS) || exit 1; done

clean:
	rm -rf $(VENV) instance .mypy_cache .ruff_cache .pytest_cache
