# The two commands: `make lab` (set up everything, bring up the lab, run
# site.yml against it) and `make test` (the whole test suite). `make help`
# lists the rest.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Release mirror, Go build folders and downloads live outside the repository.
export CONSUL_PLATFORM_CACHE ?= $(HOME)/.cache/consul-platform
# systemd in a container needs the host's cgroup tree: read-only on cgroup v1,
# writable on v2 (molecule.yml reads this; the lab role detects it itself).
export LAB_CGROUP_MOUNT ?= $(if $(wildcard /sys/fs/cgroup/cgroup.controllers),rw,ro)
export ANSIBLE_FORCE_COLOR ?= 0
export PATH := $(CURDIR)/$(BIN):$(PATH)

LAB_INVENTORY := inventories/lab
PLAYBOOKS := site.yml $(wildcard playbooks/*.yml) $(wildcard playbooks/lab/*.yml)

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-z][a-z-]+:.*## ' $(MAKEFILE_LIST) | \
	  awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(BIN)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

.PHONY: venv
venv: $(BIN)/.installed ## Python venv with the pinned tools (requirements.txt)

.PHONY: docker
docker: venv ## Make sure a docker engine answers (installs and starts one on Debian as root)
	$(BIN)/python tools/lab/ensure_docker.py

.PHONY: test-tools
test-tools: venv ## Make sure the tests' own tools are there: chromium, certutil, the OpenSSH client
	$(BIN)/python tools/lab/ensure_test_tools.py

.PHONY: image
image: docker ## Build the systemd base images (Debian 12 and 13) with debootstrap (cached by tag)
	$(BIN)/python tools/lab/build_base_image.py --suite bookworm
	$(BIN)/python tools/lab/build_base_image.py --suite trixie

.PHONY: mirror
mirror: venv ## Fill the local release mirror (download, or build from Go modules)
	$(BIN)/python tools/lab/release_mirror.py

.PHONY: wheelhouse
wheelhouse: venv ## Build the web service's wheel and fetch its pinned wheels (offline installs)
	$(BIN)/python tools/lab/build_wheelhouse.py

.PHONY: lab
lab: image mirror wheelhouse ## Set up everything, bring up the lab, run site.yml against it
	$(BIN)/ansible-playbook -i $(LAB_INVENTORY) playbooks/lab/up.yml
	$(BIN)/ansible-playbook -i $(LAB_INVENTORY) site.yml
	@$(MAKE) --no-print-directory lab-status

.PHONY: bench
bench: bench-converge bench-scale bench-propagation bench-edge bench-failover bench-handover bench-hardening bench-idp-login bench-wan ## Every benchmark, then docs/bench/REPORT.md (takes ~50 min)
	$(BIN)/python tools/bench/bench_report.py

.PHONY: bench-converge
bench-converge: image mirror wheelhouse ## Fresh and re-run converge, stock vs Mitogen; rebuilds the lab (docs/bench/converge.*)
	$(BIN)/python tools/bench/bench_converge.py converge

.PHONY: bench-scale
bench-scale: image mirror ## 3 servers + 5/10/20 clients beside the lab: converge and settle times (docs/bench/scale.*)
	$(BIN)/python tools/bench/bench_converge.py scale

.PHONY: bench-edge
bench-edge: lab test-tools ## The edge: / through nginx vs direct, auth_request cost (docs/bench/edge.*)
	$(BIN)/python tools/bench/bench_edge.py

.PHONY: bench-propagation
bench-propagation: lab ## KV change -> served, ours (reload) vs the seed's (restart), under load
	$(BIN)/python tools/bench/bench_propagation.py

.PHONY: bench-failover
bench-failover: lab ## kill -9 the leader 20 times under KV writes (docs/bench/failover.*)
	$(BIN)/python tools/bench/bench_failover.py

.PHONY: bench-handover
bench-handover: lab ## Planned restarts of the leader under KV writes, with and without the hand-over (docs/bench/handover.*)
	$(BIN)/python tools/bench/bench_handover.py

.PHONY: bench-hardening
bench-hardening: lab ## systemd-analyze security of every unit on the lab (docs/bench/hardening.*)
	$(BIN)/python tools/bench/bench_hardening.py

.PHONY: bench-idp-login
bench-idp-login: lab ## The lab IdP's login: unknown vs known user names, same time? (docs/bench/idp_login.json)
	$(BIN)/python tools/bench/bench_idp_login.py

.PHONY: bench-wan
bench-wan: lab ## ACL replication lag: a token made in dc1 until it works in dc2, p50/p99 (docs/bench/wan.json)
	$(BIN)/python tools/bench/bench_wan.py

.PHONY: bench-report
bench-report: venv ## Rewrite docs/bench/REPORT.md from the JSON reports
	$(BIN)/python tools/bench/bench_report.py

.PHONY: chaos
chaos: lab ## Fault drills against the lab, pass/fail table into docs/bench/REPORT.md
	status=0; $(BIN)/python tools/drills/chaos.py || status=$$?; \
	  $(BIN)/python tools/bench/bench_report.py; exit $$status

.PHONY: greeting
greeting: venv ## Change the greeting in Consul KV and wait for every instance: GREETING='Hello Consul'
	@test -n "$(GREETING)" || { echo "usage: make greeting GREETING='Hello Consul'"; exit 2; }
	$(BIN)/ansible-playbook -i $(LAB_INVENTORY) playbooks/set_greeting.yml \
	  -e "$$($(BIN)/python -c 'import json, os; print(json.dumps({"greeting": os.environ["GREETING"]}))')"

.PHONY: lab-status
lab-status: ## Print the lab's cluster state and how to reach it
	@$(BIN)/python tools/lab/lab_status.py

.PHONY: lab-destroy
lab-destroy: venv ## Remove the lab containers and network (keeps images and the mirror)
	$(BIN)/ansible-playbook -i $(LAB_INVENTORY) playbooks/lab/down.yml

RESULTS := $(CURDIR)/.cache/test-results
export TEST_RESULTS_DIR := $(RESULTS)

.PHONY: test
test: ## The whole test suite: lint, unit, molecule (what .ci/run runs)
	rm -rf $(RESULTS) && mkdir -p $(RESULTS)
	$(MAKE) --no-print-directory lint unit molecule
	$(BIN)/python tools/checks/test_summary.py $(RESULTS)

.PHONY: lint
lint: venv ## yamllint, ansible-lint (production profile), syntax checks, ruff
	$(BIN)/yamllint --strict .
	$(BIN)/ansible-lint --offline --strict
	for playbook in $(PLAYBOOKS); do \
	  $(BIN)/ansible-playbook -i $(LAB_INVENTORY) --syntax-check "$$playbook" >/dev/null; \
	done
	$(BIN)/ruff check tools tests molecule plugins inventories/bench files/python-web-service roles/*/files roles/*/filter_plugins roles/*/library roles/*/module_utils roles/*/action_plugins

.PHONY: unit
unit: mirror ## Unit tests: templates under the real `consul validate`, preflight, tools, web service
	$(BIN)/pytest tests/unit files/python-web-service/tests --junitxml=$(RESULTS)/unit.xml

.PHONY: molecule
molecule: image mirror wheelhouse test-tools ## Molecule: converge, idempotence, testinfra verify, failover
	@# Containers left by an interrupted run (of any checkout) would be reused
	@# with their old state; molecule only knows its own checkout's.
	docker ps -aq --filter label=consul-platform.molecule=default | xargs -r docker rm -f
	$(BIN)/molecule test --all
