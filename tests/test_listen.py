"""``kvgraph listen`` and its Python API (models/whisper/streaming/): the LocalAgreement-2 policy on
made-up hypotheses, the PCM source on growing files and pipes, and JFK streamed through the
session's tiny.en backend, in simulated time and at real-time pace, against the offline
transcript."""

from __future__ import annotations

import io
import os
import struct
import threading
import time

import numpy as np
import pytest
import soundfile as sf
from whisper_clips import JFK, SAMPLE_RATE, SPEECH
from whisper_fixtures import *  # noqa: F401,F403 - session fixtures

from models.whisper.apps.cli import listen as listen_cli
from models.whisper.streaming.agreement import (
    LocalAgreement,
    Word,
    normalise,
    prompt_text,
    split_at,
    time_split,
    trim_point,
    word_error_rate,
    words_of,
)
from models.whisper.streaming.live import LiveTranscriber, listen
from models.whisper.streaming.source import PcmSource, SourceError, open_source


def timed(*specs: tuple[str, float, float]) -> list[Word]:
    return [Word(start, end, " " + text) for text, start, end in specs]


def texts(words) -> list[str]:
    return [w.text.strip() for w in words]


# ---------------------------------------------------------------------- (a) the policy


def test_normalised_words_and_word_error_rate():
    assert normalise(" Country.") == "country" and normalise("party's,") == "party's"
    assert words_of("And so, my fellow Americans!") == ["and", "so", "my", "fellow", "americans"]
    ref = "a b c d".split()
    assert word_error_rate(ref, ref) == 0.0
    assert word_error_rate(ref, "a x c d".split()) == 0.25  # one substitution
    assert word_error_rate(ref, "a c d".split()) == 0.25  # one deletion
    assert word_error_rate(ref, "a b b c d e".split()) == 0.5  # two insertions
    assert word_error_rate(ref, []) == 1.0 and word_error_rate([], []) == 0.0


def test_two_agreeing_hypotheses_commit_their_common_prefix_and_a_changed_word_waits():
    policy = LocalAgreement()
    assert policy.update(timed(("and", 0.0, 0.7), ("so", 0.7, 1.0))) == []  # nothing to agree with yet
    first = policy.update(
        timed(("And", 0.0, 0.76), ("so", 0.76, 1.06), ("my", 1.06, 1.4), ("fella", 1.4, 1.8))
    )
    assert texts(first) == ["And", "so"]  # normalised words agree; the newer spelling and times commit
    assert first[0] == Word(0.0, 0.76, " And")
    assert texts(policy.pending) == ["my", "fella"]
    # "fella" becomes "fellow": "my" agrees, the changed word waits for the next transcription
    again = policy.update(
        timed(
            ("And", 0.0, 0.76),
            ("so", 0.76, 1.06),
            ("my", 1.06, 1.42),
            ("fellow", 1.42, 1.76),
            ("Americans.", 1.76, 2.3),
        )
    )
    assert texts(again) == ["my"]
    assert texts(policy.pending) == ["fellow", "Americans."]
    later = policy.update(
        timed(
            ("And", 0.0, 0.76),
            ("so", 0.76, 1.06),
            ("my", 1.06, 1.42),
            ("fellow", 1.42, 1.76),
            ("Americans", 1.76, 2.26),
        )
    )
    assert texts(later) == ["fellow", "Americans"]  # "Americans." and "Americans" agree
    assert policy.text == "And so my fellow Americans"
    assert policy.finish() == [] and policy.pending == []


def test_the_end_of_the_stream_commits_the_last_hypothesis_rest():
    policy = LocalAgreement()
    policy.update(timed(("ask", 2.3, 3.9), ("not", 3.9, 4.5)))
    policy.update(timed(("ask", 2.3, 3.9), ("not", 3.9, 4.5), ("what", 4.5, 5.7)))
    assert texts(policy.finish()) == ["what"]
    assert policy.text == "ask not what"


