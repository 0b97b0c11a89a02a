"""The openai-whisper oracle's on-disk memo (``tests/oracle.py``): a hit gives back the very
result the oracle returned (types and float bits included), any change of audio, options,
model weights, versions, thread count or draw seed misses, a damaged entry is recomputed,
``KVGRAPH_ORACLE_CACHE=off`` turns it off, and calls whose result the key cannot pin down
(torch's generator drawn, options that are not data, results JSON cannot carry) are never
stored. ``whisper.transcribe`` is a counting fake here except in the last test."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import oracle
import pytest
import torch
import whisper
import whisper.decoding


@dataclasses.dataclass
class Dims:
    n_state: int = 4


def fake_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 3)
    model.dims = Dims()
    model.register_buffer("heads", torch.eye(3).to_sparse())
    return model


def rich_result(audio, options) -> dict:
    """A result shaped as openai's (np.float64 times, int tokens, nested words), with the
    awkward values exact JSON must keep: -0.0, NaN, a tuple, float32."""
    return {
        "text": f" {type(audio).__name__} {sorted(options)}",
        "segments": [
            {
                "id": 0,
                "seek": 0,
                "start": np.float64(0.1) + np.float64(0.2),
                "end": -0.0,
                "tokens": [50257, 1, 2],
                "temperature": 0.2,
                "avg_logprob": -0.1 / 3,
                "no_speech_prob": float("nan"),
                "words": [{"word": " ask", "start": np.float64(1.23), "probability": np.float32(0.7)}],
            }
        ],
        "language": "en",
        "shape": (1, 2),
    }


class FakeTranscribe:
    """``whisper.transcribe``'s stand-in: counts calls; ``draw`` samples through
    ``whisper.decoding.Categorical`` as openai's fallback does, ``torch_rng`` draws from
    torch's global generator."""

    def __init__(self, draw: bool = False, torch_rng: bool = False, result=rich_result):
        self.calls, self.draw, self.torch_rng, self.result = 0, draw, torch_rng, result

    def __call__(self, model, audio, **options):
        self.calls += 1
        out = self.result(audio, options)
        if self.draw:
            logits = torch.tensor([[0.0, 1.0, 2.0]])
            out["drawn"] = int(whisper.decoding.Categorical(logits=logits).sample()[0])
        if self.torch_rng:
            out["noise"] = float(torch.rand(1))
        return out


@pytest.fixture
def memo(tmp_path, monkeypatch):
    """A fresh memo folder and counters; returns the folder."""
    folder = tmp_path / "memo"
    monkeypatch.setenv(oracle.CACHE_ENV, str(folder))
    monkeypatch.setattr(oracle, "STATS", oracle.Stats())
    return folder


def use(monkeypatch, fake: FakeTranscribe) -> FakeTranscribe:
    monkeypatch.setattr(whisper, "transcribe", fake)
    return fake


AUDIO = np.linspace(-0.5, 0.5, 1600, dtype=np.float32)


def test_a_hit_returns_the_identical_result_without_running(memo, monkeypatch):
    fake = use(monkeypatch, FakeTranscribe())
    model = fake_model()
    first = oracle.transcribe(model, AUDIO, temperature=0.0, fp16=False)
    again = oracle.transcribe(model, AUDIO.copy(), fp16=False, temperature=0.0)  # option order
    assert fake.calls == 1
    assert oracle.identical(again, first)
    assert type(again["segments"][0]["start"]) is np.float64
    assert type(again["segments"][0]["words"][0]["probability"]) is np.float32
    assert math.copysign(1.0, again["segments"][0]["end"]) == -1.0
    assert math.isnan(again["segments"][0]["no_speech_prob"]) and again["shape"] == (1, 2)
    assert again is not first and again["segments"] is not first["segments"]
    # an equal model (another object, the same weights) hits too
    oracle.transcribe(fake_model(), AUDIO, temperature=0.0, fp16=False)
    assert fake.calls == 1
    assert (oracle.STATS.reused, oracle.STATS.ran, oracle.STATS.stored) == (2, 1, 1)
    assert len(list(memo.glob("*.json"))) == 1


