"""``kvgraph serve``: an OpenAI-compatible transcription server for Whisper on MAX.

    kvgraph serve [--model tiny.en|base|PATH] [--host 127.0.0.1] [--port 8000]
        [--batch-size N] [--max-queue N] [--max-upload-mb MB] [--log-level LEVEL]

Routes (shaped as OpenAI's audio API, so its clients work unchanged with
``base_url="http://HOST:PORT/v1"``):

- ``POST /v1/audio/transcriptions``: multipart form with ``file`` (WAV, FLAC, OGG, ...: what
  libsndfile reads; no ffmpeg), ``model``, ``language``, ``prompt`` (openai-whisper's
  ``initial_prompt``), ``response_format`` (``json`` | ``text`` | ``srt`` | ``vtt`` |
  ``verbose_json``), ``temperature`` (0 to 1; openai-whisper's fallback schedule from there, as
  ``kvgraph transcribe --temperature``), ``timestamp_granularities[]`` (``segment`` | ``word``;
  with ``verbose_json``, as OpenAI requires).
- ``POST /v1/audio/translations``: the same without ``timestamp_granularities[]``, task
  ``translate`` (speech in any language to English text): multilingual models only.
- ``GET /v1/models``, ``GET /v1/models/{id}``, ``GET /health``.

The served model answers to its own name (``tiny.en``) and to ``whisper-1`` (the name OpenAI's
examples use); any other ``model`` is a 400. Errors are OpenAI's JSON ``{"error": {"message",
"type", "param", "code"}}``: 400 for bad parameters, unknown models and audio that cannot be
decoded (empty, truncated, not audio), 413 for a request body over the upload limit, 503 when
the engine's queue is full, 404/405 for unknown routes; an internal failure is a 500 with the
same JSON and no traceback (that goes to the server's log).

Requests are decoded by a :class:`TranscriptionEngine`: ``submit(audio, **options)`` returns a
``concurrent.futures.Future`` of openai-whisper's result dict and raises ``queue.Full`` when
its queue is full; ``close(wait)`` finishes what was submitted. :func:`make_engine` builds the
continuous-batching engine (:class:`models.batching.BatchedTranscriber`: the requests in flight
decode together, up to ``--batch-size`` of them, 8 by default) and :class:`SequentialEngine` (one
worker thread, one request at a time) with ``--batch-size 1`` or for a backend that cannot
batch; :func:`create_app` and :func:`serve` take any engine. A
client that disconnects while its request waits in the queue has the request cancelled.
Shutdown (Ctrl-C, SIGTERM) stops accepting connections, lets the requests in flight finish,
then closes the engine.

Importing this module is cheap (no MAX, torch or web framework): the server's imports happen
once the arguments are parsed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Protocol

PROG = "kvgraph serve"
RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
GRANULARITIES = ("segment", "word")
#: names every served model also answers to (OpenAI's examples say ``model="whisper-1"``)
MODEL_ALIASES = ("whisper-1",)
#: OpenAI's own upload limit
DEFAULT_MAX_UPLOAD_MB = 25.0
DEFAULT_MAX_QUEUE = 64
DEFAULT_BATCH = 8  # requests decoded together by default (as `kvgraph transcribe` with several files)
SAMPLE_RATE = 16000
#: form fields other than ``file``: small (a prompt is at most a few hundred tokens)
MAX_FIELD_BYTES = 64 * 1024
#: multipart framing and form fields allowed on top of the upload limit
FORM_OVERHEAD_BYTES = 256 * 1024

log = logging.getLogger("kvgraph.serve")


# ----------------------------------------------------------------------------- engines


class TranscriptionEngine(Protocol):
    """What the server needs of a decoder: ``submit`` returns at once (``queue.Full`` when
    the engine cannot take more), the future resolves to ``WhisperModel.transcribe``'s result
    dict for ``audio`` (float32 mono 16 kHz) and ``options`` (``whisper.transcribe``'s keyword
    arguments) or to its exception. A future cancelled before it runs is skipped."""

    def submit(self, audio, **options) -> Future: ...

    def close(self, wait: bool = True) -> None: ...


class EngineFull(queue.Full):
    """``submit`` refused a request: the engine's queue is full (the server answers 503)."""


