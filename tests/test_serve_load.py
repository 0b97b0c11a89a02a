"""``kvgraph serve`` under load, and the batching engine's turns (issue 29, part 3).

- 16 clients at once on 127.0.0.1 (the official ``openai`` client, one thread each, a
  ``BackgroundServer`` of the session's tiny.en): plain and streamed requests over the bundled
  clips (some cut short, one of two windows), uploads that are not audio, empty (400) or over
  the upload limit (413), a client that gives up while its request decodes and one that hangs
  up after its first delta. Every transcript the engine completed -- those of the clients that
  left included -- equals ``transcribe`` of its clip's decoded upload (and that equals
  openai-whisper's: checked on a clip with the torch model), each response carries its own
  clip's text (the clips' texts differ), every request the engine took ended, and afterwards
  the engine is idle (nothing running, waiting or paused, no stream in the scheduler, every
  row back in the pool) and the server answers again.
- A small queue: batch 2 and ``max_queue`` 2 hold 4 requests; 8 clients at once get exactly 4
  answers 503 (``Retry-After``), the 4 others their transcripts.
- Fairness: behind 15 one-minute requests, a 4 s one finishes first: the server's engine takes
  turns of one 30 s window (``Turns`` round robin); every result still equals ``transcribe``'s.
  (With ``turns="fifo"``, the engine before this change, it finishes 9th.)
- ``Turns`` alone (no MAX): its line's order, a cancelled request's turn passed on, FIFO vs
  round robin on fake streams.
"""

from __future__ import annotations

import collections
import concurrent.futures
import http.client
import io
import threading
import time
import uuid
from types import SimpleNamespace

import numpy as np
import pytest
from test_serve import assert_healthy, assert_openai_error, client, post_multipart, wait_until
from whisper_clips import JFK, SAMPLE_RATE, SPEECH, assert_same_result, silence
from whisper_fixtures import *  # noqa: F401,F403

openai = pytest.importorskip("openai", reason="the openai client (test extra) is not installed")

from models.whisper.apps import server as sv  # noqa: E402
from models.whisper.apps.server.streaming import StreamCancelled  # noqa: E402
from models.whisper.engine.streams import Turns  # noqa: E402

PATH = "/v1/audio/transcriptions"
UPLOAD_LIMIT = 2 * 1024 * 1024


# ----------------------------------------------------------------------------- Turns (no MAX)


def test_turns_line_order_and_cancelled_grants():
    turns = Turns(1, "round_robin")
    got = []

    def grant(name, take=True):
        return lambda: got.append(name) or take

    turns.ask(grant("a"))  # a free turn: granted at once
    turns.ask(grant("b"))
    turns.ask(grant("gone", take=False))  # a request cancelled while it waited
    turns.ask(grant("c"))
    turns.ask(grant("early"), key=-1)  # an earlier place in line (a started request's chunk)
    assert got == ["a"] and turns.free == 0
    passer = threading.Thread(target=turns.pass_turn)  # "a" between two windows
    passer.start()
    wait_until(lambda: got == ["a", "early"], 10)
    assert turns.paused == 1 and turns.passes == 1
    turns.release()  # "early" ends: "b" next
    turns.release()  # "b" ends: "gone" declines, "c" takes it
    assert got == ["a", "early", "b", "gone", "c"] and passer.is_alive()
    turns.release()  # "c" ends: "a"'s turn came round
    passer.join(10)
    assert not passer.is_alive() and turns.paused == 0
    assert not Turns(1, "fifo").pass_turn()  # FIFO: a holder keeps its turn
    turns.release()
    assert turns.free == 1 and not turns.line
    with pytest.raises(ValueError, match="turns policy"):
        Turns(2, "lottery")


def fake_streams(policy: str, windows: dict[str, int], slots: int = 2, window_s: float = 0.05) -> list:
    """Fake requests (``windows[name]`` windows of ``window_s`` each, the last one's of none)
    submitted in order to ``Turns(slots, policy)``: the order they finish in."""
    turns, done, threads = Turns(slots, policy), [], []

    def run(name, n):
        for w in range(n):
            if w:
                turns.pass_turn()
            time.sleep(window_s if n > 1 else 0)
        done.append(name)
        turns.release()

    def grant(name):
        threads.append(threading.Thread(target=run, args=(name, windows[name])))
        threads[-1].start()
        return True

    for name in windows:
        turns.ask(lambda name=name: grant(name))
    wait_until(lambda: len(done) == len(windows), 30)
    assert turns.free == slots
    return done


