"""`kvgraph transcribe` end to end with the real tiny.en model on MAX.

``models.whisper.apps.cli.transcribe.main`` gets a ``load_backend`` that hands out the
session's compiled backend (no recompiling); one test runs the installed
``kvgraph`` console script in a subprocess (MAX's disk cache makes its
compile fast).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from whisper_clips import JFK, JFK_WORDS, ROOT, words
from whisper_fixtures import *  # noqa: F401,F403 - session fixtures
from whisper_fixtures import fixture_loader

from models.whisper.apps.cli.transcribe import main

pytestmark = pytest.mark.max


class Loader:
    """Records the arguments and returns the session's compiled backends."""

    def __init__(self):
        self.calls = []

    def __call__(self, name, kv_cache=True):
        self.calls.append((name, kv_cache))
        return fixture_loader(name, kv_cache)


@pytest.fixture
def loader(tiny_backend):  # compiled once per session before the CLI runs
    return Loader()


def _run(argv, loader, capsys):
    rc = main([str(a) for a in argv], load_backend=loader)
    cap = capsys.readouterr()
    err = [line for line in cap.err.splitlines() if line.strip()]
    return rc, cap.out, err


def _no_hidden(d: Path):
    return [p.name for p in d.iterdir() if p.name.startswith(".")]


def test_jfk_all_formats(tmp_path, loader, capsys):
    out = tmp_path / "out"
    rc, stdout, err = _run([JFK, "--output-dir", out, "--output-format", "all"], loader, capsys)
    assert rc == 0, err
    assert words(stdout) == JFK_WORDS
    assert loader.calls == [("tiny.en", True)]
    assert sorted(p.name for p in out.iterdir()) == ["jfk.json", "jfk.srt", "jfk.tsv", "jfk.txt", "jfk.vtt"]

    assert words((out / "jfk.txt").read_text()) == JFK_WORDS

    srt = (out / "jfk.srt").read_text()
    cues = re.findall(r"(\d\d:\d\d:\d\d,\d\d\d) --> (\d\d:\d\d:\d\d,\d\d\d)\n(.*)", srt)
    assert cues and cues[0][0] == "00:00:00,000"
    assert words(" ".join(c[2] for c in cues)) == JFK_WORDS
    assert srt.startswith("1\n")

    vtt = (out / "jfk.vtt").read_text()
    assert vtt.startswith("WEBVTT")
    vcues = re.findall(r"(\d\d:\d\d\.\d\d\d) --> (\d\d:\d\d\.\d\d\d)\n(.*)", vtt)
    assert vcues and words(" ".join(c[2] for c in vcues)) == JFK_WORDS

    data = json.loads((out / "jfk.json").read_text())
    assert words(data["text"]) == JFK_WORDS and data["language"] == "en"
    assert data["segments"] and data["segments"][-1]["end"] > 8.0
    assert data["timings"]["encode_calls"] >= 1
    assert _no_hidden(out) == []


def test_no_kv_cache_flag(tmp_path, tiny_backend_nocache, loader, capsys):
    out = tmp_path / "out"
    rc, stdout, err = _run([JFK, "-o", out, "-f", "txt", "--no-kv-cache"], loader, capsys)
    assert rc == 0, err
    assert loader.calls == [("tiny.en", False)]
    assert words((out / "jfk.txt").read_text()) == JFK_WORDS


