# `make run` and `make test` are all a newcomer needs (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Debian packages: what the running system needs, and what the test suite needs on top.
# gettext: xgettext and msgfmt, with which tests/test_translations.py finds untranslated strings.
# npm fetches the OHIF Viewer (imaging/ohif/package.json); a package counts as present when
# dpkg has it or a command of its name is on PATH (NodeSource's nodejs brings its own npm).
RUN_PACKAGES := redis-server dcmtk npm
TEST_PACKAGES := $(RUN_PACKAGES) postgresql chromium fonts-noto-cjk gettext
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test lint system-packages system-packages-test venv migrate ohif bench bench-dicomweb clean

run: system-packages venv migrate ohif
	$(PY) manage.py runall

test: system-packages-test venv lint ohif
	mkdir -p var
	$(PY) manage.py makemigrations --check --dry-run
	@echo "=== test suite on SQLite ==="
	$(PY) -m pytest
	@echo "=== test suite on PostgreSQL ==="
	tests/with_postgres.sh $(PY) -m pytest

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Installs only what is missing, so a second run costs nothing.
system-packages:
	@missing=$$(for p in $(RUN_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q "ok installed" || command -v $$p >/dev/null || echo $$p; done); \
	if [ -n "$$missing" ]; then echo "installing:" $$missing; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; fi

system-packages-test:
	@missing=$$(for p in $(TEST_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q "ok installed" || command -v $$p >/dev/null || echo $$p; done); \
	if [ -n "$$missing" ]; then echo "installing:" $$missing; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; fi

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

migrate: venv
	mkdir -p var
	$(PY) manage.py migrate --noinput
	$(PY) manage.py collectstatic --noinput -v 0

# The pinned OHIF Viewer into OHIF_DIR (var/ohif) with npm pack; nothing when installed or OHIF_ENABLED=0.
ohif: venv
	$(PY) manage.py ohif_install

bench: venv
	$(PY) bench/ingest.py

# Installs Debian's orthanc and orthanc-dicomweb when missing (bench/orthanc.py), never at test time.
bench-dicomweb: venv
	$(PY) bench/dicomweb.py --studies 100000 --orthanc-studies 3000 --runs 15

clean:
	rm -rf $(VENV) var/test-db.sqlite3* .pytest_cache .ruff_cache
