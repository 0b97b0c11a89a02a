"""The examples run as a newcomer would run them (they reuse graphs the MAX tests compiled)."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.max
ROOT = Path(__file__).resolve().parents[1]


def _run(name: str) -> str:
    p = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout


@pytest.mark.parametrize("name", ["compile_llama_style.py", "compile_whisper_decoder.py"])
def test_example_is_short(name):
    assert len((ROOT / "examples" / name).read_text().splitlines()) < 40


def test_llama_example_generates_and_agrees_with_full_recomputation():
    out = _run("compile_llama_style.py")
    assert "graph llama_demo.step(" in out
    assert "generated: [" in out and "cached steps agree with full recomputation" in out


def test_whisper_example_transcribes_jfk():
    out = _run("compile_whisper_decoder.py")
    assert "graph whisper_decoder.step(" in out
    assert "ask not what your country can do for you" in out.lower()
