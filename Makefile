# The two set-up commands: `make demo` (the main job, end to end) and `make test` (the test suite).
# Both create .venv in the repo root from nothing on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
EXTRAS ?= cpu,serve,app,dev

.PHONY: install test demo bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

install: $(BIN)/.installed

test: install
	$(BIN)/python -m pytest -q

# Until `mult demo` exists (export, Triton and the search page come with later issues), the demo runs the
# parts that do: render SynthVI, train the synth-demo preset (stage 1 + MULT + OCLR), evaluate.
DEMO_DATA ?= data/synth-demo
DEMO_RUN  ?= runs/demo
demo: install
	test -f $(DEMO_DATA)/exp/test_id.txt || $(BIN)/mult data synth --format sysu --out $(DEMO_DATA) --ids 100 \
		--height 128 --width 64 --images-per-camera 5 --seed 0
	if [ -f $(DEMO_RUN)/checkpoint.pt ]; then $(BIN)/mult train --out $(DEMO_RUN) --resume; \
	else $(BIN)/mult train --preset synth-demo --data-root $(DEMO_DATA) --out $(DEMO_RUN); fi
	$(BIN)/mult evaluate $(DEMO_RUN)
	@echo "plots: $(DEMO_RUN)/training.png   metrics: $(DEMO_RUN)/metrics.jsonl"

bench: install
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