def test_committed_words_transcribed_again_are_not_committed_twice():
    policy = LocalAgreement()
    h = timed(("ask", 2.26, 3.88), ("not", 3.88, 5.6))  # "not" stretched over the pause after it
    policy.update(h)
    assert texts(policy.update(h)) == ["ask", "not"]
    # the next transcription times "not" shorter: "what" starts 1.1 s before the committed end,
    # which whisper_streaming's time rule alone would drop for good
    nxt = timed(("ask", 2.26, 3.88), ("not", 3.88, 4.52), ("what", 4.52, 5.7), ("your", 5.7, 6.0))
    assert time_split(nxt, policy.last_end) == 3
    assert split_at(nxt, policy.in_buffer, policy.last_end) == 2
    assert texts(policy.fresh(nxt)) == ["what", "your"]
    policy.update(nxt)
    again = timed(
        ("ask", 2.26, 3.88),
        ("not", 3.88, 4.52),
        ("what", 4.52, 5.7),
        ("your", 5.7, 6.0),
        ("country", 6.0, 6.4),
    )
    assert texts(policy.update(again)) == ["what", "your"]
    assert policy.text == "ask not what your"


def test_the_split_tolerates_a_misheard_committed_word_and_a_repeat():
    committed = timed(("for", 7.0, 7.26), ("you", 7.26, 8.06))
    # the committed "you" now heard as "your", then "ask what you": the first "you" is the split
    h = timed(
        ("for", 7.0, 7.26), ("your", 7.26, 8.0), ("ask", 8.06, 8.66), ("what", 8.66, 8.94), ("you", 8.94, 9.3)
    )
    assert split_at(h, committed, 8.06) == 2
    # nothing committed in the buffer (it was trimmed there): the time rule decides alone
    assert split_at(h, [], 8.06) == 2 and time_split(h, 8.06) == 2
    assert time_split(h, 7.3) == 1  # a word starting up to 0.1 s before the committed end counts as new


def test_trim_point_prefers_a_finished_segment_end_inside_the_committed_text():
    last = Word(9.5, 10.2, " for")
    assert trim_point([4.0, 8.0, 12.0], last) == 8.0  # the last segment (open) never counts
    assert trim_point([4.0, 11.0, 12.0], last) == 4.0  # 11.0 is past the committed text
    assert trim_point([12.0], last) == 9.5  # no finished segment: the last committed word's start
    assert trim_point([4.0, 8.0], None) is None  # nothing committed: nothing to cut
    policy = LocalAgreement()
    h = timed(("a", 0.0, 1.0), ("b", 1.0, 2.0), ("c", 2.0, 3.0))
    policy.update(h)
    policy.update(h)
    policy.trim(2.0)
    assert texts(policy.in_buffer) == ["c"] and texts(policy.committed) == ["a", "b", "c"]


def test_the_prompt_is_the_committed_text_before_the_buffer_at_most_200_characters():
    words = [Word(float(i), i + 1.0, f" word{i:02d}") for i in range(60)]  # 7 characters each
    assert prompt_text(words, 0.0) == ""
    assert prompt_text(words, 3.0) == "word00 word01 word02"  # word03 ends after 3.0: in the buffer
    prompt = prompt_text(words, 60.0)
    assert len(prompt) <= 200 and prompt.endswith("word59") and prompt.startswith("word32")
    assert prompt_text(words, 60.0, max_chars=14) == "word58 word59"


class ScriptedTranscribe:
    """``transcribe_buffer`` replaced: each call returns the next scripted hypothesis (words in buffer
    time) and records the keywords and the buffer's length."""

    def __init__(self, script):
        self.script, self.calls = list(script), []

    def __call__(self, backend, audio, **kw):
        self.calls.append(dict(kw, seconds=len(audio) / SAMPLE_RATE))
        segments = [
            {
                "end": seg[-1][2],
                "no_speech_prob": 0.0,
                "words": [{"word": " " + t, "start": s, "end": e} for t, s, e in seg],
            }
            for seg in self.script.pop(0)
        ]
        return {"segments": segments, "language": "en", "text": ""}


