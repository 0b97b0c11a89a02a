"""``kvgraph prepare`` fills the program store; a later process (``prepare`` again, then
``transcribe``) reads Whisper's programs back instead of compiling them.

The first ``prepare`` runs with ``--all-programs``: the Module the tests' tiny.en backend
compiles (tests/whisper_fixtures.py), which MAX's own cache then holds for this process with an
empty store of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from whisper_clips import JFK_WORDS, words

from models.whisper.apps.cli import prepare as prepare_cli

ROOT = Path(__file__).resolve().parents[1]


def test_help_and_usage_errors(capsys):
    assert prepare_cli.main(["--help"]) == 0
    assert "--all-programs" in capsys.readouterr().out
    assert prepare_cli.main(["--bogus"]) == 2


def _kvgraph(store: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, KVGRAPH_CACHE_DIR=str(store), PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "kvgraph", *args],
        cwd=ROOT,
        env=env,
        text=True,
        capture_output=True,
        timeout=1800,
    )


@pytest.mark.max
def test_prepare_then_a_new_process_starts_from_the_store(tmp_path):
    store = tmp_path / "store"
    first = _kvgraph(store, "prepare", "--model", "tiny.en", "--all-programs")
    assert first.returncode == 0, first.stderr[-2000:]
    listed = "encoder (compiled), prefill (compiled), step_few (compiled), step (compiled), step_rows (compiled), full (compiled)"
    assert f"tiny.en: {listed} in " in first.stdout
    assert "0 read back, 1 written" in first.stderr  # every program in one Module: one artifact
    from kvgraph.max import isa

    assert f"custom kernels: built, tiles for {isa.host().name}" in first.stderr  # this machine's class
    again = _kvgraph(store, "prepare", "--model", "tiny.en")  # the first programs, through their links
    assert again.returncode == 0, again.stderr[-2000:]
    assert "tiny.en: encoder (store), prefill (store), step_few (store) in " in again.stdout
    assert "1 read back, 0 written" in again.stderr
    # word timestamps' program, compiled on first use without --all-programs: bound from the
    # Module read at start-up (the backend has let the encoder's weights go by then)
    run = _kvgraph(
        store,
        "transcribe",
        "examples/jfk.wav",
        "--output-dir",
        str(tmp_path / "out"),
        "--verbose",
        "--word_timestamps",
        "True",
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert words(run.stdout) == JFK_WORDS
    assert "loaded stored" in run.stderr and "compiling whisper" not in run.stderr
    assert "bound when its Module was read" in run.stderr


def test_unknown_model_is_one_line_error(tmp_path):
    r = _kvgraph(tmp_path / "store", "prepare", "--model", "no-such-model")
    assert r.returncode == 1
    assert "error: model 'no-such-model'" in r.stderr
    assert "Traceback" not in r.stderr