def _truncated_wav(path: Path):
    full = path.with_name("full.wav")
    x = (0.1 * np.sin(np.arange(16000) / 5)).astype(np.float32)
    sf.write(str(full), x, 16000, subtype="PCM_16")
    data = full.read_bytes()
    full.unlink()
    path.write_bytes(data[: len(data) // 2])


BAD_FILES = {
    "missing": None,
    "empty": lambda p: p.write_bytes(b""),
    "not_audio": lambda p: p.write_bytes(b"This is a text file, not a WAV.\n" * 40),
    "truncated": _truncated_wav,
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_bad_file_is_one_line_error(tmp_path, loader, capsys, kind):
    bad = tmp_path / f"{kind}.wav"
    if BAD_FILES[kind] is not None:
        BAD_FILES[kind](bad)
    out = tmp_path / "out"
    rc, stdout, err = _run([bad, "-o", out, "-f", "all"], loader, capsys)
    assert rc == 1
    assert len(err) == 1, err
    assert err[0].startswith(f"kvgraph: error: {bad}: "), err
    assert "Traceback" not in err[0]
    assert stdout == ""
    assert list(out.iterdir()) == []  # no output, no partial or temporary file


def test_good_file_alongside_bad_one(tmp_path, loader, capsys):
    bad = tmp_path / "bad.wav"
    _truncated_wav(bad)
    missing = tmp_path / "missing.flac"
    out = tmp_path / "out"
    rc, stdout, err = _run([bad, JFK, missing, "-o", out, "-f", "txt"], loader, capsys)
    assert rc == 1
    assert len(err) == 2, err
    assert err[0].startswith(f"kvgraph: error: {bad}: ")
    assert err[1].startswith(f"kvgraph: error: {missing}: ")
    assert sorted(p.name for p in out.iterdir()) == ["jfk.txt"]
    assert words((out / "jfk.txt").read_text()) == JFK_WORDS
    assert stdout.startswith(f"{JFK}: ")
    assert words(stdout.split(": ", 1)[1]) == JFK_WORDS


def test_unknown_model_default_loader(tmp_path, capsys):
    rc = main([str(JFK), "--model", "tiny.fr", "-o", str(tmp_path / "out")])
    cap = capsys.readouterr()
    err = [line for line in cap.err.splitlines() if line.strip()]
    assert rc != 0
    assert len(err) == 1, err
    assert err[0].startswith("kvgraph: error: model 'tiny.fr': ")
    assert "Traceback" not in cap.err
    assert list((tmp_path / "out").iterdir()) == []


def test_verbose_prints_timings(tmp_path, loader, capsys):
    rc, stdout, err = _run([JFK, "-o", tmp_path, "-f", "txt", "--verbose"], loader, capsys)
    assert rc == 0
    assert words(stdout) == JFK_WORDS
    last = err[-1]
    assert last.startswith("kvgraph: timings: load ")
    m = re.search(r"compile (\d+\.\d+) s", last)
    assert m and float(m.group(1)) > 0  # the real backend reports its compile time
    for piece in ("encode", "prefill", "step", "tokens/s", "wall"):
        assert piece in last
    m = re.search(r"(\d+) tokens, (\d+\.\d+) tokens/s", last)
    assert m and int(m.group(1)) > 10 and float(m.group(2)) > 0


def _transcribe_jfk_in_a_subprocess(out: Path, env: dict, timeout: int) -> subprocess.CompletedProcess:
    """The installed ``kvgraph`` console script on JFK (txt into ``out``); its transcript is
    openai's words, with no traceback."""
    exe = Path(sys.executable).parent / "kvgraph"
    if not exe.exists():
        exe = ROOT / ".venv" / "bin" / "kvgraph"
    if not exe.exists():
        pytest.skip("kvgraph console script not installed")
    r = subprocess.run(
        [str(exe), "transcribe", str(JFK), "--output-dir", str(out), "--output-format", "txt"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert words(r.stdout) == JFK_WORDS
    assert words((out / "jfk.txt").read_text()) == JFK_WORDS
    assert "Traceback" not in r.stderr
    return r


def test_console_script_subprocess(tmp_path):
    _transcribe_jfk_in_a_subprocess(tmp_path / "out", dict(os.environ), timeout=600)


def test_a_machine_whose_kernels_cannot_build_still_transcribes_exactly(tmp_path):
    """The custom kernels and the decode loop's native library fail to build (a broken
    compiler): one warning line each names them and the way out, and the transcript is
    openai's, through MAX's own ops and the NumPy statistics."""
    broken = tmp_path / "mojo"
    broken.write_text("#!/bin/sh\necho 'error: this compiler is broken' >&2\nexit 3\n")
    broken.chmod(0o755)
    kernels, store = tmp_path / "kernels", tmp_path / "store"  # nothing built or stored yet
    env = dict(
        os.environ, KVGRAPH_MOJO=str(broken), KVGRAPH_KERNELS_DIR=str(kernels), KVGRAPH_CACHE_DIR=str(store)
    )
    env.pop("KVGRAPH_CUSTOM_KERNELS", None)
    r = _transcribe_jfk_in_a_subprocess(tmp_path / "out", env, timeout=900)
    warned = [line for line in r.stderr.splitlines() if "did not build" in line]
    assert len(warned) == 2, r.stderr[-2000:]
    kernel_line, native_line = sorted(warned, key=lambda line: "kvgraph_gemv_f16" not in line)
    assert "kvgraph_gemv_f16" in kernel_line and "this compiler is broken" in kernel_line
    assert "KVGRAPH_CUSTOM_KERNELS=off" in kernel_line
    assert "torch_float.mojo" in native_line and "this compiler is broken" in native_line
    assert "KVGRAPH_NATIVE=off" in native_line
    assert not list(kernels.rglob("*.mojoc")) and not list(kernels.rglob("*.so"))  # nothing half-built


NO_TORCH = r"""
import io, json, sys, tempfile
jfk, out = sys.argv[1], sys.argv[2]
from models.whisper.apps.cli.transcribe import main
rc = main([jfk, "-o", out, "-f", "all", "--word_timestamps", "True", "--no-progress"])
import models.whisper
model = models.whisper.load_model("tiny.en")
result = model.transcribe(jfk, word_timestamps=True)
from models.whisper.apps.server import BackgroundServer, ServedModel, create_app, make_engine
from openai import OpenAI
app = create_app(make_engine(model, batch_size=2), ServedModel.of("tiny.en", model))
with BackgroundServer(app) as url:
    client = OpenAI(base_url=url + "/v1", api_key="unused")
    with open(jfk, "rb") as f:
        served = client.audio.transcriptions.create(file=f, model="tiny.en", response_format="text")
print(json.dumps(dict(
    rc=rc, text=result["text"], served=served,
    loaded=sorted(m for m in ("torch", "whisper", "numba", "tqdm") if m in sys.modules),
)))
"""


def test_transcribe_load_model_and_serve_import_neither_torch_nor_whisper(tmp_path, tiny_backend):
    """The product's three doors (the CLI, ``load_model(...).transcribe``, the server) run
    kvgraph's own decode loop: openai-whisper and torch stay unimported (they are the tests'
    oracle and the ``.pt`` loader only). ``tiny_backend``: the programs are in the store."""
    pytest.importorskip("starlette")
    r = subprocess.run(
        [sys.executable, "-c", NO_TORCH, str(JFK), str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["rc"] == 0
    assert words(out["text"]) == JFK_WORDS and words(out["served"]) == JFK_WORDS
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"jfk.{e}" for e in ("json", "srt", "tsv", "txt", "vtt")
    ]
    assert "torch" not in out["loaded"] and "whisper" not in out["loaded"], out["loaded"]
