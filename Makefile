# Set-up is idempotent: `make run` and `make test` create .venv and install into it on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-cpu-target test-fast lint format show bench clean

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

# Another x86-64 CPU's code, built and run on this machine (KVGRAPH_CPU_TARGET: see
# kvgraph/max/native.py and docs/testing.md): the custom kernels, the native host libraries and
# the lowering's choices by instruction-set class, and Whisper tiny.en's decoder on openai's
# encoder output against openai-whisper's logits. CPU is an LLVM CPU name this machine can run
# (default x86-64-v3: AVX2's code, e.g. AMD Zen 3's, on an AVX-512 machine). Left out: whatever
# runs MAX's conv2d (the encoder, the bfloat16 emulation's test), wrong in MAX 26.7 under a
# virtual target (and right on the CPU itself).
CPU ?= x86-64-v3
WHISPER_DECODER_TESTS := $(addprefix tests/test_whisper_max.py::,test_decoder_steps_match_openai_kv_cache \
	test_decoder_multi_token_step_matches_openai_full test_sampling_probabilities_on_real_steps_equal_torchs)
TARGET_TESTS := tests/test_custom_kernels.py tests/test_max_kernels.py tests/test_torch_float_native.py \
	tests/test_compute_types.py tests/test_fused_linears.py tests/test_lower_f16.py tests/test_isa.py \
	$(WHISPER_DECODER_TESTS)
test-cpu-target: $(STAMP)
	KVGRAPH_CPU_TARGET=$(CPU) $(BIN)/python -m pytest -q -ra -n $(TEST_WORKERS) --dist loadfile $(TARGET_TESTS) \
		--deselect "tests/test_compute_types.py::test_max_runs_the_reference_arithmetic[emulate]"

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -ra -m "not max and not slow"

show: $(STAMP)
	$(BIN)/kvgraph show whisper-tiny.en

bench: $(STAMP)
	$(BIN)/python benchmarks/step_latency.py --compare-concat --compare-f32 --reps 10 --warmup 3 --calls 20

clean:
	rm -rf $(VENV)
