# vpccni: `make demo` shows the main job on this machine; `make test` installs and tests.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

# Debian packages the tests, the demo and the benchmarks use: namespaces and firewall
# tools, Go + libcni to build the real CNI client, the Go reference plugins (chain
# partners and speed anchor), podman with runc and a static busybox for a real runtime.
APT_PACKAGES := iproute2 iputils-ping nftables iptables conntrack \
	golang-go golang-github-appc-cni-dev containernetworking-plugins \
	podman runc busybox-static gcc libc6-dev

.PHONY: test demo deps install lint typecheck bench clean

deps:
	@missing=""; for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(VENV)/bin/python:
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip

# A regular (non-editable) install: the tests run against the installed package.
install: deps $(VENV)/bin/python
	$(VENV)/bin/pip install -q '.[test]'
	@# pip builds in the tree; a left-over egg-info next to the tests would shadow the
	@# installed distribution's entry points for anything run from here.
	rm -rf build vpccni.egg-info
	tools/build-cnictl.sh >/dev/null

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# mypy reads the installed (non-editable) package: the folder-to-namespace mapping of
# setup.py is invisible to it in the source tree.
typecheck: install
	$(VENV)/bin/mypy -p vpccni.core -p vpccni.drivers -p vpccni.cli -p vpccni.ipamd -p vpccni.sim

test: lint typecheck
	$(VENV)/bin/pytest $(PYTEST_ARGS)

demo: install
	$(PY) tools/demo.py

bench: install
	$(PY) bench/plugin_coldstart.py

clean:
	rm -rf $(VENV) build *.egg-info .build