class EngineClosed(RuntimeError):
    """``submit`` after ``close`` (the server answers 503)."""


class SequentialEngine:
    """A :class:`TranscriptionEngine` that runs ``model.transcribe`` for one request at a time
    on one worker thread, in arrival order, with at most ``max_queue`` requests waiting
    (:class:`EngineFull` beyond that). One request's exception is its future's; the worker
    goes on with the next. ``close(wait=True)`` finishes every submitted request, then joins
    the worker; ``close(wait=False)`` lets it finish them in the background."""

    def __init__(self, model, *, max_queue: int = DEFAULT_MAX_QUEUE):
        if max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, got {max_queue}")
        self.model = model
        self.max_queue = max_queue
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._waiting = 0  # submitted, not yet taken by the worker
        self._running = False
        self._done = 0
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name="kvgraph-serve-engine", daemon=True)
        self._thread.start()

    def submit(self, audio, **options) -> Future:
        fut: Future = Future()
        with self._lock:
            if self._closed:
                raise EngineClosed("the engine is shutting down")
            if self._waiting >= self.max_queue:
                raise EngineFull(f"{self._waiting} requests are waiting (the queue holds {self.max_queue})")
            self._waiting += 1
            self._queue.put((fut, audio, options))
        return fut

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fut, audio, options = item
            with self._lock:
                self._waiting -= 1
                self._running = True
            try:
                if fut.set_running_or_notify_cancel():  # False: cancelled while waiting
                    try:
                        result = self.model.transcribe(audio, **options)
                    except BaseException as e:  # noqa: BLE001 - the request's failure, not the worker's
                        fut.set_exception(e)
                    else:
                        fut.set_result(result)
            finally:
                with self._lock:
                    self._running = False
                    self._done += 1

    def stats(self) -> dict:
        with self._lock:
            return {
                "engine": type(self).__name__,
                "waiting": self._waiting,
                "running": int(self._running),
                "max_queue": self.max_queue,
                "completed": self._done,
            }

    def close(self, wait: bool = True) -> None:
        with self._lock:
            first = not self._closed
            self._closed = True
        if first:
            self._queue.put(None)  # after every submitted request
        if wait and self._thread is not threading.current_thread():
            self._thread.join()


def make_engine(model, *, batch_size: int | None = None, max_queue: int = DEFAULT_MAX_QUEUE):
    """The engine ``kvgraph serve`` decodes with. With ``batch_size`` (``--batch-size``; None:
    :data:`DEFAULT_BATCH`) of 2 or more and a model whose decoder can step rows at different
    positions, the continuous-batching engine (:class:`models.batching.BatchedTranscriber`: up
    to ``batch_size`` requests decode at once, their steps batched; each result equals
    ``transcribe``'s); otherwise :class:`SequentialEngine`, one request at a time."""
    if batch_size is None:
        batch_size = DEFAULT_BATCH
    if batch_size > 1:
        from models.transcribe_cli import _batchable

        backend = getattr(model, "backend", None)
        if backend is not None and _batchable(backend):
            from models.batching import BatchedTranscriber

            return BatchedTranscriber(backend, batch_size=batch_size, max_queue=max_queue)
    return SequentialEngine(model, max_queue=max_queue)


# ----------------------------------------------------------------------------- errors


