"""Per-token log-probabilities (``token_logprobs=True``) and segments sent before their
window's decode ends (``on_segment`` under a decode that cannot be replaced), on kvgraph's
own decode loop with openai-whisper's torch model behind the backend protocol
(``TorchBackend``), so every figure is compared with openai's on the same logits.

openai-whisper keeps a window's summed log-probability only (``avg_logprob = sum / (n + 1)``,
the end of text counted): the kept per-token values must add up to it, for greedy decoding,
beam search (the chosen beam's, through its reorders) and sampling with ``best_of``. The
beam decoder's lists are also rebuilt from the logits of each step on random inputs with ties.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import whisper
from whisper_clips import JFK, SPEECH, silence
from whisper_doubles import KvgraphDraws, TorchBackend, torch_tiny_en

from models.whisper.audio.load import load_audio
from models.whisper.decoding import search as ks
from models.whisper.decoding.options import DecodingOptions
from models.whisper.decoding.task import DecodingTask
from models.whisper.transcription import transcribe as longform


@pytest.fixture(scope="module")
def tiny_en():
    torch.set_num_threads(1)
    return torch_tiny_en()


@pytest.fixture(scope="module")
def jfk():
    return load_audio(str(JFK))


@pytest.fixture(scope="module")
def two_windows(jfk):
    """37 s of speech: two windows, each kept at T = 0 (the server tests' long clip)."""
    return np.concatenate([load_audio(str(SPEECH / "basic-pbx-ivr-main.wav")), silence(1.0), jfk])


def f32_sum(values) -> float:
    """The float32 running sum, as the decoders add a row's log-probabilities."""
    total = np.float32(0.0)
    for v in values:
        total = np.float32(total + np.float32(v))
    return float(total)


# ------------------------------------------------------------------ one window against openai


WINDOW_OPTIONS = [
    dict(temperature=0.0),
    dict(temperature=0.0, beam_size=5),
    dict(temperature=0.0, beam_size=3, patience=2.0, length_penalty=0.5),
    dict(temperature=0.6, best_of=3),
    dict(temperature=0.3),
    dict(temperature=0.0, without_timestamps=True, sample_len=9),  # cut before its end of text
]


@pytest.mark.parametrize("options", WINDOW_OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_window_token_logprobs_add_up_to_openais_avg_logprob(tiny_en, jfk, options):
    mel = whisper.pad_or_trim(whisper.log_mel_spectrogram(torch.from_numpy(jfk), 80), 3000)
    features = tiny_en.encoder(mel[None]).detach().numpy()
    with KvgraphDraws(5):
        ref = whisper.decode(tiny_en, mel, whisper.DecodingOptions(fp16=False, language="en", **options))
    opts = DecodingOptions(language="en", **options)
    (ours,) = DecodingTask(
        TorchBackend(tiny_en), opts, rng=np.random.default_rng(5), token_logprobs=True
    ).run(features)
    (plain,) = DecodingTask(TorchBackend(tiny_en), opts, rng=np.random.default_rng(5)).run(features)
    assert ours.tokens == ref.tokens == plain.tokens
    assert (ours.avg_logprob, ours.text) == (plain.avg_logprob, plain.text) and plain.token_logprobs is None
    lps = ours.token_logprobs
    assert len(lps) == len(ours.tokens) + 1 and all(x <= 0 for x in lps)
    # the very values the decoder summed: their float32 running sum is the window's score
    assert f32_sum(lps) / len(lps) == ours.avg_logprob
    assert math.isclose(sum(lps) / len(lps), ref.avg_logprob, rel_tol=1e-5, abs_tol=1e-6)
    if options.get("sample_len"):
        assert lps[-1] == 0.0  # stopped by the length limit: no end of text was scored


# ------------------------------------------------------------------ the beam decoder's lists


def test_beam_token_logprobs_follow_reorders_on_random_logits_with_ties():
    """Each finished candidate's list, rebuilt from the logits of the steps: at step j, the
    log-softmax of the row whose tokens were the candidate's first j at the candidate's next
    token."""
    rng = np.random.default_rng(11)
    beam, eot, vocab, n_audio, begin = 3, 7, 256, 2, 2
    dec = ks.BeamSearchDecoder(beam, eot, patience=1.5, keep_logprobs=True)
    tokens = np.tile(np.array([1, 2], np.int64), (n_audio * beam, 1))
    sums = np.zeros(n_audio * beam, np.float32)
    history, moved = [], False
    for step in range(16):
        logits = np.round(rng.standard_normal((n_audio * beam, vocab)) * 2, 1).astype(np.float32)  # ties
        logits[:, eot] += step * 0.5  # the end of text grows likelier
        for r in range(1, len(tokens)):  # rows alike (the first step's) see alike logits
            same = [q for q in range(r) if np.array_equal(tokens[q], tokens[r])]
            logits[r] = logits[same[0]] if same else logits[r]
        history.append((tokens.copy(), logits.copy()))
        tokens, done, source = dec.update(tokens, logits, sums)
        moved |= not np.array_equal(source, np.arange(len(source)))
        if done:
            break
    assert moved  # beams changed rows on the way
    seqs, scores = dec.finalize(tokens.reshape(n_audio, beam, -1), sums.reshape(n_audio, beam))
    assert len(dec.final_logprobs) == n_audio
    for a in range(n_audio):
        for seq, score, lps in zip(seqs[a], scores[a], dec.final_logprobs[a]):
            assert len(lps) == len(seq) - begin
            assert f32_sum(lps) == score
            if len(lps) > len(history):  # an unfinished beam closed by finalize
                assert lps[-1] == 0.0  # nothing was scored for its end of text
            for j, value in enumerate(lps[: len(history)]):
                before, logits = history[j]
                rows = range(a * beam, (a + 1) * beam)
                row = next(r for r in rows if list(before[r]) == list(seq[: begin + j]))
                ref = torch.log_softmax(torch.from_numpy(logits[row]), -1)[int(seq[begin + j])]
                assert math.isclose(value, float(ref), rel_tol=1e-6, abs_tol=1e-6), (a, j)


def test_greedy_keeps_zero_after_the_end_of_text_and_nothing_when_off():
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((2, 64)).astype(np.float32)
    logits[0, 5] = 9.0  # row 0 ends at once
    on, off = ks.GreedyDecoder(0.0, 5, keep_logprobs=True), ks.GreedyDecoder(0.0, 5)
    tokens = np.zeros((2, 1), np.int64)
    s_on, s_off = np.zeros(2, np.float32), np.zeros(2, np.float32)
    for _ in range(3):
        t_on, _, _ = on.update(tokens, logits.copy(), s_on)
        tokens, _, _ = off.update(tokens, logits.copy(), s_off)
        assert np.array_equal(t_on, tokens)
    assert np.array_equal(s_on, s_off) and off.token_logprobs is None
    assert on.token_logprobs[0, 1:].tolist() == [0.0, 0.0]
    assert [f32_sum(row) for row in on.token_logprobs] == s_on.tolist()


# ------------------------------------------------------------------ segments


def windows_of(monkeypatch) -> list:
    """Each window's kept ``DecodingResult``, in order, as ``transcribe`` runs."""
    kept = []
    real = longform.LongForm.decode_with_fallback

    def spy(self, features, early=None):
        result = real(self, features, early)
        kept.append(result)
        return result

    monkeypatch.setattr(longform.LongForm, "decode_with_fallback", spy)
    return kept


@pytest.mark.parametrize(
    "clip,windows,options",
    [("two_windows", 2, dict(temperature=0.0)), ("jfk", 1, dict(temperature=0.0, beam_size=4))],
    ids=["greedy", "beam"],
)
def test_segments_carry_their_share_of_each_window(tiny_en, request, monkeypatch, clip, windows, options):
    """The window's tokens are cut into segments; each segment carries the slice of the
    window's list (the end of text's value stays with the window); off, segments are openai's."""
    audio = request.getfixturevalue(clip)
    plain = longform.transcribe(TorchBackend(tiny_en), audio, **options)
    assert all("token_logprobs" not in s for s in plain["segments"])  # openai's keys alone
    kept = windows_of(monkeypatch)
    ours = longform.transcribe(TorchBackend(tiny_en), audio, token_logprobs=True, **options)
    assert [{k: v for k, v in s.items() if k != "token_logprobs"} for s in ours["segments"]] == plain[
        "segments"
    ]
    by_window = {}
    for seg in ours["segments"]:
        assert len(seg["token_logprobs"]) == len(seg["tokens"])
        by_window.setdefault(seg["seek"], []).append(seg)
    assert len(by_window) == len(kept) == windows
    for result, segs in zip(kept, by_window.values()):
        at = 0
        for seg in segs:
            if not seg["tokens"]:
                continue  # cleared (instantaneous or blank): openai keeps no tokens for it
            at = result.tokens.index(seg["tokens"][0], at)
            assert result.tokens[at : at + len(seg["tokens"])] == seg["tokens"]
            assert seg["token_logprobs"] == result.token_logprobs[at : at + len(seg["tokens"])]
            at += len(seg["tokens"])


# ------------------------------------------------------------------ segments sent early


class Recorder:
    """A backend whose calls, and the segments ``on_segment`` hears, go into one log."""

    def __init__(self, model):
        self.inner = TorchBackend(model)
        self.dims = self.inner.dims
        self.log: list = []
        self.segments: list[dict] = []

    def encode(self, mel):
        self.log.append("encode")
        return self.inner.encode(mel)

    def prefill(self, tokens, features):
        self.log.append("prefill")
        return self.inner.prefill(tokens, features)

    def step(self, tokens, state):
        self.log.append("step")
        return self.inner.step(tokens, state)

    def reorder(self, state, indices):
        return self.inner.reorder(state, indices)

    def on_segment(self, seg: dict) -> None:
        self.log.append(("segment", len(self.segments)))
        self.segments.append(seg)

    def sent_mid_decode(self) -> list[int]:
        """The segments heard while their window was still stepping (a step follows them
        before the next window's encoder pass or the end)."""
        out = []
        for i, event in enumerate(self.log):
            if isinstance(event, tuple):
                rest = self.log[i + 1 :]
                upto = rest.index("encode") if "encode" in rest else len(rest)
                if "step" in rest[:upto]:
                    out.append(event[1])
        return out


def heard(model, audio, **options):
    rec = Recorder(model)
    result = longform.transcribe(rec, audio, on_segment=rec.on_segment, **options)
    return rec, result


def assert_heard_the_result(rec: Recorder, result: dict) -> None:
    """What ``on_segment`` heard is the result's segments, in order, once each (those sent
    early lack only the window's figures); joined, their texts are the transcript."""
    assert len(rec.segments) == len(result["segments"])
    for early, final in zip(rec.segments, result["segments"]):
        if early["avg_logprob"] is None:
            assert early["compression_ratio"] is None
            early = {
                **early,
                "avg_logprob": final["avg_logprob"],
                "compression_ratio": final["compression_ratio"],
            }
        assert early == final
    assert "".join(s["text"] for s in rec.segments) == result["text"]


@pytest.mark.parametrize(
    "clip,windows,options",
    [
        ("two_windows", 2, dict(temperature=0.0)),  # one temperature: the decode is final
        ("jfk", 1, dict(compression_ratio_threshold=None, logprob_threshold=None)),  # a schedule never used
        ("two_windows", 2, dict(temperature=0.0, token_logprobs=True)),
    ],
    ids=["T=0", "no-thresholds", "with-logprobs"],
)
def test_closed_segments_are_sent_before_their_window_decode_ends(tiny_en, request, clip, windows, options):
    audio = request.getfixturevalue(clip)
    rec, result = heard(tiny_en, audio, **options)
    plain = longform.transcribe(TorchBackend(tiny_en), audio, **options)
    assert result == {**plain, "timings": result["timings"]}  # listening changes nothing
    assert_heard_the_result(rec, result)
    early = rec.sent_mid_decode()
    # the first segment of each window goes out while its window is still decoding
    assert 0 in early and len({result["segments"][i]["seek"] for i in early}) == windows
    assert all(rec.segments[i]["avg_logprob"] is None for i in early)


@pytest.mark.parametrize(
    "options",
    [
        dict(),  # openai's fallback schedule: a window's decode may be replaced
        dict(temperature=0.0, beam_size=3),  # the beams' order is settled at the end
        dict(temperature=0.5, best_of=2, seed=1),  # so is the choice among samples
        dict(temperature=0.0, no_speech_threshold=1e-9),  # may be skipped as silence
        dict(temperature=0.0, word_timestamps=True),  # words move segment bounds
    ],
    ids=["schedule", "beam", "best_of", "maybe-silent", "words"],
)
def test_segments_wait_for_the_window_where_it_may_change(tiny_en, jfk, options):
    from whisper_doubles import AligningTorchBackend

    if options.get("word_timestamps"):

        class AligningRecorder(Recorder):
            def __init__(self, model):
                super().__init__(model)
                self.inner = AligningTorchBackend(model)
                self.alignment_heads = self.inner.alignment_heads

            def alignment(self, tokens, features):
                return self.inner.alignment(tokens, features)

        rec = AligningRecorder(tiny_en)
        result = longform.transcribe(rec, jfk, on_segment=rec.on_segment, **options)
    else:
        rec, result = heard(tiny_en, jfk, **options)
    assert rec.sent_mid_decode() == []
    assert all(s["avg_logprob"] is not None for s in rec.segments)
    assert rec.segments == result["segments"]


def test_a_sampled_decode_at_one_temperature_is_sent_early_and_repeats(tiny_en, jfk):
    rec, result = heard(tiny_en, jfk, temperature=0.4, seed=3)
    assert (
        result["segments"]
        == longform.transcribe(TorchBackend(tiny_en), jfk, temperature=0.4, seed=3)["segments"]
    )
    assert_heard_the_result(rec, result)


def test_on_tokens_needs_one_greedy_row(tiny_en):
    backend = TorchBackend(tiny_en)
    for options in (dict(beam_size=2), dict(temperature=0.5, best_of=2)):
        with pytest.raises(ValueError, match="on_tokens"):
            DecodingTask(backend, DecodingOptions(**options), on_tokens=lambda *a: None)
    task = DecodingTask(backend, DecodingOptions(), on_tokens=lambda *a: None)
    with pytest.raises(ValueError, match="one audio"):
        task.run(np.zeros((2, 1500, 384), np.float32))