def test_any_changed_input_misses(memo, monkeypatch):
    fake = use(monkeypatch, FakeTranscribe())
    model = fake_model()
    oracle.transcribe(model, AUDIO, temperature=0.0)
    moved = AUDIO.copy()
    moved[800] = np.nextafter(moved[800], np.float32(1))  # one sample, one float spacing
    oracle.transcribe(model, moved, temperature=0.0)
    oracle.transcribe(model, AUDIO.astype(np.float64), temperature=0.0)  # same values, other dtype
    oracle.transcribe(model, AUDIO, temperature=(0.0,))  # a tuple is not its float
    oracle.transcribe(model, AUDIO, temperature=0.0, beam_size=5)
    oracle.transcribe(fake_model(seed=1), AUDIO, temperature=0.0)
    assert fake.calls == 6
    with torch.no_grad():
        model.weight[0, 0] += 1e-6  # in place: the cached fingerprint notices
    oracle.transcribe(model, AUDIO, temperature=0.0)
    model.heads = torch.eye(3).flip(0).to_sparse()  # a buffer replaced
    oracle.transcribe(model, AUDIO, temperature=0.0)
    assert fake.calls == 8
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if threads != 1 else 2)
        oracle.transcribe(model, AUDIO, temperature=0.0)
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setattr(oracle, "environment", lambda: "openai-whisper 0 (another version)")
    oracle.transcribe(model, AUDIO, temperature=0.0)
    assert fake.calls == 10 and oracle.STATS.reused == 0


def test_a_path_is_keyed_by_its_bytes(memo, monkeypatch, tmp_path):
    fake = use(monkeypatch, FakeTranscribe())
    path = tmp_path / "a.wav"
    path.write_bytes(b"RIFF one")
    for _ in range(2):
        oracle.transcribe(fake_model(), str(path))
    oracle.transcribe(fake_model(), path)  # a Path and its str: the same file
    assert fake.calls == 1
    path.write_bytes(b"RIFF two")
    oracle.transcribe(fake_model(), str(path))
    assert fake.calls == 2


