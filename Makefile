# tapestream: `make run` for the demo, `make test` for the tests. Both install what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test unit integration lint broker-start broker-stop sample bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/python -m tables.book_state  # compile the book kernels once, into numba's cache
	touch $@

install: $(STAMP)

# Local broker, a worker, the sample replayed at its recorded pace, web views up.
run: install
	PATH="$(abspath $(BIN)):$$PATH" bash deploy/local/run.sh

# Lint, unit and integration tests against the real local broker (started here if it is not
# running, and stopped again afterwards).
test: install
	@was_up=0; bash deploy/local/kafka.sh status && was_up=1; \
	bash deploy/local/kafka.sh start || exit 1; \
	$(BIN)/ruff check . && $(BIN)/python -m pytest tests; rc=$$?; \
	[ $$was_up = 1 ] || bash deploy/local/kafka.sh stop; \
	exit $$rc

unit: install
	$(BIN)/python -m pytest tests/unit

integration: install
	bash deploy/local/kafka.sh start
	$(BIN)/python -m pytest tests/integration

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

broker-start:
	bash deploy/local/kafka.sh start

broker-stop:
	bash deploy/local/kafka.sh stop

sample: install
	$(BIN)/python -m load_tests.gen_mbo --out var/sample/sample.mbo.dbn.zst --records 1000000 --instruments 50 --rate 2000

clean:
	rm -rf var .pytest_cache .hypothesis
