"""models.whisper.apps.cli.transcribe: `kvgraph transcribe` with an injected backend.

The backend is ``ScriptedBackend``: no neural network, it emits a fixed token
script (``<|0.00|> Hello world.<|1.00|><|endoftext|>``) through the backend
contract, so openai-whisper's real decoding loop, timestamp rules and writers
run quickly and deterministically.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from models.whisper.apps.cli.transcribe import main

ROOT = Path(__file__).resolve().parents[1]


class ScriptedBackend:
    def __init__(self):
        import whisper.tokenizer
        from whisper.model import ModelDimensions

        self.dims = ModelDimensions(
            n_mels=80,
            n_audio_ctx=1500,
            n_audio_state=8,
            n_audio_head=1,
            n_audio_layer=1,
            n_vocab=51864,
            n_text_ctx=448,
            n_text_state=8,
            n_text_head=1,
            n_text_layer=1,
        )
        tok = whisper.tokenizer.get_tokenizer(False)
        self.tok = tok
        text = tok.encode(" Hello world.")
        self.script_ts = [tok.timestamp_begin] + text + [tok.timestamp_begin + 50, tok.eot]
        self.script_text = text + [tok.eot]
        self.calls = []

    def _next_logits(self, history):
        h = list(history)
        sot = len(h) - 1 - h[::-1].index(self.tok.sot)
        generated = h[sot + 1 :]
        script = self.script_ts
        if generated and generated[0] == self.tok.no_timestamps:
            generated, script = generated[1:], self.script_text
        target = script[min(len(generated), len(script) - 1)]
        logits = np.zeros(self.dims.n_vocab, np.float32)
        logits[target] = 30.0
        return logits

    def encode(self, mel):
        self.calls.append(("encode", mel.shape))
        return np.zeros((mel.shape[0], 1500, 8), np.float32)

    def prefill(self, tokens, audio_features):
        self.calls.append(("prefill", tokens.shape))
        return np.stack([self._next_logits(r) for r in tokens]), tokens.copy()

    def step(self, tokens, state):
        self.calls.append(("step", tokens.shape))
        out = []
        for row_state, row_new in zip(state, tokens):
            out.append(
                [
                    self._next_logits(np.concatenate([row_state, row_new[: i + 1]]))
                    for i in range(len(row_new))
                ]
            )
        return np.asarray(out, np.float32), np.concatenate([state, tokens], axis=1)

    def reorder(self, state, indices):
        self.calls.append(("reorder", tuple(indices)))
        return state[indices]


class Loader:
    def __init__(self):
        self.backend = ScriptedBackend()
        self.calls = []

    def __call__(self, name, kv_cache=True):
        self.calls.append((name, kv_cache))
        if name not in ("tiny.en", "base") and not os.path.exists(name):
            raise ValueError(f"unknown Whisper checkpoint {name!r}: accepted names are 'tiny.en', 'base'")
        return self.backend


@pytest.fixture
def loader():
    return Loader()


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "in" / "good.wav"
    path.parent.mkdir()
    rng = np.random.default_rng(0)
    sf.write(str(path), (0.1 * rng.standard_normal(32000)).astype(np.float32), 16000, subtype="PCM_16")
    return str(path)


def _leftovers(d: Path):
    return [p.name for p in d.iterdir() if p.name.startswith(".")]


def _err_lines(capsys):
    cap = capsys.readouterr()
    return cap.out, [line for line in cap.err.splitlines() if line.strip()]


def test_writes_all_formats(tmp_path, good, loader, capsys):
    out = tmp_path / "out"
    rc = main([good, "-o", str(out), "--output-format", "all"], load_backend=loader)
    stdout, err = _err_lines(capsys)
    assert rc == 0, err
    assert stdout.strip() == "Hello world."
    assert sorted(p.name for p in out.iterdir()) == [
        "good.json",
        "good.srt",
        "good.tsv",
        "good.txt",
        "good.vtt",
    ]
    assert (out / "good.txt").read_text() == "Hello world.\n"
    assert "00:00:00,000 --> 00:00:01,000\nHello world." in (out / "good.srt").read_text()
    vtt = (out / "good.vtt").read_text()
    assert vtt.startswith("WEBVTT") and "00:00.000 --> 00:01.000" in vtt
    data = json.loads((out / "good.json").read_text())
    assert data["text"].strip() == "Hello world."
    assert data["segments"][0]["start"] == 0.0 and data["segments"][0]["end"] == 1.0
    assert data["timings"]["encode_calls"] == 1
    assert loader.calls == [("tiny.en", True)]
    assert _leftovers(out) == []


@pytest.mark.parametrize("fmt", ["txt", "srt", "vtt", "tsv", "json"])
def test_single_format(tmp_path, good, loader, fmt):
    out = tmp_path / "out"
    assert main([good, "--output_dir", str(out), "-f", fmt], load_backend=loader) == 0
    assert [p.name for p in out.iterdir()] == [f"good.{fmt}"]


def test_missing_file_and_good_file(tmp_path, good, loader, capsys):
    out = tmp_path / "out"
    missing = str(tmp_path / "nope.wav")
    rc = main([missing, good, "-o", str(out), "-f", "txt"], load_backend=loader)
    stdout, err = _err_lines(capsys)
    assert rc == 1
    assert len(err) == 1, err
    assert err[0].startswith(f"kvgraph: error: {missing}: ")
    assert "Traceback" not in err[0]
    assert (out / "good.txt").read_text() == "Hello world.\n"
    assert not (out / "nope.txt").exists()
    assert _leftovers(out) == []
    assert "Hello world." in stdout


def test_corrupt_wav_is_one_line_error(tmp_path, good, loader, capsys):
    out = tmp_path / "out"
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage that is not audio")
    rc = main([str(bad), good, "-o", str(out), "-f", "json"], load_backend=loader)
    _, err = _err_lines(capsys)
    assert rc == 1
    assert len(err) == 1 and err[0].startswith(f"kvgraph: error: {bad}: "), err
    assert sorted(p.name for p in out.iterdir()) == ["good.json"]


def test_writer_failure_leaves_no_partial_files(tmp_path, good, loader, capsys, monkeypatch):
    from models.whisper.transcription import writers

    out = tmp_path / "out"
    out.mkdir()
    (out / "good.txt").write_text("old\n")

    def boom(result, file, layout):
        file.write('{"partial": ')
        raise RuntimeError("disk on fire")

    monkeypatch.setitem(writers.WRITERS, "json", boom)
    rc = main([good, "-o", str(out), "-f", "all"], load_backend=loader)
    _, err = _err_lines(capsys)
    assert rc == 1
    assert err[-1] == f"kvgraph: error: {good}: RuntimeError: disk on fire"
    # txt/vtt/srt/tsv were written before json failed, but only in the temp dir
    assert sorted(p.name for p in out.iterdir()) == ["good.txt"]
    assert (out / "good.txt").read_text() == "old\n"


def test_unknown_model_injected_loader(tmp_path, good, loader, capsys):
    rc = main([good, "--model", "nope", "-o", str(tmp_path)], load_backend=loader)
    _, err = _err_lines(capsys)
    assert rc != 0
    assert len(err) == 1 and err[0].startswith("kvgraph: error: model 'nope': "), err
    assert "Traceback" not in err[0]


def test_unknown_model_default_loader(tmp_path, good, capsys):
    rc = main([good, "--model", "definitely-not-a-model", "-o", str(tmp_path)])
    _, err = _err_lines(capsys)
    assert rc != 0
    assert len(err) == 1 and err[0].startswith("kvgraph: error: model "), err
    assert not any("Traceback" in line for line in err)


def test_help_exits_zero(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for flag in (
        "--output-format",
        "--output-dir",
        "--no-kv-cache",
        "--beam_size",
        "--condition_on_previous_text",
        "--no_speech_threshold",
    ):
        assert flag in out


def test_help_does_not_import_heavy_modules():
    code = (
        "import sys\n"
        "from models.whisper.apps.cli.transcribe import main\n"
        "rc = main(['--help'])\n"
        "heavy = [m for m in ('torch', 'whisper', 'max') if m in sys.modules]\n"
        "assert rc == 0 and not heavy, heavy\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["x.wav", "-f", "docx"],
        ["x.wav", "--language", "klingon"],
        ["x.wav", "--beam_size", "many"],
        ["x.wav", "--bogus"],
        ["x.wav", "--temperature", "-1"],
        ["x.wav", "--temperature", "nan"],
        ["x.wav", "--temperature", "inf"],
        ["x.wav", "--temperature_increment_on_fallback", "0"],
        ["x.wav", "--temperature-increment-on-fallback", "nan"],
    ],
)
def test_usage_errors_exit_2(argv, loader, capsys):
    assert main(argv, load_backend=loader) == 2
    assert loader.calls == []
    if any("temperature" in a for a in argv):  # one line naming the option, no traceback
        err = capsys.readouterr().err
        assert "argument --temperature" in err and "Traceback" not in err, err


@pytest.mark.parametrize("t", [-0.5, float("nan"), float("inf"), "hot"])
def test_decoding_options_refuse_a_temperature_no_decode_can_take(t):
    from models.whisper.decoding.options import DecodingOptions

    with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
        DecodingOptions(temperature=t).check()
    assert DecodingOptions(temperature=np.float32(0.5)).check().temperature == np.float32(0.5)


def test_options_reach_backend(tmp_path, good, loader):
    out = tmp_path / "out"
    rc = main(
        [
            good,
            "-o",
            str(out),
            "-f",
            "txt",
            "--no-kv-cache",
            "--beam_size",
            "2",
            "--language",
            "English",
            "--model",
            "base",
        ],
        load_backend=loader,
    )
    assert rc == 0
    assert loader.calls == [("base", False)]
    # two beams: the prompt runs once for the audio, then reorder([0, 0]) makes the beams
    reorders = [c for c in loader.backend.calls if c[0] == "reorder"]
    assert reorders and len(reorders[0][1]) == 2
    assert (out / "good.txt").read_text() == "Hello world.\n"


def test_without_timestamps_option(tmp_path, good, loader):
    out = tmp_path / "out"
    assert main([good, "-o", str(out), "-f", "txt", "--without_timestamps", "True"], load_backend=loader) == 0
    assert (out / "good.txt").read_text() == "Hello world.\n"


def test_verbose_prints_timings(tmp_path, good, loader, capsys):
    loader.backend.compile_s = 0.25
    rc = main([good, good, "-o", str(tmp_path / "o"), "-f", "txt", "--verbose"], load_backend=loader)
    cap = capsys.readouterr()
    assert rc == 0
    assert cap.out.count("Hello world.") == 2
    last = cap.err.strip().splitlines()[-1]
    assert last.startswith("kvgraph: timings: load ")
    for word in ("compile 0.25 s", "encode", "decode", "tokens/s"):
        assert word in last
    assert "2 calls" in last  # encode: one per file


# --------------------------------------------------------------------------
# Word timestamps and openai's writer options


class AligningScriptedBackend(ScriptedBackend):
    """``ScriptedBackend`` with a scripted forced pass: head (0, 0) attends frame ``12 * i``
    from token ``i`` (a monotonic alignment), logits favour the scripted tokens."""

    alignment_heads = ((0, 0),)

    def alignment(self, tokens, audio_features):
        self.calls.append(("alignment", tokens.shape))
        b, t = tokens.shape
        logits = np.zeros((b, t, self.dims.n_vocab), np.float32)
        logits[:, np.arange(t - 1), tokens[:, 1:]] = 5.0
        frames = np.arange(audio_features.shape[1])
        scores = -((frames[None, :] - 12.0 * np.arange(t)[:, None]) ** 2) / 50.0
        return logits, {(0, 0): np.broadcast_to(scores, (b, t, len(frames))).astype(np.float32)}


WORD_ARGS = [
    "--word_timestamps",
    "True",
    "--highlight_words",
    "True",
    "--max_line_width",
    "8",
    "--max_line_count",
    "1",
]


def test_word_options_write_what_openai_writers_write(tmp_path, good):
    """The files equal openai's writers' output, with the same options, for the same result."""
    from whisper.utils import get_writer

    from models.whisper.transcription.transcribe import transcribe

    loader = Loader()
    loader.backend = AligningScriptedBackend()
    out = tmp_path / "out"
    assert main([good, "-o", str(out), *WORD_ARGS], load_backend=loader) == 0
    assert [c for c in loader.backend.calls if c[0] == "alignment"] == [("alignment", (1, 6))]
    result = transcribe(
        AligningScriptedBackend(), good, temperature=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0), word_timestamps=True
    )
    words = [w["word"] for w in result["segments"][0]["words"]]
    assert words == [" Hello", " world."]
    ref = tmp_path / "ref"
    ref.mkdir()
    get_writer("all", str(ref))(
        result, good, highlight_words=True, max_line_width=8, max_line_count=1, max_words_per_line=None
    )
    for name in ("good.txt", "good.vtt", "good.srt", "good.tsv"):
        assert (out / name).read_text() == (ref / name).read_text(), name
    assert "<u>" in (out / "good.srt").read_text()
    ours, theirs = json.loads((out / "good.json").read_text()), json.loads((ref / "good.json").read_text())
    ours.pop("timings"), theirs.pop("timings")
    assert ours == theirs and ours["segments"][0]["words"][0]["word"] == " Hello"


@pytest.mark.parametrize(
    "option,value",
    [
        ("--highlight_words", "True"),
        ("--max_line_width", "40"),
        ("--max_line_count", "2"),
        ("--max_words_per_line", "3"),
    ],
)
def test_word_options_require_word_timestamps(tmp_path, good, loader, capsys, option, value):
    rc = main([good, "-o", str(tmp_path), option, value], load_backend=loader)
    _, err = _err_lines(capsys)
    assert rc == 2 and err[-1].endswith(f"error: {option} requires --word_timestamps True")
    assert loader.calls == []  # refused before loading a model


def test_word_option_warnings_are_openais(tmp_path, good):
    loader = Loader()
    loader.backend = AligningScriptedBackend()
    with pytest.warns(UserWarning, match="--max_line_count has no effect without --max_line_width"):
        assert (
            main(
                [good, "-o", str(tmp_path), "--word_timestamps", "True", "--max_line_count", "2"],
                load_backend=loader,
            )
            == 0
        )
    with pytest.warns(UserWarning, match="--max_words_per_line has no effect with --max_line_width"):
        assert (
            main(
                [
                    good,
                    "-o",
                    str(tmp_path),
                    "--word_timestamps",
                    "True",
                    "--max_line_width",
                    "9",
                    "--max_words_per_line",
                    "2",
                ],
                load_backend=loader,
            )
            == 0
        )


def test_punctuation_defaults_are_openais():
    import inspect

    import whisper.timing

    from models.whisper.apps.cli.options import build_parser

    args = build_parser().parse_args(["a.wav"])
    defaults = inspect.signature(whisper.timing.add_word_timestamps).parameters
    assert args.prepend_punctuations == defaults["prepend_punctuations"].default
    assert args.append_punctuations == defaults["append_punctuations"].default
    assert (args.word_timestamps, args.highlight_words, args.max_line_width) == (False, False, None)
