# Every target bootstraps what it needs: system packages (as root), then .venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup system venv test demo bench lint clean docker-engine

setup: system venv

system:
	@bash scripts/install-system.sh

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

test: setup
	$(BIN)/python -m pytest

# The main job: a DIAL-SAU policy trained in simulation (shipped, see
# scenarios/policies/README.md) defends tiny on real hosts, as root; otherwise
# in the simulator. Prints where the drill's report is.
POLICY := scenarios/policies/tiny_dial_sau.pt
demo: setup
	$(BIN)/cyberdial evaluate $(POLICY) --scenario tiny --episodes 200
	@if [ "$$(id -u)" -eq 0 ]; then \
	  $(BIN)/cyberdial drill tiny --policy $(POLICY) --episodes 1 --range emulated; \
	else \
	  echo "not root: the drill runs in the simulator (sudo make demo runs it on real hosts)"; \
	  $(BIN)/cyberdial drill tiny --policy $(POLICY) --episodes 1 --range sim; \
	fi

bench: setup
	$(BIN)/python bench/sim_speed.py

# Start a Docker engine of our own (as root) when none runs: no iptables, no
# bridge, so it never sets FORWARD to DROP; stopped by PID with docker-engine-stop.
docker-engine: setup
	$(BIN)/python -c "from cyberdial.range.emulation.docker_engine import OwnEngine as E; e = E.find() or E.start_engine(); print('dockerd', e.pid, 'at', e.url)"

docker-engine-stop: venv
	$(BIN)/python -c "from cyberdial.range.emulation.docker_engine import OwnEngine as E; e = E.find(); e and e.stop(); print('stopped' if e else 'no engine of ours runs')"

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy range bridge agents cyberdial

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
