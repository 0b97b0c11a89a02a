"""Continuous batching of Whisper transcriptions (``models.whisper.engine``) on MAX, tiny.en.

Every file's result (text, segments, tokens, timestamps, temperatures, seeks) must equal a
sequential ``transcribe`` of that file with the same options: files of very different
lengths mixed (1.2 s to ~2 min), one that triggers temperature fallback (sampling, each file
from its own generator seeded by ``seed``) among ones that do not, greedy and beam 5, with and
without ``condition_on_previous_text``.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from whisper_clips import SAMPLE_RATE, SPEECH, assert_same_result, long_clip
from whisper_fixtures import *  # noqa: F401,F403
from whisper_fixtures import _jfk_audio

pytestmark = pytest.mark.max

DEFAULT_TEMPS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


@functools.cache
def clips() -> dict[str, np.ndarray]:
    from models.whisper.audio.load import load_audio

    jfk = _jfk_audio()
    pbx = load_audio(str(SPEECH / "basic-pbx-ivr-main.wav"))
    nogo = load_audio(str(SPEECH / "demo-nogo.wav"))
    gap = np.zeros(SAMPLE_RATE // 2, np.float32)
    two_min = np.concatenate([pbx, gap, nogo, gap, jfk, gap, pbx, gap, nogo, gap, jfk, gap, pbx])
    return {
        "short": jfk[: int(1.2 * SAMPLE_RATE)].copy(),  # 1.2 s
        "jfk": jfk,  # 11 s
        "nogo": nogo,  # 10.6 s
        "fallback": np.tile(jfk[SAMPLE_RATE : 2 * SAMPLE_RATE], 20),  # 20 s, repetitive: samples at T > 0
        "pbx": pbx,  # 25 s
        "long": long_clip(jfk),  # 75 s
        "two_min": two_min,  # ~2 min
    }


@functools.cache
def sequential(name: str, options_key: tuple):
    from whisper_fixtures import _max_backend

    from models.whisper import WhisperModel

    model = WhisperModel(_max_backend("tiny.en", True))
    return model.transcribe(clips()[name], **dict(options_key))


def _check_same(names, results, options):
    key = tuple(sorted(options.items()))
    assert len(results) == len(names)
    for name, got in zip(names, results):
        ref = sequential(name, key)
        assert_same_result(got, ref)
        for a, b in zip(got["segments"], ref["segments"]):
            assert (a["tokens"], a["start"], a["end"], a["seek"], a["temperature"]) == (
                b["tokens"],
                b["start"],
                b["end"],
                b["seek"],
                b["temperature"],
            ), name


def test_greedy_mixed_lengths_and_fallback_equal_sequential(tiny_model):
    names = list(clips())
    options = dict(temperature=DEFAULT_TEMPS, seed=0)  # each file draws from its own generator
    results = tiny_model.transcribe_many([clips()[n] for n in names], batch_size=4, **options)
    _check_same(names, results, options)
    fallback = results[names.index("fallback")]
    assert any(s["temperature"] > 0 for s in fallback["segments"]), "the fallback clip did not fall back"
    for n in ("jfk", "nogo", "pbx"):  # ... among files that decode greedily
        assert all(s["temperature"] == 0 for s in results[names.index(n)]["segments"]), n
    assert results[names.index("two_min")]["segments"][-1]["end"] > 100


def test_without_previous_text_equal_sequential(tiny_model):
    names = ["long", "jfk", "pbx", "short"]
    options = dict(temperature=DEFAULT_TEMPS, condition_on_previous_text=False, seed=0)
    results = tiny_model.transcribe_many([clips()[n] for n in names], batch_size=3, **options)
    _check_same(names, results, options)


def test_beam5_equal_sequential(tiny_model):
    names = ["jfk", "nogo", "long", "short"]
    options = dict(temperature=DEFAULT_TEMPS, beam_size=5, seed=0)
    results = tiny_model.transcribe_many([clips()[n] for n in names], batch_size=3, **options)
    _check_same(names, results, options)


def test_engine_batches_steps_and_reports_errors(tiny_backend):
    from models.whisper.engine.batched import BatchedTranscriber

    names = ["jfk", "nogo", "pbx"]
    options = dict(temperature=0.0)
    with BatchedTranscriber(tiny_backend, batch_size=3, **options) as engine:
        futures = [engine.submit(clips()[n]) for n in names]
        bad = engine.submit(np.zeros((2, 100), np.float32))  # not mono: this file fails alone
        results = [f.result() for f in futures]
        stats = engine.scheduler.stats
    with pytest.raises(ValueError, match="mono"):
        bad.result()
    _check_same(names, results, options)
    assert stats["busy_rows"] > 1.5 * stats["step_calls"]  # steps were shared
    assert engine.scheduler.pool.groups == []  # every decode gave its rows back


def test_cli_batch_size(tmp_path, capsys):
    import soundfile as sf
    from whisper_fixtures import fixture_loader

    from models.whisper.apps.cli.transcribe import main

    paths = []
    for n in ("jfk", "nogo"):
        p = tmp_path / f"{n}.wav"
        sf.write(str(p), clips()[n], SAMPLE_RATE, subtype="FLOAT")
        paths.append(str(p))
    missing = str(tmp_path / "missing.wav")
    out = tmp_path / "out"
    rc = main([paths[0], missing, paths[1], "-o", str(out), "-f", "txt", "--batch-size", "2"], fixture_loader)
    cap = capsys.readouterr()
    assert rc == 1
    errs = [line for line in cap.err.splitlines() if line.startswith("kvgraph: error")]
    assert len(errs) == 1 and errs[0].startswith(f"kvgraph: error: {missing}: ")
    lines = cap.out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == [paths[0], paths[1]]  # in the order given
    assert sorted(p.name for p in out.iterdir()) == ["jfk.txt", "nogo.txt"]
    ref = sequential("jfk", (("temperature", DEFAULT_TEMPS),))
    assert lines[0] == f"{paths[0]}: {ref['text'].strip()}"


def test_serve_make_engine_batches(tiny_model):
    from models.whisper.apps import server as sv

    engine = sv.make_engine(tiny_model, batch_size=2, max_queue=4)
    try:
        from models.whisper.engine.batched import BatchedTranscriber

        assert isinstance(engine, BatchedTranscriber)
        options = dict(temperature=DEFAULT_TEMPS)
        futures = [engine.submit(clips()[n]) for n in ("jfk", "nogo")]
        results = [f.result() for f in futures]
        _check_same(["jfk", "nogo"], results, options)
        stats = engine.stats()
        assert stats["engine"] == "BatchedTranscriber" and stats["completed"] == 2
    finally:
        engine.close()
    with pytest.raises(sv.EngineClosed):
        engine.submit(clips()["short"])
    assert isinstance(sv.make_engine(tiny_model, batch_size=1), sv.SequentialEngine)
    default = sv.make_engine(tiny_model)  # `kvgraph serve` without --batch-size: batching
    try:
        assert isinstance(default, BatchedTranscriber) and default.batch_size == sv.DEFAULT_BATCH
    finally:
        default.close()


def test_requests_cancelled_while_queued_leave_the_queue(tiny_backend):
    """A future cancelled before its file started (a client that left) frees its place in
    the queue: after ``max_queue`` such cancellations the engine still takes requests."""
    import threading

    from models.whisper.engine.batched import BatchedTranscriber

    gate = threading.Event()
    with BatchedTranscriber(tiny_backend, batch_size=1, max_queue=2) as engine:
        first = engine.submit(clips()["short"], on_segment=lambda seg: gate.wait(60))
        for _ in range(3):  # more than max_queue in all, each cancelled while it waits
            queued = [engine.submit(clips()["short"]) for _ in range(2)]
            assert all(f.cancel() for f in queued)
        assert engine.stats()["waiting"] == 0
        gate.set()
        assert first.result(60)["text"]
        assert engine.submit(clips()["short"]).result(60)["text"] == first.result()["text"]