class ApiError(Exception):
    """An error answered as OpenAI's JSON: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        headers: dict | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _bad(message: str, param: str | None = None, code: str | None = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


# ----------------------------------------------------------------------------- requests


class _BodyTooLarge(Exception):
    pass


class _ClientGone(Exception):
    pass


#: fields read from the form; others are refused as OpenAI refuses them
_TRANSCRIPTION_FIELDS = frozenset(
    {
        "file",
        "model",
        "language",
        "prompt",
        "response_format",
        "temperature",
        "timestamp_granularities[]",
        "timestamp_granularities",
        "stream",
    }
)
_TRANSLATION_FIELDS = frozenset({"file", "model", "prompt", "response_format", "temperature", "stream"})


def _one(form, name: str) -> str | None:
    values = form.getlist(name)
    if not values:
        return None
    if len(values) > 1:
        raise _bad(f"parameter '{name}' given {len(values)} times", name)
    value = values[0]
    if not isinstance(value, str):
        raise _bad(f"parameter '{name}' must be a form field, not a file", name)
    return value


def _language_code(language: str | None) -> str | None:
    if language is None or not language.strip():
        return None
    from whisper.tokenizer import LANGUAGES, TO_LANGUAGE_CODE

    lang = language.strip().lower()
    if lang in LANGUAGES:
        return lang
    if lang in TO_LANGUAGE_CODE:
        return TO_LANGUAGE_CODE[lang]
    raise _bad(f"unknown language {language!r} (an ISO-639-1 code such as 'en', or a name)", "language")


def _temperatures(value: str | None) -> tuple[float, ...]:
    """openai-whisper's fallback schedule from ``value`` up to 1.0 by 0.2 (OpenAI: "If set to
    0, the model will use log probability to automatically increase the temperature until
    certain thresholds are hit"); its default (0) equals ``whisper.transcribe``'s."""
    if value is None or value.strip() == "":
        t = 0.0
    else:
        try:
            t = float(value)
        except ValueError:
            raise _bad(
                f"temperature must be a number between 0 and 1, got {value!r}", "temperature"
            ) from None
        if not (0.0 <= t <= 1.0):
            raise _bad(f"temperature must be between 0 and 1, got {value!r}", "temperature")
    import numpy as np

    return tuple(round(float(x), 6) for x in np.arange(t, 1.0 + 1e-6, 0.2)) or (t,)


class _Params:
    def __init__(self, form, task: str, served: ServedModel):
        allowed = _TRANSCRIPTION_FIELDS if task == "transcribe" else _TRANSLATION_FIELDS
        files = form.getlist("file")
        if not files:
            others = [k for k, v in form.multi_items() if not isinstance(v, str)]
            hint = f" (the upload came as {others[0]!r})" if others else ""
            raise _bad(f"missing required parameter 'file': the audio file to transcribe{hint}", "file", None)
        if len(files) > 1:
            raise _bad(f"parameter 'file' given {len(files)} times", "file")
        if isinstance(files[0], str):
            raise _bad("parameter 'file' must be a file upload (multipart/form-data)", "file")
        self.upload = files[0]
        for key in form.keys():
            if key not in allowed:
                raise _bad(f"unrecognized request argument supplied: {key}", key, "unknown_parameter")

        model = _one(form, "model")
        if model is None or not model.strip():
            raise _bad("missing required parameter 'model'", "model", None)
        if model.strip() not in served.names:
            raise ApiError(
                400,
                f"model {model!r} is not served here; this server has {served.name!r} "
                f"(also reachable as {', '.join(repr(a) for a in MODEL_ALIASES)})",
                param="model",
                code="model_not_found",
            )

        stream = _one(form, "stream")
        if stream is not None and stream.strip().lower() not in ("false", "0", ""):
            raise _bad(
                "streaming (stream=true) is not supported by this server", "stream", "unsupported_value"
            )

        fmt = _one(form, "response_format") or "json"
        if fmt not in RESPONSE_FORMATS:
            raise _bad(
                f"response_format must be one of {', '.join(RESPONSE_FORMATS)}, got {fmt!r}",
                "response_format",
            )
        self.response_format = fmt

        grans = form.getlist("timestamp_granularities[]") + form.getlist("timestamp_granularities")
        for g in grans:
            if not isinstance(g, str) or g not in GRANULARITIES:
                raise _bad(
                    f"timestamp_granularities[] must be 'segment' or 'word', got {g!r}",
                    "timestamp_granularities",
                )
        if grans and fmt != "verbose_json":
            raise _bad(
                "timestamp_granularities[] requires response_format=verbose_json", "timestamp_granularities"
            )
        self.granularities = set(grans) or {"segment"}

        language = _language_code(_one(form, "language")) if task == "transcribe" else None
        if language not in (None, "en") and not served.multilingual:
            raise _bad(
                f"{served.name} is an English-only model: language {language!r} needs a multilingual "
                "model (such as base)",
                "language",
                "unsupported_language",
            )
        if task == "translate" and not served.multilingual:
            raise _bad(
                f"{served.name} is an English-only model and cannot translate; serve a multilingual "
                "model (such as base) for /v1/audio/translations",
                "model",
                "unsupported_model",
            )
        options: dict[str, Any] = {"temperature": _temperatures(_one(form, "temperature"))}
        if task == "translate":
            options["task"] = "translate"
        if language is not None:
            options["language"] = language
        prompt = _one(form, "prompt")
        if prompt:
            options["initial_prompt"] = prompt
        if "word" in self.granularities:
            options["word_timestamps"] = True
        self.task = task
        self.options = options


