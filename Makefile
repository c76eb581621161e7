# Two commands set everything up on a fresh machine:
#   make demo   create the SQLite database, load sample data, preview the example playbook, run it once,
#               then send live events over HTTP and watch the worker react, and measure a playbook
#               against its holdout (automation report)
#   make test   run the whole test suite (PostgreSQL tests skip locally when no server answers)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean reset

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/automation db upgrade
	$(BIN)/automation sample-data sample --customers 3000 --seed 7
	$(BIN)/automation import customers sample/customers.csv
	$(BIN)/automation import events sample/events.jsonl
	$(BIN)/automation validate playbooks/
	$(BIN)/automation preview playbooks/lifecycle.yaml --limit 15
	$(BIN)/automation run --once
	$(BIN)/python examples/live_demo.py
	$(BIN)/python examples/outcomes_demo.py

test: $(STAMP)
	$(BIN)/ruff check automation tests bench examples
	$(BIN)/mypy
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python bench/evaluate.py

clean:
	rm -rf $(VENV) automation.db automation.db-wal automation.db-shm sample outbox report.html

reset:
	rm -rf automation.db automation.db-wal automation.db-shm sample outbox report.html
