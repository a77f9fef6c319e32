# gatewayd — two commands: `make run` and `make test`. Everything else is optional.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= etc/gatewayd.toml
PYTEST_ARGS ?=

SOURCES := pyproject.toml setup.py $(wildcard native/*.c native/*.h native/*.py native/*.cdef plugins/*/__init__.py)

.PHONY: run test install install-test bench sanitize fuzz clean distclean check-config

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Re-install when packaging or C sources change (editable installs do not rebuild C).
$(VENV)/.stamp-install: $(BIN)/python $(SOURCES)
	$(BIN)/pip install -q -e '.[all]'
	@touch $@

$(VENV)/.stamp-test: $(VENV)/.stamp-install
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

install: $(VENV)/.stamp-install
install-test: $(VENV)/.stamp-test

## make run: set up .venv and run the daemon in the foreground on the embedded default site.
run: install
	@mkdir -p var
	$(BIN)/gatewayd run -c $(CONFIG)

check-config: install
	$(BIN)/gatewayd check-config $(CONFIG)

## make test: set up .venv with test dependencies and run the whole suite.
test: install-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install-test
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

## make sanitize: build the native extension with ASan/UBSan and run the native tests under it.
sanitize: install-test
	bash native/sanitize.sh

## make fuzz: a long fuzzing run of both stream receivers (atheris + hypothesis) on the ASan/UBSan build.
FUZZ_SCALE ?= 50
fuzz: install-test
	GATEWAYD_FUZZ_SCALE=$(FUZZ_SCALE) bash native/sanitize.sh tests/native/test_native_fuzz.py

clean:
	rm -rf build dist *.egg-info .pytest_cache var

distclean: clean
	rm -rf $(VENV)

## make arm64-check: build the native extension for aarch64 in a Debian arm64 root (qemu) and run tests/native there.
arm64-check:
	bash packaging/arm64/check.sh

## make deb: build dist/gatewayd_<version>-1_<arch>.deb (self-contained library tree + wrappers + unit)
deb: install
	bash packaging/debian/build-deb.sh dist