def test_round_robin_lets_a_short_request_past_long_ones_and_fifo_does_not():
    windows = {**{f"long{i}": 3 for i in range(5)}, "short": 1}
    assert fake_streams("round_robin", windows)[0] == "short"
    fifo = fake_streams("fifo", windows)
    assert fifo.index("short") >= 2  # it waited for whole long requests


# ----------------------------------------------------------------------------- clips


def wav(audio: np.ndarray) -> bytes:
    import soundfile as sf

    out = io.BytesIO()
    sf.write(out, audio, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return out.getvalue()


@pytest.fixture(scope="module")
def uploads(tiny_model):
    """Each upload's bytes and ``transcribe`` of its decoded audio (what the server decodes):
    ``{name: SimpleNamespace(data, audio, ref)}``. The texts all differ."""
    from models.whisper.audio.load import decode_audio, load_audio

    jfk, pbx = load_audio(str(JFK)), load_audio(str(SPEECH / "basic-pbx-ivr-main.wav"))
    nogo = load_audio(str(SPEECH / "demo-nogo.wav"))
    data = {
        "jfk": JFK.read_bytes(),
        "pbx": (SPEECH / "basic-pbx-ivr-main.wav").read_bytes(),
        "nogo": (SPEECH / "demo-nogo.wav").read_bytes(),
        "jfk_cut": wav(jfk[: 4 * SAMPLE_RATE]),
        "pbx_cut": wav(pbx[: 9 * SAMPLE_RATE]),
        "nogo_cut": wav(nogo[: 6 * SAMPLE_RATE]),
        "two_windows": wav(np.concatenate([pbx, silence(1.0), jfk])),  # 37 s
    }
    out = {}
    for name, blob in data.items():
        audio = decode_audio(blob, SAMPLE_RATE, name)
        out[name] = SimpleNamespace(data=blob, audio=audio, ref=tiny_model.transcribe(audio))
    texts = [u.ref["text"] for u in out.values()]
    assert len(set(texts)) == len(texts)
    assert max(s["seek"] for s in out["two_windows"].ref["segments"]) > 0
    return out


@pytest.mark.max
def test_the_reference_is_openai_whispers(uploads, torch_tiny):
    import oracle  # openai-whisper's transcribe, memoised on disk

    for name in ("jfk_cut", "pbx_cut"):
        ours = uploads[name].ref
        theirs = oracle.transcribe(torch_tiny, uploads[name].audio, fp16=False)
        assert_same_result(ours, theirs)
        assert [s["tokens"] for s in ours["segments"]] == [s["tokens"] for s in theirs["segments"]]


class Recorder:
    """An engine whose submissions are kept (``taken``: ``(samples, future)``); ``hold``: the
    first segment of every request waits for it (its turn held meanwhile)."""

    def __init__(self, engine, hold: threading.Event | None = None):
        self.engine, self.hold = engine, hold
        self.taken: list = []

    def submit(self, audio, on_segment=None, **options):
        hook = on_segment
        if self.hold is not None:

            def hook(seg):
                assert self.hold.wait(120)
                if on_segment is not None:
                    on_segment(seg)

        fut = self.engine.submit(audio, on_segment=hook, **options)
        self.taken.append((len(audio), fut))
        return fut

    def stats(self):
        return self.engine.stats()

    def close(self, wait=True):
        self.engine.close(wait)


def idle(engine) -> bool:
    s = engine.stats()
    return (s["running"], s["waiting"], s["paused"], engine.scheduler.live) == (0, 0, 0, 0)


# ----------------------------------------------------------------------------- 16 clients


def jobs(uploads) -> list[tuple[str, str, str]]:
    """The 16 clients' ``(kind, upload, response format)``."""
    return [
        ("plain", "jfk", "json"),
        ("plain", "pbx", "verbose_json"),
        ("plain", "nogo", "text"),
        ("plain", "jfk_cut", "json"),
        ("plain", "pbx_cut", "srt"),
        ("plain", "two_windows", "json"),
        ("stream", "pbx", ""),
        ("stream", "jfk", ""),
        ("stream", "nogo", ""),
        ("stream", "pbx_cut", ""),
        ("stream", "two_windows", ""),
        ("bad", "not audio", ""),
        ("bad", "empty", ""),
        ("bad", "too large", ""),
        ("leave", "nogo_cut", ""),  # leaves once the engine has its request
        ("leave_stream", "two_windows", ""),  # hangs up after its first delta
    ]


def leave_mid_request(url: str, data: bytes, taken) -> str:
    """POST ``data`` as a transcription, then close the connection without reading the answer
    as soon as ``taken()`` (the engine has the request)."""
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\ntiny.en\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=300)
    conn.request(
        "POST", PATH, body=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    wait_until(taken, 120)
    conn.close()
    return "left"


def one_client(url: str, uploads, job, start: threading.Barrier, spy):
    """What one client got: ``(kind, name, outcome)``."""
    kind, name, fmt = job
    too_large = b"\0" * (UPLOAD_LIMIT + 512 * 1024)  # past the limit and the form's allowance
    data = {"not audio": b"not audio at all\n" * 200, "empty": b"", "too large": too_large}
    data = data[name] if name in data else uploads[name].data
    c = client(url, timeout=300)
    start.wait(120)  # all at once
    if kind == "leave":
        n = len(uploads[name].audio)
        return kind, name, leave_mid_request(url, data, lambda: any(k == n for k, _ in spy.taken))
    try:
        if kind == "plain":
            return (
                kind,
                name,
                (
                    fmt,
                    c.audio.transcriptions.create(file=("a.wav", data), model="tiny.en", response_format=fmt),
                ),
            )
        stream = c.audio.transcriptions.create(file=("a.wav", data), model="tiny.en", stream=True)
        if kind == "leave_stream":
            first = next(iter(stream))
            stream.close()
            c.close()
            return kind, name, first
        return kind, name, list(stream)
    except openai.APIError as e:
        return kind, name, e


def check_client(outcome, uploads) -> None:
    """One client's outcome is what its request asked for, with its own clip's text."""
    from models.whisper.transcription.outputs import render

    kind, name, got = outcome
    if kind == "bad":
        status = 413 if name == "too large" else 400
        assert isinstance(got, openai.APIStatusError) and got.status_code == status, (name, got)
        assert got.body["code"] == ("file_too_large" if status == 413 else "invalid_audio")
        return
    if kind == "leave":
        assert got == "left"
        return
    ref = uploads[name].ref
    if kind == "leave_stream":
        assert got.type == "transcript.text.delta" and ref["text"].strip().startswith(got.delta), (name, got)
        return
    if kind == "stream":
        assert [e.type for e in got] == ["transcript.text.delta"] * (len(got) - 1) + ["transcript.text.done"]
        assert "".join(e.delta for e in got[:-1]) == got[-1].text == ref["text"].strip(), name
        return
    fmt, r = got
    if fmt == "json":
        assert r.text == ref["text"].strip(), name
    elif fmt == "text":
        assert r == ref["text"].strip() + "\n", name
    elif fmt == "srt":
        assert r == render(ref, "srt"), name
    else:
        assert r.text == ref["text"].strip(), name
        assert [s.tokens for s in r.segments] == [s["tokens"] for s in ref["segments"]], name


@pytest.mark.max
def test_16_clients_streamed_plain_bad_and_leaving(tiny_model, uploads):
    engine = sv.make_engine(tiny_model, max_queue=64)
    spy = Recorder(engine)
    app = sv.create_app(spy, sv.ServedModel.of("tiny.en", tiny_model), max_upload_bytes=UPLOAD_LIMIT)
    todo = jobs(uploads)
    with sv.BackgroundServer(app) as url:
        start = threading.Barrier(len(todo))
        with concurrent.futures.ThreadPoolExecutor(len(todo)) as pool:
            outcomes = list(pool.map(lambda job: one_client(url, uploads, job, start, spy), todo))
        for outcome in outcomes:
            check_client(outcome, uploads)
        # every request the engine took ended; each completed transcript is its clip's
        wait_until(lambda: all(f.done() for _, f in spy.taken), 300)
        by_length = {len(u.audio): name for name, u in uploads.items()}
        taken = collections.Counter(by_length[n] for n, _ in spy.taken)
        want = collections.Counter(name for kind, name, _ in todo if kind != "bad")
        assert taken == want
        stopped = 0
        for n, fut in spy.taken:
            ref = uploads[by_length[n]].ref
            if fut.cancelled() or isinstance(fut.exception(), StreamCancelled):
                stopped += 1  # a client that left (queued: cancelled; streaming: stopped)
                continue
            result = fut.result()
            assert result["text"] == ref["text"], by_length[n]
            assert [s["tokens"] for s in result["segments"]] == [s["tokens"] for s in ref["segments"]]
        assert stopped <= 2
        wait_until(lambda: idle(engine), 120)
        health = assert_healthy(url)["engine"]
        assert (health["running"], health["waiting"], health["completed"]) == (0, 0, len(spy.taken))
        again = client(url).audio.transcriptions.create(file=JFK.open("rb"), model="tiny.en")
        assert again.text == uploads["jfk"].ref["text"].strip()
    assert engine.scheduler.pool.groups == []  # closed with the server: every row given back


# ----------------------------------------------------------------------------- the queue bound


@pytest.mark.max
def test_a_small_queue_answers_503_to_the_overflow(tiny_model, uploads):
    hold = threading.Event()
    engine = sv.make_engine(tiny_model, batch_size=2, max_queue=2)  # 2 decoding + 2 waiting
    spy = Recorder(engine, hold=hold)
    app = sv.create_app(spy, sv.ServedModel.of("tiny.en", tiny_model))
    ref = uploads["jfk_cut"].ref["text"].strip()
    fields = [("model", "tiny.en"), ("file", "a.wav", uploads["jfk_cut"].data)]
    try:
        with sv.BackgroundServer(app) as url, concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = [pool.submit(post_multipart, url, PATH, fields, 300) for _ in range(8)]
            wait_until(lambda: sum(a.done() for a in answers) == 4, 120)  # the overflow, at once
            busy = [a.result() for a in answers if a.done()]
            for status, headers, body in busy:
                err = assert_openai_error((status, headers, body), 503)
                assert err["code"] == "server_busy" and headers["retry-after"] == "1"
            stats = engine.stats()
            assert (stats["running"], stats["waiting"]) == (2, 2)
            hold.set()
            served = [a.result() for a in answers if a.result()[0] != 503]
            assert len(served) == 4
            assert all(s == 200 and b'"text":' in body and ref.encode() in body for s, _, body in served)
            wait_until(lambda: idle(engine), 60)
            assert_healthy(url)
    finally:
        hold.set()


# ----------------------------------------------------------------------------- fairness


@pytest.mark.max
def test_a_short_request_behind_15_long_ones_finishes_first(tiny_model, jfk_audio):
    """The server's engine (batch 8, round robin): 15 one-minute requests (two 30 s windows
    each), then a 4 s one; it finishes before every long one (order of completion, not time)."""
    from models.whisper.audio.load import load_audio

    pbx = load_audio(str(SPEECH / "basic-pbx-ivr-main.wav"))
    first = np.concatenate([pbx, silence(30.0 - len(pbx) / SAMPLE_RATE)])
    long = np.concatenate([first, pbx[: 21 * SAMPLE_RATE], silence(9.0)])  # 60 s
    short = jfk_audio[: 4 * SAMPLE_RATE]
    refs = {"long": tiny_model.transcribe(long), "short": tiny_model.transcribe(short)}
    assert refs["long"]["timings"]["encode_calls"] == 2
    engine = sv.make_engine(tiny_model, max_queue=64)
    finished: list[str] = []
    try:
        futures = []
        for name in ["long"] * 15 + ["short"]:
            futures.append((name, engine.submit(long if name == "long" else short)))
            futures[-1][1].add_done_callback(lambda f, name=name: finished.append(name))
        results = [(name, f.result(600)) for name, f in futures]
    finally:
        engine.close()
    assert finished[0] == "short", finished
    for name, result in results:
        assert_same_result(result, refs[name])
        assert [s["tokens"] for s in result["segments"]] == [s["tokens"] for s in refs[name]["segments"]]
    stats = engine.stats()
    assert stats["turns"] == "round_robin" and stats["turns_passed"] >= 8
    assert engine.scheduler.pool.groups == []
