# The two entry points of the README. Both create .venv and install what they need.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.parity-installed

.PHONY: demo test install clean golden

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,feast,postgres,streaming]'
	@touch $(STAMP)

install: $(STAMP)

## demo: the main job on embedded defaults
demo: $(STAMP)
	$(BIN)/python -m parity.demo

## test: the whole test suite (installs kcat, the independent Kafka client some tests use, when missing)
test: $(STAMP)
	@command -v kcat >/dev/null 2>&1 || command -v kafkacat >/dev/null 2>&1 || \
		(apt-get install -y -q kcat >/dev/null 2>&1 || sudo -n apt-get install -y -q kcat >/dev/null 2>&1) || \
		echo "kcat could not be installed (apt-get install kcat): its check in tests/test_embedded_kafka.py will skip"
	$(BIN)/python -m pytest

## golden: regenerate tests/golden/ after a reviewed change to a compiled artifact
golden: $(STAMP)
	PARITY_UPDATE_GOLDEN=1 $(BIN)/python -m pytest tests/test_golden.py

clean:
	rm -rf $(VENV) data build *.egg-info
