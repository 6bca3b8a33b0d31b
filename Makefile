# The README's commands. `make test` is what CI runs (.ci/run).
.PHONY: install dev demo test lint bench

install:
	pip install torch==2.13.0 && pip install -e .

dev:
	pip install torch==2.13.0 && pip install -e ".[dev]"

demo: install
	kronypt compress gpt2 --scheme 81M --out gpt2-81M

test: dev
	python -m pytest

lint:
	ruff check src tests benchmarks

bench:
	python benchmarks/layer.py --json benchmarks/results/layer-cpu.json
