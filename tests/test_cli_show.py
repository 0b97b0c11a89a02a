"""``kvgraph show``: the IR of every stage for built-in specs, and clean errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kvgraph.cli import main

ROOT = Path(__file__).resolve().parents[1]
HEADERS = ["// ---- after build: full"] + [
    f"// ---- after {stage}: {prog}"
    for stage in ("kv_cache", "hoist_invariant", "share_contexts", "sink_take_last", "dce")
    for prog in ("prefill", "step")
]


@pytest.mark.parametrize("spec,graph", [("whisper-tiny.en", "whisper_decoder"), ("llama-demo", "llama_demo")])
def test_show_prints_every_stage(capsys, spec, graph):
    assert main(["show", spec]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    for h in HEADERS:
        assert h in out, h
    assert [line for line in out.splitlines() if line.startswith("// ----")] == HEADERS
    assert f"graph {graph}.step(" in out and "return logits=" in out


def test_show_one_stage_and_program(capsys):
    assert main(["show", "whisper-tiny.en", "--stage", "dce", "--program", "step"]) == 0
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("// ----")] == ["// ---- after dce: step"]
    assert "hoisted.b0.ck" in out and "%context" not in out


def test_show_unknown_spec(capsys):
    assert main(["show", "gpt-17"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert "gpt-17" in err and "whisper-tiny.en" in err and "Traceback" not in err


def test_show_unknown_stage(capsys):
    assert main(["show", "llama-demo", "--stage", "nope"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "dce" in err


def test_help_exits_zero(capsys):
    assert main(["--help"]) == 0
    assert "show" in capsys.readouterr().out
    assert main(["show", "--help"]) == 0


def test_no_command_is_a_usage_error(capsys):
    assert main([]) == 2


def test_python_dash_m(tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "kvgraph", "show", "llama-demo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    assert "// ---- after dce: step" in p.stdout and "graph llama_demo(" in p.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "kvgraph", "show", "nope"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_list(capsys):
    assert main(["list"]) == 0
    assert capsys.readouterr().out.split() == ["whisper-tiny.en", "whisper-base", "llama-demo"]


def test_show_exposed_attention_scores(capsys):
    assert (
        main(
            [
                "show",
                "whisper-tiny.en",
                "--expose",
                "b1.cross:0",
                "--expose",
                "b2.cross:0,5",
                "--stage",
                "expose_attention",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "// ---- after expose_attention: full"
    assert (
        "%scores.b2.cross = attention_scores %b2.cq, %b2.ck {heads=6, kv_heads=6, causal=false, "
        "scale=0.125, select=[0, 5]} : f32[b, 2, s, 1500]"
    ) in out
    assert "return logits=%logits, scores.b1.cross=%scores.b1.cross, scores.b2.cross=%scores.b2.cross" in out
    assert main(["show", "llama-demo", "--expose", "b7.attn"]) == 1
    assert "has no attention %b7.attn" in capsys.readouterr().err
    assert main(["show", "llama-demo", "--expose", "b0.attn:x"]) == 2
