# Set-up, checks and the demo. Every target installs what it needs first, so a
# fresh Debian machine (as root) goes from clone to result in one command.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# WeasyPrint needs Pango; without libharfbuzz-subset0 every page falls back to
# fontTools subsetting, about ten times slower.
SYSTEM_PACKAGES := libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 \
	fontconfig fonts-dejavu-core
DEMO := output/demo

.PHONY: setup system demo test check lint types bench clean

setup: $(STAMP)

system:
	@missing=""; \
	for pkg in $(SYSTEM_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$pkg 2>/dev/null | grep -q "ok installed" \
	    || missing="$$missing $$pkg"; \
	done; \
	$(PYTHON) -c "import ensurepip, venv" 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then \
	    echo "keymail: error: run as root, or install:$$missing" >&2; exit 1; \
	  fi; \
	  echo "keymail: installing system packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml constraints.txt | system
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# The main job: generate the bundled fixtures, then verify what was written.
demo: setup
	rm -rf $(DEMO)
	$(BIN)/keymail generate fixtures/accounts.csv --out $(DEMO) \
	  --registry $(DEMO)/registry.sqlite3
	$(BIN)/keymail verify $(DEMO) --registry $(DEMO)/registry.sqlite3 \
	  --records fixtures/accounts.csv --junit $(DEMO)/verify-junit.xml

# pytest exits 5 when it collected nothing: that is a failure here.
test: setup
	@$(BIN)/pytest -q -p no:cacheprovider; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "keymail: error: no tests ran" >&2; exit 1; fi; \
	exit $$rc

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: setup
	$(BIN)/mypy --strict pipeline

check: lint types test

bench: setup
	$(BIN)/python benchmarks/generate_bench.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