class ServedModel:
    """The name a server answers to and whether its model is multilingual."""

    def __init__(self, name: str, multilingual: bool, created: int | None = None):
        self.name = name
        self.multilingual = multilingual
        self.names = (name, *MODEL_ALIASES)
        self.created = int(time.time()) if created is None else created

    @classmethod
    def of(cls, name: str, model) -> ServedModel:
        """For a loaded ``WhisperModel`` (multilingual iff its vocabulary has 51865+ tokens,
        openai-whisper's test)."""
        return cls(name, model.dims.n_vocab >= 51865)

    def card(self, model_id: str | None = None) -> dict:
        return {
            "id": model_id or self.name,
            "object": "model",
            "created": self.created,
            "owned_by": "kvgraph",
        }


def _language_name(code: str | None) -> str:
    from whisper.tokenizer import LANGUAGES

    return LANGUAGES.get(code or "", code or "")


def _json_safe(value):
    """JSON has no NaN or infinity (a statistic openai-whisper could not compute): null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _response_body(result: dict, params: _Params, duration: float):
    """``(body, media_type)`` for ``result`` in the request's ``response_format``."""
    text = result.get("text", "").strip()
    fmt = params.response_format
    usage = {"type": "duration", "seconds": math.ceil(duration)}
    if fmt == "json":
        return {"text": text, "usage": usage}, None
    if fmt == "text":
        return text + "\n", "text/plain; charset=utf-8"
    if fmt in ("srt", "vtt"):
        from models.transcribe_cli import render

        return render(result, fmt), "text/plain; charset=utf-8"
    body: dict[str, Any] = {
        "task": params.task,
        "language": _language_name(result.get("language")),
        "duration": round(duration, 3),
        "text": text,
    }
    if "segment" in params.granularities:
        keys = (
            "id",
            "seek",
            "start",
            "end",
            "text",
            "tokens",
            "temperature",
            "avg_logprob",
            "compression_ratio",
            "no_speech_prob",
        )
        body["segments"] = [{k: _json_safe(s[k]) for k in keys if k in s} for s in result.get("segments", [])]
    if "word" in params.granularities:
        body["words"] = [
            {"word": w["word"].strip(), "start": w["start"], "end": w["end"]}
            for s in result.get("segments", [])
            for w in s.get("words", [])
        ]
    body["usage"] = usage
    return body, None


# ----------------------------------------------------------------------------- the app


