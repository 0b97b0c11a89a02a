# Set-up is idempotent: `make run` and `make test` create .venv and install into it on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-fast lint format show bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[test,base,serve,vad,ray]'
	$(BIN)/pip install -q --no-deps -c constraints.txt silero-vad==6.2.0
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/kvgraph transcribe examples/jfk.wav --verbose --output-dir out

# two test processes (pytest-xdist, whole files each): MAX's compiles keep ~1.6 of 2 cores busy,
# so a second process fills the rest (docs/testing.md); TEST_WORKERS=0 runs in one process.
# Files go out in the suite's own order (tests/conftest.py: the long compiles first), not
# pytest-xdist's by test count.
TEST_WORKERS ?= 2
test: lint
	$(BIN)/python -m pytest -q -ra --durations=15 -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# one lint and format standard (ruff, configured in pyproject.toml); `make format` applies it
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -ra -m "not max and not slow"

show: $(STAMP)
	$(BIN)/kvgraph show whisper-tiny.en

bench: $(STAMP)
	$(BIN)/python benchmarks/step_latency.py --compare-concat --compare-f32 --reps 10 --warmup 3 --calls 20

clean:
	rm -rf $(VENV)