def test_the_transcriber_trims_at_a_committed_segment_end_and_prompts_with_the_text_before(monkeypatch):
    import models.whisper.streaming.live as live_module

    s1 = [("one", 0.0, 4.0), ("two", 4.0, 8.0)]  # a first segment ending at 8.0
    s2 = [("three", 8.0, 12.0), ("four", 12.0, 15.5)]
    fake = ScriptedTranscribe(
        [
            [s1, s2],
            [s1, s2],  # all agreed: committed up to "four" (15.5); buffer 16 s > 10: cut at 8.0
            [[("three", 0.0, 4.0), ("four", 4.0, 7.5), ("five", 7.5, 8.5)]],  # buffer time, from 8.0
            [[("three", 0.0, 4.0), ("four", 4.0, 7.5), ("five", 7.5, 8.5)]],
        ]
    )
    monkeypatch.setattr(live_module, "transcribe_buffer", fake)
    live = LiveTranscriber(object(), language="en", trim_s=10.0)
    live.insert_audio(np.zeros(16 * SAMPLE_RATE, np.float32))
    assert live.process() == []
    assert texts(live.process()) == []  # no new audio: no transcription
    live.insert_audio(np.zeros(SAMPLE_RATE // 2, np.float32))
    assert texts(live.process()) == ["one", "two", "three", "four"]
    assert live.buffer_start == 8.0 and len(live.buffer) == int(8.5 * SAMPLE_RATE)
    live.insert_audio(np.zeros(SAMPLE_RATE, np.float32))
    assert live.process() == []  # "three four" transcribed again, matched to the committed text
    assert texts(live.pending) == ["five"] and live.pending[0].start == 15.5  # stream time
    live.insert_audio(np.zeros(SAMPLE_RATE, np.float32))
    assert texts(live.finish()) == ["five"]
    assert live.text == "one two three four five"
    prompts = [c["initial_prompt"] for c in fake.calls]
    assert prompts == [None, None, "one two", "one two"]  # the committed text before the buffer
    assert all(
        c["word_timestamps"] and c["temperature"] == 0.0 and not c["condition_on_previous_text"]
        for c in fake.calls
    )
    assert [c["seconds"] for c in fake.calls] == [16.0, 16.5, 9.5, 10.5]


# ---------------------------------------------------------------------- (d) the source


def pcm(samples: np.ndarray, fmt: str) -> bytes:
    if fmt == "s16le":
        return (samples * 32768).astype("<i2").tobytes()
    return samples.astype("<f4").tobytes()


def ramp(n: int = 8000) -> np.ndarray:
    """Samples exactly representable in s16le."""
    return (np.arange(n, dtype=np.float32) % 2000 - 1000) / 32768


def collect(source: PcmSource) -> np.ndarray:
    chunks = list(source.chunks())
    return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)


def feed(fd: int, data: bytes, pieces: int, pause: float) -> threading.Thread:
    """Write ``data`` to ``fd`` in uneven pieces (samples split across writes), then close it."""

    def run():
        cuts = np.linspace(0, len(data), pieces + 1).astype(int) + np.r_[0, [1] * (pieces - 1), 0]
        for a, b in zip(cuts[:-1], cuts[1:]):
            os.write(fd, data[a:b])
            time.sleep(pause)
        os.close(fd)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("fmt", ["s16le", "f32le"])
def test_a_pipe_is_read_as_it_arrives_until_the_writer_closes_it(fmt):
    samples = ramp()
    r, w = os.pipe()
    writer = feed(w, pcm(samples, fmt), pieces=7, pause=0.01)
    try:
        got = collect(open_source(r, fmt=fmt))
    finally:
        os.close(r)
    writer.join()
    np.testing.assert_array_equal(got, samples)


@pytest.mark.parametrize("fmt", ["s16le", "f32le"])
def test_a_growing_file_is_followed_until_it_stops_growing(tmp_path, fmt):
    samples = ramp(16000)
    data = pcm(samples, fmt)
    path = tmp_path / "live.raw"
    path.write_bytes(data[:1001])  # cut inside a sample

    def grow():
        with open(path, "ab") as f:
            for a in range(1001, len(data), 3001):
                time.sleep(0.05)
                f.write(data[a : a + 3001])
                f.flush()

    writer = threading.Thread(target=grow, daemon=True)
    writer.start()
    t0 = time.monotonic()
    source = open_source(str(path), fmt=fmt, idle_timeout=1.0)
    got = collect(source)
    source.close()
    writer.join()
    np.testing.assert_array_equal(got, samples)
    assert time.monotonic() - t0 >= 1.0  # it waited the idle timeout after the last growth
    quick = open_source(str(path), fmt=fmt, idle_timeout=0)
    np.testing.assert_array_equal(collect(quick), samples)
    quick.close()


@pytest.mark.parametrize("subtype, fmt", [("PCM_16", "s16le"), ("FLOAT", "f32le")])
def test_a_wav_header_is_skipped_and_decides_the_format(tmp_path, subtype, fmt):
    samples = ramp()
    path = tmp_path / "clip.wav"
    sf.write(path, samples, SAMPLE_RATE, subtype=subtype)
    source = open_source(str(path), fmt="f32le" if fmt == "s16le" else "s16le", idle_timeout=0)
    got = collect(source)
    source.close()
    assert source.wav and source.fmt == fmt
    np.testing.assert_array_equal(got, samples)
    # the same WAV through a pipe, in pieces
    r, w = os.pipe()
    writer = feed(w, path.read_bytes(), pieces=9, pause=0.0)
    np.testing.assert_array_equal(collect(open_source(r)), samples)
    os.close(r)
    writer.join()


def test_a_streamed_wav_of_unknown_length_is_read_to_its_end():
    samples = ramp()
    header = io.BytesIO()
    sf.write(header, samples[:0], SAMPLE_RATE, subtype="PCM_16", format="WAV")
    head = bytearray(header.getvalue())
    data_at = head.index(b"data")
    head[data_at + 4 : data_at + 8] = struct.pack("<I", 0xFFFFFFFF)  # as arecord writes to a pipe
    stream = io.BytesIO(bytes(head) + pcm(samples, "s16le"))
    np.testing.assert_array_equal(collect(open_source(stream)), samples)


def test_an_unsupported_wav_and_a_bad_format_are_one_line_errors(tmp_path):
    path = tmp_path / "cd.wav"
    sf.write(path, np.zeros((4410, 2), np.float32), 44100, subtype="PCM_16")
    source = open_source(str(path), idle_timeout=0)
    with pytest.raises(
        SourceError,
        match=r"cd\.wav: WAV is 16-bit PCM, 2 channel\(s\) at 44100 Hz; kvgraph listen reads 16 kHz mono",
    ):
        collect(source)
    source.close()
    with pytest.raises(SourceError, match="unknown sample format 'u8'"):
        open_source(io.BytesIO(b""), fmt="u8")
    with pytest.raises(FileNotFoundError):
        open_source(str(tmp_path / "missing.raw"))


def test_the_cli_checks_its_arguments_and_the_source_before_loading_a_model(tmp_path, capsys):
    def no_model(name):
        raise AssertionError("no model should be loaded")

    assert listen_cli.main(["--help"], load_backend=no_model) == 0
    assert "LocalAgreement-2" in capsys.readouterr().out
    assert listen_cli.main(["--format", "u8"], load_backend=no_model) == 2
    assert listen_cli.main(["--min-chunk-size", "0"], load_backend=no_model) == 2
    capsys.readouterr()
    assert listen_cli.main([str(tmp_path / "missing.raw")], load_backend=no_model) == 1
    err = capsys.readouterr().err
    assert err.strip() == f"kvgraph: error: {tmp_path / 'missing.raw'}: No such file or directory"
    wav = tmp_path / "cd.wav"
    sf.write(wav, np.zeros((4410, 2), np.float32), 44100, subtype="PCM_16")
    assert listen_cli.main([str(wav)], load_backend=no_model) == 1
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith(f"kvgraph: error: {wav}: WAV is 16-bit PCM, 2 channel(s) at 44100 Hz;")
        and "\n" not in err
    )


