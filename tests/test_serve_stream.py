"""``kvgraph serve``: streamed transcriptions (``stream=true``), the API key, and OpenAI's
``chunking_strategy`` field, driven with the official ``openai`` client.

The tests without the ``max`` marker decode with fake models (canned segments, instant, gated
where a test needs a request to stay in the middle); the ``max`` ones serve the session's
compiled tiny.en (``whisper_fixtures``) and compare the streamed deltas with
``WhisperModel.transcribe`` of the same audio.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import math
import threading
from types import SimpleNamespace

import numpy as np
import pytest
from test_serve import (
    CLIPS,
    JFK,
    JFK_BYTES,
    FakeModel,
    assert_healthy,
    assert_openai_error,
    canned,
    client,
    fake_server,
    post_multipart,
    request,
    wait_until,
)
from whisper_clips import silence, words
from whisper_fixtures import *  # noqa: F401,F403

openai = pytest.importorskip("openai", reason="the openai client (test extra) is not installed")

from models.whisper.apps import server as sv  # noqa: E402
from models.whisper.apps.cli import serve as serve_cli  # noqa: E402
from models.whisper.apps.server import app as app_module  # noqa: E402
from models.whisper.apps.server.auth import exposure_warning, is_loopback  # noqa: E402
from models.whisper.apps.server.chunking import ChunkingError, chunking_options  # noqa: E402
from models.whisper.apps.server.events import DeltaText  # noqa: E402
from models.whisper.apps.server.streaming import StreamCancelled  # noqa: E402

PATH = "/v1/audio/transcriptions"
TEXTS = (" Hello", " big", " world.")


# ----------------------------------------------------------------------------- fakes


class StreamingFake(FakeModel):
    """Calls ``on_segment`` with each of ``texts`` as a segment; ``hold`` (an Event) is waited
    for before every segment but the first; what ends a call (a result or the exception
    ``on_segment`` raised) is appended to ``ended``."""

    def __init__(self, texts=TEXTS, hold=None, fail_after=None, **kw):
        super().__init__(**kw)
        self.texts, self.hold, self.fail_after = texts, hold, fail_after
        self.ended: list = []
        self.first_sent = threading.Event()

    def transcribe(self, audio, on_segment=None, **options):
        self.calls.append((len(audio), dict(options)))
        self.started.set()
        segments = []
        try:
            for i, text in enumerate(self.texts):
                if i and self.hold is not None:
                    assert self.hold.wait(60)
                if self.fail_after is not None and i == self.fail_after:
                    raise self.fail_after_error
                seg, _ = canned(text)
                seg.update(id=i, start=float(i), end=float(i + 1), tokens=list(range(i + 1)))
                segments.append(seg)
                if on_segment is not None:
                    on_segment(seg)
                self.first_sent.set()
        except BaseException as e:
            self.ended.append(e)
            raise
        self.ended.append("done")
        return {"text": "".join(self.texts), "segments": segments, "language": "en"}

    fail_after_error = RuntimeError("kernel exploded")


def stream_events(url: str, fields: list, **client_kw) -> list:
    """The events of a streamed transcription read with the ``openai`` client."""
    c = client(url, **client_kw)
    return list(c.audio.transcriptions.create(**dict(fields), stream=True))


# ----------------------------------------------------------------------------- streaming (fake)


def test_stream_sends_openais_events_as_segments_are_decoded():
    hold = threading.Event()
    model, _, server = fake_server(StreamingFake(hold=hold))
    with server as url:
        stream = client(url).audio.transcriptions.create(file=JFK.open("rb"), model="whisper-1", stream=True)
        events = iter(stream)
        first = next(events)  # sent while the model still holds the second segment
        assert (first.type, first.delta) == ("transcript.text.delta", "Hello")
        assert not hold.is_set() and model.ended == []
        hold.set()
        rest = list(events)
    assert [e.type for e in rest] == ["transcript.text.delta"] * 2 + ["transcript.text.done"]
    deltas = [first.delta] + [e.delta for e in rest[:-1]]
    done = rest[-1]
    assert deltas == ["Hello", " big", " world."]
    assert "".join(deltas) == done.text == "Hello big world."
    # usage: OpenAI's token usage; 11 s of audio at Whisper's 50 encoder positions a second
    assert done.usage.model_dump() == {
        "type": "tokens",
        "input_tokens": 550,
        "input_token_details": {"audio_tokens": 550, "text_tokens": 0},
        "output_tokens": 1 + 2 + 3,
        "total_tokens": 556,
    }
    assert done.logprobs is None and model.ended == ["done"]


def test_stream_wire_format_and_equal_to_the_plain_answer():
    model, _, server = fake_server(StreamingFake(texts=(" One.", " ", " Two. ", " Three")))
    with server as url:
        base = [("model", "tiny.en"), ("file", "a.wav", JFK_BYTES)]
        status, headers, body = post_multipart(url, PATH, [*base, ("stream", "true"), ("prompt", "Hi there")])
        plain = post_multipart(url, PATH, base)
        text_fmt = post_multipart(
            url, PATH, [*base, ("stream", "1"), ("response_format", "text"), ("prompt", "Hi there")]
        )
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert headers["cache-control"] == "no-cache"
    chunks = body.decode().split("\n\n")
    assert chunks[-1] == "" and all(c.startswith("data: {") and "\n" not in c for c in chunks[:-1])
    events = [json.loads(c.removeprefix("data: ")) for c in chunks[:-1]]
    deltas = [e["delta"] for e in events if e["type"] == "transcript.text.delta"]
    assert deltas == ["One.", "  Two.", "  Three"]  # no empty delta; trailing spaces carried on
    done = events[-1]
    assert set(done) == {"type", "text", "usage"} and done["type"] == "transcript.text.done"
    assert "".join(deltas) == done["text"] == json.loads(plain[2])["text"]
    assert done["usage"]["input_token_details"]["text_tokens"] == 2  # " Hi there": 2 GPT-2 tokens
    assert text_fmt[0] == 200 and text_fmt[2] == body


def test_delta_text_joins_to_the_stripped_transcript():
    for texts in [(" a", " b"), ("", " ", " a ", "  ", "b", " "), (" x\n", " y"), (" ",), ()]:
        d = DeltaText()
        out = [d.push(t) for t in texts]
        assert "".join(out) == d.text == "".join(texts).strip()
        assert all(o == o.rstrip() for o in out)  # trailing space waits for the next text


class LogprobFake(StreamingFake):
    """Segments of real GPT-2 tokens between two timestamp tokens, with ``token_logprobs``
    when ``transcribe`` is asked for them (as ``transcribe(..., token_logprobs=True)``)."""

    def transcribe(self, audio, on_segment=None, **options):
        from models.whisper.decoding.tokenizer import get_tokenizer

        tok = get_tokenizer(False)

        def with_logprobs(seg):
            i = seg["id"]
            seg["tokens"] = [
                tok.timestamp_begin + 2 * i,
                *tok.encode(seg["text"]),
                tok.timestamp_begin + 2 * i + 1,
            ]
            if options.get("token_logprobs"):
                seg["token_logprobs"] = [-0.25 * (i + 1) - 0.01 * k for k in range(len(seg["tokens"]))]
            if on_segment is not None:
                on_segment(seg)

        result = super().transcribe(audio, on_segment=with_logprobs, **options)
        if on_segment is None:  # the plain request: the same segments, filled in
            for seg in result["segments"]:
                with_logprobs(seg)
        return result


def test_logprobs_on_the_stream_and_the_json_with_openais_client():
    """``include[]=logprobs``: every delta carries its text's tokens (a segment held back as
    whitespace goes with the next delta), ``done`` and the json answer the whole text's;
    timestamp tokens are left out as the text leaves them out."""
    from models.whisper.decoding.tokenizer import get_tokenizer

    texts = (" Hello", " ", " café 🎉, world.")
    model, _, server = fake_server(LogprobFake(texts=texts))
    tok = get_tokenizer(False)
    with server as url:
        c = client(url)
        events = list(
            c.audio.transcriptions.create(
                file=JFK.open("rb"), model="tiny.en", stream=True, include=["logprobs"]
            )
        )
        assert model.calls[-1][1]["token_logprobs"] is True
        plain = c.audio.transcriptions.create(file=JFK.open("rb"), model="tiny.en", include=["logprobs"])
        without = c.audio.transcriptions.create(file=JFK.open("rb"), model="tiny.en")
        assert "token_logprobs" not in model.calls[-1][1] and without.logprobs is None
        bare = list(c.audio.transcriptions.create(file=JFK.open("rb"), model="tiny.en", stream=True))
        assert all(e.logprobs is None for e in bare)
    deltas, done = events[:-1], events[-1]
    assert [d.delta for d in deltas] == ["Hello", "  café 🎉, world."]
    want = [
        {
            "token": tok.decode([t]),
            "logprob": -0.25 * (i + 1) - 0.01 * (k + 1),
            "bytes": list(tok.decode([t]).encode()),
        }
        for i, text in enumerate(texts)
        for k, t in enumerate(tok.encode(text))
    ]
    got = [lp.model_dump() for d in deltas for lp in d.logprobs]
    # "🎉" is split across three tokens: their bytes are exact, their text U+FFFD
    exact = [w for w in want if "\ufffd" not in w["token"]]
    assert [g for g in got if "\ufffd" not in g["token"]] == exact and len(exact) == len(want) - 3 == len(
        got
    ) - 3
    assert b"".join(bytes(g["bytes"]) for g in got).decode() == "".join(texts)
    assert [len(d.logprobs) for d in deltas] == [1, len(tok.encode(" ")) + len(tok.encode(texts[2]))]
    assert [lp.model_dump() for lp in done.logprobs] == got
    assert [lp.model_dump() for lp in plain.logprobs] == [
        {**g, "bytes": [float(b) for b in g["bytes"]]} for g in got
    ]
    assert plain.text == done.text == "Hello  café 🎉, world."


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # the client's, on translations
def test_stream_refusals_are_400():
    model, _, server = fake_server(StreamingFake(multilingual=True), name="base")
    with server as url:
        base = [("model", "base"), ("file", "a.wav", JFK_BYTES)]
        for extra, param in [
            ([("stream", "maybe")], "stream"),
            ([("stream", "true"), ("response_format", "srt")], "response_format"),
            ([("stream", "true"), ("response_format", "verbose_json")], "response_format"),
            ([("stream", "true"), ("response_format", "text"), ("include[]", "logprobs")], "include"),
            ([("response_format", "verbose_json"), ("include[]", "logprobs")], "include"),
            ([("response_format", "srt"), ("include", "logprobs")], "include"),
            ([("include[]", "tokens")], "include"),
            ([("include[]", "logprobs"), ("include[]", "tokens")], "include"),
        ]:
            assert_openai_error(post_multipart(url, PATH, base + extra), 400, param)
        # translations keep refusing stream (OpenAI's translations take none)
        err = assert_openai_error(
            post_multipart(url, "/v1/audio/translations", [*base, ("stream", "true")]), 400, "stream"
        )
        assert err["code"] == "unsupported_value"
        with pytest.raises(openai.BadRequestError) as ei:
            client(url).audio.transcriptions.create(
                file=JFK.open("rb"), model="base", stream=True, include=["logprobs"], response_format="text"
            )
        assert "response_format=json" in ei.value.body["message"]
        assert model.calls == []
        assert post_multipart(url, PATH, [*base, ("stream", "false")])[0] == 200


def test_stream_failures_before_and_after_the_first_text():
    model, _, server = fake_server(StreamingFake(fail_after=0))
    model.fail_after_error = ValueError("initial_prompt: too long")
    with server as url:
        # before any text: the usual error JSON and status
        with pytest.raises(openai.BadRequestError) as ei:
            stream_events(url, [("file", JFK.open("rb")), ("model", "tiny.en")])
        assert "too long" in ei.value.body["message"]
        # after the first delta: an error event, which the client raises
        model.fail_after, model.fail_after_error = 1, RuntimeError("kernel exploded")
        got = []
        with pytest.raises(openai.APIError) as ei:
            for event in client(url).audio.transcriptions.create(
                file=JFK.open("rb"), model="tiny.en", stream=True
            ):
                got.append(event)
        assert [e.delta for e in got] == ["Hello"]
        assert ei.value.body["code"] == "internal_error" and "kernel exploded" not in str(ei.value.body)
        assert_healthy(url)
        model.fail_after = None
        assert (
            stream_events(url, [("file", JFK.open("rb")), ("model", "tiny.en")])[-1].text
            == "Hello big world."
        )


def test_a_client_that_hangs_up_mid_stream_stops_its_transcription(caplog):
    """The sequential engine: the stream's next segment raises StreamCancelled in the engine's
    thread, the transcription ends there, and the request queued behind it runs."""
    caplog.set_level("INFO", logger="kvgraph.serve")
    hold = threading.Event()
    model, engine, server = fake_server(StreamingFake(hold=hold))
    with server as url, concurrent.futures.ThreadPoolExecutor(1) as pool:
        c = client(url)
        stream = c.audio.transcriptions.create(file=JFK.open("rb"), model="tiny.en", stream=True)
        assert next(iter(stream)).delta == "Hello"
        queued = pool.submit(
            lambda: client(url).audio.transcriptions.create(file=JFK.open("rb"), model="tiny.en")
        )
        wait_until(lambda: engine.stats()["waiting"] == 1)
        stream.close()
        c.close()
        wait_until(lambda: "the client hung up" in caplog.text)
        hold.set()
        assert queued.result(30).text == "Hello big world."
        assert isinstance(model.ended[0], StreamCancelled) and model.ended[1] == "done"
        wait_until(lambda: engine.stats()["completed"] == 2)
        assert_healthy(url)


def test_a_streaming_client_that_hangs_up_while_queued_is_dropped(caplog):
    caplog.set_level("INFO", logger="kvgraph.serve")
    gate = threading.Event()
    model, engine, server = fake_server(FakeModel(gate=gate))
    with server as url, concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(
            lambda: client(url).audio.transcriptions.create(file=JFK.open("rb"), model="tiny.en")
        )
        assert model.started.wait(30)
        with pytest.raises(openai.APITimeoutError):
            stream_events(url, [("file", JFK.open("rb")), ("model", "tiny.en")], timeout=1.0)
        wait_until(lambda: "the client went away" in caplog.text)
        gate.set()
        assert running.result(30).text == "hello world"
        wait_until(lambda: engine.stats()["completed"] == 2)  # the dropped stream is skipped
        assert len(model.calls) == 1


# ----------------------------------------------------------------------------- the API key


def test_api_key_is_required_on_every_route_but_health():
    model, _, server = fake_server(StreamingFake(), api_key="s3cret-key")
    with server as url:
        for headers in [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-key"}]:
            for method, path in [("GET", "/v1/models"), ("GET", "/v1/nowhere"), ("POST", PATH)]:
                err = assert_openai_error(request(url, method, path, headers=headers), 401, None)
                assert err["code"] == "invalid_api_key" and err["type"] == "invalid_request_error"
                assert "s3cret" not in err["message"]
        assert assert_healthy(url)["model"] == "tiny.en"  # open
        # as OpenAI's client sends it; a refused upload is read, so the client gets the 401
        with pytest.raises(openai.AuthenticationError) as ei:
            openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).audio.transcriptions.create(
                file=JFK.open("rb"), model="tiny.en"
            )
        assert ei.value.status_code == 401 and ei.value.body["code"] == "invalid_api_key"
        assert model.calls == []
        good = openai.OpenAI(base_url=url + "/v1", api_key="s3cret-key", max_retries=0)
        assert [m.id for m in good.models.list()] == ["tiny.en"]
        assert (
            good.audio.transcriptions.create(file=JFK.open("rb"), model="tiny.en").text == "Hello big world."
        )
        events = list(good.audio.transcriptions.create(file=JFK.open("rb"), model="tiny.en", stream=True))
        assert events[-1].text == "Hello big world."
    engine = sv.SequentialEngine(FakeModel())
    with pytest.raises(ValueError, match="api_key"):
        sv.create_app(engine, sv.ServedModel("tiny.en", False), api_key="")
    engine.close()


def test_cli_api_key_from_flag_or_environment(monkeypatch, capsys):
    seen = []
    monkeypatch.setattr(app_module, "serve", lambda engine, served, **kw: seen.append(kw["api_key"]))
    run = lambda *argv: serve_cli.main(list(argv), load_model=lambda name: FakeModel())
    monkeypatch.delenv("KVGRAPH_API_KEY", raising=False)
    assert run() == 0 and seen[-1] is None
    monkeypatch.setenv("KVGRAPH_API_KEY", "from-env")
    assert run() == 0 and seen[-1] == "from-env"
    assert run("--api-key", "from-flag") == 0 and seen[-1] == "from-flag"
    monkeypatch.setenv("KVGRAPH_API_KEY", "")
    assert run() == 0 and seen[-1] is None
    assert run("--api-key", "") == 2 and run("--api-key", " padded ") == 2
    capsys.readouterr()
    monkeypatch.setenv("KVGRAPH_API_KEY", "do-not-print")
    assert serve_cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--api-key KEY" in out and "KVGRAPH_API_KEY" in out and "do-not-print" not in out


def test_listening_beyond_loopback_without_a_key_warns(capsys):
    for host in ["127.0.0.1", "127.3.4.5", "::1", "[::1]", "localhost", "LOCALHOST"]:
        assert is_loopback(host) and exposure_warning("p", host, None) is None, host
    for host in ["0.0.0.0", "::", "", "192.168.1.4", "example.com"]:
        assert not is_loopback(host), host
        assert exposure_warning("p", host, "k") is None
    warning = exposure_warning("kvgraph serve", "0.0.0.0", None)
    assert warning.startswith("kvgraph serve: warning: listening on 0.0.0.0 without an API key")

    class Stop(Exception):
        pass

    def stop(url):
        raise Stop(url)

    engine = sv.SequentialEngine(FakeModel())
    served = sv.ServedModel("tiny.en", False)
    try:
        for host, key, warned in [
            ("0.0.0.0", None, True),
            ("0.0.0.0", "k", False),
            ("127.0.0.1", None, False),
        ]:
            with pytest.raises(Stop):
                sv.serve(engine, served, host=host, port=0, announce=stop, api_key=key)
            err = capsys.readouterr().err
            assert (err.count("\n"), "warning" in err) == ((1, True) if warned else (0, False)), err
    finally:
        engine.close()


# ----------------------------------------------------------------------------- chunking_strategy


def form(*items):
    from starlette.datastructures import FormData

    return FormData(list(items))


@pytest.mark.parametrize(
    "items,want",
    [
        ((), {}),
        ((("chunking_strategy", "auto"),), {"vad_filter": True}),
        ((("chunking_strategy", '"auto"'),), {"vad_filter": True}),
        ((("chunking_strategy", '{"type": "server_vad"}'),), {"vad_filter": True}),
        (
            (("chunking_strategy", '{"type": "server_vad", "threshold": 0.3, "silence_duration_ms": 700}'),),
            {"vad_filter": True, "vad_parameters": {"threshold": 0.3, "min_silence_duration_ms": 700}},
        ),
        (  # the openai client's bracketed fields
            (
                ("chunking_strategy[type]", "server_vad"),
                ("chunking_strategy[threshold]", "0.6"),
                ("chunking_strategy[prefix_padding_ms]", "300"),
                ("chunking_strategy[silence_duration_ms]", "1000.0"),
            ),
            {
                "vad_filter": True,
                "vad_parameters": {"threshold": 0.6, "speech_pad_ms": 300, "min_silence_duration_ms": 1000},
            },
        ),
    ],
)
def test_chunking_strategy_becomes_vad_options(items, want):
    assert chunking_options(form(*items)) == want


@pytest.mark.parametrize(
    "items",
    [
        (("chunking_strategy", "manual"),),
        (("chunking_strategy", "[1, 2]"),),
        (("chunking_strategy", '{"type": "semantic_vad"}'),),
        (("chunking_strategy", '{"threshold": 0.5}'),),
        (("chunking_strategy", '{"type": "server_vad", "threshold": 1.5}'),),
        (("chunking_strategy", '{"type": "server_vad", "threshold": true}'),),
        (("chunking_strategy", '{"type": "server_vad", "threshold": NaN}'),),
        (("chunking_strategy", '{"type": "server_vad", "prefix_padding_ms": -1}'),),
        (("chunking_strategy", '{"type": "server_vad", "silence_duration_ms": 2.5}'),),
        (("chunking_strategy", '{"type": "server_vad", "eagerness": "low"}'),),
        (("chunking_strategy", "auto"), ("chunking_strategy", "auto")),
        (("chunking_strategy", "auto"), ("chunking_strategy[type]", "server_vad")),
        (("chunking_strategy[type]", "server_vad"), ("chunking_strategy[threshold]", "loud")),
        (("chunking_strategy[type]", "server_vad"), ("chunking_strategy[type]", "server_vad")),
        (("chunking_strategy[type", "server_vad"),),
    ],
)
def test_bad_chunking_strategies_are_refused(items):
    with pytest.raises(ChunkingError, match="chunking_strategy"):
        chunking_options(form(*items))


def test_chunking_strategy_reaches_transcribe_and_bad_ones_are_400():
    model, _, server = fake_server()
    with server as url:
        c = client(url)
        c.audio.transcriptions.create(
            file=JFK.open("rb"),
            model="tiny.en",
            chunking_strategy={"type": "server_vad", "threshold": 0.25, "prefix_padding_ms": 200},
        )
        assert model.calls[-1][1] == {
            "temperature": (0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
            "vad_filter": True,
            "vad_parameters": {"threshold": 0.25, "speech_pad_ms": 200},
        }
        c.audio.transcriptions.create(file=JFK.open("rb"), model="tiny.en", chunking_strategy="auto")
        assert model.calls[-1][1]["vad_filter"] is True and "vad_parameters" not in model.calls[-1][1]
        n = len(model.calls)
        base = [("model", "tiny.en"), ("file", "a.wav", JFK_BYTES)]
        err = assert_openai_error(
            post_multipart(
                url, PATH, [*base, ("chunking_strategy", '{"type": "server_vad", "threshold": 2}')]
            ),
            400,
            "chunking_strategy",
        )
        assert "threshold" in err["message"]
        assert len(model.calls) == n


# ----------------------------------------------------------------------------- tiny.en on MAX


class SpyEngine:
    """The batching engine with each request's ``on_segment`` watched: ``seen`` segments in
    order; a segment of a window after the first waits for ``hold`` (the test's hang-up).
    ``overrides``: options put over the request's; ``pause``: ``(reached, release)`` Events:
    the next segment forwarded sets ``reached`` and holds the engine's thread until
    ``release``."""

    def __init__(self, engine):
        self.engine = engine
        self.hold = threading.Event()
        self.hold.set()
        self.seen: list[dict] = []
        self.futures: list = []
        self.overrides: dict = {}
        self.pause: tuple | None = None

    def submit(self, audio, on_segment=None, **options):
        k = len(self.futures)
        options = {**options, **self.overrides}

        def watched(seg):
            if seg["seek"] > 0:
                assert self.hold.wait(120)
            on_segment(seg)
            self.seen.append((k, seg))  # forwarded to the server
            pause, self.pause = self.pause, None
            if pause is not None:
                pause[0].set()
                assert pause[1].wait(120)

        fut = self.engine.submit(audio, on_segment=None if on_segment is None else watched, **options)
        self.futures.append(fut)
        return fut

    def stats(self):
        return self.engine.stats()

    def close(self, wait=True):
        self.engine.close(wait)


def wav_bytes(audio: np.ndarray) -> bytes:
    import soundfile as sf

    out = io.BytesIO()
    sf.write(out, audio, 16000, format="WAV", subtype="FLOAT")
    return out.getvalue()


@pytest.fixture(scope="module")
def stream_server(tiny_model, jfk_audio):
    """tiny.en behind the default batching engine (spied), and ``transcribe``'s reference of
    each clip (computed before the server takes requests: one thread at a time on the backend)."""
    from models.whisper.audio.load import load_audio

    audios = {name: load_audio(path) for name, path in CLIPS.items()}
    # 37 s: two windows, each decoded at T = 0 (JFK repeated would compress too well and fall
    # back to sampling, whose draws differ from run to run)
    long = audios["long"] = np.concatenate([audios["basic-pbx-ivr-main"], silence(1.0), jfk_audio])
    refs = {name: tiny_model.transcribe(audio) for name, audio in audios.items()}
    with_logprobs = tiny_model.transcribe(audios["jfk"], token_logprobs=True)
    spy = SpyEngine(sv.make_engine(tiny_model, max_queue=16))
    app = sv.create_app(spy, sv.ServedModel.of("tiny.en", tiny_model))
    with sv.BackgroundServer(app) as url:
        yield SimpleNamespace(url=url, spy=spy, refs=refs, long=wav_bytes(long), with_logprobs=with_logprobs)


@pytest.mark.max
def test_tiny_streamed_deltas_join_to_the_transcript(stream_server):
    c = client(stream_server.url)
    uploads = {**{name: path.read_bytes() for name, path in CLIPS.items()}, "long": stream_server.long}
    for name, data in uploads.items():
        ref = stream_server.refs[name]
        events = list(c.audio.transcriptions.create(file=("a.wav", data), model="tiny.en", stream=True))
        deltas, done = [e.delta for e in events[:-1]], events[-1]
        assert {e.type for e in events[:-1]} == {
            "transcript.text.delta"
        } and done.type == "transcript.text.done"
        assert "".join(deltas) == done.text == ref["text"].strip(), name
        assert len(deltas) == sum(1 for s in ref["segments"] if s["text"].strip()), name
        assert done.usage.output_tokens == sum(len(s["tokens"]) for s in ref["segments"])
    long = stream_server.refs["long"]["segments"]
    assert max(s["seek"] for s in long) > 0 and {s["temperature"] for s in long} == {0.0}  # 2 windows


@pytest.mark.max
def test_tiny_logprobs_on_the_stream_and_the_json(stream_server):
    """include[]=logprobs through the engine: the text tokens of ``transcribe(...,
    token_logprobs=True)``'s segments, their log-probabilities (a batched step's logits may
    differ from a lone one's in their last bits), on every delta and on the json answer."""
    from models.whisper.decoding.tokenizer import get_tokenizer

    tok = get_tokenizer(False)
    segs = stream_server.with_logprobs["segments"]
    want = [(t, lp) for s in segs for t, lp in zip(s["tokens"], s["token_logprobs"]) if t < tok.eot]
    assert len(want) < sum(len(s["tokens"]) for s in segs)  # timestamps were left out
    c = client(stream_server.url)
    events = list(
        c.audio.transcriptions.create(file=JFK.open("rb"), model="tiny.en", stream=True, include=["logprobs"])
    )
    plain = c.audio.transcriptions.create(file=JFK.open("rb"), model="tiny.en", include=["logprobs"])
    deltas, done = events[:-1], events[-1]
    streamed = [lp for d in deltas for lp in d.logprobs]
    assert [lp.model_dump() for lp in done.logprobs] == [lp.model_dump() for lp in streamed]
    for got in (streamed, plain.logprobs):
        assert len(got) == len(want)
        for lp, (t, value) in zip(got, want):
            raw = tok.encoding.decode_single_token_bytes(t)
            assert [int(b) for b in lp.bytes] == list(raw) and lp.token == raw.decode(errors="replace")
            assert math.isclose(lp.logprob, value, abs_tol=1e-4), (lp, value)
    assert b"".join(bytes(int(b) for b in lp.bytes) for lp in streamed).decode().strip() == done.text
    assert done.text == plain.text == stream_server.with_logprobs["text"].strip()


@pytest.mark.max
def test_tiny_first_delta_leaves_while_its_window_is_decoding(stream_server):
    """One temperature (no fallback to replace the decode): a segment closed by a timestamp
    pair is sent from inside the window's decode. The engine's thread is held right after
    forwarding the first segment, and the client has that delta meanwhile; the deltas join to
    the transcript (both windows of the long clip decode at T = 0 by default too)."""
    spy, url = stream_server.spy, stream_server.url
    reached, release = threading.Event(), threading.Event()
    spy.overrides, spy.pause = {"temperature": 0.0}, (reached, release)
    n = len(spy.futures)
    try:
        stream = client(url).audio.transcriptions.create(
            file=("long.wav", stream_server.long), model="tiny.en", stream=True
        )
        events = iter(stream)
        first = next(events)  # the engine's thread is held inside the first window's decode
        # (it forwards the segment, then records it and pauses: the client may have the delta
        # a moment before the engine's thread gets there)
        assert reached.wait(60) and not release.is_set() and not spy.futures[n].done()
        held = spy.seen[-1][1]
        assert held["seek"] == 0 and held["avg_logprob"] is None  # sent by EarlySegments
        release.set()
        rest = list(events)
    finally:
        spy.overrides, spy.pause = {}, None
        release.set()
    deltas, done = [first.delta] + [e.delta for e in rest[:-1]], rest[-1]
    ref = stream_server.refs["long"]
    assert "".join(deltas) == done.text == ref["text"].strip()
    forwarded = [seg for k, seg in spy.seen if k == n]
    assert [s["text"] for s in forwarded] == [s["text"] for s in ref["segments"]]
    early = [s for s in forwarded if s["avg_logprob"] is None]
    assert {s["seek"] for s in early} == {s["seek"] for s in ref["segments"]}  # in both windows


@pytest.mark.max
def test_tiny_a_client_that_hangs_up_frees_its_rows_and_others_go_on(stream_server, caplog):
    caplog.set_level("INFO", logger="kvgraph.serve")
    spy, url = stream_server.spy, stream_server.url
    engine = spy.engine
    n = len(spy.futures)
    spy.hold.clear()  # the hanging-up stream's second window waits for the hang-up
    try:
        c = client(url)
        stream = c.audio.transcriptions.create(
            file=("long.wav", stream_server.long), model="tiny.en", stream=True
        )
        first = next(iter(stream))
        assert first.type == "transcript.text.delta"
        leaving = spy.futures[n]
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            other = pool.submit(
                lambda: list(
                    client(url).audio.transcriptions.create(file=JFK.open("rb"), model="tiny.en", stream=True)
                )
            )
            wait_until(lambda: len(spy.futures) == n + 2 and spy.futures[n + 1].running(), timeout=60)
            stream.close()
            c.close()
            wait_until(lambda: "the client hung up" in caplog.text, timeout=60)
            spy.hold.set()
            assert isinstance(leaving.exception(timeout=60), StreamCancelled)
            events = other.result(120)
        assert (
            "".join(e.delta for e in events[:-1])
            == events[-1].text
            == stream_server.refs["jfk"]["text"].strip()
        )
    finally:
        spy.hold.set()
    ref = stream_server.refs["long"]["segments"]
    forwarded = [seg for k, seg in spy.seen if k == n]
    # stopped at the second window's first segment: the first window's were all it sent
    assert [s["text"] for s in forwarded] == [s["text"] for s in ref if s["seek"] == 0]
    assert len(forwarded) < len(ref)
    # its stream left the scheduler (its rows went back when its decode ended: the scheduler
    # applies releases at its next round)
    wait_until(lambda: engine.stats()["running"] == 0 and engine.scheduler.live == 0)
    assert assert_healthy(url)["engine"]["waiting"] == 0


@pytest.mark.max
def test_tiny_chunking_strategy_transcribes_speech_between_silences(stream_server, jfk_audio):
    """End to end: OpenAI's chunking_strategy turns VAD on; the speech's words are all there,
    nothing is made up over the silences."""
    padded = wav_bytes(np.concatenate([silence(8.0), jfk_audio, silence(8.0)]))
    c = client(stream_server.url)
    want = words(stream_server.refs["jfk"]["text"])
    for strategy in ["auto", {"type": "server_vad", "threshold": 0.5, "silence_duration_ms": 1000}]:
        r = c.audio.transcriptions.create(
            file=("p.wav", padded),
            model="tiny.en",
            chunking_strategy=strategy,
            response_format="verbose_json",
        )
        assert words(r.text) == want, strategy
        assert abs(r.segments[0].start - 8.0) < 1.0  # on the upload's own timeline
    events = list(
        c.audio.transcriptions.create(
            file=("p.wav", padded), model="tiny.en", chunking_strategy="auto", stream=True
        )
    )
    assert "".join(e.delta for e in events[:-1]) == events[-1].text and words(events[-1].text) == want