def test_a_damaged_entry_is_recomputed(memo, monkeypatch):
    fake = use(monkeypatch, FakeTranscribe())
    model = fake_model()
    ref = oracle.transcribe(model, AUDIO)
    (path,) = memo.glob("*.json")
    good = path.read_text()
    for damaged in (
        good[: len(good) // 2],  # truncated
        good.replace("50257", "50258"),  # a digit flipped: the checksum no longer matches
        json.dumps({"format": oracle.FORMAT, "result": 3}),  # no checksum
        "\x00\xff not json",
    ):
        path.write_text(damaged)
        assert oracle.identical(oracle.transcribe(model, AUDIO), ref)
        assert path.read_text() == good  # rewritten
    assert fake.calls == 5 and oracle.STATS.reused == 0
    assert not list(memo.glob("*.tmp"))  # no temporary file left behind


def test_off_runs_every_time_and_writes_nothing(memo, monkeypatch):
    monkeypatch.setenv(oracle.CACHE_ENV, "off")
    fake = use(monkeypatch, FakeTranscribe())
    for _ in range(2):
        oracle.transcribe(fake_model(), AUDIO)
    assert fake.calls == 2 and not memo.exists()
    assert oracle.STATS.summary() == f"openai-whisper oracle: 2 calls, all run ({oracle.CACHE_ENV}=off)"


def test_where_the_memo_lives(monkeypatch, tmp_path):
    monkeypatch.delenv(oracle.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert oracle.cache_dir() == tmp_path / "kvgraph" / "test-oracle"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert oracle.cache_dir() == tmp_path / "home" / ".cache" / "kvgraph" / "test-oracle"
    monkeypatch.setenv(oracle.CACHE_ENV, str(tmp_path / "here"))
    assert oracle.cache_dir() == tmp_path / "here"


def test_unkeyable_or_unstorable_calls_run_every_time(memo, monkeypatch):
    fake = use(monkeypatch, FakeTranscribe())
    model = fake_model()
    for _ in range(2):
        oracle.transcribe(model, AUDIO, logits_filter=lambda x: x)  # not data
        oracle.transcribe(model, AUDIO, verbose=True)  # prints
        oracle.transcribe(model, [0.0, 0.1])  # audio as a list
    assert fake.calls == 6
    use(monkeypatch, FakeTranscribe(torch_rng=True))  # openai sampling with torch's generator
    a, b = oracle.transcribe(model, AUDIO), oracle.transcribe(model, AUDIO)
    assert a["noise"] != b["noise"]
    use(monkeypatch, FakeTranscribe(result=lambda audio, options: {"mel": np.zeros(3)}))
    assert isinstance(oracle.transcribe(model, AUDIO)["mel"], np.ndarray)
    assert not list(memo.glob("*.json")) and oracle.STATS.stored == 0
    line = oracle.STATS.summary()
    assert line.startswith("openai-whisper oracle: 9 calls, 0 reused from ")
    for why in ("option logits_filter of type function", "verbose=True prints", "audio of type list"):
        assert f"2 not memoisable: {why}" in line
    assert "2 not memoisable: drew from torch's generator" in line
    assert "1 not memoisable: a result holding a ndarray" in line


def test_kvgraph_draws_are_keyed_by_seed_and_code(memo, monkeypatch):
    fake = use(monkeypatch, FakeTranscribe(draw=True))
    model = fake_model()
    a = oracle.transcribe(model, AUDIO, draws=3)
    assert oracle.identical(oracle.transcribe(model, AUDIO, draws=3), a) and fake.calls == 1
    oracle.transcribe(model, AUDIO, draws=4)
    assert fake.calls == 2
    assert whisper.decoding.Categorical is torch.distributions.Categorical  # put back
    entry = json.loads(next(memo.glob("*.json")).read_text())
    assert entry["draw_code"] == oracle.draw_code_hash()
    monkeypatch.setattr(oracle, "draw_code_hash", lambda: "kvgraph's sampling edited")
    oracle.transcribe(model, AUDIO, draws=3)
    assert fake.calls == 3
    # a call that never drew does not depend on the draw code
    plain = use(monkeypatch, FakeTranscribe())
    oracle.transcribe(model, AUDIO, draws=5)
    monkeypatch.setattr(oracle, "draw_code_hash", lambda: "edited again")
    oracle.transcribe(model, AUDIO, draws=5)
    assert plain.calls == 1


def test_someone_elses_sampler_is_not_memoised(memo, monkeypatch):
    from whisper_doubles import KvgraphDraws

    fake = use(monkeypatch, FakeTranscribe(draw=True))
    for _ in range(2):
        with KvgraphDraws(0):
            oracle.transcribe(fake_model(), AUDIO)
    assert fake.calls == 2 and not list(memo.glob("*.json"))


def test_exact_json_refuses_what_it_cannot_give_back():
    value = {"a": [1, 2.5, (3, np.int64(4)), None, True, np.float16(0.1)], "b": {"c": "é"}}
    assert oracle.identical(oracle.decode(json.loads(oracle.to_json(value))), value)
    assert not oracle.identical(1, 1.0) and not oracle.identical(0.0, -0.0)
    assert not oracle.identical([np.float64(1.0)], [1.0])
    for bad in ({1: "int key"}, {"$np": "a tag"}, {1, 2}, np.zeros(2), object(), b"bytes"):
        with pytest.raises(oracle.NotMemoisable):
            oracle.to_json(bad)


def test_a_real_openai_result_round_trips(memo):
    """openai-whisper's own result (segments, tokens, word times as np.float64) on a small
    random model: stored, then given back identical."""
    from whisper_doubles import random_model

    model = random_model(51864, seed=2)
    audio = np.sin(np.arange(3 * 16000, dtype=np.float32) / 40).astype(np.float32) * 0.1
    opts = dict(fp16=False, temperature=0.0, sample_len=6, word_timestamps=True, language="en")
    import torch

    threads = torch.get_num_threads()
    ran = oracle.transcribe(model, audio, **opts)
    # openai's first word-timestamp run in a process can raise torch's thread count (1 -> 2,
    # seen in the suite); the count is part of the key: the second call gets the first's back
    torch.set_num_threads(threads)
    reused = oracle.transcribe(model, audio, **opts)
    assert (oracle.STATS.ran, oracle.STATS.reused) == (1, 1)
    assert oracle.identical(reused, ran) and ran["segments"]
    assert any("words" in s for s in reused["segments"])
