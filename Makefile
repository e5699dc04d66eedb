# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The stamp is rebuilt only when pyproject.toml changes, so `make setup` is quick when nothing did.
STAMP := $(VENV)/.edgecls-installed

.PHONY: setup test demo lint clean
.PHONY: test-pi test-stress
.PHONY: docs translations

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if (3, 10) <= v <= (3, 13) else "edgecls needs Python 3.10-3.13, this is %d.%d: set PYTHON=python3.11" % v)'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[edge,train,fleet,dev]'
	touch $(STAMP)

test: setup
	$(PY) -m pytest

# The device suite on an emulated Debian Trixie arm64 / Python 3.13 root (qemu-user), built once and cached
# (EDGECLS_PI_CACHE, default ~/.cache/edgecls/pi-trixie-arm64), then the x86-vs-arm64 parity test of the quick
# demo's models (host side); both skip with the reason where no root can be had. Not part of `make test`:
# uncached it takes longer than CI allows (docs/arm64.md).
test-pi: setup
	pi/pi_root.sh test
	EDGECLS_TEST_PI=1 $(PY) -m pytest tests/pi/test_parity.py

# The timing-sensitive tests (tests/fleet and tests/edge_app/link, the kiosk's web, field and collection tests, swaps, edgecls run) 5 times
# while two busy loops hold the cores; ends with the runs and the failures (scripts/stress.sh). STRESS_RUNS=N for
# another count, STRESS_TESTS to pick tests. Not part of `make test`: it takes about 5x those tests' time.
test-stress: setup
	PY=$(PY) scripts/stress.sh $(STRESS_TESTS)

# The docs site (mkdocs.yml, docs/) into site/, with no network once the [docs] extra is in: --strict fails
# on a broken link or anchor, or a page missing from the nav. Needs only MkDocs, not `make setup`'s extras.
DOCS_STAMP := $(VENV)/.edgecls-docs-installed

$(DOCS_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[docs]'
	touch $(DOCS_STAMP)

# NO_MKDOCS_2_WARNING: Material's banner about its end of life (May 2027) on every build; see docs/development.md.
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict -d site

demo: setup
	$(VENV)/bin/edgecls demo

# The kiosk page's words: extract them from edge_app/kiosk/page.py into locale/kiosk.pot, merge new ones into each
# language's kiosk.po (translators edit those), compile the kiosk.mo files the kiosk reads (committed: a device
# installs no Babel tooling). tests/edge_app/kiosk/test_languages.py fails when a .mo is older than its .po.
LOCALE := edge_app/kiosk/locale
translations: setup
	$(VENV)/bin/pybabel extract -F babel.cfg -o $(LOCALE)/kiosk.pot --no-location --sort-output --project edgecls \
		--copyright-holder "the edgecls authors" -k _ .
	$(VENV)/bin/pybabel update -i $(LOCALE)/kiosk.pot -d $(LOCALE) -D kiosk --no-fuzzy-matching
	$(VENV)/bin/pybabel compile -d $(LOCALE) -D kiosk --statistics

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache site