# ---------------------------------------------------------------------- (b), (c): JFK on tiny.en


@pytest.fixture(scope="module")
def jfk_offline(tiny_backend, jfk_audio):
    from models.whisper.transcription.transcribe import transcribe

    return words_of(transcribe(tiny_backend, jfk_audio)["text"])


@pytest.mark.max
def test_jfk_fed_in_one_second_chunks_ends_with_the_offline_transcript(tiny_backend, jfk_audio, jfk_offline):
    live = LiveTranscriber(tiny_backend)
    committed = []
    for i in range(0, len(jfk_audio), SAMPLE_RATE):
        live.insert_audio(jfk_audio[i : i + SAMPLE_RATE])
        committed += live.process()
    assert committed, "nothing committed before the end of the stream"
    committed += live.finish()
    assert [w.start for w in committed] == sorted(w.start for w in committed)
    streamed = words_of(" ".join(w.text for w in committed))
    assert word_error_rate(jfk_offline, streamed) <= 0.02, (streamed, jfk_offline)


@pytest.mark.max
def test_a_buffer_of_one_window_is_transcribed_as_that_window_alone(tiny_backend):
    from models.whisper.audio.load import load_audio
    from models.whisper.streaming.live import transcribe_buffer
    from models.whisper.transcription.transcribe import transcribe

    # 6 s of a telephone prompt cut inside a sentence: long-form transcription decodes a second
    # window after the first window's last complete segment, and hears "Thank you." in it
    audio = load_audio(str(SPEECH / "basic-pbx-ivr-main.wav"))[6 * SAMPLE_RATE : 12 * SAMPLE_RATE]
    options = dict(
        word_timestamps=True,
        condition_on_previous_text=False,
        temperature=0.0,
        initial_prompt="Thank you for calling.",
    )
    full = transcribe(tiny_backend, audio, **options)
    first = [s for s in full["segments"] if s["seek"] == 0]
    print(
        f"\nlong-form windows: {full['timings']['encode_calls']}, segments {[s['text'] for s in full['segments']]}"
    )
    ours = transcribe_buffer(tiny_backend, audio, **options)
    assert ours["language"] == "en"
    assert [(s["text"], s["end"], s["words"]) for s in ours["segments"]] == [
        (s["text"], s["end"], s["words"]) for s in first
    ]