def create_app(
    engine: TranscriptionEngine,
    served: ServedModel,
    *,
    max_upload_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * 1024 * 1024),
    close_engine: bool = True,
):
    """The ASGI app (Starlette) answering OpenAI's audio routes with ``engine``.

    ``max_upload_bytes`` bounds a request's body (plus :data:`FORM_OVERHEAD_BYTES` for the
    form's framing and fields): larger ones are read to their end (up to 4x the limit, so the
    client gets the answer rather than a reset connection) and answered 413.
    ``close_engine``: close the engine (waiting for its requests) when the app shuts down.
    """
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.formparsers import MultiPartException, MultiPartParser
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from models.audio import AudioError, decode_audio

    body_limit = max_upload_bytes + FORM_OVERHEAD_BYTES

    def error_response(e: ApiError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    def too_large() -> ApiError:
        return ApiError(
            413,
            f"request body over the upload limit of {max_upload_bytes / 1024 / 1024:g} MiB",
            param="file",
            code="file_too_large",
        )

    class Body:
        """The request body read from ``receive`` (Starlette's ``request.stream()`` cannot be
        read on after its consumer stops): counted, capped at ``body_limit``, drained."""

        def __init__(self, request):
            self.request, self.seen, self.done = request, 0, False

        async def _next(self) -> bytes:
            message = await self.request.receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            self.seen += len(chunk)
            self.done = not message.get("more_body", False)
            return chunk

        async def chunks(self):
            while not self.done:
                chunk = await self._next()
                if self.seen > body_limit:
                    raise _BodyTooLarge
                if chunk:
                    yield chunk

        async def drain(self) -> None:
            """Read and drop the rest of a refused body (up to 4x the limit), so the client
            reads the answer rather than a reset connection."""
            while not self.done and self.seen <= 4 * body_limit:
                await self._next()

    async def read_form(request):
        ctype = request.headers.get("content-type", "")
        if not ctype.lower().startswith("multipart/form-data"):
            raise _bad(
                f"expected a multipart/form-data body (got {ctype or 'no content type'!r})",
                None,
                "invalid_content_type",
            )
        body = Body(request)
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > body_limit:
            await body.drain()
            raise too_large()
        parser = MultiPartParser(
            request.headers, body.chunks(), max_files=4, max_fields=32, max_part_size=MAX_FIELD_BYTES
        )
        try:
            return await parser.parse()
        except _BodyTooLarge:
            await body.drain()
            raise too_large() from None
        except MultiPartException as e:
            await body.drain()
            raise _bad(f"malformed multipart/form-data body: {e}", None, "invalid_multipart") from None

    async def wait_result(request, fut: Future):
        """The engine's result; cancels the request if the client disconnects first."""
        afut = asyncio.wrap_future(fut)

        async def disconnected():
            while True:
                message = await request.receive()
                if message["type"] == "http.disconnect":
                    return

        gone = asyncio.ensure_future(disconnected())
        try:
            done, _ = await asyncio.wait({afut, gone}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            fut.cancel()
            raise
        finally:
            gone.cancel()
        if afut in done:
            return afut.result()
        fut.cancel()
        afut.cancel()
        raise _ClientGone

    async def audio_route(request, task: str):
        t0 = time.perf_counter()
        form = await read_form(request)
        try:
            params = _Params(form, task, served)
            name = params.upload.filename or "file"
            data = await params.upload.read()
        finally:
            await form.close()
        try:
            audio = await run_in_threadpool(decode_audio, data, SAMPLE_RATE, name)
        except AudioError as e:
            raise _bad(str(e), "file", "invalid_audio") from None
        del data
        try:
            fut = engine.submit(audio, **params.options)
        except queue.Full as e:
            raise ApiError(
                503, f"server busy: {e}; retry later", code="server_busy", headers={"Retry-After": "1"}
            ) from None
        except EngineClosed:
            raise ApiError(503, "server shutting down", code="shutting_down") from None
        try:
            result = await wait_result(request, fut)
        except (ValueError, TypeError) as e:  # the options or audio refused by the decoder
            raise _bad(" ".join(str(e).split()) or type(e).__name__, None, None) from None
        duration = len(audio) / SAMPLE_RATE
        body, media = _response_body(result, params, duration)
        log.debug("%s %.1f s of audio in %.2f s", task, duration, time.perf_counter() - t0)
        if media is None:
            return JSONResponse(body)
        return Response(body, media_type=media)

    async def guarded(request, task: str):
        try:
            return await audio_route(request, task)
        except _ClientGone:
            log.info("%s: the client went away; request dropped", request.url.path)
            return Response(status_code=499)

    async def transcriptions(request):
        return await guarded(request, "transcribe")

    async def translations(request):
        return await guarded(request, "translate")

    async def models(request):
        return JSONResponse({"object": "list", "data": [served.card()]})

    async def model(request):
        model_id = request.path_params["model_id"]
        if model_id not in served.names:
            raise ApiError(
                404, f"the model {model_id!r} does not exist", param="model", code="model_not_found"
            )
        return JSONResponse(served.card(model_id))

    async def health(request):
        stats = getattr(engine, "stats", None)
        body = {"status": "ok", "model": served.name}
        if callable(stats):
            body["engine"] = stats()
        return JSONResponse(body)

    async def api_error(request, exc: ApiError):
        return error_response(exc)

    async def http_error(request, exc: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return error_response(
            ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", code=code)
        )

    async def internal_error(request, exc: Exception):
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(
            ApiError(
                500,
                f"internal server error ({type(exc).__name__}); see the server's log",
                code="internal_error",
            )
        )

    @asynccontextmanager
    async def lifespan(app):
        yield
        if close_engine:
            await run_in_threadpool(engine.close, True)

    return Starlette(
        routes=[
            Route("/v1/audio/transcriptions", transcriptions, methods=["POST"]),
            Route("/v1/audio/translations", translations, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/models/{model_id:path}", model, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
        ],
        exception_handlers={ApiError: api_error, HTTPException: http_error, Exception: internal_error},
        lifespan=lifespan,
    )


# ----------------------------------------------------------------------------- running it


def bind(host: str, port: int):
    """A listening TCP socket on ``host:port`` (``port`` 0: a free one): clients can connect
    from now on, and are answered once the server runs."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)  # connections wait in the backlog until uvicorn accepts them
    sock.set_inheritable(True)
    return sock


def url_of(sock) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _uvicorn_server(app, log_level: str):
    import uvicorn

    config = uvicorn.Config(app, log_level=log_level, lifespan="on", timeout_keep_alive=30)
    return uvicorn.Server(config)


class BackgroundServer:
    """``with BackgroundServer(app) as url:`` runs ``app`` with uvicorn on a thread, listening
    on ``host`` at a free port; leaving the block shuts it down gracefully (requests in flight
    finish, then the app's shutdown closes its engine) and joins the thread. For tests and
    benchmarks."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        self.app, self.host, self.port, self.log_level = app, host, port, log_level
        self.url: str | None = None

    def __enter__(self) -> str:
        self.sock = bind(self.host, self.port)
        self.url = url_of(self.sock)
        self.server = _uvicorn_server(self.app, self.log_level)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, name="kvgraph-serve", daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self.url

    def stop(self, timeout: float = 60.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve(
    engine: TranscriptionEngine,
    served: ServedModel,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_upload_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * 1024 * 1024),
    log_level: str = "info",
    announce: Callable[[str], None] | None = None,
) -> None:
    """Serve ``engine`` on ``host:port`` until SIGINT / SIGTERM, then shut down gracefully
    (requests in flight finish; the engine is closed). ``announce(url)`` is called once the
    socket listens (default: one line on stderr)."""
    sock = bind(host, port)
    url = url_of(sock)
    app = create_app(engine, served, max_upload_bytes=max_upload_bytes)
    server = _uvicorn_server(app, log_level)
    (
        announce
        or (
            lambda u: print(
                f"{PROG}: {served.name} on {u}/v1 (POST /v1/audio/transcriptions; OpenAI clients: "
                f"base_url={u}/v1); Ctrl-C stops",
                file=sys.stderr,
                flush=True,
            )
        )
    )(url)
    # uvicorn shuts down gracefully on SIGINT / SIGTERM, then raises the signal again for the
    # process's own handler: a KeyboardInterrupt, or death by SIGTERM. Both are a clean stop here.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if main_thread else None
    try:
        server.run(sockets=[sock])
    except (KeyboardInterrupt, _Terminated):
        pass
    finally:
        sock.close()
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


class _Terminated(Exception):
    pass


def _terminated(signum, frame):
    raise _Terminated


# ----------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Serve Whisper on MAX behind OpenAI's audio API (POST /v1/audio/transcriptions, "
        "/v1/audio/translations, GET /v1/models, /health).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = p.add_argument
    add("--model", default="tiny.en", help="'tiny.en', 'base', or a path to a checkpoint")
    add("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    add("--port", type=int, default=8000, help="TCP port (0: a free one)")
    add(
        "--batch-size",
        "--batch_size",
        dest="batch_size",
        type=int,
        default=DEFAULT_BATCH,
        help="requests decoded together by the continuous-batching engine (1: the sequential "
        "engine, one request at a time)",
    )
    add(
        "--max-queue",
        "--max_queue",
        dest="max_queue",
        type=int,
        default=DEFAULT_MAX_QUEUE,
        help="requests allowed to wait for the engine; more are answered 503",
    )
    add(
        "--max-upload-mb",
        "--max_upload_mb",
        dest="max_upload_mb",
        type=float,
        default=DEFAULT_MAX_UPLOAD_MB,
        help="upload size limit in MiB; larger requests are answered 413",
    )
    add(
        "--log-level",
        "--log_level",
        dest="log_level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn's log level (info: one access line per request)",
    )
    return p


def _default_load_model(name: str):
    from models.whisper import load_model  # lazy: imports MAX

    return load_model(name)


def main(
    argv: Sequence[str] | None = None,
    load_model: Callable[[str], object] | None = None,
    engine_factory: Callable[..., TranscriptionEngine] | None = None,
) -> int:
    """Entry point of ``kvgraph serve``; ``argv`` excludes the subcommand. ``load_model(name)``
    defaults to ``models.whisper.load_model``, ``engine_factory(model, batch_size=,
    max_queue=)`` to :func:`make_engine`. Exit status: 0 after a clean shutdown, 1 when the
    model cannot be loaded or the address is taken, 2 for usage errors."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.batch_size is not None and args.batch_size < 1:
            parser.error("argument --batch-size: must be at least 1")
        if args.max_queue < 1:
            parser.error("argument --max-queue: must be at least 1")
        if not args.max_upload_mb > 0:
            parser.error("argument --max-upload-mb: must be positive")
        if not 0 <= args.port <= 65535:
            parser.error("argument --port: must be in 0..65535")
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        print(
            f"kvgraph: error: {PROG} needs the 'serve' extra ({e.name} is missing): pip install -e '.[serve]'",
            file=sys.stderr,
        )
        return 1

    from models.transcribe_cli import USER_ERRORS, _one_line

    print(
        f"{PROG}: loading {args.model} (compiled programs come from the program store)",
        file=sys.stderr,
        flush=True,
    )
    t0 = time.perf_counter()
    try:
        model = (load_model or _default_load_model)(args.model)
    except KeyboardInterrupt:
        print("kvgraph: error: interrupted", file=sys.stderr)
        return 130
    except (*USER_ERRORS, ImportError) as e:
        print(f"kvgraph: error: model {args.model!r}: {_one_line(e)}", file=sys.stderr)
        return 1
    print(f"{PROG}: {args.model} loaded in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    served = ServedModel.of(args.model, model)
    engine = (engine_factory or make_engine)(model, batch_size=args.batch_size, max_queue=args.max_queue)
    try:
        serve(
            engine,
            served,
            host=args.host,
            port=args.port,
            max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
            log_level=args.log_level,
        )
    except OSError as e:  # address in use, permission denied
        print(f"kvgraph: error: cannot listen on {args.host}:{args.port}: {_one_line(e)}", file=sys.stderr)
        engine.close(wait=False)
        return 1
    finally:
        engine.close(wait=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
