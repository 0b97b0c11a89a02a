"""``kvgraph serve``: OpenAI's audio API over HTTP, driven with the official ``openai`` client.

Every server here listens on 127.0.0.1 at a free port, runs in a thread of the test process
(``models.whisper.apps.server.BackgroundServer``) and is shut down by the test. The tests without the
``max`` marker decode with a fake model (canned results, instant); the ``max`` ones serve the
session's compiled tiny.en (``whisper_fixtures``) and compare with ``WhisperModel.transcribe``
of the same audio.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import io
import json
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from whisper_clips import JFK, SPEECH, SPEECH_CLIPS
from whisper_fixtures import *  # noqa: F401,F403

pytest.importorskip("starlette", reason="the 'serve' extra is not installed")
pytest.importorskip("uvicorn", reason="the 'serve' extra is not installed")
pytest.importorskip("multipart", reason="the 'serve' extra is not installed")
openai = pytest.importorskip("openai", reason="the openai client (test extra) is not installed")

from models.whisper.apps import server as sv  # noqa: E402
from models.whisper.apps.cli import serve as serve_cli  # noqa: E402

JFK_BYTES = JFK.read_bytes()


# ----------------------------------------------------------------------------- helpers


def client(url: str, **kw) -> openai.OpenAI:
    kw.setdefault("max_retries", 0)
    kw.setdefault("timeout", 120)
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", **kw)


def post_multipart(url: str, path: str, fields: list[tuple], timeout: float = 60):
    """POST ``fields`` (``(name, value)`` or ``(name, filename, bytes)``) as multipart/form-data
    with http.client: ``(status, headers, body bytes)``."""
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for field in fields:
        out.write(f"--{boundary}\r\n".encode())
        if len(field) == 2:
            out.write(f'Content-Disposition: form-data; name="{field[0]}"\r\n\r\n'.encode())
            out.write(str(field[1]).encode() + b"\r\n")
        else:
            name, filename, data = field
            out.write(
                f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n".encode()
            )
            out.write(data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return request(
        url,
        "POST",
        path,
        out.getvalue(),
        {"Content-Type": f"multipart/form-data; boundary={boundary}"},
        timeout,
    )


def request(url: str, method: str, path: str, body=None, headers=None, timeout: float = 60):
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def assert_openai_error(response: tuple, want_status: int, param=...):
    """``response`` (``request``'s ``(status, headers, body)``) is OpenAI's error JSON."""
    status, _, body = response
    assert status == want_status, body
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"] and "Traceback" not in err["message"]
    if param is not ...:
        assert err["param"] == param, err
    return err


def assert_healthy(url: str) -> dict:
    status, _, body = request(url, "GET", "/health")
    assert status == 200, body
    health = json.loads(body)
    assert health["status"] == "ok"
    return health


def cut_wav(data: bytes, keep: float) -> bytes:
    return data[: int(len(data) * keep)]


# ----------------------------------------------------------------------------- fake model


def canned(text=" hello world", language="en"):
    words = [
        {"word": " hello", "start": 0.0, "end": 0.5, "probability": 0.9},
        {"word": " world", "start": 0.5, "end": 1.0, "probability": 0.8},
    ]
    segment = dict(
        id=0,
        seek=0,
        start=0.0,
        end=1.0,
        text=text,
        tokens=[1, 2],
        temperature=0.0,
        avg_logprob=-0.1,
        compression_ratio=1.0,
        no_speech_prob=0.01,
    )
    return segment, words


class FakeModel:
    """Records each call; ``gate`` (an Event) holds every call until set; ``fail`` raises."""

    def __init__(self, multilingual=False, gate=None, fail=None):
        self.dims = SimpleNamespace(n_vocab=51865 if multilingual else 51864)
        self.calls: list[tuple[int, dict]] = []
        self.started = threading.Event()
        self.gate, self.fail = gate, fail

    def transcribe(self, audio, **options):
        self.calls.append((len(audio), dict(options)))
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(60)
        if self.fail is not None:
            raise self.fail
        segment, words = canned()
        if options.get("word_timestamps"):
            segment["words"] = words
        return {"text": segment["text"], "segments": [segment], "language": options.get("language") or "en"}


def fake_server(model=None, *, max_queue=8, name="tiny.en", **kw):
    model = model or FakeModel()
    engine = sv.SequentialEngine(model, max_queue=max_queue)
    served = sv.ServedModel(name, model.dims.n_vocab >= 51865)
    return model, engine, sv.BackgroundServer(sv.create_app(engine, served, **kw))


@pytest.fixture
def fake():
    model, engine, server = fake_server()
    with server as url:
        yield SimpleNamespace(url=url, model=model, engine=engine)


# ----------------------------------------------------------------------------- response shapes


def test_every_response_format_has_openais_shape(fake):
    c = client(fake.url)
    r = c.audio.transcriptions.create(file=JFK.open("rb"), model="tiny.en")
    assert r.text == "hello world" and r.usage.seconds == 11

    text = c.audio.transcriptions.create(file=JFK.open("rb"), model="whisper-1", response_format="text")
    assert text == "hello world\n"

    srt = c.audio.transcriptions.create(file=JFK.open("rb"), model="tiny.en", response_format="srt")
    assert srt == "1\n00:00:00,000 --> 00:00:01,000\nhello world\n\n"

    vtt = c.audio.transcriptions.create(file=JFK.open("rb"), model="tiny.en", response_format="vtt")
    assert vtt == "WEBVTT\n\n00:00.000 --> 00:01.000\nhello world\n\n"

    v = c.audio.transcriptions.create(file=JFK.open("rb"), model="tiny.en", response_format="verbose_json")
    assert (v.task, v.language, v.duration, v.text) == ("transcribe", "english", 11.0, "hello world")
    segment, _ = canned()
    assert [s.model_dump() for s in v.segments] == [segment]
    assert v.words is None
    # decoded audio: 11 s at 16 kHz; options: whisper.transcribe's defaults
    assert fake.model.calls[-1] == (176000, {"temperature": (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)})


def test_word_granularity_prompt_language_temperature_reach_transcribe(fake):
    c = client(fake.url)
    v = c.audio.transcriptions.create(
        file=JFK.open("rb"),
        model="tiny.en",
        response_format="verbose_json",
        timestamp_granularities=["word"],
        prompt="Kennedy's inaugural address.",
        language="english",
        temperature=0.5,
    )
    assert [w.model_dump() for w in v.words] == [
        {"word": "hello", "start": 0.0, "end": 0.5},
        {"word": "world", "start": 0.5, "end": 1.0},
    ]
    assert v.segments is None  # only the granularities asked for, as OpenAI
    assert fake.model.calls[-1][1] == {
        "temperature": (0.5, 0.7, 0.9),
        "language": "en",
        "initial_prompt": "Kennedy's inaugural address.",
        "word_timestamps": True,
    }
    v = c.audio.transcriptions.create(
        file=JFK.open("rb"),
        model="tiny.en",
        response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
    )
    assert len(v.words) == 2 and len(v.segments) == 1


def test_models_and_health(fake):
    c = client(fake.url)
    assert [m.id for m in c.models.list()] == ["tiny.en"]
    assert c.models.retrieve("whisper-1").id == "whisper-1"
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("gpt-4o-transcribe")
    health = assert_healthy(fake.url)
    assert health["model"] == "tiny.en" and health["engine"]["engine"] == "SequentialEngine"


def test_non_finite_statistics_are_null_not_a_500():
    class Odd(FakeModel):
        def transcribe(self, audio, **options):
            result = super().transcribe(audio, **options)
            result["segments"][0]["avg_logprob"] = float("-inf")
            return result

    _, _, server = fake_server(Odd())
    with server as url:
        fields = [("model", "tiny.en"), ("response_format", "verbose_json"), ("file", "a.wav", JFK_BYTES)]
        status, _, body = post_multipart(url, "/v1/audio/transcriptions", fields)
        assert status == 200, body
        assert json.loads(body)["segments"][0]["avg_logprob"] is None


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # the client's, on translations
def test_translation_needs_a_multilingual_model(fake):
    with pytest.raises(openai.BadRequestError) as ei:
        client(fake.url).audio.translations.create(file=JFK.open("rb"), model="tiny.en")
    assert ei.value.body["param"] == "model" and "English-only" in ei.value.body["message"]
    assert fake.model.calls == []

    model, _, server = fake_server(FakeModel(multilingual=True), name="base")
    with server as url:
        r = client(url).audio.translations.create(
            file=JFK.open("rb"), model="base", response_format="verbose_json"
        )
        assert r.task == "translate" and r.text == "hello world"
        assert model.calls[-1][1]["task"] == "translate"
        r = client(url).audio.transcriptions.create(file=JFK.open("rb"), model="base", language="de")
        assert model.calls[-1][1]["language"] == "de"


# ----------------------------------------------------------------------------- errors


BAD_UPLOADS = {
    "empty": (b"", "empty"),
    "truncated": (cut_wav(JFK_BYTES, 0.5), "truncated"),
    "header only": (JFK_BYTES[:44], "truncated"),
    "random bytes": (np.random.default_rng(0).bytes(20000), "not a readable audio file"),
    "text": (b"not audio at all\n" * 100, "not a readable audio file"),
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_bad_uploads_are_400_and_the_server_stays_healthy(fake, case):
    data, what = BAD_UPLOADS[case]
    with pytest.raises(openai.BadRequestError) as ei:
        client(fake.url).audio.transcriptions.create(file=("upload.wav", data), model="tiny.en")
    err = ei.value.body
    assert (
        err["param"] == "file" and err["code"] == "invalid_audio" and err["type"] == "invalid_request_error"
    )
    assert err["message"].startswith("upload.wav: ") and what in err["message"]
    assert fake.model.calls == []  # refused before the engine
    assert_healthy(fake.url)
    assert (
        client(fake.url).audio.transcriptions.create(file=JFK.open("rb"), model="tiny.en").text
        == "hello world"
    )


def test_oversized_upload_is_413():
    model, _, server = fake_server(max_upload_bytes=64 * 1024)
    with server as url:
        with pytest.raises(openai.APIStatusError) as ei:  # JFK is 344 KiB
            client(url).audio.transcriptions.create(file=JFK.open("rb"), model="tiny.en")
        assert ei.value.status_code == 413
        assert ei.value.body["code"] == "file_too_large" and "0.0625 MiB" in ei.value.body["message"]
        # without a Content-Length (chunked): counted while reading
        boundary = "b0undary"
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\ntiny.en\r\n'
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
            ).encode()
            + JFK_BYTES
            + f"\r\n--{boundary}--\r\n".encode()
        )
        host, port = url.removeprefix("http://").rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        conn.request(
            "POST",
            "/v1/audio/transcriptions",
            body=iter([body[i : i + 65536] for i in range(0, len(body), 65536)]),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
            encode_chunked=True,
        )
        r = conn.getresponse()
        assert_openai_error((r.status, {}, r.read()), 413, "file")
        conn.close()
        assert model.calls == []
        assert_healthy(url)
        small = io.BytesIO()
        import soundfile as sf

        sf.write(small, np.zeros(16000, np.float32), 16000, format="WAV", subtype="PCM_16")
        assert client(url).audio.transcriptions.create(file=("s.wav", small.getvalue()), model="tiny.en").text


def test_wrong_and_missing_fields_are_400(fake):
    url = fake.url
    path = "/v1/audio/transcriptions"
    err = assert_openai_error(
        post_multipart(url, path, [("model", "tiny.en"), ("audio", "a.wav", JFK_BYTES)]), 400, "file"
    )
    assert "'audio'" in err["message"]
    assert_openai_error(post_multipart(url, path, [("model", "tiny.en")]), 400, "file")
    assert_openai_error(
        post_multipart(url, path, [("model", "tiny.en"), ("file", "not a file")]), 400, "file"
    )
    assert_openai_error(post_multipart(url, path, [("file", "a.wav", JFK_BYTES)]), 400, "model")
    err = assert_openai_error(
        post_multipart(url, path, [("model", "tiny.en"), ("file", "a.wav", JFK_BYTES), ("colour", "red")]),
        400,
        "colour",
    )
    assert err["code"] == "unknown_parameter"
    two = [("model", "tiny.en"), ("file", "a.wav", JFK_BYTES), ("file", "b.wav", JFK_BYTES)]
    assert_openai_error(post_multipart(url, path, two), 400, "file")
    # not multipart at all
    assert_openai_error(
        request(url, "POST", path, b'{"model": "tiny.en"}', {"Content-Type": "application/json"}), 400
    )
    assert_openai_error(
        request(url, "POST", path, b"--x\r\ngarbage", {"Content-Type": "multipart/form-data"}), 400
    )
    assert fake.model.calls == []
    assert_healthy(url)


@pytest.mark.parametrize(
    "kw,param",
    [
        ({"model": "whisper-large-v3"}, "model"),
        ({"response_format": "tsv"}, "response_format"),
        ({"temperature": 1.5}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"prompt": "say <|endoftext|>"}, "prompt"),  # a special token's name is not text
        ({"language": "klingon"}, "language"),
        ({"language": "de"}, "language"),  # an English-only model
        ({"timestamp_granularities": ["word"]}, "timestamp_granularities"),  # needs verbose_json
        ({"response_format": "verbose_json", "timestamp_granularities": ["char"]}, "timestamp_granularities"),
    ],
)
def test_bad_parameters_are_400(fake, kw, param):
    kw = {"model": "tiny.en", **kw}
    with pytest.raises(openai.BadRequestError) as ei:
        client(fake.url).audio.transcriptions.create(file=JFK.open("rb"), **kw)
    assert ei.value.body["param"] == param and ei.value.body["type"] == "invalid_request_error"
    assert fake.model.calls == []


def test_bad_temperature_text_and_stream_are_400(fake):
    path = "/v1/audio/transcriptions"
    base = [("model", "tiny.en"), ("file", "a.wav", JFK_BYTES)]
    assert_openai_error(post_multipart(fake.url, path, [*base, ("temperature", "warm")]), 400, "temperature")
    assert_openai_error(post_multipart(fake.url, path, [*base, ("stream", "maybe")]), 400, "stream")
    assert post_multipart(fake.url, path, [*base, ("stream", "false")])[0] == 200
    # stream=true answers Server-Sent Events (tests/test_serve_stream.py)
    assert post_multipart(fake.url, path, [*base, ("stream", "true")])[1]["content-type"].startswith(
        "text/event-stream"
    )


def test_unknown_routes_and_methods_are_openai_errors(fake):
    assert_openai_error(request(fake.url, "GET", "/v1/audio/speech"), 404)
    assert_openai_error(request(fake.url, "GET", "/v1/audio/transcriptions"), 405)


def test_decoder_failures_never_leak_a_traceback():
    model, _, server = fake_server(FakeModel(fail=RuntimeError("kernel exploded")))
    with server as url:
        with pytest.raises(openai.InternalServerError) as ei:
            client(url).audio.transcriptions.create(file=JFK.open("rb"), model="tiny.en")
        assert ei.value.body["code"] == "internal_error" and "Traceback" not in ei.value.response.text
        assert "kernel exploded" not in ei.value.response.text
        assert_healthy(url)
        model.fail = ValueError("initial_prompt: too long")  # the request's fault: 400
        with pytest.raises(openai.BadRequestError) as ei:
            client(url).audio.transcriptions.create(file=JFK.open("rb"), model="tiny.en")
        assert "too long" in ei.value.body["message"]
        model.fail = None
        assert (
            client(url).audio.transcriptions.create(file=JFK.open("rb"), model="tiny.en").text
            == "hello world"
        )


# ----------------------------------------------------------------------------- queueing


def wait_until(pred, timeout=30.0):
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def test_full_queue_is_503_and_the_queued_requests_complete():
    gate = threading.Event()
    model, engine, server = fake_server(FakeModel(gate=gate), max_queue=2)
    with server as url, concurrent.futures.ThreadPoolExecutor(3) as pool:
        c = client(url)
        go = lambda: c.audio.transcriptions.create(file=JFK.open("rb"), model="tiny.en").text
        running = pool.submit(go)
        assert model.started.wait(30)
        queued = [pool.submit(go) for _ in range(2)]
        wait_until(lambda: engine.stats()["waiting"] == 2)
        with pytest.raises(openai.APIStatusError) as ei:
            c.audio.transcriptions.create(file=JFK.open("rb"), model="tiny.en")
        assert ei.value.status_code == 503 and ei.value.body["code"] == "server_busy"
        assert ei.value.response.headers["retry-after"] == "1"
        assert assert_healthy(url)["engine"]["waiting"] == 2
        gate.set()
        assert [f.result(30) for f in [running, *queued]] == ["hello world"] * 3


def test_a_client_that_hangs_up_while_queued_is_dropped(caplog):
    caplog.set_level("INFO", logger="kvgraph.serve")
    gate = threading.Event()
    model, engine, server = fake_server(FakeModel(gate=gate))
    with server as url, concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(
            lambda: client(url).audio.transcriptions.create(file=JFK.open("rb"), model="tiny.en")
        )
        assert model.started.wait(30)
        with client(url, timeout=1.0) as impatient, pytest.raises(openai.APITimeoutError):
            impatient.audio.transcriptions.create(file=JFK.open("rb"), model="tiny.en")
        wait_until(lambda: "the client went away" in caplog.text)
        gate.set()
        assert running.result(30).text == "hello world"
        wait_until(lambda: engine.stats()["completed"] == 2)  # the dropped one is skipped, not run
        assert len(model.calls) == 1
        assert_healthy(url)


def test_shutdown_lets_requests_in_flight_finish():
    gate = threading.Event()
    model, engine, server = fake_server(FakeModel(gate=gate))
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        url = server.__enter__()
        c = client(url)
        first = pool.submit(lambda: c.audio.transcriptions.create(file=JFK.open("rb"), model="tiny.en").text)
        assert model.started.wait(30)
        second = pool.submit(lambda: c.audio.transcriptions.create(file=JFK.open("rb"), model="tiny.en").text)
        wait_until(lambda: engine.stats()["waiting"] == 1)
        stopping = threading.Thread(target=server.stop)
        stopping.start()
        time.sleep(0.3)
        assert first.running() and second.running()
        gate.set()
        stopping.join(30)
        assert not stopping.is_alive()
        assert first.result(5) == second.result(5) == "hello world"
    with pytest.raises(sv.EngineClosed):  # the app's shutdown closed the engine
        engine.submit(np.zeros(10, np.float32))


def test_sequential_engine_order_isolation_and_close():
    class Echo:
        def __init__(self):
            self.seen = []

        def transcribe(self, audio, **options):
            self.seen.append(options["i"])
            if options["i"] == 2:
                raise ValueError("bad request 2")
            return {"i": options["i"]}

    model = Echo()
    engine = sv.SequentialEngine(model, max_queue=100)
    futures = [engine.submit(np.zeros(1, np.float32), i=i) for i in range(6)]
    engine.close(wait=True)
    assert model.seen == list(range(6))
    assert isinstance(futures[2].exception(), ValueError)
    assert [f.result()["i"] for k, f in enumerate(futures) if k != 2] == [0, 1, 3, 4, 5]
    with pytest.raises(sv.EngineClosed):
        engine.submit(np.zeros(1, np.float32))
    engine.close()  # twice: no-op
    with pytest.raises(ValueError):
        sv.SequentialEngine(model, max_queue=0)


# ----------------------------------------------------------------------------- command line


def test_cli_help_and_usage_errors(capsys):
    assert serve_cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: kvgraph serve") and "--batch-size" in out and "--port" in out
    assert serve_cli.main(["--port", "70000"]) == 2
    assert serve_cli.main(["--max-queue", "0"]) == 2
    assert serve_cli.main(["--batch-size", "0"]) == 2


def test_cli_unknown_model_and_taken_port_are_one_line_errors(capsys):
    def load(name):
        if name != "tiny.en":
            raise ValueError(f"unknown model {name!r}")
        return FakeModel()

    assert serve_cli.main(["--model", "large-v9"], load_model=load) == 1
    err = capsys.readouterr().err
    assert "kvgraph: error: model 'large-v9'" in err and "Traceback" not in err
    taken = sv.bind("127.0.0.1", 0)
    taken.listen()
    try:
        port = taken.getsockname()[1]
        made = []
        factory = lambda m, **kw: made.append(sv.make_engine(m, **kw)) or made[-1]
        assert (
            serve_cli.main(
                ["--port", str(port), "--batch-size", "4"], load_model=load, engine_factory=factory
            )
            == 1
        )
        assert "cannot listen on 127.0.0.1:" in capsys.readouterr().err
        with pytest.raises(sv.EngineClosed):
            made[0].submit(np.zeros(1, np.float32))
    finally:
        taken.close()


def test_serve_is_a_kvgraph_command(capsys):
    from kvgraph.cli import main

    assert main(["serve", "--help"]) == 0
    assert "usage: kvgraph serve" in capsys.readouterr().out


# ----------------------------------------------------------------------------- tiny.en on MAX


@pytest.fixture(scope="module")
def tiny_server(tiny_model):
    """The server ``kvgraph serve`` builds by default: the continuous-batching engine."""
    engine = sv.make_engine(tiny_model, max_queue=64)
    from models.whisper.engine.batched import BatchedTranscriber

    assert isinstance(engine, BatchedTranscriber) and engine.batch_size == sv.DEFAULT_BATCH
    app = sv.create_app(engine, sv.ServedModel.of("tiny.en", tiny_model), max_upload_bytes=4 * 1024 * 1024)
    with sv.BackgroundServer(app) as url:
        yield SimpleNamespace(url=url, model=tiny_model, engine=engine)


CLIPS = {"jfk": JFK, **{name: SPEECH / f"{name}.wav" for name in SPEECH_CLIPS}}


@pytest.fixture(scope="module")
def references(tiny_server):
    """``transcribe`` of each clip's decoded audio (computed while the server is idle: the
    backend is used by one thread at a time)."""
    from models.whisper.audio.load import load_audio

    return {name: tiny_server.model.transcribe(load_audio(path)) for name, path in CLIPS.items()}


@pytest.mark.max
def test_tiny_every_format_equals_transcribe(tiny_server, references):
    from models.whisper.transcription.outputs import render

    ref = references["jfk"]
    c = client(tiny_server.url)
    create = lambda **kw: c.audio.transcriptions.create(file=JFK.open("rb"), model="tiny.en", **kw)
    assert create().text == ref["text"].strip()
    assert create(response_format="text") == ref["text"].strip() + "\n"
    assert create(response_format="srt") == render(ref, "srt")
    assert create(response_format="vtt") == render(ref, "vtt")
    v = create(response_format="verbose_json")
    assert (v.task, v.language, v.duration, v.text) == ("transcribe", "english", 11.0, ref["text"].strip())
    keys = ("id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob", "no_speech_prob")
    assert [s.model_dump(include=set(keys)) for s in v.segments] == [
        {k: s[k] for k in keys} for s in ref["segments"]
    ]


@pytest.mark.max
def test_tiny_word_timestamps_equal_transcribe(tiny_server, jfk_audio):
    ref = tiny_server.model.transcribe(jfk_audio, word_timestamps=True)
    v = client(tiny_server.url).audio.transcriptions.create(
        file=JFK.open("rb"),
        model="whisper-1",
        response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
    )
    want = [
        {"word": w["word"].strip(), "start": w["start"], "end": w["end"]}
        for s in ref["segments"]
        for w in s["words"]
    ]
    assert [w.model_dump() for w in v.words] == want
    assert [(s.start, s.end, s.text) for s in v.segments] == [
        (s["start"], s["end"], s["text"]) for s in ref["segments"]
    ]


@pytest.mark.max
def test_tiny_16_concurrent_clients_all_correct(tiny_server, references):
    names = [list(CLIPS)[i % len(CLIPS)] for i in range(16)]
    formats = ["json", "verbose_json", "text", "srt"]
    c = client(tiny_server.url, timeout=600)

    def one(i):
        fmt = formats[i % len(formats)]
        return fmt, c.audio.transcriptions.create(
            file=CLIPS[names[i]].open("rb"), model="tiny.en", response_format=fmt
        )

    from models.whisper.transcription.outputs import render

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(16)))
    for name, (fmt, r) in zip(names, results):
        ref = references[name]
        if fmt == "json":
            assert r.text == ref["text"].strip(), name
        elif fmt == "verbose_json":
            assert r.text == ref["text"].strip() and [s.tokens for s in r.segments] == [
                s["tokens"] for s in ref["segments"]
            ], name
        elif fmt == "text":
            assert r == ref["text"].strip() + "\n", name
        else:
            assert r == render(ref, "srt"), name
    engine = assert_healthy(tiny_server.url)["engine"]
    assert engine["engine"] == "BatchedTranscriber" and engine["waiting"] == 0
    sched = engine["scheduler"]
    assert sched["busy_rows"] > sched["step_calls"]  # requests were decoded together


@pytest.mark.max
@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")
def test_tiny_bad_uploads_leave_the_server_healthy(tiny_server, references):
    c = client(tiny_server.url)
    for case, (data, what) in BAD_UPLOADS.items():
        with pytest.raises(openai.BadRequestError) as ei:
            c.audio.transcriptions.create(file=("upload.wav", data), model="tiny.en")
        assert what in ei.value.body["message"], case
    with pytest.raises(openai.APIStatusError) as ei:  # the fixture's limit is 4 MiB
        c.audio.transcriptions.create(file=("big.wav", JFK_BYTES * 14), model="tiny.en")
    assert ei.value.status_code == 413
    fields = [("model", "tiny.en"), ("upload", "a.wav", JFK_BYTES)]
    assert_openai_error(post_multipart(tiny_server.url, "/v1/audio/transcriptions", fields), 400, "file")
    with pytest.raises(openai.BadRequestError):
        c.audio.translations.create(file=JFK.open("rb"), model="tiny.en")
    assert_healthy(tiny_server.url)
    assert (
        c.audio.transcriptions.create(file=JFK.open("rb"), model="tiny.en").text
        == references["jfk"]["text"].strip()
    )


@pytest.mark.max
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_tiny_cli_serves_then_stops_gracefully(sig, references):
    """``kvgraph serve`` in a subprocess: the URL line on stderr, a request in flight when the
    signal comes is answered, then a clean exit (status 0, no traceback)."""
    import os
    import signal
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    cmd = [
        sys.executable,
        "-m",
        "kvgraph",
        "serve",
        "--model",
        "tiny.en",
        "--port",
        "0",
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(
        cmd, cwd=root, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    try:
        lines = []
        url = None
        deadline = time.monotonic() + 300
        while url is None:
            line = proc.stderr.readline()
            assert line and time.monotonic() < deadline, "".join(lines)
            lines.append(line)
            if " on http://127.0.0.1:" in line:
                url = line.split(" on ", 1)[1].split("/v1", 1)[0]
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(
                lambda: client(url).audio.transcriptions.create(file=JFK.open("rb"), model="tiny.en").text
            )
            wait_until(lambda: assert_healthy(url)["engine"]["running"] == 1, timeout=60)
            proc.send_signal(getattr(signal, sig))
            assert pending.result(120) == references["jfk"]["text"].strip()
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.max
@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # the client's, on translations
def test_base_translations_and_language_detection_equal_transcribe(base_model, jfk_audio):
    translated = base_model.transcribe(jfk_audio, task="translate")
    detected = base_model.transcribe(jfk_audio)
    engine = sv.SequentialEngine(base_model)
    app = sv.create_app(engine, sv.ServedModel.of("base", base_model))
    with sv.BackgroundServer(app) as url:
        c = client(url)
        assert [m.id for m in c.models.list()] == ["base"]
        r = c.audio.translations.create(file=JFK.open("rb"), model="base", response_format="verbose_json")
        assert (r.task, r.language, r.text) == ("translate", "english", translated["text"].strip())
        assert [s.tokens for s in r.segments] == [s["tokens"] for s in translated["segments"]]
        r = c.audio.transcriptions.create(
            file=JFK.open("rb"), model="whisper-1", response_format="verbose_json"
        )
        assert (r.language, r.text) == ("english", detected["text"].strip())
