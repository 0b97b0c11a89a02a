"""Word-level timestamps on MAX equal openai-whisper's (tiny.en, fp32, same weights).

openai: ``whisper.transcribe(torch_model, audio, word_timestamps=True, fp16=False)``, its
alignment heads from ``whisper.load_model``'s table; kvgraph: the same call through the
adapter, every forward pass (the forced alignment pass included) on MAX, the alignment heads
read from the checkpoint's config.json. Words and their start/end times must be identical,
probabilities within 1e-3. The writers' output with the word options is compared byte for
byte (txt, vtt, srt, tsv) and field by field (json).
"""

from __future__ import annotations

import json
import math

import numpy as np
import oracle
import pytest
from whisper_clips import JFK, SPEECH, SPEECH_CLIPS, assert_same_words, long_clip
from whisper_fixtures import *  # noqa: F401,F403 - session fixtures
from whisper_fixtures import fixture_loader

from models.whisper.apps.cli.transcribe import main
from models.whisper.transcription.transcribe import transcribe

pytestmark = pytest.mark.max

OPTS = dict(temperature=0.0, word_timestamps=True)


def _both(backend, torch_model, audio, **kw):
    ref = oracle.transcribe(torch_model, audio, fp16=False, **OPTS, **kw)  # memoised on disk
    ours = transcribe(backend, audio, **OPTS, **kw)
    return ours, ref


def test_tiny_en_alignment_heads_are_openais(tiny_backend, torch_tiny):
    from models.whisper.decoding.adapter import WhisperAdapter

    adapter = WhisperAdapter(tiny_backend)
    assert torch_tiny.alignment_heads.to_dense().equal(adapter.alignment_heads.to_dense())


def test_jfk_words_match_openai(tiny_backend, torch_tiny, jfk_audio):
    ours, ref = _both(tiny_backend, torch_tiny, jfk_audio)
    assert_same_words(ours, ref)
    words = [w for s in ours["segments"] for w in s["words"]]
    assert len(words) == 22 and words[-1]["word"] == " country"
    t = ours["timings"]
    assert t["align_calls"] == 1 and t["encode_calls"] == 1  # the forced pass reuses the features


@pytest.mark.parametrize("clip", SPEECH_CLIPS)
def test_speech_clip_words_match_openai(tiny_backend, torch_tiny, clip):
    from models.whisper.audio.load import load_audio

    audio = load_audio(str(SPEECH / f"{clip}.wav"))
    ours, ref = _both(tiny_backend, torch_tiny, audio)
    assert_same_words(ours, ref)
    assert sum(len(s["words"]) for s in ours["segments"]) > 15


def test_long_form_words_match_openai(tiny_backend, torch_tiny, jfk_audio):
    clip = long_clip(jfk_audio)
    ours, ref = _both(tiny_backend, torch_tiny, clip)
    assert_same_words(ours, ref)
    assert len({s["seek"] for s in ours["segments"]}) >= 3
    assert ours["timings"]["align_calls"] == len({s["seek"] for s in ours["segments"]})


WRITER_OPTIONS = [
    dict(highlight_words=True),
    dict(max_line_width=24, max_line_count=2),
    dict(max_words_per_line=3),
]


def _cli_args(opts):
    args = ["--word_timestamps", "True"]
    for k, v in opts.items():
        args += [f"--{k}", str(v)]
    return args


@pytest.mark.parametrize("opts", WRITER_OPTIONS, ids=lambda o: "+".join(o))
def test_cli_word_outputs_equal_openai_writers(tmp_path, tiny_backend, torch_tiny, jfk_audio, opts):
    """``kvgraph transcribe --word_timestamps True`` + writer options: the files openai's
    writers make from openai's own result."""
    from whisper.utils import get_writer

    out, ref_dir = tmp_path / "out", tmp_path / "ref"
    ref_dir.mkdir()
    rc = main([str(JFK), "-o", str(out), *_cli_args(opts)], load_backend=fixture_loader)
    assert rc == 0
    temperature = tuple(np.arange(0.0, 1.0 + 1e-6, 0.2))  # the CLI's default schedule
    ref = oracle.transcribe(
        torch_tiny,
        jfk_audio,
        fp16=False,
        word_timestamps=True,
        temperature=temperature,
        condition_on_previous_text=True,
    )
    writer_args = dict(
        highlight_words=False, max_line_count=None, max_line_width=None, max_words_per_line=None
    )
    writer_args.update(opts)
    get_writer("all", str(ref_dir))(ref, str(JFK), **writer_args)
    for name in ("jfk.txt", "jfk.vtt", "jfk.srt", "jfk.tsv"):
        assert (out / name).read_text() == (ref_dir / name).read_text(), name
    ours, theirs = json.loads((out / "jfk.json").read_text()), json.loads((ref_dir / "jfk.json").read_text())
    assert set(ours) - set(theirs) == {"timings"}
    assert (ours["text"], ours["language"]) == (theirs["text"], theirs["language"])
    for a, b in zip(ours["segments"], theirs["segments"], strict=True):
        assert set(a) == set(b)
        for k in b:
            if isinstance(b[k], float):
                assert math.isclose(a[k], b[k], abs_tol=1e-3), k
            elif k != "words":
                assert a[k] == b[k], k
        for wa, wb in zip(a["words"], b["words"], strict=True):
            assert (wa["word"], wa["start"], wa["end"]) == (wb["word"], wb["start"], wb["end"])
            assert math.isclose(wa["probability"], wb["probability"], abs_tol=1e-3)


def test_base_multilingual_words_match_openai(base_model, torch_base, jfk_audio):
    """base (multilingual): alignment heads from its config.json equal openai's table, and
    the words and times of JFK equal openai-whisper's (language detected on MAX)."""
    from models.whisper.decoding.adapter import WhisperAdapter

    adapter = WhisperAdapter(base_model.backend)
    assert torch_base.alignment_heads.to_dense().equal(adapter.alignment_heads.to_dense())
    ours, ref = _both(base_model.backend, torch_base, jfk_audio)
    assert ours["language"] == ref["language"] == "en"
    assert_same_words(ours, ref)