#: the word error rate a live transcript of JFK may have against the offline one
LIVE_WER = 0.1


@pytest.mark.max
def test_two_hypotheses_agreeing_on_a_misheard_word_commit_it(tiny_backend, jfk_audio, jfk_offline):
    """Local agreement commits what two successive hypotheses share, and both may mishear: fed
    JFK up to 1.0, 2.2 and 3.2 s (decode times a loaded 2-core AMD Zen 3 gave the real-time
    test, replayed; 3 of 80 such schedules around them), the hypotheses read "and so am I" and
    "and so am I fellow Americans", so "am I" is committed where the offline transcript has "my"
    (two of JFK's 22 words). So a live transcript is held to LIVE_WER, not to the offline text;
    the schedules of whole seconds give it exactly (the one-second test above)."""
    live, committed, fed = LiveTranscriber(tiny_backend), [], 0
    for end in (1.0, 2.2, 3.2, *np.arange(4.2, len(jfk_audio) / SAMPLE_RATE, 1.0)):
        live.insert_audio(jfk_audio[fed : int(end * SAMPLE_RATE)])
        fed = int(end * SAMPLE_RATE)
        committed += live.process()
    live.insert_audio(jfk_audio[fed:])
    committed += live.finish()
    streamed = words_of(" ".join(w.text for w in committed))
    assert streamed[:4] == ["and", "so", "am", "i"], streamed
    assert 0 < word_error_rate(jfk_offline, streamed) <= LIVE_WER, (streamed, jfk_offline)


def paced(audio: np.ndarray, chunk_s: float = 0.1):
    """``audio`` in ``chunk_s`` pieces, each yielded when a real-time source would have it."""
    n = int(chunk_s * SAMPLE_RATE)
    t0 = time.monotonic()
    for i in range(0, len(audio), n):
        delay = t0 + (i + n) / SAMPLE_RATE - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        yield audio[i : i + n]


@pytest.mark.max
def test_jfk_at_real_time_pace_commits_every_word_in_order(tiny_backend, jfk_audio, jfk_offline):
    batches = []
    result = listen(
        tiny_backend, paced(jfk_audio), on_commit=lambda words, final: batches.append((words, final))
    )
    assert not result.interrupted and result.audio_s == pytest.approx(len(jfk_audio) / SAMPLE_RATE)
    # the decode times follow the machine's speed, and at some of them the policy commits a
    # misheard word (the replay test below): the bound is that test's
    assert word_error_rate(jfk_offline, words_of(result.text)) <= LIVE_WER, (
        words_of(result.text),
        jfk_offline,
    )
    assert [w for words, _ in batches for w in words] == result.words
    assert any(not final for _, final in batches), "nothing committed while the audio arrived"
    lags = result.lags()
    print(f"\ncommit lag per word (s), min-chunk 1.0 s, {result.decodes} transcriptions:")
    for w, lag, final in zip(result.words, lags, result.final):
        print(f"  {w.text:>12} ends {w.end:6.2f} s  lag {lag:5.2f} s{'  (end of stream)' if final else ''}")
    print(f"  median {np.median(lags):.2f} s, p90 {np.percentile(lags, 90):.2f} s")


@pytest.mark.max
def test_the_cli_prints_committed_lines_of_a_wav_file(tiny_backend, jfk_offline, capsys):
    code = listen_cli.main(
        [str(JFK), "--idle-timeout", "0", "--min-chunk-size", "2", "--output", "jsonl"],
        load_backend=lambda name: tiny_backend,
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    import json

    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) >= 2
    # words committed at the end of the stream (none when the last transcription while the
    # file was read had agreed on all of them: the steps follow the reader thread's timing)
    finals = [line["final"] for line in lines]
    assert finals == sorted(finals)  # a final batch, if any, is the last line
    assert words_of(" ".join(line["text"] for line in lines)) == jfk_offline
    assert "listening on" in err and f"{len(jfk_offline)} words" in err
