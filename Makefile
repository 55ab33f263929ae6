# The two commands of the README, on a machine with Python >= 3.11 and nothing else prepared:
#
#   make quickstart   # create .venv, install, run the local quickstart benchmark
#   make test         # create .venv, install, run mypy, the strict docs build and the tests
#
# Both are idempotent: the install runs again only when pyproject.toml changed.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
# The quickstart needs the local endpoint (local), the fast client (fast), report.html (html)
# and the host's telemetry (telemetry);
# the tests need everything.
QUICKSTART_EXTRAS := local,fast,html,telemetry
TEST_EXTRAS := local,aws,dev,fast,ray,telemetry,html,docs

.PHONY: quickstart test docs clean-venv

quickstart: $(VENV)/.installed-quickstart
	@# The last line says where the report is (the newest run's report.html; report.md without
	@# the html extra), also when the budget gate fails; then pytest's exit status.
	@$(PY) -m pytest benchmarks/ --fmbench-config=configs/quickstart.yml -p no:cacheprovider; status=$$?; \
	  d=$$(ls -td results/quickstart/*/ | while read d; do [ -f "$${d}report.md" ] && echo "$$d" && break; done); \
	  if [ -f "$${d}report.html" ]; then echo "report: $${d}report.html"; else echo "report: $${d}report.md"; fi; \
	  exit $$status

# mypy and the docs first, so the last thing printed is pytest's summary. (No --quiet on the
# docs build: it hides the warnings that --strict counts, and the build passes.)
test: $(VENV)/.installed-test
	$(PY) -m mypy pytest_fmbench
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir build/site
	@# A short perf smoke with wide margins (benchmarks/perf, marked smoke): a large regression
	@# of the client or the report fails the suite.
	$(PY) -m pytest benchmarks/perf -m smoke -p no:randomly -p no:cacheprovider -q
	$(PY) -m pytest tests -n 2 -p no:cacheprovider

docs: $(VENV)/.installed-test
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs serve

$(VENV)/.created:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else \
	  "pytest-fmbench needs Python >= 3.11: run make PYTHON=python3.11 (or newer)")'
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	@# The CPU build of PyTorch first: a plain torch requirement pulls a multi-GB CUDA build.
	$(PIP) torch==2.13.0
	touch $@

$(VENV)/.installed-quickstart: $(VENV)/.created pyproject.toml
	$(PIP) -e ".[$(QUICKSTART_EXTRAS)]"
	touch $@

$(VENV)/.installed-test: $(VENV)/.created pyproject.toml
	$(PIP) -e ".[$(TEST_EXTRAS)]"
	touch $@ $(VENV)/.installed-quickstart

clean-venv:
	rm -rf $(VENV)
